"""Beta multipliers in `crown` leaves under relu splits (kernel_checker/crown.py; beta-CROWN,
Wang et al. 2021). Must-accept: any beta >= 0 on a split constraint of the leaf gives a bound
that is below every output of the leaf's region (sampled points that satisfy the constraint,
evaluated by tests/reference_fraction.py), and a split certificate whose leaves carry betas is
accepted by the rule; some beta beats beta = 0. Must-reject: a negative multiplier, a multiplier
on a constraint the leaf does not have (at the root, or on another neuron), the wrong count,
malformed entries, a claim one 2^-40 step above the kernel's bound with betas."""

from fractions import Fraction

import numpy as np
import pytest
from reference_fraction import evaluate as reference_evaluate
from rule_helpers import build_mlp, enc, fr, q, rejected

from kernel_checker import crown
from kernel_checker.claims import Box
from kernel_checker.rules import box_interval
from tl_dsl import claims, proof

ULP = Fraction(1, 2**40)


@pytest.fixture(scope="module")
def setup(kit):
    built = kit.save(build_mlp(4, sizes=(3, 8, 8, 2)), "beta_mlp")
    g = built.graph
    box = Box(tuple(q(Fraction(-1, 2)) for _ in range(3)), tuple(q(Fraction(1, 2))
                                                                 for _ in range(3)))
    dom = crown.Domain(box_interval(box, g.the_input("t", "t").shape))
    values = crown.forward(g, crown.ancestors(g, "fc2", "crown"), dom, {})
    z = values["fc1"]
    unstable = [j for j in range(8) if z.lo[j] < 0 < z.hi[j]]
    assert unstable
    return built, box, unstable[0]


def lows_on(built, box, phases, cert) -> list[Fraction]:
    g = built.graph
    nodes = crown.ancestors(g, "fc3", "crown")
    dom = crown.Domain(box_interval(box, g.the_input("t", "t").shape), phases)
    values = crown.forward(g, nodes, dom, {})
    rows = [[q(1), q(0)], [q(0), q(1)], [q(-1), q(0)], [q(0), q(-1)]]
    return [fr(v) for v in crown.lower_bounds(g, nodes, values, dom, rows, cert,
                                                       "crown", "certificate")]


def region_outputs(built, box, j, sign, rng, count=300):
    """Outputs at sampled points of the box with sign * fc1[j] >= 0."""
    out = []
    lo, hi = [fr(v) for v in box.lo], [fr(v) for v in box.hi]
    while len(out) < count:
        x = [a + (b - a) * Fraction(int(rng.integers(0, 1025)), 1024) for a, b in zip(lo, hi)]
        vals = reference_evaluate(built.doc, built.weights, x)
        if sign * vals["fc1"][1][j] >= 0:
            out.append(vals["fc3"][1])
    return out


@pytest.mark.parametrize("sign", [-1, 1])
def test_any_nonnegative_beta_gives_a_sound_bound(setup, sign):
    built, box, j = setup
    rng = np.random.default_rng(7)
    ys = region_outputs(built, box, j, sign, rng)
    phases = {"fc1": {j: sign}}
    best = lows_on(built, box, phases, {})
    improved = False
    for _ in range(12):
        betas = [Fraction(int(v), 16) for v in rng.integers(0, 48, 4)]
        cert = {"beta": [{"node": "fc1", "index": j, "values": [enc(b) for b in betas]}]}
        lows = lows_on(built, box, phases, cert)
        for y in ys:
            assert lows[0] <= y[0] and lows[1] <= y[1]
            assert -lows[2] >= y[0] and -lows[3] >= y[1]
        improved |= any(a > b for a, b in zip(lows, best))
    assert improved  # beta > 0 tightens at least one row for some multiplier


