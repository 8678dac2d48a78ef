"""Inference rules (kernel_checker/inference.py): weakening, conjunction and projection, case
split, LinearBound/Bounds to Unsat (robustness), assumption discharge and composition. Every rule
is tested to accept what follows and refuse what does not, naming the rule and the field; every
rule unions its premises' assumptions and takes the minimum of their levels (a derivation with an
`assume` premise is shape-checked and lists the assumption, one without is proved). Composite
derivations travel as bundles (with premise graphs), re-check in a fresh process, and
`tl audit --tree` prints every rule of the tree."""

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
from flint import fmpq
from hypothesis import given, settings
from hypothesis import strategies as st
from rule_helpers import build_mlp, fr, q, randn, rejected  # noqa: E402

from kernel_checker import crown
from kernel_checker.claims import Box, Claim, parse_claim
from kernel_checker.errors import KernelError
from kernel_checker.graph import load_graph
from kernel_checker.rules import box_interval
from kernel_checker.theorem import Level
from stdlib import robustness
from stdlib.blockwise import prove_blockwise, split_graph
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

ULP = Fraction(1, 2**40)
X0 = [Fraction(1, 2)] * 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "tl_dsl", "data", "digits")
HYP = proof.assume("user.hypothesis", reason="stated by the test", tool="pytest")








def proved(claim, cert, *graphs, rule):
    thm = proof.check(claim, cert, *graphs)
    assert (thm.rule, thm.level, thm.assumptions) == (rule, Level.PROVED, frozenset())
    assert thm.claim == claim
    return thm


def prem(claim, cert):
    return proof.premise(claim, cert)






def kernel_lows(graph, box: Box, node: str, rows) -> list[Fraction]:
    chain = crown.ancestors(graph, node, "crown")
    dom = crown.Domain(box_interval(box, graph.the_input("t", "t").shape))
    values = crown.forward(graph, chain, dom, {})
    rows_q = [[q(v) for v in r] for r in rows]
    return [fr(v) for v in crown.lower_bounds(graph, chain, values, dom, rows_q, {},
                                                       "crown", "t")]


def crown_bounds(graph, box, node="fc3"):
    lows = kernel_lows(graph, box, node, [[1, 0], [0, 1], [-1, 0], [0, -1]])
    return lows[:2], [-v for v in lows[2:]]


def sub_box(box: Box, dim: int, lo, hi) -> Box:
    los, his = list(box.lo), list(box.hi)
    los[dim], his[dim] = q(lo), q(hi)
    return Box(tuple(los), tuple(his))


@pytest.fixture(scope="module")
def net(kit):
    built = kit.save(build_mlp(), "inference_mlp")
    out = kit.point(built.graph, X0)["fc3"]
    assert out[0] > out[1]  # label 0 at X0
    return built


class Setting:
    """Claims on the module's net: bounds C (exact kernel CROWN bounds on the 1/4 ball, as a
    box) with certificate {"rule": "crown"}, and the same box's linear bounds."""

    def __init__(self, graph):
        self.g = graph
        self.box = claims.ball(X0, Fraction(1, 4)).as_box()
        self.lo, self.hi = crown_bounds(graph, self.box)
        self.c = claims.bounds(graph, self.box, self.lo, self.hi, name="C")
        self.rows = [[1, -1], [Fraction(1, 2), 1]]
        self.rhs = kernel_lows(graph, self.box, "fc3", self.rows)
        self.lb = claims.linear_bound(graph, self.box, self.rows, self.rhs, name="L")
        self.crown = {"rule": "crown"}

    def bounds(self, lo=None, hi=None, box=None, name=None):
        return claims.bounds(self.g, box or self.box, lo or self.lo, hi or self.hi, name=name)


@pytest.fixture(scope="module")
def s(net):
    return Setting(net.graph)


# ---------------------------------------------------------------------------------------------
# weaken


def test_weaken_to_looser_bounds_and_a_smaller_input_set(s):
    looser = s.bounds([v - 1 for v in s.lo], [v + ULP for v in s.hi])
    thm = proved(looser, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, rule="weaken")
    assert [p.rule for p in thm.premises] == ["crown"]
    smaller = claims.ball(X0, Fraction(1, 8))
    proved(s.bounds(box=smaller.as_box()), proof.by_rule("weaken", premise=prem(s.c, s.crown)),
           s.g, rule="weaken")
    ball_claim = claims.bounds(s.g, smaller, s.lo, s.hi)  # a ball inside the box
    proved(ball_claim, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, rule="weaken")
    proved(s.c, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, rule="weaken")


@pytest.mark.parametrize("i", [0, 1])
def test_weaken_to_tighter_bounds_is_refused(s, i):
    lo = list(s.lo)
    lo[i] += ULP
    rejected(s.bounds(lo=lo), proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g,
             rule="weaken", path=f"claim.lo[{i}]", contains="does not contain the premise's")


@pytest.mark.parametrize("i", [0, 1])
def test_weaken_to_a_tighter_upper_bound_names_hi(s, i):
    """KERNEL BUG (wrong path): implies() names claim.lo[i] for an upper-bound violation too."""
    hi = list(s.hi)
    hi[i] -= ULP
    rejected(s.bounds(hi=hi), proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g,
             rule="weaken", path=f"claim.hi[{i}]", contains="does not contain the premise's")


def test_weaken_to_a_larger_input_set_is_refused(s):
    for box in (claims.ball(X0, Fraction(1, 4) + ULP).as_box(),
                sub_box(s.box, 2, Fraction(1, 4) - ULP, Fraction(3, 4))):
        rejected(s.bounds(box=box), proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g,
                 rule="weaken", path="claim.input_set", contains="not inside the premise's")


