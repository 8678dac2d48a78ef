"""Rules (kernel_checker.rules) through tl_dsl.proof.check and stdlib.robustness: what must be
accepted is accepted at the right level, and what must be rejected is rejected naming the rule
and the claim field, down to a one-ulp (or 2^-60) shrink of an exact bound."""

import copy
import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from rule_helpers import fr, rejected  # noqa: E402

from kernel_checker.claims import Box, Claim, LinfBall, parse_claim
from kernel_checker.errors import KernelError
from kernel_checker.exact import load_json
from kernel_checker.rules import RULES, Context, derive
from kernel_checker.theorem import ASSUMPTIONS, Assumption, Level, Theorem
from stdlib import robustness
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

TINY = Fraction(1, 2**60)






def forward(weights: dict, xs: np.ndarray) -> np.ndarray:
    """The fixture MLP in float64 (rows of xs are points)."""
    h = xs
    for i in (1, 2, 3):
        h = h @ weights[f"fc{i}.weight"].astype(np.float64).T + weights[f"fc{i}.bias"]
        if i < 3:
            h = np.maximum(h, 0)
    return h


@pytest.fixture(scope="module")
def setting(mlp):
    """A point x0 in [0,1]^6 with a clear label, and a radius at which a counterexample exists
    (found by random search in float64, then read exactly)."""
    rng = np.random.default_rng(123)
    for _ in range(200):
        x0 = rng.random(6).astype(np.float32)
        y = forward(mlp.weights, x0[None].astype(np.float64))[0]
        label = int(np.argmax(y))
        if np.sort(y)[-1] - np.sort(y)[-2] < 0.05:
            continue
        for radius in (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2)):
            r = float(radius)
            lo = np.maximum(x0.astype(np.float64) - r, 0.0)
            hi = np.minimum(x0.astype(np.float64) + r, 1.0)
            pts = np.clip(x0 + (rng.random((4000, 6)) * 2 - 1) * r, lo, hi)
            ys = forward(mlp.weights, pts)
            top = ys[np.arange(len(ys)), label]
            others = np.delete(ys, label, axis=1).max(axis=1)
            bad = np.nonzero(others - top > 1e-6)[0]
            if len(bad):
                return {"x0": x0, "label": label, "radius": radius, "cex": pts[bad[0]],
                        "lo": lo, "hi": hi}
    raise AssertionError("no counterexample setting found")


def exact_ibp(kit, graph, claim, node=None):
    box = claim.input_set.as_box()
    lo, hi = kit.ibp(graph, [fr(v) for v in box.lo], [fr(v) for v in box.hi])[
        node or claim.node]
    return [fr(v) for v in lo], [fr(v) for v in hi]


# ---------------------------------------------------------------- ibp: Bounds

def test_ibp_bounds_exact_are_accepted_and_proved(kit, mlp, setting):
    g = mlp.graph
    s = claims.ball(setting["x0"], "1/16", clamp=(0, 1))
    out = g.outputs[0]
    probe = claims.bounds(g, s, [0] * 3, [0] * 3)
    lo, hi = exact_ibp(kit, g, probe)
    thm = proof.check(claims.bounds(g, s, lo, hi, name="exact"), proof.ibp(), g)
    assert thm.level is Level.PROVED and thm.assumptions == frozenset()
    assert thm.rule == "ibp" and thm.claim.node == out
    assert thm.to_json()["level"] == "proved" and thm.to_json()["assumptions"] == []


