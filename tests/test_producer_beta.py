"""beta-CROWN in the producer (oracles/bounds_torch.py, oracles/bab.py; Wang et al. 2021):
leaves under relu splits carry optimised multipliers for their split constraints, the float
bound the producer decides with is the one the kernel re-derives, and branch and bound with
them proves claims the kernel accepts, in no more leaves than without. Must-reject: a producer
certificate with one multiplier made negative."""

import copy
from fractions import Fraction

import pytest
import torch
from rule_helpers import rejected

from kernel_checker import KernelError, crown
from kernel_checker.rules import box_interval
from oracles import bounds_torch as bt
from oracles.bab import prove_with_bab
from stdlib import robustness
from tl_dsl import proof

SIGNS = {"active": 1, "inactive": -1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net(mlp12):
    """A 12-24-24-3 relu MLP and its input point's label."""
    return mlp12


def _claim(net, eps):
    built, _, x0, label = net
    return robustness.robust(built.graph, x0, eps, label)


def _split_domain(net, claim) -> dict:
    """Phase constraints on the two unstable neurons of each hidden layer with the largest
    relaxation gaps: one active and one inactive per layer."""
    built, chain, _, _ = net
    res, _ = bt.bounds_for_claim(built.path, claim, "crown", want_scores=True, chain=chain)
    phases = {}
    for k in chain.relus:
        gap = res.scores[k].sum(dim=0) * res.relax[k].unstable
        top = torch.argsort(gap, descending=True)[:2].tolist()
        phases[chain.ids[chain.layers[k].src[0]]] = {top[0]: "active", top[1]: "inactive"}
    return {"relu": phases}


def _kernel_lows(built, claim, cert, domain, monkeypatch) -> list[Fraction]:
    """The kernel's exact lower bounds of the spec rows for a leaf certificate on the domain
    (its conclusion intercepted)."""
    seen = []
    monkeypatch.setattr(crown, "conclude", lambda _claim, lows, _rule: seen.append(lows))
    phases = {nid: {j: SIGNS[s] for j, s in signs.items()}
              for nid, signs in domain["relu"].items()}
    box = box_interval(claim.input_set.as_box(), built.graph.the_input("t", "t").shape)
    assert crown.check_crown(built.graph, claim, cert, crown.Domain(box, phases), "leaf")
    monkeypatch.undo()
    return [Fraction(int(v.p), int(v.q)) for v in seen[0]]


def _betas(cert, path="certificate"):
    """(path, values list, row) of every multiplier in a certificate tree, leaves and their
    intermediate entries."""
    if cert.get("rule") == "split":
        for i, child in enumerate(cert["children"]):
            yield from _betas(child, f"{path}.children[{i}]")
        return
    for i, entry in enumerate(cert.get("intermediate", [])):
        for b, term in enumerate(entry.get("beta", [])):
            for r in range(len(term["values"])):
                yield f"{path}.intermediate[{i}].beta[{b}].values[{r}]", term["values"], r
    for b, term in enumerate(cert.get("beta", [])):
        for r in range(len(term["values"])):
            yield f"{path}.beta[{b}].values[{r}]", term["values"], r


def _leaf_bounds(net, claim, domain, beta):
    built, chain, _, _ = net
    res, spec = bt.bounds_for_claim(built.path, claim, "alpha", domain, chain=chain,
                                    early_stop=False, beta=beta)
    return res, spec


def test_optimised_betas_tighten_a_split_leaf_and_the_kernel_agrees(net, monkeypatch):
    built = net[0]
    claim = _claim(net, 0.22)
    domain = _split_domain(net, claim)
    with_beta, spec = _leaf_bounds(net, claim, domain, True)
    without, _ = _leaf_bounds(net, claim, domain, False)
    cert = with_beta.certificate()
    assert cert.get("beta"), "no multiplier optimised on a leaf with split constraints"
    assert "beta" not in without.certificate()
    assert spec.margin(with_beta.lower) > spec.margin(without.lower)
    # the kernel re-derives at least the producer's float bound (up to its safety margins),
    # and the certificate's multipliers beat the same certificate with beta = 0
    lows = _kernel_lows(built, claim, cert, domain, monkeypatch)
    for exact, claimed in zip(lows, with_beta.lower):
        assert float(exact) >= claimed - 1e-9 * (1 + abs(claimed))
    zero = {k: v for k, v in cert.items() if k != "beta"}
    lows0 = _kernel_lows(built, claim, zero, domain, monkeypatch)
    assert all(a >= b for a, b in zip(lows, lows0))
    assert any(a > b for a, b in zip(lows, lows0))


def test_no_split_constraints_no_beta(net):
    res, _ = _leaf_bounds(net, _claim(net, 0.22), None, True)
    assert "beta" not in res.certificate() and not res.beta_rows
    assert not any("beta" in e for e in res.entries)


def test_betas_are_nonnegative_dyadics(net):
    claim = _claim(net, 0.22)
    res, _ = _leaf_bounds(net, claim, _split_domain(net, claim), True)
    values = list(_betas(res.certificate()))
    assert values
    for path, vals, r in values:
        v = Fraction(vals[r])
        assert v >= 0, path
        assert v.denominator & (v.denominator - 1) == 0, (path, vals[r])  # a power of 2


@pytest.fixture(scope="module")
def bab_runs(net):
    claim = _claim(net, 0.22)
    path = net[0].path
    cert, _ = bt.crown_certificate(path, claim, "alpha", chain=net[1])
    runs = {beta: prove_with_bab(path, claim, timeout_s=60, strategy="relu", beta=beta, seed=0)
            for beta in (True, False)}
    return claim, cert, runs


def test_relu_bab_with_beta_is_accepted_in_no_more_leaves(net, bab_runs):
    built = net[0]
    claim, root_cert, runs = bab_runs
    with pytest.raises(KernelError):  # the claim needs splits
        proof.check(claim, root_cert, built.graph)
    with_beta, without = runs[True], runs[False]
    assert with_beta.status == "proved", with_beta.stats
    assert without.status == "proved", without.stats
    assert with_beta.stats["relu_splits"] >= 1
    assert list(_betas(with_beta.certificate))
    thm = proof.check(claim, with_beta.certificate, built.graph)
    assert thm.rule == "split"
    assert with_beta.stats["leaves"] <= without.stats["leaves"]


def test_kernel_rejects_a_negative_producer_beta(net, bab_runs):
    claim, _, runs = bab_runs
    cert = copy.deepcopy(runs[True].certificate)
    path, vals, r = next(b for b in _betas(cert) if ".intermediate[" not in b[0])
    vals[r] = "-1/65536"
    rejected(claim, cert, net[0].graph, rule="crown", path=path, contains="multiplier >= 0")