def test_weaken_linear_bounds_and_unsat(s):
    fewer = claims.linear_bound(s.g, s.box, s.rows[1:], [s.rhs[1] - 3])
    proved(fewer, proof.by_rule("weaken", premise=prem(s.lb, s.crown)), s.g, rule="weaken")
    higher = claims.linear_bound(s.g, s.box, s.rows, [s.rhs[0], s.rhs[1] + ULP])
    rejected(higher, proof.by_rule("weaken", premise=prem(s.lb, s.crown)), s.g, rule="weaken",
             path="claim.rhs[1]", contains=">=")
    other_row = claims.linear_bound(s.g, s.box, [[1, 0]], [-100])
    rejected(other_row, proof.by_rule("weaken", premise=prem(s.lb, s.crown)), s.g,
             rule="weaken", path="claim.rhs[0]")
    # bounds premise: a unit-row linear bound is a weakening? no: weakening keeps the kind
    unit = claims.linear_bound(s.g, s.box, [[1, 0]], [s.lo[0]])
    rejected(unit, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, rule="weaken",
             path="claim.kind", contains="keeps the kind 'bounds'")
    p1 = claims.polytope([[1, -1]], [0])
    p2 = claims.polytope([[-1, 0]], [-50])
    both = claims.unsat(s.g, s.box, [p1, p2])
    proved(both, s.crown, s.g, rule="crown")
    proved(claims.unsat(s.g, s.box, [p2]), proof.by_rule("weaken", premise=prem(both, s.crown)),
           s.g, rule="weaken")
    p3 = claims.polytope([[-1, 0]], [-51])
    rejected(claims.unsat(s.g, s.box, [p1, p3]),
             proof.by_rule("weaken", premise=prem(both, s.crown)), s.g, rule="weaken",
             path="claim.unsafe[1]", contains="not in the premise")


def test_weaken_across_graphs_or_nodes_is_refused(s, kit):
    other = kit.save(build_mlp(seed=4), "inference_other").graph
    moved = claims.bounds(other, s.box, [-100, -100], [100, 100])
    rejected(moved, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, other,
             rule="weaken", path="claim.graph", contains="differ in graph")
    node = claims.bounds(s.g, s.box, [-100] * 8, [100] * 8, node="fc2")
    rejected(node, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g, rule="weaken",
             path="claim.node", contains="'fc3'")


# ---------------------------------------------------------------------------------------------
# conjoin and project


def test_conjoin_then_project(s):
    conj = Claim("all", s.g.sha256, s.box, "fc3", parts=(s.c, s.lb))
    cert = proof.by_rule("conjoin", premises=[prem(s.c, s.crown), prem(s.lb, s.crown)])
    thm = proved(conj, cert, s.g, rule="conjoin")
    assert [p.claim for p in thm.premises] == [s.c, s.lb]
    assert parse_claim(json.loads(json.dumps(conj.to_json()))) == conj
    for part in (s.c, s.lb):
        proved(part, proof.by_rule("project", premise=prem(conj, cert)), s.g, rule="project")
    weaker = claims.linear_bound(s.g, claims.ball(X0, Fraction(1, 8)).as_box(), [s.rows[0]],
                                 [s.rhs[0] - 1])
    proved(weaker, proof.by_rule("project", premise=prem(conj, cert)), s.g, rule="project")
    from_bounds = claims.linear_bound(s.g, s.box, [[0, -1]], [-s.hi[1]])
    proved(from_bounds, proof.by_rule("project", premise=prem(conj, cert)), s.g, rule="project")
    neither = claims.linear_bound(s.g, s.box, [s.rows[0]], [s.rhs[0] + ULP])
    rejected(neither, proof.by_rule("project", premise=prem(conj, cert)), s.g, rule="project",
             path="claim", contains="no part of the conjunction implies")


def test_conjoin_refuses_parts_that_are_not_the_premises_in_order(s):
    conj = Claim("all", s.g.sha256, s.box, "fc3", parts=(s.lb, s.c))
    rejected(conj, proof.by_rule("conjoin", premises=[prem(s.c, s.crown), prem(s.lb, s.crown)]),
             s.g, rule="conjoin", path="claim.parts", contains="in order")
    one = Claim("all", s.g.sha256, s.box, "fc3", parts=(s.c,))
    rejected(one, proof.by_rule("conjoin", premises=[prem(s.c, s.crown), prem(s.lb, s.crown)]),
             s.g, rule="conjoin", path="claim.parts")
    rejected(s.c, proof.by_rule("conjoin", premises=[prem(s.c, s.crown)]), s.g, rule="conjoin",
             path="claim.parts")
    rejected(one, proof.by_rule("conjoin", premises=[]), s.g, rule="conjoin",
             path="certificate.premises", contains="non-empty list")


def test_project_needs_a_conjunction(s):
    rejected(s.c, proof.by_rule("project", premise=prem(s.c, s.crown)), s.g, rule="project",
             path="premise.claim.kind", contains="expected a conjunction")


# ---------------------------------------------------------------------------------------------
# unsat_from_bounds


def test_margin_linear_bound_gives_robustness(s):
    ball = claims.ball(X0, Fraction(1, 4))
    (low,) = kernel_lows(s.g, ball.as_box(), "fc3", [[1, -1]])
    m = Fraction(int(low * 2**20), 2**20)
    assert 0 < m <= low
    margin = robustness.margin(s.g, X0, Fraction(1, 4), 0, m, clamp=None)
    robust = robustness.robust(s.g, X0, Fraction(1, 4), 0, clamp=None)
    cert = proof.by_rule("unsat_from_bounds", premise=prem(margin, s.crown))
    thm = proved(robust, cert, s.g, rule="unsat_from_bounds")
    assert thm.premises[0].claim == margin
    # margin exactly 0 does not refute y0 - y1 <= 0: the row's bound must exceed b strictly
    zero = robustness.margin(s.g, X0, Fraction(1, 4), 0, 0, clamp=None)
    proved(zero, s.crown, s.g, rule="crown")
    rejected(robust, proof.by_rule("unsat_from_bounds", premise=prem(zero, s.crown)), s.g,
             rule="unsat_from_bounds", path="claim.unsafe[0]",
             contains="needs a row A[i] with proven lower bound > b[i]")


