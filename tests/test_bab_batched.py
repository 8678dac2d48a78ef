"""Batched relu-split branch and bound (oracles/bab.py `prove_relu_batched`; beta-CROWN leaves):
it proves a robustness claim that needs relu splits, the kernel accepts the certificate, the
split tree stays within the kernel's depth limit; a false claim gets a counterexample or no
proof, never a certificate the kernel accepts. With the root's intermediate bounds fixed, the
root split's entries are proved once and serve its subtree only: leaves without them, entries
moved to one child, a bound one 2^-40 step past the kernel's and malformed entries are
rejected."""

import copy
import dataclasses
import os
import pathlib
import time
from fractions import Fraction

import pytest
import torch
from flint import fmpq
from rule_helpers import batched_and_alone, enc, rejected, set_bound, side_value

from kernel_checker import KernelError, crown, parse_claim
from kernel_checker.crown import MAX_SPLIT_DEPTH
from kernel_checker.rules import box_interval
from kernel_checker.tensor import numel
from oracles import bab
from oracles import bounds_torch as bt
from oracles.bab import prove_relu_batched
from stdlib import robustness
from tl_dsl import proof

pytestmark = pytest.mark.usefixtures("one_thread")
ULP = Fraction(1, 2**40)


@pytest.fixture(scope="module")
def net(mlp12):
    """A 12-24-24-3 relu MLP and its input point's label."""
    return mlp12


def _depth(cert) -> int:
    """The split tree's depth (iterative)."""
    out, stack = 0, [(cert, 0)]
    while stack:
        node, d = stack.pop()
        out = max(out, d)
        if node.get("rule") == "split":
            stack.extend((child, d + 1) for child in node["children"])
    return out


def _nodes(cert) -> list:
    """Every node of a certificate tree (iterative)."""
    out, stack = [], [cert]
    while stack:
        out.append(stack.pop())
        if out[-1].get("rule") == "split":
            stack.extend(out[-1]["children"])
    return out


def _splits(cert) -> list:
    return [node["split"] for node in _nodes(cert) if node.get("rule") == "split"]


def _leaves(cert) -> list:
    return [node for node in _nodes(cert) if node.get("rule") != "split"]


def test_batched_relu_bab_proves_a_claim_that_needs_splits(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    root, _ = bt.crown_certificate(built.path, claim, "alpha", chain=chain)
    with pytest.raises(KernelError):  # alpha-CROWN on the box alone does not prove it
        proof.check(claim, root, built.graph)
    res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain)
    assert res.status == "proved", res.stats
    assert res.stats["relu_splits"] >= 1 and res.stats["batches"] >= 2
    assert all(s["kind"] == "relu" for s in _splits(res.certificate))
    assert _depth(res.certificate) <= MAX_SPLIT_DEPTH
    thm = proof.check(claim, res.certificate, built.graph)
    assert thm.rule == "split"


def test_batched_relu_bab_leaves_carry_multipliers(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain)
    betas = [b for leaf in _leaves(res.certificate) for b in leaf.get("beta", [])]
    assert betas and all(Fraction(v) >= 0 for b in betas for v in b["values"])


def test_batched_relu_bab_never_proves_a_false_claim(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.6, label)
    for attack in (True, False):
        res = prove_relu_batched(built.path, claim, timeout_s=20, batch=4, chain=chain,
                                 attack=attack)
        assert res.status in ("counterexample", "unknown", "timeout"), res.stats
        if res.status == "counterexample":
            y = chain.forward(chain.tensor(res.point.reshape(-1))[None])[0]
            assert int(torch.argmax(y)) != label


def _rows(chain, spec) -> tuple:
    """(spec rows as a tensor, margin(lower), objective(lower)) for BatchChain.optimise: every
    row's gap, the worst one as the margin, the sum of the shortfalls as the objective."""
    c, thr = chain.tensor(spec.c), chain.tensor(spec.thr)

    def margins(lower):
        return (lower - thr).amin(dim=1)

    def objective(lower):
        return (lower - thr).clamp(max=0).sum(dim=1)

    return c, margins, objective


def test_float32_search_returns_the_float64_replay_of_its_slopes(net):
    """optimise(search=float32 chain): the steps rank slopes in float32, but what comes back is
    this chain's float64 bounds of the rounded slopes, bit for bit, and the kernel takes the
    leaf certificate built from them."""
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.05, label)
    spec = bt.spec_of(claim, chain.n_out)
    bc, sc = bt.BatchChain(chain), bt.BatchChain(bt.load_chain(built.path, dtype=torch.float32))
    assert sc.chain.dtype == torch.float32
    lo, hi = (chain.tensor([float(v) for v in t])[None] for t in bt.claim_box(claim))
    lo, hi = lo.repeat(3, 1), hi.repeat(3, 1)
    c, margins, objective = _rows(chain, spec)
    r, ai, af = bc.optimise(lo, hi, c, objective, margins, iterations=4, search=sc)
    for t in [r.lower, *af.values(), *(v for tab in ai.values() for v in tab.values())]:
        assert t.dtype == torch.float64
    again = bc.bounds(lo, hi, c, plain=False, alpha_inter=ai, alpha_final=af)
    assert torch.equal(r.lower, again.lower)
    assert bool((margins(r.lower) > 0).all())
    cert, _ = bab._leaf_cert(chain, r, 0, ai, af)
    assert proof.check(claim, cert, built.graph).rule == "crown"