def test_ibp_bounds_on_an_intermediate_node(kit, mlp, setting):
    g = mlp.graph
    s = claims.box(np.zeros(6), np.ones(6))
    lo, hi = exact_ibp(kit, g, claims.bounds(g, s, [0] * 10, [0] * 10, node="fc1"))
    assert proof.check(claims.bounds(g, s, lo, hi, node="fc1"), proof.ibp(), g).level is \
        Level.PROVED
    rejected(claims.bounds(g, s, lo, hi[:-1] + [hi[-1] - TINY], node="fc1"), proof.ibp(), g,
             rule="ibp", path="claim.hi[9]")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_bound_shrunk_by_2_pow_minus_60_is_rejected(kit, mlp, setting, i):
    g = mlp.graph
    s = claims.ball(setting["x0"], "1/16", clamp=(0, 1))
    lo, hi = exact_ibp(kit, g, claims.bounds(g, s, [0] * 3, [0] * 3))
    up = list(lo)
    up[i] += TINY
    rejected(claims.bounds(g, s, up, hi), proof.ibp(), g, rule="ibp", path=f"claim.lo[{i}]",
             contains="is above the kernel's bound")
    down = list(hi)
    down[i] -= TINY
    rejected(claims.bounds(g, s, lo, down), proof.ibp(), g, rule="ibp", path=f"claim.hi[{i}]",
             contains="is below the kernel's bound")


def _f32_down(q: Fraction) -> np.float32:
    f = np.float32(float(q))
    while Fraction(float(f)) > q:
        f = np.nextafter(f, np.float32(-np.inf))
    while Fraction(float(np.nextafter(f, np.float32(np.inf)))) <= q:
        f = np.nextafter(f, np.float32(np.inf))
    return f


def _f32_up(q: Fraction) -> np.float32:
    return -_f32_down(-q)


def test_float32_outward_bounds_accepted_one_ulp_inward_rejected(kit, mlp, setting):
    g = mlp.graph
    s = claims.ball(setting["x0"], "1/16", clamp=(0, 1))
    lo, hi = exact_ibp(kit, g, claims.bounds(g, s, [0] * 3, [0] * 3))
    lo32 = [_f32_down(v) for v in lo]
    hi32 = [_f32_up(v) for v in hi]
    assert all(Fraction(float(a)) <= b for a, b in zip(lo32, lo))
    assert proof.check(claims.bounds(g, s, lo32, hi32), proof.ibp(), g).level is Level.PROVED
    for i in range(3):
        bad_lo = list(lo32)
        bad_lo[i] = np.nextafter(lo32[i], np.float32(np.inf))
        rejected(claims.bounds(g, s, bad_lo, hi32), proof.ibp(), g, rule="ibp",
                 path=f"claim.lo[{i}]")
        bad_hi = list(hi32)
        bad_hi[i] = np.nextafter(hi32[i], np.float32(-np.inf))
        rejected(claims.bounds(g, s, lo32, bad_hi), proof.ibp(), g, rule="ibp",
                 path=f"claim.hi[{i}]")


# ---------------------------------------------------------------- ibp: LinearBound

def _row_min(row, lo, hi):
    return sum((c * a if c > 0 else c * b) for c, a, b in zip(row, lo, hi))


def test_linear_bound_exact_accepted_rhs_too_high_rejected(kit, mlp, setting):
    g = mlp.graph
    label = setting["label"]
    eps = "1/64"
    margin = robustness.margin(g, setting["x0"], eps, label, 0)
    lo, hi = exact_ibp(kit, g, margin)
    rows = [[fr(c) for c in r] for r in margin.rows]
    mins = [_row_min(r, lo, hi) for r in rows]
    exact = claims.linear_bound(g, margin.input_set, rows, mins)
    assert proof.check(exact, proof.ibp(), g).level is Level.PROVED
    assert proof.check(robustness.margin(g, setting["x0"], eps, label, min(mins)), proof.ibp(),
                       g).level is Level.PROVED
    for i in range(len(rows)):
        bumped = list(mins)
        bumped[i] += TINY
        rejected(claims.linear_bound(g, margin.input_set, rows, bumped), proof.ibp(), g,
                 rule="ibp", path=f"claim.rhs[{i}]", contains="is above the kernel's lower bound")


# ---------------------------------------------------------------- ibp: Unsat (robustness)

def test_robustness_at_a_tiny_radius_is_proved(mlp, setting):
    thm = proof.check(robustness.robust(mlp.graph, setting["x0"], "1/1048576", setting["label"]),
                      proof.ibp(), mlp.graph)
    assert thm.level is Level.PROVED and thm.claim.kind == "unsat"