def test_bounds_give_unsat_and_kinds_are_checked(s):
    poly = claims.polytope([[-1, 0], [0, 1]], [-(s.hi[0] + ULP), 100])  # y0 >= hi0 + ulp
    unsat = claims.unsat(s.g, s.box, [poly])
    proved(unsat, proof.by_rule("unsat_from_bounds", premise=prem(s.c, s.crown)), s.g,
           rule="unsat_from_bounds")
    touching = claims.unsat(s.g, s.box, [claims.polytope([[-1, 0]], [-s.hi[0]])])
    rejected(touching, proof.by_rule("unsat_from_bounds", premise=prem(s.c, s.crown)), s.g,
             rule="unsat_from_bounds", path="claim.unsafe[0]")
    rejected(s.c, proof.by_rule("unsat_from_bounds", premise=prem(s.c, s.crown)), s.g,
             rule="unsat_from_bounds", path="claim.kind", contains="LinearBound/Bounds -> Unsat")


# ---------------------------------------------------------------------------------------------
# cases


def _halves_claims(s, cut=Fraction(1, 2), gap=Fraction(0)):
    robust = robustness.robust(s.g, X0, Fraction(1, 4), 0, clamp=None)
    box = robust.input_set.as_box()
    left = Claim(**{**robust.__dict__, "input_set": sub_box(box, 0, box.lo[0], cut)})
    right = Claim(**{**robust.__dict__, "input_set": sub_box(box, 0, cut + gap, box.hi[0])})
    return robust, left, right


def test_cases_two_halves(s):
    robust, left, right = _halves_claims(s)
    cert = proof.by_rule("cases", premises=[prem(left, s.crown), prem(right, s.crown)])
    thm = proved(robust, cert, s.g, rule="cases")
    assert [p.claim.input_set for p in thm.premises] == [left.input_set, right.input_set]


def test_cases_with_a_one_point_gap_refused_naming_premises(s):
    robust, left, right = _halves_claims(s, gap=ULP)
    rejected(robust, proof.by_rule("cases", premises=[prem(left, s.crown), prem(right, s.crown)]),
             s.g, rule="cases", path="premises", contains=("the cases leave a gap", "x[0] in ["))


def test_cases_with_a_different_claim_refused(s):
    robust, left, right = _halves_claims(s)
    named = Claim(**{**right.__dict__, "name": "other name"})
    proved(robust, proof.by_rule("cases", premises=[prem(left, s.crown), prem(named, s.crown)]),
           s.g, rule="cases")
    wider = Claim(**{**right.__dict__, "unsafe": right.unsafe + (claims.polytope(
        [[-1, 0]], [-100]),)})
    rejected(robust, proof.by_rule("cases", premises=[prem(left, s.crown), prem(wider, s.crown)]),
             s.g, rule="cases", path="premises[1].claim", contains="the conclusion on a smaller")
    bounds = claims.bounds(s.g, right.input_set, [-100, -100], [100, 100])
    rejected(robust, proof.by_rule("cases", premises=[prem(left, s.crown),
                                                      prem(bounds, s.crown)]),
             s.g, rule="cases", path="premises[1].claim")


def test_cases_quadrants_cover_and_three_of_four_leave_a_gap(s):
    """Bounds of the whole box by ibp hold on every sub-box (interval arithmetic is monotone)."""
    lo, hi = s.lo, s.hi
    whole = s.bounds([v - 1 for v in lo], [v + 1 for v in hi])
    b = s.box
    cuts = [(b.lo[d], q(Fraction(1, 2)), b.hi[d]) for d in (0, 1)]
    quads = []
    for (a0, b0), (a1, b1) in product(zip(cuts[0], cuts[0][1:]), zip(cuts[1], cuts[1][1:])):
        box = sub_box(sub_box(b, 0, fr(a0), fr(b0)), 1, fr(a1), fr(b1))
        quads.append(Claim(**{**whole.__dict__, "input_set": box}))
    cert = proof.by_rule("cases", premises=[prem(c, {"rule": "ibp"}) for c in quads])
    proved(whole, cert, s.g, rule="cases")
    cert = proof.by_rule("cases", premises=[prem(c, {"rule": "ibp"}) for c in quads[:3]])
    rejected(whole, cert, s.g, rule="cases", path="premises", contains="gap")


def test_cases_refuse_a_breakpoint_grid_too_large_to_test(s):
    """The coverage grid grows as (2k + 1)^d in k cases over d split dimensions: a flat `cases`
    of 60 boxes each cut in all 3 dimensions (243^3 cells, 60 boxes each) is refused at once
    with the bound and the advice to nest, not tested cell by cell for minutes; nested
    cases of the same boxes would be accepted piece by piece (test_cases_quadrants...)."""
    whole = s.bounds([-100, -100], [100, 100], box=Box((q(0),) * 3, (q(1),) * 3))
    premises = []
    for i in range(60):
        a, b = q(Fraction(i, 64)), q(Fraction(i + 1, 64))
        premises.append(prem(Claim(**{**whole.__dict__, "input_set": Box((a, a, a), (b, b, b))}),
                             {"rule": "ibp"}))
    cert = proof.by_rule("cases", premises=premises)
    rejected(whole, cert, s.g, rule="cases", path="premises",
             contains=("breakpoint grid of 60 cases over 3 split dimensions", "nest the cases"))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_cases_accepts_exactly_the_covering_sets_of_boxes(s, data):
    """Random sets of closed boxes on a 1/8 grid in two dimensions: the kernel accepts iff every
    point of the 1/16 grid (a point in every cell of the breakpoint grid) is covered."""
    whole = s.bounds([-100, -100], [100, 100], box=Box((q(0), q(0), q(0)), (q(1), q(1), q(1))))
    n = data.draw(st.integers(1, 5))
    boxes = []
    for _ in range(n):
        lo0, lo1 = data.draw(st.integers(0, 8)), data.draw(st.integers(0, 8))
        hi0, hi1 = data.draw(st.integers(lo0, 8)), data.draw(st.integers(lo1, 8))
        boxes.append(((lo0, hi0), (lo1, hi1)))
    covered = all(any(2 * a0 <= i <= 2 * b0 and 2 * a1 <= j <= 2 * b1
                      for (a0, b0), (a1, b1) in boxes)
                  for i in range(17) for j in range(17))
    premises = []
    for (a0, b0), (a1, b1) in boxes:
        box = Box((q(Fraction(a0, 8)), q(Fraction(a1, 8)), q(0)),
                  (q(Fraction(b0, 8)), q(Fraction(b1, 8)), q(1)))
        premises.append(prem(Claim(**{**whole.__dict__, "input_set": box}), {"rule": "ibp"}))
    cert = proof.by_rule("cases", premises=premises)
    if covered:
        proved(whole, cert, s.g, rule="cases")
    else:
        rejected(whole, cert, s.g, rule="cases", path="premises", contains="gap")