def test_final_slopes_only_keep_crowns_intermediate_bounds(net):
    """optimise(intermediate=False): no intermediate slopes come back, the intermediate bounds
    are CROWN's default-slope ones bit for bit, the final bounds are the replay of the returned
    final slopes, the margin is no worse than CROWN's, and the kernel takes the leaf."""
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.05, label)
    spec = bt.spec_of(claim, chain.n_out)
    bc = bt.BatchChain(chain)
    lo, hi = (chain.tensor([float(v) for v in t])[None] for t in bt.claim_box(claim))
    lo, hi = lo.repeat(3, 1), hi.repeat(3, 1)
    c, margins, objective = _rows(chain, spec)
    default = bc.bounds(lo, hi, c, plain=False)
    r, ai, af = bc.optimise(lo, hi, c, objective, margins, iterations=4, intermediate=False)
    assert ai == {} and af
    assert len(r.inter) == len(default.inter) > 0
    for (p1, u1, l1, h1), (p2, u2, l2, h2) in zip(r.inter, default.inter, strict=True):
        assert p1 == p2 and torch.equal(u1, u2) and torch.equal(l1, l2) and torch.equal(h1, h2)
    again = bc.bounds(lo, hi, c, plain=False, alpha_final=af)
    assert torch.equal(r.lower, again.lower)
    assert bool((margins(r.lower) >= margins(default.lower)).all())
    assert bool((margins(r.lower) > 0).all())
    cert, _ = bab._leaf_cert(chain, r, 0, ai, af)
    assert "alpha" in cert and not any("alpha" in e for e in cert.get("intermediate", []))
    assert proof.check(claim, cert, built.graph).rule == "crown"


def test_float32_and_float64_searches_both_prove_with_kernel_checked_trees(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    for dt in (torch.float32, torch.float64):
        res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain,
                                 search_dtype=dt)
        assert res.status == "proved", (dt, res.stats)
        assert proof.check(claim, res.certificate, built.graph).rule == "split"


# ---------------------------------------------------------------------------------------------
# intermediate bounds fixed at the root (`fix_inter`): the root split's `intermediate` entries,
# proved once on the root's domain, are handed down to every leaf (kernel: rule `split`)


@pytest.fixture(scope="module")
def fixed(net):
    """A relu-split certificate whose leaves rely on the root's intermediate bounds."""
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain,
                             fix_inter=True)
    assert res.status == "proved", res.stats
    return built, claim, res


def _exact_root_bounds(graph, claim, entry) -> list:
    """The kernel's exact bounds of the entry's claimed sides on the claim's box (lower bounds
    first, then upper bounds, in `indices` order), as the kernel proves them."""
    dom = crown.Domain(box_interval(claim.input_set.as_box(), graph.the_input("t", "t").shape))
    nodes = crown.ancestors(graph, entry["node"], "crown")
    n = numel(graph.by_id[entry["node"]].shape)
    idx = entry.get("indices", list(range(n)))
    sides = [(k, 1) for k in range(len(idx)) if entry["lo"][k] is not None]
    sides += [(k, -1) for k in range(len(idx)) if entry["hi"][k] is not None]
    rows = [[fmpq(sign) if i == idx[k] else fmpq(0) for i in range(n)] for k, sign in sides]
    values = crown.forward(graph, nodes, dom, {})
    lows = crown.lower_bounds(graph, nodes, values, dom, rows, entry, "crown", "t")
    return [(k, sign, sign * Fraction(int(v.p), int(v.q))) for (k, sign), v in zip(sides, lows)]


def test_fixed_root_bounds_are_proved_once_and_leaves_carry_none(fixed):
    built, claim, res = fixed
    cert = res.certificate
    assert cert["rule"] == "split" and cert["intermediate"]
    leaves = _leaves(cert)
    assert len(leaves) == res.stats["leaves"] >= 2
    assert not any(leaf.get("intermediate") for leaf in leaves)
    assert any(leaf.get("beta") for leaf in leaves)
    thm = proof.check(claim, cert, built.graph)
    assert thm.rule == "split" and not thm.assumptions


def test_leaves_without_the_root_bounds_are_rejected(fixed):
    built, claim, res = fixed
    cert = copy.deepcopy(res.certificate)
    del cert["intermediate"]
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, built.graph)
    assert info.value.rule == "crown" and info.value.path.startswith("claim"), info.value


def test_root_bounds_hold_below_the_split_that_proves_them_only(fixed):
    """Entries moved from the root to its first child are proved there and serve that subtree
    only: the second child's leaves fail without them."""
    built, claim, res = fixed
    cert = copy.deepcopy(res.certificate)
    inter = cert.pop("intermediate")
    assert not any(child.get("intermediate") for child in cert["children"])
    cert["children"][0]["intermediate"] = inter  # a split or a leaf: both take entries
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, built.graph)
    assert info.value.rule == "crown", info.value
    cert["children"][1]["intermediate"] = inter
    assert proof.check(claim, cert, built.graph).rule == "split"


def _halves(cert: dict, box, dim: int) -> dict:
    """cert on each half of the box's input dim (an input split above a relu-split tree)."""
    lo, hi = (Fraction(int(v.p), int(v.q)) for v in (box.lo[dim], box.hi[dim]))
    mid = (lo + hi) / 2
    return {"rule": "split", "split": {"kind": "input", "dim": dim, "pieces": [
        [enc(lo), enc(mid)], [enc(mid), enc(hi)]]}, "children": [cert, copy.deepcopy(cert)]}


@pytest.mark.parametrize("flush", [None, 10**6])
@pytest.mark.parametrize("halves", [False, True])
def test_leaves_concluded_in_batches_have_the_bounds_each_leaf_has_alone(fixed, monkeypatch,
                                                                         flush, halves):
    """The kernel stacks the last product of up to FLUSH_LEAVES leaves (`_flush`): the leaves'
    lower bounds are those backward_lower_bounds gives each alone (compared as a multiset:
    leaves on the affine-block route conclude at once, before the batch they skip); also with
    the tree on two halves of the input box, whose leaves share a batch but not a box."""
    built, claim, res = fixed
    cert = _halves(res.certificate, claim.input_set.as_box(), 0) if halves else res.certificate
    if flush:
        monkeypatch.setattr(crown, "FLUSH_LEAVES", flush)
    batched, alone = batched_and_alone(monkeypatch, lambda: proof.check(claim, cert,
                                                                        built.graph))
    assert len(batched) > 8  # (more leaves than a batch; a leaf may be vacuous)
    assert batched == alone