def test_robustness_where_a_counterexample_exists_is_rejected(mlp, setting):
    """A real counterexample exists at this radius, so no sound rule may prove robustness."""
    claim = robustness.robust(mlp.graph, setting["x0"], setting["radius"], setting["label"])
    with pytest.raises(KernelError) as info:
        proof.check(claim, proof.ibp(), mlp.graph)
    err = info.value
    assert err.rule == "ibp" and err.path.startswith("claim.unsafe[")
    assert "is not excluded" in err.message


def test_robustness_over_the_whole_cube_is_rejected(mlp, setting):
    claim = robustness.robust(mlp.graph, setting["x0"], 1, setting["label"])
    with pytest.raises(KernelError) as info:
        proof.check(claim, proof.ibp(), mlp.graph)
    assert info.value.rule == "ibp" and info.value.path.startswith("claim.unsafe[")


# ---------------------------------------------------------------- counterexample

def _cex_claim(mlp, setting, point):
    unsat = robustness.robust(mlp.graph, setting["x0"], setting["radius"], setting["label"])
    return claims.counterexample(unsat, point)


def test_real_counterexample_accepted(mlp, setting):
    thm = proof.check(_cex_claim(mlp, setting, setting["cex"]), proof.counterexample_cert(),
                      mlp.graph)
    assert thm.level is Level.PROVED and thm.rule == "counterexample"
    assert thm.claim.point == tuple(fmpq(*Fraction(float(v)).as_integer_ratio())
                                    for v in setting["cex"])


@pytest.mark.parametrize("i", [0, 3, 5])
def test_counterexample_moved_outside_by_the_smallest_step_rejected(mlp, setting, i):
    box = _cex_claim(mlp, setting, setting["cex"]).input_set.as_box()
    for edge, step in ((box.hi[i], TINY), (box.lo[i], -TINY)):
        point = [Fraction(float(v)) for v in setting["cex"]]
        point[i] = fr(edge) + step
        rejected(_cex_claim(mlp, setting, point), proof.counterexample_cert(), mlp.graph,
                 rule="counterexample", path=f"claim.point[{i}]",
                 contains="outside the input set")
        # the next float64 beyond the edge (an exact binary64 neighbour)
        point[i] = Fraction(float(np.nextafter(float(fr(edge)), np.inf if step > 0 else -np.inf)))
        rejected(_cex_claim(mlp, setting, point), proof.counterexample_cert(), mlp.graph,
                 rule="counterexample", path=f"claim.point[{i}]")


def test_counterexample_whose_output_is_in_no_polytope_rejected(mlp, setting):
    rejected(_cex_claim(mlp, setting, setting["x0"]), proof.counterexample_cert(), mlp.graph,
             rule="counterexample", path="claim.unsafe",
             contains="the point's output lies in no unsafe polytope")


def test_counterexample_outside_the_clamp_rejected(mlp, setting):
    """Inside the L-inf ball but outside the clamp domain [0, 1]: not in the input set."""
    x0 = np.array(setting["x0"], np.float32)
    x0[2] = 0.0
    unsat = robustness.robust(mlp.graph, x0, "1/2", setting["label"])
    point = [Fraction(float(v)) for v in x0]
    point[2] = Fraction(-1, 4)
    rejected(claims.counterexample(unsat, point), proof.counterexample_cert(), mlp.graph,
             rule="counterexample", path="claim.point[2]", contains="outside the input set")


def test_ties_count_as_unsafe_exactly(kit):
    """y0 = y1 = x: every point ties, so robustness (label 0) is false and any point is an
    exact counterexample; IBP must not prove it at any radius, even 0."""
    g = GraphBuilder()
    x = g.input([1])
    g.output(g.linear(x, np.array([[1.0], [1.0]], np.float32)))
    graph = kit.save(g, "tie").graph
    for eps in ("0", "1/1024"):
        claim = robustness.robust(graph, [0.5], eps, 0)
        rejected(claim, proof.ibp(), graph, rule="ibp", path="claim.unsafe[0]")
        thm = proof.check(claims.counterexample(claim, ["1/2"]), proof.counterexample_cert(),
                          graph)
        assert thm.level is Level.PROVED


# ---------------------------------------------------------------- assume