def test_split_certificate_with_betas_is_accepted_and_tight(setup):
    built, box, j = setup
    g = built.graph
    children, leaf_lows = [], []
    for sign in (-1, 1):
        cert = {"rule": "crown", "beta": [{"node": "fc1", "index": j,
                                           "values": ["1/2", "1/4", "3/8", "0"]}]}
        children.append(cert)
        leaf_lows.append(lows_on(built, box, {"fc1": {j: sign}}, cert))
    lo = [min(a[i] for a in leaf_lows) for i in range(2)]
    hi = [-min(a[2 + i] for a in leaf_lows) for i in range(2)]
    split = {"rule": "split", "split": {"kind": "relu", "node": "fc1", "index": j},
             "children": children}
    thm = proof.check(claims.bounds(g, box, lo, hi), split, g)
    assert thm.rule == "split" and not thm.assumptions
    raised = [lo[0] + ULP, lo[1]]
    rejected(claims.bounds(g, box, raised, hi), split, g, rule="crown", path="claim.lo[0]",
             contains="above the kernel's bound")


def _leaf_error(setup, beta_entry, phases_sign=1, at_root=False):
    built, box, j = setup
    g = built.graph
    leaf = {"rule": "crown", "beta": [beta_entry]}
    claim = claims.bounds(g, box, [-100, -100], [100, 100])
    if at_root:
        return claim, leaf, g
    split = {"rule": "split", "split": {"kind": "relu", "node": "fc1", "index": j},
             "children": [{"rule": "crown"}, leaf] if phases_sign > 0 else
             [leaf, {"rule": "crown"}]}
    return claim, split, g


def test_negative_beta_is_rejected(setup):
    j = setup[2]
    claim, cert, g = _leaf_error(setup, {"node": "fc1", "index": j,
                                         "values": ["1", "0", "-1/1024", "0"]})
    rejected(claim, cert, g, rule="crown", path="certificate.children[1].beta[0].values[2]",
             contains="multiplier >= 0")


def test_beta_without_its_split_constraint_is_rejected(setup):
    j = setup[2]
    claim, cert, g = _leaf_error(setup, {"node": "fc1", "index": j, "values": ["1"] * 4},
                                 at_root=True)
    rejected(claim, cert, g, rule="crown", path="certificate.beta[0]",
             contains="no split constraint")
    other = (j + 1) % 8
    claim, cert, g = _leaf_error(setup, {"node": "fc1", "index": other, "values": ["1"] * 4})
    rejected(claim, cert, g, rule="crown", path="certificate.children[1].beta[0]",
             contains=f"'fc1'[{other}]")
    claim, cert, g = _leaf_error(setup, {"node": "fc2", "index": j, "values": ["1"] * 4})
    rejected(claim, cert, g, rule="crown", path="certificate.children[1].beta[0]",
             contains="no split constraint")


@pytest.mark.parametrize("entry,path,fragment", [
    ({"node": "fc1", "index": True, "values": ["1"] * 4}, "beta[0]", "no split constraint"),
    ({"node": "fc1", "index": "J", "values": ["1"] * 3}, "beta[0].values", "expected 4"),
    ({"node": "fc1", "index": "J", "values": ["1", "nan", "1", "1"]}, "beta[0].values[1]",
     "finite"),
    ({"node": "fc1", "index": "J"}, "beta[0]", "{node, index, values}"),
    ({"node": "fc1", "index": "J", "values": ["1"] * 4, "x": 1}, "beta[0]", "{node, index"),
])
def test_malformed_beta_entries_are_rejected(setup, entry, path, fragment):
    entry = {k: (setup[2] if v == "J" else v) for k, v in entry.items()}
    claim, cert, g = _leaf_error(setup, entry)
    rejected(claim, cert, g, rule="crown", path=f"certificate.children[1].{path}",
             contains=fragment)


@pytest.mark.parametrize("beta", [{"fc1": 1}, {}, ""])
def test_beta_must_be_a_list(setup, beta):
    """(An empty dict or string took the affine-block route, which reads no beta, and was
    ignored; a review found it.)"""
    built, box, j = setup
    g = built.graph
    split = {"rule": "split", "split": {"kind": "relu", "node": "fc1", "index": j},
             "children": [{"rule": "crown"}, {"rule": "crown", "beta": beta}]}
    rejected(claims.bounds(g, box, [-100, -100], [100, 100]), split, g, rule="crown",
             path="certificate.children[1].beta", contains="expected a list")