def test_a_leaf_failing_in_a_later_batch_is_rejected(fixed):
    """A leaf past the first batch whose split multipliers are blown up (its bound falls far
    below the claim) is refused, however many leaves were concluded before it."""
    built, claim, res = fixed
    cert = copy.deepcopy(res.certificate)
    with_beta = [leaf for leaf in _leaves(cert) if leaf.get("beta")]
    assert len(_leaves(cert)) > crown.FLUSH_LEAVES
    leaf = with_beta[-1]
    for entry in leaf["beta"]:
        entry["values"] = ["1000000"] * len(entry["values"])
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, built.graph)
    assert info.value.rule == "crown" and info.value.path.startswith("claim"), info.value


def test_a_root_bound_one_step_past_the_kernel_bound_is_rejected(fixed):
    built, claim, res = fixed
    cert = copy.deepcopy(res.certificate)
    entry = cert["intermediate"][0]
    exact = _exact_root_bounds(built.graph, claim, entry)
    k, sign, bound = next(s for s in exact if s[1] == 1)
    key = "lo"
    set_bound(entry, key, k, bound)  # the kernel's own bound: still accepted
    assert proof.check(claim, cert, built.graph).rule == "split"
    set_bound(entry, key, k, bound + ULP)
    rejected(claim, cert, built.graph, rule="crown", path=f"certificate.intermediate[0].lo[{k}]",
             contains="above the kernel's bound")
    set_bound(entry, key, k, bound)
    k, sign, bound = next(s for s in exact if s[1] == -1)
    set_bound(entry, "hi", k, bound - ULP)
    rejected(claim, cert, built.graph, rule="crown", path=f"certificate.intermediate[0].hi[{k}]",
             contains="below the kernel's bound")


@pytest.mark.parametrize("bad, path, fragment", [
    ("x", "certificate.intermediate", "expected a list"),
    ([{"node": "nope", "lo": ["0"], "hi": ["0"]}], "certificate.intermediate[0].node",
     "expected an ancestor"),
])
def test_malformed_split_intermediate_is_rejected(fixed, bad, path, fragment):
    built, claim, res = fixed
    cert = copy.deepcopy(res.certificate)
    cert["intermediate"] = bad
    rejected(claim, cert, built.graph, rule="crown", path=path, contains=fragment)


# ---------------------------------------------------------------------------------------------
# one tree per polytope (`tl verify` on an unsafe union: kernel split kind `polytope`)


@pytest.fixture(scope="module")
def by_polytope(net):
    """A two-polytope robustness claim that alpha-CROWN cannot prove: one relu-split tree per
    polytope, joined by a polytope split."""
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    assert len(claim.unsafe) == 2
    root = bt.crown_certificate(built.path, claim, "alpha", chain=chain)
    shown = []
    d = verify.by_polytope(built.path, claim, time.perf_counter() + 60, chain, root,
                           progress=lambda st: shown.append(st["strategy"]))
    assert (d.status, d.method) == ("unsat", "by polytope"), d
    assert shown and set(shown) <= {"polytope 1 of 2", "polytope 2 of 2"}  # the live line
    return built, claim, d


def test_tl_verify_turns_to_one_tree_per_polytope_when_the_joint_tree_runs_out(net,
                                                                               monkeypatch):
    """`produce` gives a union's joint tree JOINT_SHARE of the budget (0 here), then goes by
    polytope; the kernel accepts the joined certificate."""
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    d = verify.produce(built.path, claim.to_json(), 60)
    assert (d.status, d.method) == ("unsat", "relu-split"), d  # the joint tree proves it
    monkeypatch.setattr(verify, "JOINT_SHARE", 0.0)
    d = verify.produce(built.path, claim.to_json(), 60)
    assert (d.status, d.method) == ("unsat", "relu-split, then by polytope"), d
    assert d.certificate["split"] == {"kind": "polytope"}
    assert proof.check(claim, d.certificate, built.graph).rule == "split"


def _one(claim, i):
    return dataclasses.replace(claim, unsafe=(claim.unsafe[i],))


def test_polytope_split_joins_one_tree_per_polytope(by_polytope):
    built, claim, d = by_polytope
    cert = d.certificate
    assert cert["split"] == {"kind": "polytope"} and len(cert["children"]) == 2
    assert d.leaves == len(_leaves(cert)) >= 3
    thm = proof.check(claim, cert, built.graph)
    assert (thm.rule, thm.claim, thm.assumptions) == ("split", claim, frozenset())
    for i, child in enumerate(cert["children"]):  # each child proves its polytope alone
        assert proof.check(_one(claim, i), child, built.graph).rule in ("split", "crown")


def test_polytope_split_children_swapped_are_rejected(by_polytope):
    """A child proves its own polytope: the trees swapped (each checked against the other
    polytope's row) are refused."""
    built, claim, d = by_polytope
    fails = []  # precondition: some tree does not also prove the other polytope
    for i in (0, 1):
        try:
            proof.check(_one(claim, 1 - i), d.certificate["children"][i], built.graph)
        except KernelError:
            fails.append(i)
    assert fails
    cert = copy.deepcopy(d.certificate)
    cert["children"] = cert["children"][::-1]
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, built.graph)
    assert info.value.rule == "crown", info.value


@pytest.mark.parametrize("change, path, fragment", [
    (lambda c: c["children"].pop(), "certificate.children",
     "expected one child per polytope (2), found 1"),
    (lambda c: c["children"].append(c["children"][0]), "certificate.children",
     "expected one child per polytope (2), found 3"),
    (lambda c: c["split"].update(index=0), "certificate.split", "and keys ['index', 'kind']"),
])
def test_malformed_polytope_splits_are_rejected(by_polytope, change, path, fragment):
    built, claim, d = by_polytope
    cert = copy.deepcopy(d.certificate)
    change(cert)
    rejected(claim, cert, built.graph, rule="split", path=path, contains=fragment)