def test_assume_registered_name(mlp, setting):
    claim = robustness.robust(mlp.graph, setting["x0"], setting["radius"], setting["label"])
    cert = proof.assume("user.hypothesis", tool="pytest", version="1", command="test",
                        input_sha256="ab" * 32, reason="a test")
    thm = proof.check(claim, cert, mlp.graph)
    assert thm.level is Level.SHAPE_CHECKED and thm.rule == "assume"
    (a,) = thm.assumptions
    assert a == Assumption("user.hypothesis", (("command", "test"), ("input_sha256", "ab" * 32),
                                               ("reason", "a test"), ("tool", "pytest"),
                                               ("version", "1")), claim.spec_sha256())
    doc = thm.to_json()
    assert doc["level"] == "shape-checked"
    assert doc["assumptions"] == [{"name": "user.hypothesis", "statement": claim.spec_sha256(),
                                   "provenance": {"command": "test", "input_sha256": "ab" * 32,
                                                  "reason": "a test", "tool": "pytest",
                                                  "version": "1"}}]


def test_assume_takes_user_hypothesis_and_refuses_the_names_rules_emit(mlp, setting):
    """A bundle's author could otherwise assume any claim under an oracle's or a runtime's name,
    and `tl audit --permit 'runtime.*'` would admit it (a review: a false robustness claim)."""
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    thm = proof.check(claim, proof.assume("user.hypothesis", tool="t"), mlp.graph)
    assert [a.name for a in thm.assumptions] == ["user.hypothesis"]
    assert thm.level is Level.SHAPE_CHECKED
    for name in set(ASSUMPTIONS) - {"user.hypothesis"}:
        rejected(claim, proof.assume(name, tool="t"), mlp.graph, rule="assume",
                 path="certificate.name", contains=f"{name!r} is not assumed by hand")


def test_assume_unregistered_name_rejected(mlp, setting):
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    err = rejected(claim, proof.assume("oracle.made_up.thing", tool="t"), mlp.graph,
                   rule="assume", path="certificate.name",
                   contains="expected a registered assumption name")
    assert "'oracle.made_up.thing'" in err.message and "'user.hypothesis'" in err.message


@pytest.mark.parametrize("cert, path, fragment", [
    ({"rule": "assume", "name": "user.hypothesis", "evidence": {"tool": 3}},
     "certificate.evidence", "expected a non-empty object of strings"),
    ({"rule": "assume", "name": "user.hypothesis", "evidence": ["t"]}, "certificate.evidence",
     "object of strings"),
    ({"rule": "assume", "name": "user.hypothesis"}, "certificate", "missing keys ['evidence']"),
    ({"rule": "assume", "name": "user.hypothesis", "evidence": {}, "level": "proved"},
     "certificate", "unexpected keys ['level']"),
])
def test_assume_malformed(mlp, setting, cert, path, fragment):
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    rejected(claim, cert, mlp.graph, rule="assume", path=path, contains=fragment)


def test_assume_still_shape_checks_the_claim(mlp, setting):
    claim = claims.bounds(mlp.graph, claims.box([0] * 6, [1] * 6), [0] * 2, [1] * 2)
    rejected(claim, proof.assume("user.hypothesis", why="x"), mlp.graph, rule="claim",
             path="claim.lo", contains="expected 3 numbers")


# ---------------------------------------------------------------- theorems and levels

def test_theorem_cannot_be_constructed_directly(mlp):
    claim = claims.bounds(mlp.graph, claims.box([0] * 6, [1] * 6), [0] * 3, [1] * 3)
    for args in ((claim, frozenset(), Level.PROVED, "ibp"),
                 (claim, frozenset(), Level.PROVED, "ibp", (), object())):
        with pytest.raises(KernelError) as info:
            Theorem(*args)
        assert info.value.rule == "theorem"
        assert "made only by kernel rules" in info.value.message


def test_theorem_is_frozen(mlp, setting):
    thm = proof.check(robustness.robust(mlp.graph, setting["x0"], "1/1048576", setting["label"]),
                      proof.ibp(), mlp.graph)
    with pytest.raises(dataclasses.FrozenInstanceError):
        thm.level = Level.PROVED
    with pytest.raises(dataclasses.FrozenInstanceError):
        thm.assumptions = frozenset()