def _nested_cases(tmp_path, depth):
    """An unsat claim on [0, 1]^3 of build_mlp's net, as `tl verify --jobs` joins an input-split
    chain `depth` deep (each domain's left half an ibp leaf, its right half split again): the
    graph's path and graph, the claim and the nested `cases` certificate."""
    from tl_dsl.verify import _join, _on_box

    gp = build_mlp().save(str(tmp_path / "g"))
    graph = load_graph(gp)
    box = claims.box([0] * 3, [1] * 3)
    claim = Claim("unsat", graph.sha256, box, graph.outputs[0],
                  unsafe=(claims.polytope([[1, 0]], [-1000]),))
    boxes, splits, leaves, nid, cut = {0: (box.lo, box.hi)}, {}, {}, 0, fmpq(0)
    for k in range(depth):
        lo, hi = boxes[nid]
        mid = (cut + 1) / 2
        boxes[2 * k + 1], boxes[2 * k + 2] = (lo, (mid,) + hi[1:]), ((mid,) + lo[1:], hi)
        splits[nid], leaves[2 * k + 1] = (None, (2 * k + 1, 2 * k + 2)), {"rule": "ibp"}
        nid, cut = 2 * k + 2, mid
    leaves[nid] = {"rule": "ibp"}
    thms = {i: proof.check(_on_box(claim, boxes[i]), c, graph) for i, c in leaves.items()}
    return gp, graph, claim, _join(claim, {"boxes": boxes, "splits": splits}, thms, leaves)[1]