@pytest.mark.parametrize("i", [0, 1])
def test_a_child_that_does_not_exclude_its_polytope_is_rejected_by_index(by_polytope, i):
    """Child i replaced by an ibp leaf, which does not exclude polytope i: refused at the
    union's polytope i (not the child's renumbered polytope 0), naming the child."""
    built, claim, d = by_polytope
    with pytest.raises(KernelError):  # precondition: ibp alone does not prove polytope i
        proof.check(_one(claim, i), {"rule": "ibp"}, built.graph)
    cert = copy.deepcopy(d.certificate)
    cert["children"][i] = {"rule": "ibp"}
    rejected(claim, cert, built.graph, rule="ibp", path=f"claim.unsafe[{i}]",
             contains=f"certificate.children[{i}]: polytope {i} is not excluded")


@pytest.mark.parametrize("flush", [None, 10**6])
def test_a_deferred_leaf_failing_in_a_polytope_tree_is_rejected_by_that_polytope(by_polytope,
                                                                                 flush,
                                                                                 monkeypatch):
    """Each polytope's tree concludes its batched crown leaves before the split maps the
    error: a leaf (with split multipliers, so deferred) blown up in child i is refused at the
    union's polytope i, naming child i; also when nothing is flushed before a tree's end."""
    built, claim, d = by_polytope
    if flush:
        monkeypatch.setattr(crown, "FLUSH_LEAVES", flush)
    trees = [i for i, child in enumerate(d.certificate["children"])
             if any(leaf.get("beta") for leaf in _leaves(child))]
    assert trees
    for i in trees:
        cert = copy.deepcopy(d.certificate)
        leaf = [leaf for leaf in _leaves(cert["children"][i]) if leaf.get("beta")][-1]
        for entry in leaf["beta"]:
            entry["values"] = ["1000000"] * len(entry["values"])
        rejected(claim, cert, built.graph, rule="crown", path=f"claim.unsafe[{i}]",
                 contains=f"certificate.children[{i}]: polytope {i} is not excluded")


def test_polytope_split_needs_an_unsat_claim_of_several_polytopes(by_polytope, net):
    """On one polytope (the split would be a no-op) and on a linear_bound claim (no polytopes)
    the split is refused, even with children that prove those claims."""
    built, claim, d = by_polytope
    _, chain, x0, label = net
    one = _one(claim, 0)
    child = d.certificate["children"][0]
    assert proof.check(one, child, built.graph)
    cert = {"rule": "split", "split": {"kind": "polytope"}, "children": [child]}
    rejected(one, cert, built.graph, rule="split", path="certificate.split",
             contains="found a unsat claim of 1 and keys ['kind']")
    margin = robustness.margin(built.graph, x0, 0.01, label, 0)
    leaf, _ = bt.crown_certificate(built.path, margin, "crown", chain=chain)
    assert proof.check(margin, leaf, built.graph)
    cert = {"rule": "split", "split": {"kind": "polytope"}, "children": [leaf, leaf]}
    rejected(margin, cert, built.graph, rule="split", path="certificate.split",
             contains="found a linear_bound claim of 0")


def test_a_polytope_tree_root_bound_one_step_past_the_kernel_bound_is_rejected(by_polytope):
    built, claim, d = by_polytope
    cert = copy.deepcopy(d.certificate)
    i, tree = next((i, c) for i, c in enumerate(cert["children"]) if c.get("intermediate"))
    entry = tree["intermediate"][0]
    k, _, bound = next(s for s in _exact_root_bounds(built.graph, claim, entry) if s[1] == 1)
    set_bound(entry, "lo", k, bound + ULP)
    rejected(claim, cert, built.graph, rule="crown",
             path=f"certificate.children[{i}].intermediate[0].lo[{k}]",
             contains="above the kernel's bound")


def test_an_alpha_certificate_cut_to_one_polytope_proves_that_polytope(net):
    """`tl verify` reuses the whole claim's alpha-CROWN certificate for the polytopes it already
    excludes: cut to a polytope's rows, it proves that polytope's claim with one row."""
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.05, label)
    cert, lows = bt.crown_certificate(built.path, claim, "alpha", chain=chain)
    assert proof.check(claim, cert, built.graph)
    assert all(v["den"] == 2**bt.ALPHA_BITS for v in cert["alpha"].values())  # integers
    per_row = [v["values"] for v in cert["alpha"].values() if isinstance(v["values"][0], list)]
    assert per_row and all(len(v) == 2 for v in per_row)
    for i in (0, 1):
        cut = verify._rows_of(cert, i, i + 1)
        assert cut["intermediate"] == cert["intermediate"]
        for k, v in cert["alpha"].items():  # polytope i's own row of every per-row list
            rows = v["values"]
            assert cut["alpha"][k] == {"den": v["den"], "values": rows[i:i + 1] if isinstance(
                rows[0], list) else rows}
        assert proof.check(_one(claim, i), cut, built.graph).rule == "crown"


# ---------------------------------------------------------------------------------------------
# --jobs: the parts of a claim in worker processes, joined by a split


def test_jobs_spread_the_polytopes_of_a_union_on_a_wide_input(net):
    from tl_dsl import verify

    built, chain, x0, label = net  # 12 inputs: more than input splitting takes
    claim = robustness.robust(built.graph, x0, 0.22, label)
    d = verify.decide_region(built.path, claim, 60, jobs=2)
    assert (d.status, d.method) == ("unsat", "polytope parts in 2 processes"), d
    assert d.certificate["split"] == {"kind": "polytope"}
    assert len(d.certificate["children"]) == 2
    assert proof.check(claim, d.certificate, built.graph).rule == "split"