def test_levels_order_and_labels():
    assert (Level.LAUNCHED < Level.PARSED < Level.SHAPE_CHECKED < Level.REPLAY_CHECKED
            < Level.PROVED)
    assert [lv.label for lv in Level] == ["launched", "parsed", "shape-checked",
                                          "replay-checked", "proved"]


# ---------------------------------------------------------------- claims: lengths and fields

@pytest.mark.parametrize("make, path, fragment", [
    (lambda g, s: claims.bounds(g, s, [0] * 2, [1] * 2), "claim.lo",
     "expected 3 numbers (the size of node 'fc3'), found 2"),
    (lambda g, s: claims.bounds(g, s, [0] * 10, [1] * 10, node="fc2"), "claim.lo",
     "expected 8 numbers"),
    (lambda g, s: claims.bounds(g, claims.box([0] * 5, [1] * 5), [0] * 3, [1] * 3),
     "claim.input_set.lo", "expected 6 numbers (the input size), found 5"),
    (lambda g, s: claims.bounds(g, claims.ball([0] * 7, 1), [0] * 3, [1] * 3),
     "claim.input_set.center", "expected 6 numbers"),
    (lambda g, s: claims.linear_bound(g, s, [[1, 0, 0], [1, 0]], [0, 0]), "claim.rows[1]",
     "expected 3 numbers"),
    (lambda g, s: claims.unsat(g, s, [claims.polytope([[1, -1, 0, 0]], [0])]),
     "claim.unsafe[0].A[0]", "expected 3 numbers"),
    (lambda g, s: claims.counterexample(claims.unsat(g, s, [claims.polytope([[1, -1, 0]], [0])]),
                                        [0] * 5), "claim.point", "expected 6 numbers"),
    (lambda g, s: claims.bounds(g, s, [0] * 3, [1] * 3, node="ghost"), "claim.node",
     "no node 'ghost'"),
])
def test_claim_vector_lengths_checked(mlp, make, path, fragment):
    s = claims.box([0] * 6, [1] * 6)
    rejected(make(mlp.graph, s), proof.ibp(), mlp.graph, rule="claim", path=path,
             contains=fragment)


def test_claim_for_another_graph_is_refused(mlp):
    claim = dataclasses.replace(claims.bounds(mlp.graph, claims.box([0] * 6, [1] * 6), [0] * 3,
                                              [1] * 3), graph="0" * 64)
    rejected(claim, proof.ibp(), mlp.graph, rule="context", path="claim.graph",
             contains="no graph with sha256")


def test_wrong_rule_for_the_claim_kind(mlp, setting):
    unsat = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    rejected(unsat, proof.counterexample_cert(), mlp.graph, rule="counterexample",
             path="claim.kind", contains="expected 'counterexample'")
    cex = claims.counterexample(unsat, setting["x0"])
    rejected(cex, proof.ibp(), mlp.graph, rule="ibp", path="claim.kind",
             contains="cannot conclude a counterexample claim")


@pytest.mark.parametrize("cert, rule, path, fragment", [
    ({"rule": "crown2"}, "derive", "certificate.rule", "expected one of"),
    ({}, "derive", "certificate.rule", "found None"),
    ("ibp", "derive", "certificate.rule", "found 'ibp'"),
    ({"rule": "ibp", "slopes": []}, "ibp", "certificate", "unexpected keys ['slopes']"),
    ({"rule": "counterexample", "point": [1]}, "counterexample", "certificate",
     "unexpected keys ['point']"),
])
def test_malformed_certificates(mlp, setting, cert, rule, path, fragment):
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    rejected(claim, cert, mlp.graph, rule=rule, path=path, contains=fragment)


def test_unknown_rule_lists_the_rules(mlp, setting):
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    err = rejected(claim, {"rule": "magic"}, mlp.graph, rule="derive", path="certificate.rule")
    for name in RULES:
        assert repr(name) in err.message