def test_nested_cases_as_deep_as_jobs_joins_recheck_and_deeper_ones_are_refused(tmp_path):
    """`tl verify --jobs` joins trees up to JOIN_DEPTH (150) levels deep as nested `cases` and
    their bundles must re-check in a fresh process; premises nest by recursion, so a deeper
    derivation (250) is refused with the reason, not a RecursionError's traceback, and JSON
    nested past the parser's limit is refused as a document."""
    from tl_dsl import verify

    gp, graph, claim, cert = _nested_cases(tmp_path, verify.JOIN_DEPTH)
    bundle = str(tmp_path / "b.json")
    proof.write_bundle(bundle, claim, cert, gp, graph)
    out = subprocess.run([sys.executable, "-m", "kernel_checker", bundle], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "holds: unsat by cases" in out.stdout, out.stderr[-2000:]
    _, graph, claim, cert = _nested_cases(tmp_path / "deep", 250)
    with pytest.raises(KernelError, match="nests deeper than Python's recursion limit") as err:
        proof.check(claim, cert, graph)
    assert (err.value.rule, err.value.path) == ("derive", "certificate")
    from kernel_checker.exact import load_json
    with pytest.raises(KernelError, match="expected a JSON document"):
        load_json(b"[" * 100_000 + b"]" * 100_000, "bundle", "b.json")


def test_cases_cannot_move_a_counterexample_into_a_set_without_its_point(s):
    """KERNEL BUG (unsound): a Counterexample claim says its point lies in the input set, so it
    does not follow from the same claim on a set that merely covers it. cases accepts a premise
    box containing the conclusion's, and derives 'x* in S' for an x* outside S, here on a ball
    where the robustness Unsat is proved: both theorems at level proved."""
    robust = robustness.robust(s.g, X0, Fraction(1, 8), 0, clamp=None)
    proved(robust, s.crown, s.g, rule="crown")
    point = [Fraction(-3)] * 3
    y = [fr(v) for v in exact_point(s.g, point)]
    assert y[1] > y[0]  # misclassified: a real counterexample on the big box
    big = Claim(**{**robust.__dict__, "input_set": claims.box([-3] * 3, [3] * 3)})
    cex_big = claims.counterexample(big, point)
    proved(cex_big, {"rule": "counterexample"}, s.g, rule="counterexample")
    cex_small = Claim(**{**cex_big.__dict__, "input_set": robust.input_set})
    rejected(cex_small, {"rule": "counterexample"}, s.g, rule="counterexample",
             path="claim.point[0]", contains="outside the input set")
    with pytest.raises(KernelError) as info:
        proof.check(cex_small, proof.by_rule("cases", premises=[prem(cex_big, {
            "rule": "counterexample"})]), s.g)
    assert info.value.rule == "cases", info.value


def exact_point(graph, x):
    from kernel_checker.rules import point_interval
    from kernel_checker.semantics import evaluate

    iv = evaluate(graph, point_interval(tuple(q(v) for v in x), (3,)))["fc3"]
    return [fmpq(v, iv.den) for v in iv.lo]


# ---------------------------------------------------------------------------------------------
# levels and assumptions


def test_levels_union_of_assumptions_and_minimum_level(s):
    assumed = proof.check(s.c, HYP, s.g)
    assert assumed.level == Level.SHAPE_CHECKED
    assert [a.name for a in assumed.assumptions] == ["user.hypothesis"]
    looser = s.bounds([v - 1 for v in s.lo], s.hi)
    thm = proof.check(looser, proof.by_rule("weaken", premise=prem(s.c, HYP)), s.g)
    assert (thm.rule, thm.level) == ("weaken", Level.SHAPE_CHECKED)
    assert thm.assumptions == assumed.assumptions
    other = proof.assume("user.hypothesis", tool="arb", reason="test")
    conj = Claim("all", s.g.sha256, s.box, "fc3", parts=(s.c, s.lb))
    thm = proof.check(conj, proof.by_rule("conjoin", premises=[prem(s.c, HYP),
                                                               prem(s.lb, other)]), s.g)
    assert thm.level == Level.SHAPE_CHECKED
    assert sorted(a.statement for a in thm.assumptions) == sorted(
        [s.c.spec_sha256(), s.lb.spec_sha256()])
    thm = proof.check(conj, proof.by_rule("conjoin", premises=[prem(s.c, s.crown),
                                                               prem(s.lb, HYP)]), s.g)
    assert thm.level == Level.SHAPE_CHECKED and len(thm.assumptions) == 1
    (a,) = thm.assumptions
    assert a.statement == s.lb.spec_sha256() and dict(a.provenance)["tool"] == "pytest"
    robust, left, right = _halves_claims(s)
    thm = proof.check(robust, proof.by_rule("cases", premises=[prem(left, s.crown),
                                                               prem(right, HYP)]), s.g)
    assert thm.level == Level.SHAPE_CHECKED and len(thm.assumptions) == 1
    thm = proof.check(conj, proof.by_rule("conjoin", premises=[prem(s.c, s.crown),
                                                               prem(s.lb, s.crown)]), s.g)
    assert thm.level == Level.PROVED and not thm.assumptions


# ---------------------------------------------------------------------------------------------
# discharge


def _discharge_cert(s, proof_claim, proof_cert):
    looser = s.bounds([v - 1 for v in s.lo], [v + 1 for v in s.hi], name="C'")
    premise = prem(looser, proof.by_rule("weaken", premise=prem(s.c, HYP)))
    return looser, proof.by_rule("discharge", premise=premise,
                                 proof=prem(proof_claim, proof_cert))


def test_discharge_an_assumption_with_a_crown_proof(s):
    looser, cert = _discharge_cert(s, s.c, s.crown)
    thm = proved(looser, cert, s.g, rule="discharge")
    assert [p.rule for p in thm.premises] == ["weaken", "crown"]
    assert thm.premises[0].level == Level.SHAPE_CHECKED


def test_discharge_with_a_proof_of_another_claim_is_refused(s):
    renamed = s.bounds(name="not C")
    _, cert = _discharge_cert(s, renamed, s.crown)
    looser = s.bounds([v - 1 for v in s.lo], [v + 1 for v in s.hi], name="C'")
    rejected(looser, cert, s.g, rule="discharge", path="proof.claim",
             contains="assumes no statement with this claim's hash")
    _, cert = _discharge_cert(s, s.lb, s.crown)
    rejected(looser, cert, s.g, rule="discharge", path="proof.claim")
    _, cert = _discharge_cert(s, s.c, s.crown)
    rejected(s.c, cert, s.g, rule="discharge", path="claim",
             contains="must be the premise's claim")


def test_discharge_one_of_two_assumptions_keeps_the_other(s):
    conj = Claim("all", s.g.sha256, s.box, "fc3", parts=(s.c, s.lb))
    other = proof.assume("user.hypothesis", tool="arb")
    premise = prem(conj, proof.by_rule("conjoin", premises=[prem(s.c, HYP), prem(s.lb, other)]))
    cert = proof.by_rule("discharge", premise=premise, proof=prem(s.c, s.crown))
    thm = proof.check(conj, cert, s.g)
    assert thm.level == Level.SHAPE_CHECKED
    assert [a.statement for a in thm.assumptions] == [s.lb.spec_sha256()]


@pytest.mark.parametrize("wrap", [False, True])
def test_discharge_by_the_assumption_itself_is_not_a_proof(s, wrap):
    """KERNEL BUG (unsound): discharge removes every assumption whose statement is the proved
    claim's hash, including the ones the `proof` premise itself rests on. So
    discharge(premise = assume(C), proof = assume(C)) derives the false claim C at level
    `proved` with no assumptions. A sound kernel refuses, or keeps the assumption."""
    false = claims.bounds(s.g, s.box, [0, 0], [0, 0], name="false")
    rejected(false, s.crown, s.g, rule="crown", path="claim.lo[0]")
    premise = prem(false, HYP)
    if wrap:  # the circular proof behind a weakening
        premise = prem(false, proof.by_rule("weaken", premise=prem(false, HYP)))
    cert = proof.by_rule("discharge", premise=premise, proof=prem(false, HYP))
    try:
        thm = proof.check(false, cert, s.g)
    except KernelError as err:
        assert err.rule == "discharge", err
        return
    assert thm.assumptions, "a false claim was derived with no assumptions"
    assert thm.level < Level.PROVED


# ---------------------------------------------------------------------------------------------
# compose


def copy_graph(src_folder: str, dst_folder: str) -> str:
    os.makedirs(dst_folder, exist_ok=True)
    for name in ("graph.json", "weights.safetensors"):
        shutil.copy(os.path.join(src_folder, name), dst_folder)
    return os.path.join(dst_folder, "graph.json")


@pytest.fixture(scope="module")
def blockwise(net, kit):
    folder = kit.folder("blockwise")
    gpath = copy_graph(net.folder, folder)
    box = claims.ball(X0, Fraction(1, 4))
    thm, claim, cert, extra = prove_blockwise(gpath, ["relu1"], box)
    return gpath, thm, claim, cert, extra


def test_prove_blockwise_on_a_small_mlp(blockwise, net, kit):
    gpath, thm, claim, cert, extra = blockwise
    assert (thm.rule, thm.level, thm.assumptions) == ("compose", Level.PROVED, frozenset())
    assert claim.graph == net.graph.sha256 and claim.kind == "bounds"
    graphs = [g for _, g in extra]
    proved(claim, cert, load_graph(gpath), *graphs, rule="compose")
    # two cuts: a composition whose first premise is itself a composition
    folder = kit.folder("blockwise2")
    g2 = copy_graph(net.folder, folder)
    thm2, claim2, cert2, extra2 = prove_blockwise(g2, ["relu1", "fc2"], claims.ball(
        X0, Fraction(1, 4)))
    assert thm2.level == Level.PROVED and cert2["first"]["certificate"]["rule"] == "compose"
    # the blockwise bounds contain the true outputs
    for x in ([Fraction(1, 4)] * 3, X0, [Fraction(3, 4), Fraction(1, 4), Fraction(1, 2)]):
        y = kit.point(net.graph, x)["fc3"]
        assert all(a <= v <= b for a, v, b in zip(claim2.lo, y, claim2.hi))


def test_prove_blockwise_on_the_shipped_cnn(tmp_path):
    gpath = copy_graph(os.path.join(DIGITS, "cnn"), str(tmp_path / "cnn"))
    with open(os.path.join(DIGITS, "test_set.json")) as f:
        image = json.load(f)["images"][0]
    ball = claims.ball(image, "1/256", clamp=(0, 1))
    thm, claim, cert, extra = prove_blockwise(gpath, ["pool1"], ball)
    assert (thm.rule, thm.level, thm.assumptions) == ("compose", Level.PROVED, frozenset())
    assert claim.node == "logits" and claim.input_set == ball
    assert cert["first"]["claim"]["node"] == "pool1"
    proved(claim, cert, load_graph(gpath), *[g for _, g in extra], rule="compose")


def _retarget(claim, graph):
    return Claim(**{**claim.__dict__, "graph": graph.sha256})


@pytest.mark.parametrize("node,index", [("fc1", 1), ("fc2", 3), ("fc3", 5)])
def test_compose_refuses_a_glued_graph_with_one_weight_changed(blockwise, kit, node, index):
    gpath, _, claim, cert, extra = blockwise
    graphs = [g for _, g in extra]
    b = build_mlp()
    w = b.params[f"{node}.weight"]
    w[0, 0] = np.nextafter(w[0, 0], np.float32(np.inf))
    h = kit.save(b, "changed").graph
    assert [n.id for n in h.nodes][index] == node
    rejected(_retarget(claim, h), cert, h, *graphs, rule="compose",
             path=f"claim.graph.nodes[{index}]", contains=f"is not node {node!r}")


def _residual_parts(kit):
    """H = x, fc1, relu1, c (const), add(relu1, c), fc2; F and G are its blocks at relu1."""
    rng = np.random.default_rng(8)
    g = GraphBuilder()
    x = g.input([3])
    h = g.relu(g.linear(x, randn(rng, 4, 3), randn(rng, 4), name="fc1"))
    c = g.const(np.array([0.25, -0.5, 0.125, 1.0], np.float32), name="c")
    a = g.add(h, c)
    g.output(g.linear(a, randn(rng, 2, 4), randn(rng, 2), name="fc2"))
    built = kit.save(g, "residual")
    assert [n.op for n in built.graph.nodes] == ["input", "linear", "relu", "const", "add",
                                                  "linear"]
    blocks, prefixes = split_graph(built.path, ["relu1"])
    return built, load_graph(blocks[0]), load_graph(blocks[1])


def test_compose_refuses_a_reordered_glued_graph_and_a_g_box_too_small(kit):
    built, f_graph, g_graph = _residual_parts(kit)
    box = claims.box([0, 0, 0], [1, 1, 1])
    lo, hi = kit.ibp(f_graph, [0] * 3, [1] * 3)["relu1"]
    f_claim = claims.bounds(f_graph, box, lo, hi, node="relu1")
    g_box = Box(tuple(lo), tuple(hi))
    glo, ghi = kit.ibp(g_graph, lo, hi)["fc2"]
    g_claim = claims.bounds(g_graph, g_box, glo, ghi, node="fc2")
    cert = proof.by_rule("compose", first=prem(f_claim, {"rule": "ibp"}),
                         second=prem(g_claim, {"rule": "ibp"}))
    h_claim = claims.bounds(built.graph, box, glo, ghi, node="fc2")
    proved(h_claim, cert, built.graph, f_graph, g_graph, rule="compose")
    # the same function with the const node moved first: not F then G node by node
    with open(built.path) as f:
        doc = json.load(f)
    nodes = doc["nodes"]
    doc["nodes"] = [nodes[0], nodes[3], nodes[1], nodes[2], nodes[4], nodes[5]]
    moved_path = os.path.join(built.folder, "reordered.json")
    with open(moved_path, "w") as f:
        json.dump(doc, f)
    moved = load_graph(moved_path)
    assert kit.point(moved, [Fraction(1, 3)] * 3)["fc2"] == kit.point(
        built.graph, [Fraction(1, 3)] * 3)["fc2"]
    rejected(_retarget(h_claim, moved), cert, moved, f_graph, g_graph, rule="compose",
             path="claim.graph.nodes[1]", contains="H's node 'c' is not node 'fc1' of F")
    # G proved on a box that misses a corner of F's output box by 2^-40
    k = next(i for i in range(4) if hi[i] > lo[i])
    small_hi = [fr(v) for v in hi]
    small_hi[k] -= ULP
    g_small = claims.bounds(g_graph, Box(tuple(lo), tuple(q(v) for v in small_hi)), glo, ghi,
                            node="fc2")
    cert = proof.by_rule("compose", first=prem(f_claim, {"rule": "ibp"}),
                         second=prem(g_small, {"rule": "ibp"}))
    rejected(h_claim, cert, built.graph, f_graph, g_graph, rule="compose",
             path="second.claim.input_set", contains="does not contain F's proven output box")


def test_compose_refuses_g_claims_about_gs_own_input(tmp_path):
    """G's claim on G's input node: in H that id names F's input (both are called x here), so
    G's true claim "x in [10, 11]" concluded on H would say H's input is in [10, 11] over
    [0, 1] (a review found it proved, and its bundle re-checked). Refused; the same bounds on
    G's relu, after its input, go through."""
    def save(b, name):
        return load_graph(b.save(str(tmp_path / name)))

    w, b10 = np.array([[1.0]], np.float32), np.array([10.0], np.float32)
    f = GraphBuilder()
    f.output(f.linear(f.input([1]), w, b10, name="y"))
    g = GraphBuilder()
    g.output(g.relu(g.input([1])))
    h = GraphBuilder()
    h.output(h.relu(h.linear(h.input([1]), w, b10, name="y")))
    f_graph, g_graph, h_graph = save(f, "F"), save(g, "G"), save(h, "H")
    box = claims.box([0], [1])
    f_claim = claims.bounds(f_graph, box, [10], [11], node="y")
    for node in ("x", "relu1"):
        g_claim = claims.bounds(g_graph, claims.box([10], [11]), [10], [11], node=node)
        cert = proof.by_rule("compose", first=prem(f_claim, {"rule": "ibp"}),
                             second=prem(g_claim, {"rule": "ibp"}))
        h_claim = claims.bounds(h_graph, box, [10], [11], node=node)
        if node == "x":
            rejected(h_claim, cert, h_graph, f_graph, g_graph, rule="compose",
                     path="second.claim.node", contains="after G's input")
        else:
            proved(h_claim, cert, h_graph, f_graph, g_graph, rule="compose")


def test_compose_needs_fs_node_and_gs_input_of_one_shape(tmp_path):
    """The same number of values is not enough: a sum over axes [0, 2] maps [2, 2, 3] and
    [3, 2, 2] to [2] but sums other flat positions, so G's claim does not hold of H (a review
    found "H's sum in [3, 3] x [3, 3]" proved where H gives (0, 6)). Refused, naming both shapes;
    with G's input shaped as F's node the (true) composition goes through."""
    def save(b, name):
        return load_graph(b.save(str(tmp_path / name)))

    v = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    f = GraphBuilder()
    f.output(f.input([2, 2, 3]))
    h = GraphBuilder()
    h.output(h.sum(h.input([2, 2, 3]), axes=[0, 2]))
    f_graph, h_graph = save(f, "F"), save(h, "H")
    f_claim = claims.bounds(f_graph, claims.box(v, v), v, v, node="x")
    for shape, sums in (([3, 2, 2], [3, 3]), ([2, 2, 3], [0, 6])):
        g = GraphBuilder()
        g.output(g.sum(g.input(shape, name="z"), axes=[0, 2]))
        g_graph = save(g, f"G{shape[0]}")
        g_claim = claims.bounds(g_graph, claims.box(v, v), sums, sums, node="sum1")
        cert = proof.by_rule("compose", first=prem(f_claim, {"rule": "ibp"}),
                             second=prem(g_claim, {"rule": "ibp"}))
        h_claim = claims.bounds(h_graph, claims.box(v, v), sums, sums, node="sum1")
        if shape == [3, 2, 2]:
            rejected(h_claim, cert, h_graph, f_graph, g_graph, rule="compose",
                     path="second.claim.input_set", contains="has shape [2, 2, 3], G's input "
                     "[3, 2, 2]")
        else:
            proved(h_claim, cert, h_graph, f_graph, g_graph, rule="compose")


def test_compose_refuses_a_conclusion_that_is_not_gs_claim(blockwise):
    gpath, _, claim, cert, extra = blockwise
    graphs = [g for _, g in extra]
    h = load_graph(gpath)
    tighter = Claim(**{**claim.__dict__, "lo": (claim.lo[0] + q(ULP),) + claim.lo[1:]})
    rejected(tighter, cert, h, *graphs, rule="compose", path="claim",
             contains="the conclusion must be G's claim on H over F's input set")
    smaller = Claim(**{**claim.__dict__, "input_set": claims.ball(X0, Fraction(1, 8))})
    rejected(smaller, cert, h, *graphs, rule="compose", path="claim")
    swapped = {"rule": "compose", "first": cert["second"], "second": cert["first"]}
    with pytest.raises(KernelError) as info:
        proof.check(claim, swapped, h, *graphs)
    assert info.value.rule == "compose", info.value


def test_compose_of_a_bounds_node_whose_size_differs_from_gs_input_is_a_kernel_error(
        blockwise, net):
    """KERNEL BUG (crash): compose compares F's box with G's input set by zip(strict=True) before
    checking their sizes; a Bounds on relu1 (8 values) and a claim on a graph with 3 inputs
    raise ValueError instead of a KernelError."""
    gpath, _, claim, cert, extra = blockwise
    graphs = [g for _, g in extra]
    g_claim = claims.bounds(net.graph, claims.box([-100] * 3, [100] * 3), [-1000] * 2,
                            [1000] * 2)
    bad = {"rule": "compose", "first": cert["first"], "second": prem(g_claim, {"rule": "ibp"})}
    with pytest.raises(KernelError) as info:
        proof.check(claim, bad, load_graph(gpath), *graphs)
    assert info.value.rule == "compose", info.value


# ---------------------------------------------------------------------------------------------
# other crashes: conclusions whose shapes were never checked


def test_weaken_to_a_claim_of_another_size_is_a_kernel_error(s):
    """KERNEL BUG (crash): weaken/cases never shape-check the conclusion against the graph, and
    implies()/box_inside() zip with strict=True: a Bounds conclusion with 3 numbers for a
    2-value node, or an input set with 4 numbers for 3 inputs, raises ValueError."""
    doc = s.bounds([v - 1 for v in s.lo], [v + 1 for v in s.hi]).to_json()
    doc["lo"].append("-1")
    doc["hi"].append("1")
    wrong = parse_claim(doc)
    with pytest.raises(KernelError):
        proof.check(wrong, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g)
    doc = s.c.to_json()
    doc["input_set"]["lo"].append("0")
    doc["input_set"]["hi"].append("0")
    wrong = parse_claim(doc)
    with pytest.raises(KernelError):
        proof.check(wrong, proof.by_rule("weaken", premise=prem(s.c, s.crown)), s.g)


def test_cases_with_a_conclusion_of_another_input_size_is_a_kernel_error(s):
    """KERNEL BUG (crash): cases indexes the premises' boxes by the conclusion's dimensions."""
    doc = s.c.to_json()
    doc["input_set"]["lo"].append("0")
    doc["input_set"]["hi"].append("0")
    wrong = parse_claim(doc)
    with pytest.raises(KernelError):
        proof.check(wrong, proof.by_rule("cases", premises=[prem(s.c, s.crown)]), s.g)


# ---------------------------------------------------------------------------------------------
# bundles of derivations, fresh process, audit --tree


def audit(bundle, *extra):
    return subprocess.run([sys.executable, "-m", "tl_dsl.cli", "audit", bundle, "--tree", *extra],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_composite_bundle_rechecks_in_a_fresh_process_and_audits_its_tree(blockwise):
    gpath, _, claim, cert, extra = blockwise
    folder = os.path.dirname(gpath)
    h = load_graph(gpath)
    bundle = proof.write_bundle(os.path.join(folder, "proofs", "compose.json"), claim, cert,
                                gpath, h, premise_graphs=extra)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert ok, text
    assert text == "holds: bounds by compose, level proved, 0 assumption(s)"
    out = audit(bundle)
    assert out.returncode == 0, out.stderr
    tree = out.stdout.split("derivation:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in tree] == ["compose", "crown", "crown"]
    assert tree[1].startswith("    crown") and "[proved]" in tree[0]
    # without the premise graphs the kernel cannot load F and G
    plain = proof.write_bundle(os.path.join(folder, "proofs", "bare.json"), claim, cert, gpath, h)
    ok, text = proof.recheck_in_fresh_process(plain)
    assert not ok and "rejected: context: " in text and "no graph with sha256" in text
    # a re-check that does not end in time is not held, with the reason (it raised)
    assert proof.recheck_in_fresh_process(bundle, timeout_s=0.01) == (
        False, "the re-check did not end within 0.01 s")
    # a premise graph file changed after writing
    with open(bundle) as f:
        doc = json.load(f)
    doc["artifacts"]["premise_graphs"][0]["sha256"] = "0" * 64
    with open(bundle, "w") as f:
        json.dump(doc, f)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert not ok and "artifacts.premise_graphs[0].sha256" in text
    # H among the premise graphs and F as the bundle's graph: the audit would name F for a
    # theorem about H, so the bundle is refused
    (f_path, f_graph), rest = extra[0], list(extra[1:])
    misnamed = proof.write_bundle(os.path.join(folder, "proofs", "misnamed.json"), claim, cert,
                                  f_path, f_graph, premise_graphs=[(gpath, h), *rest])
    ok, text = proof.recheck_in_fresh_process(misnamed)
    assert not ok and "claim.graph" in text and "about artifacts.graph" in text, text


def test_discharge_bundle_audit_tree_lists_every_rule_and_assumption(s, net, kit):
    folder = kit.folder("discharge_bundle")
    gpath = copy_graph(net.folder, folder)
    g = load_graph(gpath)
    looser, cert = _discharge_cert(s, s.c, s.crown)
    bundle = proof.write_bundle(os.path.join(folder, "d.json"), looser, cert, gpath, g)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert ok and text == "holds: bounds by discharge, level proved, 0 assumption(s)", text
    out = audit(bundle)
    assert out.returncode == 0, out.stderr
    assert "assumptions none" in out.stdout
    tree = out.stdout.split("derivation:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in tree] == ["discharge", "weaken", "assume", "crown"]
    assert "assumes user.hypothesis" in tree[2] and "[shape-checked]" in tree[2]
    # the same tree without the discharge: shape-checked, the assumption listed
    weak = cert["premise"]
    bundle = proof.write_bundle(os.path.join(folder, "w.json"), looser, weak["certificate"],
                                gpath, g)
    out = audit(bundle)
    assert out.returncode == 1 and "NOT PERMITTED" in out.stdout
    assert "level      shape-checked" in out.stdout and "user.hypothesis" in out.stdout
    tree = out.stdout.split("derivation:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in tree] == ["weaken", "assume"]
    out = audit(bundle, "--permit", "user.*")
    assert out.returncode == 0 and "[permitted]" in out.stdout
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert ok and text == "holds: bounds by weaken, level shape-checked, 1 assumption(s)", text


def test_a_premise_claims_refusal_names_the_premise_claims_field(s):
    """Premises' claims are refused at their place in the document (certificate.premise.claim
    ...), not at `claim`, which names the conclusion (a review)."""
    false = claims.bounds(s.g, s.box, [0, 0], [0, 0], name="false")
    looser = claims.bounds(s.g, s.box, [-1, -1], [1, 1], name="looser")
    rejected(looser, proof.by_rule("weaken", premise=prem(false, s.crown)), s.g, rule="crown",
             path="certificate.premise.claim.lo[0]")
    nested = proof.by_rule("weaken", premise=prem(looser, proof.by_rule(
        "weaken", premise=prem(false, s.crown))))
    rejected(looser, nested, s.g, rule="crown",
             path="certificate.premise.certificate.premise.claim.lo[0]")


def test_a_second_split_keeps_the_first_bundles_checkable(tmp_path):
    """prove_blockwise wrote graph.block0.json ... under fixed names: a second call with other
    cuts overwrote them and the first bundle failed its sha256 (a review). Sub-graphs are named
    by their content's hash now; a string of cuts and a repeated cut are refused."""
    rng = np.random.default_rng(4)
    g = GraphBuilder()
    h = g.input([3])
    for i in range(3):
        h = g.relu(g.linear(h, rng.standard_normal((4, 3 if i == 0 else 4)).astype(np.float32),
                            None, name=f"fc{i}"))
    path = g.save(str(tmp_path / "net"))
    box = claims.box([-1, -1, -1], [1, 1, 1])
    graph = load_graph(path)
    relus = [n.id for n in graph.nodes if n.op == "relu"]
    _, claim, cert, extra = prove_blockwise(path, [relus[0]], box)
    bundle = proof.write_bundle(str(tmp_path / "first.json"), claim, cert, path, graph,
                                premise_graphs=extra)
    prove_blockwise(path, [relus[1]], box)
    from kernel_checker import check_bundle

    check_bundle(bundle)
    with pytest.raises(ValueError, match="expected a list of node ids"):
        split_graph(path, relus[0])
    with pytest.raises(ValueError, match="cut twice"):
        split_graph(path, [relus[0], relus[0]])