def test_jobs_cut_a_narrow_input_into_pieces(kit):
    from rule_helpers import build_mlp

    from tl_dsl import verify

    built = kit.save(build_mlp(1), "jobs_mlp3")
    claim = robustness.robust(built.graph, [Fraction(1, 2)] * 3, Fraction(3, 4), 0, clamp=None)
    d = verify.decide_region(built.path, claim, 60, jobs=2)
    assert (d.status, d.method) == ("unsat", "input parts in 2 processes"), d
    assert d.certificate["split"]["kind"] == "input"
    assert len(d.certificate["split"]["pieces"]) == 2
    assert proof.check(claim, d.certificate, built.graph).rule == "split"


def test_jobs_cut_pieces_where_input_splitting_cannot_take_the_graph(kit, monkeypatch):
    """Given the graph, a few-input claim on a graph input-split branch and bound cannot take
    (here: bound propagation refused) still goes to pieces of the widest input, each proposing
    the kernel's interval replay."""
    from rule_helpers import build_mlp

    from tl_dsl import verify

    built = kit.save(build_mlp(1), "jobs_mlp3_nochain")  # (small enough for interval replay)
    claim = robustness.robust(built.graph, [Fraction(1, 2)] * 3, Fraction(1, 16), 0, clamp=None)
    monkeypatch.setattr(verify, "_chain", lambda *a: (None, "refused for this test"))
    d = verify.decide_region(built.path, claim, 60, jobs=2, graph=built.graph)
    assert (d.status, d.method) == ("unsat", "input parts in 2 processes"), d
    assert d.certificate["split"]["kind"] == "input" and d.theorem is None
    assert proof.check(claim, d.certificate, built.graph).rule == "split"
    _no_workers_left()


def test_jobs_stop_at_the_first_counterexample(net):
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.6, label)
    d = verify.decide_region(built.path, claim, 60, jobs=2)
    assert d.status == "sat", d
    y = chain.forward(chain.tensor(d.point)[None])[0]
    assert int(torch.argmax(y)) != label
    _no_workers_left()


def _no_workers_left():
    import multiprocessing

    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_jobs_answer_unknown_when_a_worker_fails(net, monkeypatch):
    """A worker that raises (or dies) is no answer: unknown with a note, never a traceback, and
    no worker is left running."""
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    monkeypatch.setattr(verify, "_produce_until", _raises)
    d = verify.decide_region(built.path, claim, 60, jobs=2)
    assert d.status == "unknown" and "a --jobs worker failed" in d.notes[0], d
    _no_workers_left()


def _raises(*args):
    raise MemoryError("no memory left")


ACAS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021" / \
    "acasxu"
needs_acas = pytest.mark.skipif(not ACAS.exists(), reason="../shared benchmarks not present")


def _acas(tmp_path, net: str = "1_2", prop: int = 1):
    """(graph path, graph, claim) of an ACAS Xu instance (1_2 prop_1: about 27 leaves)."""
    import kernel_checker
    from stdlib.vnnlib import read_vnnlib
    from tl_dsl import verify

    gp = verify.load_model(str(ACAS / f"ACASXU_run2a_{net}_batch_2000.onnx"), str(tmp_path))
    graph = kernel_checker.load_graph(gp)
    region = read_vnnlib(str(ACAS / f"prop_{prop}.vnnlib")).regions[0]
    return gp, graph, verify.region_claim(graph, region)