@pytest.mark.parametrize("cert", [{"rule": ["ibp"]}, {"rule": {"name": "ibp"}},
                                  {"rule": "assume", "name": ["user.hypothesis"],
                                   "evidence": {}}], ids=["rule-list", "rule-object",
                                                          "assume-name-list"])
def test_unhashable_certificate_fields_are_kernel_errors(mlp, setting, cert):
    """JSON lists/objects where a name is expected must be refused, not crash (TypeError)."""
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    with pytest.raises(KernelError):
        derive(Context([mlp.graph]), claim, cert)


# ---------------------------------------------------------------- claim documents

def _docs(mlp, setting):
    g = mlp.graph
    ball = claims.ball(setting["x0"], "1/8", clamp=(0, 1))
    box = claims.box([0] * 6, [1] * 6)
    unsat = robustness.robust(g, setting["x0"], "1/8", setting["label"])
    return {
        "bounds": claims.bounds(g, box, [-1] * 3, [1] * 3).to_json(),
        "ball_bounds": claims.bounds(g, ball, [-1] * 3, [1] * 3).to_json(),
        "linear": claims.linear_bound(g, ball, [[1, -1, 0]], [0]).to_json(),
        "unsat": unsat.to_json(),
        "cex": claims.counterexample(unsat, setting["x0"]).to_json(),
    }


@pytest.mark.parametrize("which", ["bounds", "ball_bounds", "linear", "unsat", "cex"])
def test_claim_json_roundtrip(mlp, setting, which):
    doc = _docs(mlp, setting)[which]
    claim = parse_claim(load_json(json.dumps(doc), "claim"))
    assert claim.to_json() == doc
    assert parse_claim(doc).spec_sha256() == claim.spec_sha256()


NAN_FIELDS = [
    ("bounds", ("lo", 1), "claim.lo[1]"),
    ("bounds", ("hi", 0), "claim.hi[0]"),
    ("bounds", ("input_set", "lo", 4), "claim.input_set.lo[4]"),
    ("bounds", ("input_set", "hi", 0), "claim.input_set.hi[0]"),
    ("ball_bounds", ("input_set", "center", 2), "claim.input_set.center[2]"),
    ("ball_bounds", ("input_set", "eps"), "claim.input_set.eps"),
    ("ball_bounds", ("input_set", "clamp", 1), "claim.input_set.clamp[1]"),
    ("linear", ("rows", 0, 1), "claim.rows[0][1]"),
    ("linear", ("rhs", 0), "claim.rhs[0]"),
    ("unsat", ("unsafe", 0, "A", 0, 0), "claim.unsafe[0].A[0][0]"),
    ("unsat", ("unsafe", 1, "b", 0), "claim.unsafe[1].b[0]"),
    ("cex", ("point", 3), "claim.point[3]"),
]


def _set(doc, keys, value):
    doc = copy.deepcopy(doc)
    target = doc
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return doc


def _mutated(mlp, setting, which: str, mutate) -> dict:
    """A copy of the `which` claim document, changed in place by `mutate`."""
    doc = copy.deepcopy(_docs(mlp, setting)[which])
    mutate(doc)
    return doc


def _claim_refusal(doc) -> KernelError:
    """The kernel's refusal of a claim document (the test fails if it parses)."""
    with pytest.raises(KernelError) as info:
        parse_claim(doc)
    return info.value


@pytest.mark.parametrize("which, keys, path", NAN_FIELDS)
@pytest.mark.parametrize("nan", ["nan", "NaN", "-inf", "f32:7fc00000", "f64:7ff8000000000001",
                                 float("nan")])
def test_nan_anywhere_in_a_claim_is_rejected(mlp, setting, which, keys, path, nan):
    err = _claim_refusal(_set(_docs(mlp, setting)[which], keys, nan))
    assert (err.rule, err.path) == ("claim", path)


@pytest.mark.parametrize("which, keys, path", NAN_FIELDS)
def test_json_nan_token_in_a_claim_document_is_rejected(mlp, setting, which, keys, path):
    doc = _set(_docs(mlp, setting)[which], keys, "@@NAN@@")
    text = json.dumps(doc).replace('"@@NAN@@"', "NaN")
    with pytest.raises(KernelError) as info:
        parse_claim(load_json(text, "claim"))
    assert info.value.rule == "claim" and "non-finite" in info.value.message