@needs_acas
def test_jobs_grow_an_input_split_tree_in_workers(tmp_path):
    """A few-input chain with --jobs 2: the workers grow the tree, two kernel processes derive
    each leaf as it comes, the kernel joins the splits by `cases` here; the certificate is that
    derivation and re-derives the same theorem."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    seen: list = []
    d = verify.decide_region(gp, claim, 120, 2, graph=graph, progress=seen.append)
    assert (d.status, d.method) == ("unsat", "input-split in 2 processes"), d
    grown = [s for s in seen if "derived" in s]  # the live line counts the kernel's leaves too
    assert grown and all(s["derived"] <= s["leaves"] for s in grown)
    assert [s["derived"] for s in grown] == sorted(s["derived"] for s in grown)
    assert d.theorem.claim == claim and d.theorem.rule == "cases"
    assert d.leaves > 2 and d.kernel_s > 0 and d.certificate["rule"] == "cases"
    again = proof.check(claim, d.certificate, graph)
    assert (again.claim, again.rule) == (claim, "cases") and not again.assumptions
    _no_workers_left()
    # the join must cover the box: one premise's box cut short leaves a gap
    bad = copy.deepcopy(d.certificate)
    first = bad["premises"][0]
    sub = parse_claim(first["claim"])
    box = sub.input_set.as_box()
    d0 = next(i for i in range(len(box.lo)) if box.lo[i] != claim.input_set.as_box().lo[i] or
              box.hi[i] != claim.input_set.as_box().hi[i])
    hi = list(box.hi)
    hi[d0] = (box.lo[d0] + box.hi[d0]) / 2
    first["claim"] = dataclasses.replace(sub, input_set=type(box)(box.lo, tuple(hi))).to_json()
    with pytest.raises(KernelError, match="gap"):
        proof.check(claim, bad, graph)


@needs_acas
def test_jobs_answer_timeout_at_the_budget(tmp_path):
    """ACAS Xu 1_1 prop_3 (about 9 s with two workers here) in 3 s: a timeout, not an answer
    after the budget (the kernel's queue stops too), and no worker left."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path, "1_1", 3)
    t0 = time.perf_counter()
    d = verify.decide_region(gp, claim, 3, 2, graph=graph)
    assert d.status == "timeout" and d.theorem is None, d
    assert time.perf_counter() - t0 < 13
    _no_workers_left()


@needs_acas
def test_single_process_kernel_check_stops_at_the_budget(tmp_path, monkeypatch):
    """Without --jobs the kernel checks the whole certificate after the search: when that check
    would run past --timeout (here a kernel slowed by a 60 s pause), the answer is `timeout` at
    the budget, with no bundle; the same instance is unsat in time without the pause."""
    import io

    from tl_dsl import verify

    onnx, prop = str(ACAS / "ACASXU_run2a_1_2_batch_2000.onnx"), str(ACAS / "prop_1.vnnlib")
    check = proof.check
    monkeypatch.setattr(verify.proof, "check", lambda *a: (time.sleep(60), check(*a))[1])
    out, bundle = io.StringIO(), tmp_path / "b.json"
    t0 = time.perf_counter()
    res = verify.verify(onnx, prop, 8, str(bundle), out=out, err=io.StringIO())
    assert res["result"] == "timeout" and out.getvalue().startswith("timeout\n"), out.getvalue()
    assert "did not end within the 8 s budget" in out.getvalue()
    assert time.perf_counter() - t0 < 10 and not bundle.exists()
    monkeypatch.setattr(verify.proof, "check", check)
    assert verify.verify(onnx, prop, 60, str(bundle), out=io.StringIO(),
                         err=io.StringIO())["result"] == "unsat" and bundle.exists()


def test_the_kernel_deadline_is_the_main_threads_alone():
    """`_until` rings in the main thread at the deadline and not after leaving; elsewhere (no
    signals there) it sets no limit."""
    import threading

    from tl_dsl import verify

    with pytest.raises(verify._DeadlineError), verify._until(0.2):
        time.sleep(5)
    with verify._until(0.2):
        pass
    time.sleep(0.4)  # the timer was cancelled: nothing rings here
    with pytest.raises(verify._DeadlineError), verify._until(0):
        pass
    done = []

    def other():
        with verify._until(0.1):
            time.sleep(0.3)
        done.append(True)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert done == [True]


@needs_acas
def test_jobs_on_a_claim_proved_before_the_hand_off(tmp_path):
    """ACAS Xu 1_6 prop_3 is proved on the whole box: no workers, the root's own certificate."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path, "1_6", 3)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unsat" and d.certificate["rule"] in ("ibp", "crown"), d
    assert d.theorem is None and proof.check(claim, d.certificate, graph).claim == claim


@needs_acas
def test_jobs_count_depth_in_the_whole_tree(tmp_path):
    """A worker's domains start at their depth in the whole tree: max_depth bounds the tree,
    not each worker's part of it."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    box = (tuple(claim.input_set.as_box().lo), tuple(claim.input_set.as_box().hi))
    args = dict(chain=verify._chain(gp, claim)[0], sample=False, roots=[box], max_depth=400)
    assert bab.prove_input_split(gp, claim, 60, depths=[400], **args).status == "unknown"
    assert bab.prove_input_split(gp, claim, 60, depths=[0], **args).status == "proved"


@needs_acas
def test_jobs_answer_unknown_when_the_kernel_refuses_the_join(tmp_path, monkeypatch):
    """The kernel's `cases` refusing the joined tree is an unknown with its reason, never a
    traceback."""
    from kernel_checker import inference
    from kernel_checker.errors import refuse
    from tl_dsl import verify

    def no_cases(premises, conclusion):
        raise refuse("cases", "premises", "the cases leave a gap (made up by this test)")

    gp, graph, claim = _acas(tmp_path)
    monkeypatch.setattr(inference, "cases", no_cases)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unknown" and d.theorem is None and d.certificate is None, d
    assert "kernel refused the joined tree" in d.notes[0] and "made up" in d.notes[0]


@needs_acas
def test_jobs_run_in_one_process_where_the_producers_use_cuda(tmp_path, monkeypatch):
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    monkeypatch.setattr(verify, "_cuda", lambda: True)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert (d.status, d.method) == ("unsat", "input-split"), d
    assert "--jobs 2 not used" in d.notes[-1] and d.theorem is None
    assert proof.check(claim, d.certificate, graph).claim == claim


@needs_acas
def test_jobs_check_a_deep_tree_as_one_split(tmp_path, monkeypatch):
    """Past JOIN_DEPTH the grown tree is checked again as one `split` (nested `cases` that deep
    would pass Python's recursion limit when re-checked)."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    monkeypatch.setattr(verify, "JOIN_DEPTH", 1)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unsat" and d.certificate["rule"] == "split", d
    assert d.theorem.rule == "split" and _depth(d.certificate) > 1
    assert proof.check(claim, d.certificate, graph).claim == claim


def _tampered_grow(*args):
    """_grow, with one leaf's first claimed upper bound lowered by 1 (below the kernel's)."""
    d = _GROW[0](*args)
    for cert in (d.certificate or {}).get("leaves", {}).values():
        if cert.get("intermediate"):
            e = cert["intermediate"][0]
            k = next(k for k, v in enumerate(e["hi"]) if v is not None)
            set_bound(e, "hi", k, side_value(e, "hi", k) - 1)
            break
    return d


_GROW: list = []


@needs_acas
def test_jobs_refuse_a_tampered_leaf_from_a_worker(tmp_path, monkeypatch):
    """Each leaf a worker sends is checked by a kernel process: one bound tightened past the
    kernel's makes the answer unknown, with the kernel's refusal, never unsat."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    _GROW[:] = [verify._grow]
    monkeypatch.setattr(verify, "_grow", _tampered_grow)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unknown" and d.theorem is None, d
    assert "kernel refused a leaf" in d.notes[0] and "below the kernel's bound" in d.notes[0]
    _no_workers_left()


def _dies(*args):
    os._exit(3)


@needs_acas
def test_jobs_answer_unknown_when_a_kernel_process_dies(tmp_path, monkeypatch):
    """A kernel process that dies mid-leaf (here at once, with exit status 3) is no answer:
    unknown, naming it, never unsat, and no process is left."""
    from kernel_checker import pool
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    monkeypatch.setattr(pool, "derive", _dies)  # (before the pool forks: its children run it)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unknown" and d.theorem is None, d
    assert "a kernel process ended without answering" in d.notes[0], d
    _no_workers_left()


@needs_acas
def test_jobs_grown_answer_unknown_when_a_worker_fails(tmp_path, monkeypatch):
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path)
    monkeypatch.setattr(verify, "_grow", _raises)
    d = verify.decide_region(gp, claim, 120, 2, graph=graph)
    assert d.status == "unknown" and "a --jobs worker failed" in d.notes[0], d
    _no_workers_left()


def test_polytopes_of_several_rows_go_by_polytope_too(net, monkeypatch):
    """Each polytope of two rows (the misclassification row and a loose second row): the cut
    root certificate and the per-polytope trees bound a polytope's own two rows."""
    from tl_dsl import claims, verify

    built, chain, x0, label = net
    polys = []
    for j in range(3):
        if j != label:
            a, b = [0, 0, 0], [0, 0, 0]
            a[label], a[j], b[label], b[j] = 1, -1, -1, 1
            polys.append(claims.polytope([a, b], [0, 5]))
    claim = claims.unsat(built.graph, claims.ball(x0, 0.22), polys)
    monkeypatch.setattr(verify, "JOINT_SHARE", 0.0)
    d = verify.produce(built.path, claim.to_json(), 60)
    assert (d.status, d.method) == ("unsat", "relu-split, then by polytope"), d
    assert proof.check(claim, d.certificate, built.graph).rule == "split"
    small = claims.unsat(built.graph, claims.ball(x0, 0.05), polys)
    cert, _ = bt.crown_certificate(built.path, small, "alpha", chain=chain)
    for i in (0, 1):
        cut = verify._rows_of(cert, 2 * i, 2 * i + 2)
        assert proof.check(_one(small, i), cut, built.graph).rule == "crown"


def test_jobs_try_the_whole_claim_first(net):
    """With polytope parts, the whole claim's attack, IBP, CROWN and alpha-CROWN run first in
    this process (one certificate, no workers), and the parts then go worst margin first."""
    from tl_dsl import verify

    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.05, label)
    d = verify.decide_region(built.path, claim, 60, jobs=2)
    assert d.status == "unsat" and d.method in ("ibp", "crown", "alpha"), d
    assert proof.check(claim, d.certificate, built.graph)


def _paths_to_leaves(cert, path="certificate") -> list:
    """(field path, leaf) for every leaf of a split tree (iterative)."""
    out, stack = [], [(cert, path)]
    while stack:
        node, p = stack.pop()
        if node.get("rule") == "split":
            stack.extend((child, f"{p}.children[{i}]") for i, child in
                         enumerate(node["children"]))
        else:
            out.append((p, node))
    return out


def _sides(entry) -> set:
    return {(j, side) for side in ("lo", "hi") for j, v in zip(entry["indices"], entry[side])
            if v is not None}


@pytest.fixture(scope="module")
def acas_tree(tmp_path_factory):
    """ACAS Xu 1_2 prop_1 proved by input splitting: (graph path, graph, claim, result)."""
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path_factory.mktemp("acas"))
    res = bab.prove_input_split(gp, claim, 120, chain=verify._chain(gp, claim)[0])
    assert res.status == "proved" and res.stats["leaf_alpha"] > 0, res.stats
    assert proof.check(claim, res.certificate, graph).claim == claim
    return gp, graph, claim, res


@needs_acas
def test_input_split_alpha_leaves_send_default_and_alpha_bounds_as_two_entries(acas_tree):
    """ACAS Xu 1_2 prop_1: an alpha leaf's intermediate bound on a neuron side is the tighter of
    CROWN's with the default slopes and with the leaf's alpha slopes (`dual`), sent as an entry
    without slopes, then one with them on the same node, no side claimed in both. The kernel
    proves the tree; an upper bound lowered by 1 in an alpha entry is refused at that field."""
    _, graph, claim, res = acas_tree
    res = dataclasses.replace(res, certificate=copy.deepcopy(res.certificate))
    pairs = []
    for path, leaf in _paths_to_leaves(res.certificate):
        inter = leaf.get("intermediate", [])
        pairs += [(path, leaf, i) for i in range(1, len(inter))
                  if inter[i]["node"] == inter[i - 1]["node"]]
    assert pairs
    for _, leaf, i in pairs:
        first, second = leaf["intermediate"][i - 1:i + 1]
        assert "alpha" not in first and "alpha" in second
        assert not _sides(first) & _sides(second)
    path, leaf, i = pairs[0]
    entry = leaf["intermediate"][i]
    k = next(k for k, v in enumerate(entry["hi"]) if v is not None)
    set_bound(entry, "hi", k, side_value(entry, "hi", k) - 1)
    with pytest.raises(KernelError) as info:
        proof.check(claim, res.certificate, graph)
    assert info.value.path == f"{path}.intermediate[{i}].hi[{k}]", info.value


def _niceness(_):
    return os.nice(0)


def test_jobs_workers_run_below_the_kernel_priority():
    """Workers lower their priority by WORKER_NICE, so that the kernel processes keep up with
    the leaves they send."""
    import multiprocessing

    from tl_dsl import verify, workers

    ctx = multiprocessing.get_context("fork")
    with workers.Workers(1, verify._worker_init, (ctx.Event(), [])) as pool:
        pool.submit(_niceness, 0)
        (job,) = pool.wait(60)
        child = job.result()
    assert verify.WORKER_NICE > 0
    assert child == min(19, os.nice(0) + verify.WORKER_NICE)


@needs_acas
def test_input_split_leaves_leave_unclaimed_what_only_the_claim_node_would_read(acas_tree,
                                                                                 monkeypatch):
    """On the last relu's input (its output read by the claim node alone) an active neuron's
    upper bound is left unclaimed, and in alpha leaves deciding by one row so are both bounds of
    an unstable neuron on which that row's coefficient is positive. The same search with every
    bound claimed grows the same tree; leaf by leaf the claimed sides are a subset of its, fewer
    in some, all on the last relu's input, and the kernel proves the tree (`acas_tree`)."""
    gp, _, claim, res = acas_tree
    full_cert = bab._leaf_cert
    monkeypatch.setattr(bab, "_leaf_cert", lambda chain, r, i, ai=None, af=None, row=None,
                        last=None: full_cert(chain, r, i, ai, af, row))
    full = bab.prove_input_split(gp, claim, 120)
    assert full.status == "proved" and _splits(full.certificate) == _splits(res.certificate)

    def claimed(leaf):
        return {(e["node"], j, side) for e in leaf.get("intermediate", [])
                for side in ("lo", "hi") for j, v in zip(e["indices"], e[side]) if v is not None}

    fewer = set()
    for (_, a), (_, b) in zip(_paths_to_leaves(res.certificate),
                              _paths_to_leaves(full.certificate), strict=True):
        assert claimed(a) <= claimed(b)
        fewer |= {node for node, _, _ in claimed(b) - claimed(a)}
    assert fewer == {"Operation_6_MatMul"}  # ACAS Xu: six hidden layers, the last relu's input