@pytest.mark.parametrize("mutate, path, fragment", [
    (lambda d: d.update(kind="maybe"), "claim.kind", "expected one of"),
    (lambda d: d.update(semantics="float32"), "claim.semantics",
     "expected 'real' for a claim of kind 'bounds'"),
    (lambda d: d.update(graph="abc"), "claim.graph", "expected the graph's sha256"),
    (lambda d: d.update(extra=1), "claim", "unexpected keys ['extra']"),
    (lambda d: d.pop("node"), "claim", "missing keys ['node']"),
    (lambda d: d.update(node=3), "claim.node", "expected a node id"),
    (lambda d: d.update(name=3), "claim.name", "expected a string"),
    (lambda d: d.update(hi=["1", "1"]), "claim.hi", "expected 3 numbers, found 2"),
    (lambda d: d["input_set"].update(lo=["2"] * 6), "claim.input_set.lo[0]", "lo <= hi"),
    (lambda d: d["input_set"].update(hi=["1"] * 5), "claim.input_set.hi", "expected 6 numbers"),
    (lambda d: d["input_set"].update(kind="sphere"), "claim.input_set.kind", "'box' or"),
    (lambda d: d.update(input_set=[]), "claim.input_set.kind", "'box' or"),
])
def test_claim_document_errors(mlp, setting, mutate, path, fragment):
    err = _claim_refusal(_mutated(mlp, setting, "bounds", mutate))
    assert (err.rule, err.path) == ("claim", path), err
    assert fragment in err.message


@pytest.mark.parametrize("mutate, path, fragment", [
    (lambda d: d["input_set"].update(eps="-1/8"), "claim.input_set.eps", "eps >= 0"),
    (lambda d: d["input_set"].update(clamp=["1", "0"]), "claim.input_set.clamp", "lo <= hi"),
    (lambda d: d["input_set"].update(clamp=["0"]), "claim.input_set.clamp", "expected 2"),
    (lambda d: d["input_set"].update(center=["5"] * 6), "claim.input_set.center[0]",
     "misses the clamp domain"),
])
def test_ball_document_errors(mlp, setting, mutate, path, fragment):
    err = _claim_refusal(_mutated(mlp, setting, "ball_bounds", mutate))
    assert (err.rule, err.path) == ("claim", path), err
    assert fragment in err.message


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d.update(unsafe=[]), "claim.unsafe"),
    (lambda d: d["unsafe"][0].update(A=[]), "claim.unsafe[0].A"),
    (lambda d: d["unsafe"][0].update(b=["0", "0"]), "claim.unsafe[0].b"),
    (lambda d: d["unsafe"][0].pop("b"), "claim.unsafe[0]"),
])
def test_polytope_document_errors(mlp, setting, mutate, path):
    err = _claim_refusal(_mutated(mlp, setting, "unsat", mutate))
    assert (err.rule, err.path) == ("claim", path), err


@pytest.mark.parametrize("kind", [["bounds"], {"k": 1}], ids=["list", "object"])
def test_unhashable_claim_kind_is_a_kernel_error(mlp, setting, kind):
    err = _claim_refusal(_mutated(mlp, setting, "bounds", lambda d: d.update(kind=kind)))
    assert err.path == "claim.kind"


def test_input_set_objects(setting):
    ball = LinfBall((fmpq(1, 2), fmpq(0)), fmpq(1, 4), (fmpq(0), fmpq(1)))
    assert ball.as_box() == Box((fmpq(1, 4), fmpq(0)), (fmpq(3, 4), fmpq(1, 4)))
    assert Claim("bounds", "0" * 64, ball, "y", lo=(fmpq(0),), hi=(fmpq(1),)).to_json()[
        "input_set"] == {"kind": "linf_ball", "center": ["1/2", "0"], "eps": "1/4",
                         "clamp": ["0", "1"]}


# ---------------------------------------------------------------- claims built in Python