def _claimed_at(leaf, node: str) -> set:
    return {(j, side) for e in leaf.get("intermediate", []) if e["node"] == node
            for side in ("lo", "hi") for j, v in zip(e["indices"], e[side]) if v is not None}


@needs_acas
def test_input_split_leaves_prune_last_relu_bounds_they_prove_without(acas_tree):
    """ACAS Xu 1_2 prop_1: a proved leaf also leaves unclaimed the neurons of the last relu's
    input whose CROWN bounds it proves without (`_prune_last`: their bounds are then the
    interval replay's, as the kernel's are). Without pruning the same search grows the same
    tree; leaf by leaf the pruned claims are a subset, the missing ones all on the last relu's
    input and most of those there; the kernel proves the pruned tree (`acas_tree`). Dropping a
    pruned leaf's remaining claims there as well is refused by the kernel (the leaves are
    concluded in batches: the refusal names the claim's polytope)."""
    gp, graph, claim, res = acas_tree
    full = bab.prove_input_split(gp, claim, 120, prune=False)
    assert full.status == "proved" and _splits(full.certificate) == _splits(res.certificate)
    node = "Operation_6_MatMul"  # six hidden layers: the last relu's input
    n_full = n_pruned = 0
    for (_, a), (_, b) in zip(_paths_to_leaves(res.certificate),
                              _paths_to_leaves(full.certificate), strict=True):
        for other in {e["node"] for e in b.get("intermediate", [])} - {node}:
            assert _claimed_at(a, other) == _claimed_at(b, other)
        assert _claimed_at(a, node) <= _claimed_at(b, node)
        n_full, n_pruned = n_full + len(_claimed_at(b, node)), n_pruned + len(_claimed_at(a,
                                                                                        node))
    assert n_pruned < n_full / 2, (n_pruned, n_full)
    tried = refused = 0
    for path, leaf in _paths_to_leaves(res.certificate):
        if not _claimed_at(leaf, node) or tried == 3:
            continue
        tried += 1
        cert = copy.deepcopy(res.certificate)
        bare = dict(_paths_to_leaves(cert))[path]
        bare["intermediate"] = [e for e in bare["intermediate"] if e["node"] != node]
        try:
            proof.check(claim, cert, graph)
        except KernelError as err:
            assert "is not excluded" in str(err), err
            refused += 1
    assert refused, tried


@needs_acas
def test_dual_replay_takes_the_tighter_of_default_and_alpha_slopes_and_hints_cut(acas_tree):
    """optimise(dual=True) returns the dual replay of its slopes bit for bit; on the first
    intermediate node (the same earlier bounds for both) each bound is the tighter of the
    alpha-slope and the default-slope CROWN bound, `defaults` marking where the default one was
    strictly tighter (both happen here); and bounds(hint=...) intersects before CROWN: every
    interval inside the hint, no more unstable neurons than without it. (ACAS Xu 1_2's
    network on three boxes a fifth of prop_1's wide, which alpha-CROWN does not prove.)"""
    from tl_dsl import verify

    gp, _, claim, _ = acas_tree
    chain = verify._chain(gp, claim)[0]
    spec = bt.spec_of(claim, chain.n_out)
    bc = bt.BatchChain(chain)
    lo0, hi0 = (chain.tensor([float(v) for v in t])[None] for t in bt.claim_box(claim))
    lo = torch.cat([lo0 + (hi0 - lo0) * f for f in (0.2, 0.4, 0.6)])
    hi = lo + (hi0 - lo0) * 0.2
    c, margins, objective = _rows(chain, spec)
    r, ai, af = bc.optimise(lo, hi, c, objective, margins, iterations=4, dual=True)
    again = bc.bounds(lo, hi, c, plain=False, alpha_inter=ai, alpha_final=af, dual=True)
    assert torch.equal(r.lower, again.lower) and r.defaults
    alpha_only = bc.bounds(lo, hi, c, plain=False, alpha_inter=ai, alpha_final=af)
    default = bc.bounds(lo, hi, c, plain=False)
    pos, use, lb_lo, lb_hi = r.inter[0]
    (_, _, a_lo, a_hi), (_, _, d_lo, d_hi) = alpha_only.inter[0], default.inter[0]
    assert torch.equal(lb_lo[use], torch.maximum(a_lo, d_lo)[use])
    assert torch.equal(lb_hi[use], torch.minimum(a_hi, d_hi)[use])
    lo_d, hi_d = r.defaults[pos]
    assert torch.equal(lo_d[use], (d_lo > a_lo)[use])
    assert torch.equal(hi_d[use], (d_hi < a_hi)[use])
    assert bool((lo_d | hi_d)[use].any()) and bool((~lo_d & ~hi_d)[use].any())
    # a hint: the default pass's own intervals, narrowed to their middle half
    hint = {p: ((3 * x.lo + x.hi) / 4, (x.lo + 3 * x.hi) / 4) for p, x in default.relax.items()}
    hinted = bc.bounds(lo, hi, c, plain=False, hint=hint)
    for p, x in hinted.relax.items():
        assert bool((x.lo >= hint[p][0]).all()) and bool((x.hi <= hint[p][1]).all())
        assert int(x.unstable.sum()) <= int(default.relax[p].unstable.sum())