def test_float32_claim_is_not_proved_by_real_arithmetic(kit):
    """y = x0 + x1 at x = (2^24, 1): the real value is 2^24 + 1, float32 gives 2^24. A claim in
    float32 semantics that y = 2^24 + 1 is false; real-arithmetic IBP must not prove it (the
    kernel has no float32 semantics yet, so it must refuse the claim)."""
    g = GraphBuilder()
    x = g.input([2])
    g.output(g.linear(x, np.array([[1.0, 1.0]], np.float32)))
    graph = kit.save(g, "f32sum").graph
    real = claims.bounds(graph, claims.box([2**24, 1], [2**24, 1]), [2**24 + 1], [2**24 + 1])
    assert proof.check(real, proof.ibp(), graph).level is Level.PROVED
    assert np.float32(2**24) + np.float32(1) == np.float32(2**24)  # the float32 claim is false
    rejected(dataclasses.replace(real, semantics="float32"), proof.ibp(), graph, rule="claim",
             path="claim.semantics")


def _base_claim(mlp):
    return claims.bounds(mlp.graph, claims.box([0] * 6, [1] * 6), [-100] * 3, [100] * 3)


@pytest.mark.parametrize("change, prefix", [
    (lambda c: dataclasses.replace(c, semantics="float32"), "claim.semantics"),
    (lambda c: dataclasses.replace(c, semantics="banana"), "claim.semantics"),
    (lambda c: dataclasses.replace(c, input_set=Box(c.input_set.hi, c.input_set.lo)),
     "claim.input_set"),
    (lambda c: dataclasses.replace(c, input_set=LinfBall((fmpq(1, 2),) * 6, fmpq(-1))),
     "claim.input_set"),
    (lambda c: dataclasses.replace(c, input_set=LinfBall((fmpq(5),) * 6, fmpq(1, 8),
                                                         (fmpq(0), fmpq(1)))),
     "claim.input_set"),
    (lambda c: dataclasses.replace(c, input_set=Box(c.input_set.lo, c.input_set.hi[:5])),
     "claim.input_set.hi"),
    (lambda c: dataclasses.replace(c, kind="linear_bound", rows=((fmpq(1),) * 3,),
                                   rhs=(fmpq(0), fmpq(5))), "claim.rhs"),
    (lambda c: dataclasses.replace(c, kind="unsat", unsafe=()), "claim.unsafe"),
    (lambda c: dataclasses.replace(c, kind="banana"), "claim.kind"),
], ids=["float32", "unknown-semantics", "box-lo-above-hi", "negative-eps", "ball-misses-clamp",
        "box-hi-shorter", "rhs-not-one-per-row", "no-polytope", "unknown-kind"])
def test_in_process_claims_are_validated_like_parsed_claims(mlp, change, prefix):
    """A Claim built in Python never passes parse_claim; derive must still refuse what a bundle
    replay refuses (otherwise the theorem cannot be replayed, or is about another semantics)."""
    claim = change(_base_claim(mlp))
    with pytest.raises(KernelError) as replay:
        parse_claim(json.loads(json.dumps(claim.to_json())))
    assert replay.value.path.startswith(prefix)
    with pytest.raises(KernelError) as info:
        proof.check(claim, proof.ibp(), mlp.graph)
    assert info.value.rule == "claim" and info.value.path.startswith(prefix), info.value


def test_in_process_claim_with_python_floats_is_a_kernel_error(mlp):
    """Floats must not reach the kernel; if they do, the refusal is a KernelError."""
    claim = dataclasses.replace(_base_claim(mlp), lo=(-100.0,) * 3)
    with pytest.raises(KernelError) as info:
        proof.check(claim, proof.ibp(), mlp.graph)
    assert info.value.path.startswith("claim.lo")


def test_assume_needs_its_evidence(mlp, setting):
    """TRUST_BOUNDARIES: a hypothesis comes with the user's reason; an empty one was accepted."""
    claim = robustness.robust(mlp.graph, setting["x0"], "1/8", setting["label"])
    rejected(claim, proof.assume("user.hypothesis"), mlp.graph, rule="assume",
             path="certificate.evidence", contains="non-empty")
