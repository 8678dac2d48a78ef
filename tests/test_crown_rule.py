"""Rule `crown` (kernel_checker/crown.py, docs/crown_certificate.md): what must be accepted is
accepted (the default certificate, the torch producer's CROWN and alpha-CROWN certificates,
hand-built intermediate entries with and without `indices`, per-row alphas, valid upper lines),
what must be rejected is rejected naming the rule and the certificate or claim field, down to one
2^-40 step past the kernel's own exact bound; and the kernel's exact CROWN bounds are sound
(below every sampled output) and, for one hidden layer with alpha = 0 and exact chords, never
worse than interval bounds."""

import copy
import json
import math
import os
import shutil
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
import torch
from flint import fmpz_mat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rule_helpers import build_mlp, enc, fr, q, randn, rejected, set_bound  # noqa: E402

from kernel_checker import check_bundle, crown
from kernel_checker.claims import Box, Claim
from kernel_checker.errors import KernelError
from kernel_checker.graph import load_graph
from kernel_checker.rules import box_interval
from kernel_checker.tensor import numel
from kernel_checker.theorem import Level
from oracles.bounds_torch import BOUND_BITS, crown_certificate
from stdlib import robustness
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

torch.set_num_threads(1)

ULP = Fraction(1, 2**40)
X0 = [Fraction(1, 2)] * 3


# ---------------------------------------------------------------------------------------------
# helpers










def accepted(claim, cert, graph, rule="crown"):
    thm = proof.check(claim, cert, graph)
    assert thm.rule == rule and thm.level == Level.PROVED and not thm.assumptions
    assert thm.claim == claim
    return thm


def domain(graph, box: Box, phases=None) -> crown.Domain:
    return crown.Domain(box_interval(box, graph.the_input("t", "t").shape), phases or {})


def node_interval(graph, box: Box, node: str, phases=None) -> tuple[list, list]:
    """The kernel's interval replay of `node` over the box (no certified bounds)."""
    chain = crown.ancestors(graph, node, "crown")
    values = crown.forward(graph, chain, domain(graph, box, phases), {})
    iv = values[node]
    return [Fraction(v, iv.den) for v in iv.lo], [Fraction(v, iv.den) for v in iv.hi]


def kernel_lows(graph, box: Box, node: str, rows, cert=None, phases=None) -> list[Fraction]:
    """The kernel's exact CROWN lower bounds of `rows` over node (no intermediate entries)."""
    chain = crown.ancestors(graph, node, "crown")
    dom = domain(graph, box, phases)
    values = crown.forward(graph, chain, dom, {})
    rows_q = [[q(v) for v in r] for r in rows]
    return [fr(v) for v in crown.lower_bounds(graph, chain, values, dom, rows_q, cert or {},
                                              "crown", "certificate")]


def unit_rows(n: int, idx=None) -> list:
    idx = list(range(n)) if idx is None else idx
    eye = [[1 if i == j else 0 for i in range(n)] for j in idx]
    return eye + [[-v for v in r] for r in eye]


def entry_bounds(graph, box, node, idx=None, entry_cert=None):
    """Exact kernel bounds (lo, hi) of a first intermediate entry on `node`."""
    n = numel(graph.by_id[node].shape)
    idx = list(range(n)) if idx is None else idx
    lows = kernel_lows(graph, box, node, unit_rows(n, idx), entry_cert)
    m = len(idx)
    return lows[:m], [-v for v in lows[m:]]


def ball_box(center, eps) -> Box:
    return claims.ball(center, eps).as_box()


def label_of(kit, graph, x) -> int:
    out = kit.point(graph, x)[graph.outputs[0]]
    return max(range(len(out)), key=lambda i: out[i])






def build_tiny_cnn(seed=3) -> GraphBuilder:
    """conv(pad) -> relu -> avgpool -> conv(pad) -> relu -> flatten -> linear: a crown chain."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 4, 4])
    h = g.relu(g.conv2d(x, randn(rng, 2, 1, 3, 3), randn(rng, 2, scale=0.1), padding=(1, 1),
                        name="conv1"))
    h = g.avgpool2d(h, (2, 2))
    h = g.conv2d(h, randn(rng, 3, 2, 2, 2), randn(rng, 3, scale=0.1), padding=(1, 1),
                 name="conv2")
    h = g.flatten(g.relu(h))
    h = g.linear(h, randn(rng, 3, h.shape[0], scale=0.3), randn(rng, 3, scale=0.1), name="fc")
    g.output(h)
    return g


@pytest.fixture(scope="module")
def net(kit):
    """A 3-8-8-2 MLP (fc1 relu1 fc2 relu2 fc3); at x0 = (1/2, 1/2, 1/2) its label is 0 and
    plain CROWN proves robustness at 3/8 only with the intermediate bounds of fc2, alpha-CROWN
    at 1/2 only with its per-row slopes."""
    built = kit.save(build_mlp(), "crown_mlp")
    assert label_of(kit, built.graph, X0) == 0
    return built


@pytest.fixture(scope="module")
def tiny_cnn(kit):
    built = kit.save(build_tiny_cnn(), "crown_cnn")
    x0 = [Fraction(k, 15) for k in range(16)]
    return built, x0, label_of(kit, built.graph, x0)


# ---------------------------------------------------------------------------------------------
# must accept


def test_default_certificate_proves_the_kernels_exact_bounds(net):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    lo, hi = entry_bounds(g, box, "fc3")
    claim = claims.bounds(g, box, lo, hi, node="fc3")
    thm = accepted(claim, {"rule": "crown"}, g)
    assert thm.premises == ()


@pytest.mark.parametrize("i", [0, 1])
def test_claim_bound_one_step_past_the_exact_bound_is_rejected(net, i):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    lo, hi = entry_bounds(g, box, "fc3")
    up = list(lo)
    up[i] += ULP
    rejected(claims.bounds(g, box, up, hi, node="fc3"), {"rule": "crown"}, g, rule="crown",
             path=f"claim.lo[{i}]", contains="above the kernel's bound")
    down = list(hi)
    down[i] -= ULP
    rejected(claims.bounds(g, box, lo, down, node="fc3"), {"rule": "crown"}, g, rule="crown",
             path=f"claim.hi[{i}]", contains="below the kernel's bound")


def test_linear_bound_rhs_exact_accepted_one_step_higher_rejected(net):
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    rows = [[1, -1], [Fraction(3, 4), Fraction(1, 8)], [-2, 0]]
    rhs = kernel_lows(g, box, "fc3", rows)
    accepted(claims.linear_bound(g, box, rows, rhs), {"rule": "crown"}, g)
    for i in range(3):
        bad = list(rhs)
        bad[i] += ULP
        rejected(claims.linear_bound(g, box, rows, bad), {"rule": "crown"}, g, rule="crown",
                 path=f"claim.rhs[{i}]", contains="above the kernel's lower bound")


def test_unsat_polytope_excluded_only_strictly(net):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    (low,) = kernel_lows(g, box, "fc3", [[1, -1]])
    assert low > 0
    safe = claims.unsat(g, box, [claims.polytope([[1, -1]], [low - ULP])])
    accepted(safe, {"rule": "crown"}, g)
    tight = claims.unsat(g, box, [claims.polytope([[0, 1]], [-100]),
                                  claims.polytope([[1, -1]], [low])])
    rejected(tight, {"rule": "crown"}, g, rule="crown", path="claim.unsafe[1]",
             contains="not excluded")


def test_producer_crown_and_alpha_certificates_are_accepted(net):
    g = net.graph
    for eps, methods in ((Fraction(3, 8), ("crown", "alpha")), (Fraction(1, 2), ("alpha",))):
        claim = robustness.robust(g, X0, eps, 0, clamp=None)
        for method in methods:
            cert, _ = crown_certificate(net.path, claim, method)
            json.dumps(cert)  # plain JSON
            accepted(claim, cert, g)
            assert cert["intermediate"][0]["node"] == "fc2"
            if method == "alpha":
                per_row = cert["alpha"]["relu2"]["values"]  # integers over den
                assert isinstance(per_row[0], list) and len(per_row) == 1  # one spec row


def test_intermediate_bounds_and_per_row_alphas_are_what_proves_it(net):
    g = net.graph
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    cert, _ = crown_certificate(net.path, claim, "crown")
    accepted(claim, cert, g)
    rejected(claim, {k: v for k, v in cert.items() if k != "intermediate"}, g, rule="crown",
             path="claim.unsafe[0]", contains="not excluded")
    claim = robustness.robust(g, X0, Fraction(1, 2), 0, clamp=None)
    alpha, _ = crown_certificate(net.path, claim, "alpha")
    accepted(claim, alpha, g)
    rejected(claim, {k: v for k, v in alpha.items() if k != "alpha"}, g, rule="crown",
             path="claim.unsafe[0]")
    plain, _ = crown_certificate(net.path, claim, "crown")
    rejected(claim, plain, g, rule="crown", path="claim.unsafe[0]")


def test_producer_certificates_on_a_tiny_cnn(tiny_cnn):
    built, x0, label = tiny_cnn
    g = built.graph
    small = robustness.robust(g, x0, Fraction(1, 16), label, clamp=None)
    for method in ("crown", "alpha"):
        cert, _ = crown_certificate(built.path, small, method)
        assert cert["intermediate"][0]["node"] == "conv2"
        accepted(small, cert, g)
    wider = robustness.robust(g, x0, Fraction(1, 8), label, clamp=None)
    cert, _ = crown_certificate(built.path, wider, "alpha")
    accepted(wider, cert, g)
    plain, _ = crown_certificate(built.path, wider, "crown")
    rejected(wider, plain, g, rule="crown", path="claim.unsafe[0]")
    # the default certificate at the kernel's exact bounds, and a conv2 entry one step too tight
    box = small.input_set.as_box()
    lo, hi = entry_bounds(g, box, "fc")
    accepted(claims.bounds(g, box, lo, hi), {"rule": "crown"}, g)
    cert, _ = crown_certificate(built.path, small, "crown")
    entry = cert["intermediate"][0]
    elo, ehi = entry_bounds(g, box, "conv2", entry["indices"], entry)
    assert entry["den"] == 2**BOUND_BITS  # the producer's integers over den
    set_bound(entry, "lo", len(elo) - 1, elo[-1])
    accepted(small, cert, g)
    set_bound(entry, "lo", len(elo) - 1, elo[-1] + ULP)
    rejected(small, cert, g, rule="crown",
             path=f"certificate.intermediate[0].lo[{len(elo) - 1}]",
             contains=f"of neuron {entry['indices'][-1]} is above the kernel's bound")


def _unstable(lo, hi):
    return [j for j, (a, b) in enumerate(zip(lo, hi)) if a < 0 < b]


@pytest.mark.parametrize("with_indices", [False, True])
def test_hand_built_intermediate_entry_exact_accepted_one_step_tighter_rejected(net,
                                                                               with_indices):
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    zlo, zhi = node_interval(g, box, "fc2")
    idx = list(reversed(_unstable(zlo, zhi))) if with_indices else None
    assert idx is None or len(idx) >= 3
    lo, hi = entry_bounds(g, box, "fc2", idx)
    entry = {"node": "fc2", "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi]}
    if with_indices:
        entry["indices"] = idx
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    cert = {"rule": "crown", "intermediate": [entry]}
    accepted(claim, cert, g)
    for k in (0, len(lo) - 1):
        bad = copy.deepcopy(cert)
        bad["intermediate"][0]["lo"][k] = enc(lo[k] + ULP)
        neuron = idx[k] if idx else k
        err = rejected(claim, bad, g, rule="crown", path=f"certificate.intermediate[0].lo[{k}]",
                       contains=f"of neuron {neuron} is above the kernel's bound")
        assert enc(lo[k] + ULP) in err.message
        bad = copy.deepcopy(cert)
        bad["intermediate"][0]["hi"][k] = enc(hi[k] - ULP)
        rejected(claim, bad, g, rule="crown", path=f"certificate.intermediate[0].hi[{k}]",
                 contains=f"of neuron {neuron} is below the kernel's bound")


def test_entry_bounds_as_integers_over_den(net):
    """An entry may give its bounds as JSON integers over its "den" (what producers send: no
    text to parse): the kernel's exact bounds so written are accepted and certify the very
    bounds the text encoding does; one step of 1/den tighter is refused at that side; a den or
    a value of another type, sign or count is refused at its field."""
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    lo, hi = entry_bounds(g, box, "fc2")
    den = math.lcm(*(v.denominator for v in lo + hi))
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    entry = {"node": "fc2", "den": den, "lo": [int(v * den) for v in lo],
             "hi": [int(v * den) for v in hi]}
    text = {"node": "fc2", "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi]}
    cert = {"rule": "crown", "intermediate": [entry]}
    accepted(claim, cert, g)
    dom = domain(g, box)
    got = crown._replay(g, claim, cert, dom, "certificate")[0]["fc2"]
    want = crown._replay(g, claim, {"rule": "crown", "intermediate": [text]}, dom,
                         "certificate")[0]["fc2"]
    assert [[Fraction(v, got[2]) for v in side] for side in got[:2]] == [
        [Fraction(v, want[2]) for v in side] for side in want[:2]]
    last = len(lo) - 1
    for key, step, where in (("lo", 1, "above"), ("hi", -1, "below")):
        bad = copy.deepcopy(cert)
        bad["intermediate"][0][key][last] += step
        rejected(claim, bad, g, rule="crown", path=f"certificate.intermediate[0].{key}[{last}]",
                 contains=f"of neuron {last} is {where} the kernel's bound")
    p = "certificate.intermediate[0]"
    for field, value, path in (
            ("den", 0, f"{p}.den"), ("den", -den, f"{p}.den"), ("den", True, f"{p}.den"),
            ("den", float(den), f"{p}.den"), ("den", str(den), f"{p}.den"),
            ("den", 1 << 4096, f"{p}.den"), ("lo", entry["lo"][:-1], f"{p}.lo"),
            ("lo", [enc(v) for v in lo], f"{p}.lo"), ("hi", entry["hi"][:-1] + [1.5], f"{p}.hi"),
            ("hi", entry["hi"][:-1] + [False], f"{p}.hi"), ("hi", "1", f"{p}.hi")):
        bad = copy.deepcopy(cert)
        bad["intermediate"][0][field] = value
        rejected(claim, bad, g, rule="crown", path=path)


def test_entry_side_left_null_is_not_claimed(net):
    """null in an entry's lo/hi claims nothing for that side: the kernel keeps its interval
    replay's bound there (not tightened), still checks the claimed side to one step, refuses a
    neuron claiming neither side, and counts only claimed sides as the entry's rows."""
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    lo, hi = entry_bounds(g, box, "fc2")
    zlo, _ = node_interval(g, box, "fc2")
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    dead = [j for j, b in enumerate(hi) if b <= 0]  # inactive: lo does not matter
    assert dead and any(a > b for a, b in zip(lo, zlo))  # CROWN is tighter than the replay
    entry = {"node": "fc2", "lo": [None if j in dead else enc(v) for j, v in enumerate(lo)],
             "hi": [enc(v) for v in hi]}
    cert = {"rule": "crown", "intermediate": [entry]}
    accepted(claim, cert, g)
    k = dead[0]
    bad = copy.deepcopy(cert)
    bad["intermediate"][0]["hi"][k] = enc(hi[k] - ULP)
    rejected(claim, bad, g, rule="crown", path=f"certificate.intermediate[0].hi[{k}]",
             contains=f"upper bound {enc(hi[k] - ULP)} of neuron {k} is below the kernel's")
    bad["intermediate"][0]["hi"][k] = None
    rejected(claim, bad, g, rule="crown", path="certificate.intermediate[0].lo",
             contains="claims neither bound")
    bad = copy.deepcopy(cert)
    bad["intermediate"][0]["alpha"] = {"relu1": [["0"] * 8] * (2 * len(lo))}
    rejected(claim, bad, g, rule="crown", path="certificate.intermediate[0].alpha.relu1",
             contains=f"expected {2 * len(lo) - len(dead)} per-row lists")
    # every lo null: the same verdict as lo given at the replay's own bounds, on both radii
    outcomes = []
    for eps in (Fraction(3, 8), Fraction(1, 2)):
        c = robustness.robust(g, X0, eps, 0, clamp=None)
        b = c.input_set.as_box()
        elo, ehi = entry_bounds(g, b, "fc2")
        rlo, _ = node_interval(g, b, "fc2")
        verdicts = []
        for lows in ([None] * len(elo), [enc(v) for v in rlo]):
            e = {"node": "fc2", "lo": lows, "hi": [enc(v) for v in ehi]}
            try:
                proof.check(c, {"rule": "crown", "intermediate": [e]}, g)
                verdicts.append(True)
            except KernelError:
                verdicts.append(False)
        assert verdicts[0] == verdicts[1], eps
        outcomes.append(verdicts[0])
    assert outcomes == [True, False]  # proved at 3/8, not at 1/2: the comparison can fail


def test_intermediate_entry_rounded_outward_to_dyadics_is_accepted(net):
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    lo, hi = entry_bounds(g, box, "fc2")
    s = 2**20
    down = [Fraction((v * s).__floor__(), s) for v in lo]
    up = [Fraction((v * s).__ceil__(), s) for v in hi]
    cert = {"rule": "crown", "intermediate": [
        {"node": "fc2", "lo": [enc(v) for v in down], "hi": [enc(v) for v in up]}]}
    accepted(robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None), cert, g)


def test_two_intermediate_entries_in_chain_order(net):
    """An entry on a relu output and then one on fc2: both proved, in order. (An entry on a
    relu takes the backward route, fc2's bounds alone the affine-block one: they may differ in
    the last bits, hence the ULP.)"""
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    rlo, rhi = entry_bounds(g, box, "relu1")
    first = {"node": "relu1", "lo": [enc(v) for v in rlo], "hi": [enc(v) for v in rhi]}
    lo, hi = entry_bounds(g, box, "fc2")
    second = {"node": "fc2", "lo": [enc(v - ULP) for v in lo], "hi": [enc(v + ULP) for v in hi]}
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    accepted(claim, {"rule": "crown", "intermediate": [first, second]}, g)
    rejected(claim, {"rule": "crown", "intermediate": [second, first]}, g, rule="crown",
             path="certificate.intermediate[1].node", contains="'relu1'")


def test_two_entries_on_one_node_each_proved_with_its_own_slopes(net):
    """A node's entries in a row (what the input-split producer sends for an alpha leaf: the
    bounds CROWN's default slopes gave, then those its alpha slopes gave): each is proved with
    its own slopes on the same earlier bounds and both cut the interval; a bound is refused at
    its own entry's field when that entry's slopes do not give it, even where the other's do."""
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    halves = {"alpha": {"relu1": ["1/2"] * 8}}
    lo_d, hi_d = entry_bounds(g, box, "fc2")
    lo_a, hi_a = entry_bounds(g, box, "fc2", None, halves)
    # here the default slopes give the better lower bounds, slopes 1/2 the better upper
    # bounds of neurons 3 and 6
    assert all(d > a for d, a in zip(lo_d, lo_a)) and hi_a[3] < hi_d[3] and hi_a[6] < hi_d[6]
    first = {"node": "fc2", "indices": [0, 1, 2, 3], "lo": [enc(v) for v in lo_d[:4]],
             "hi": [enc(v) for v in hi_d[:4]]}
    second = {"node": "fc2", "indices": [3, 6], "lo": [None, None],
              "hi": [enc(hi_a[3]), enc(hi_a[6])], **halves}
    claim = claims.bounds(g, box, [-100, -100], [100, 100], node="fc3")
    cert = {"rule": "crown", "intermediate": [first, second]}
    accepted(claim, cert, g)
    dom = domain(g, box)
    certified = crown._replay(g, claim, cert, dom, "certificate")[0]
    lo, hi, den = certified["fc2"]
    assert (Fraction(lo[0], den), Fraction(hi[3], den), Fraction(hi[6], den)) == (
        lo_d[0], hi_a[3], hi_a[6])
    bad = copy.deepcopy(second)
    bad["hi"][0] = enc(hi_a[3] - ULP)
    rejected(claim, {"rule": "crown", "intermediate": [first, bad]}, g, rule="crown",
             path="certificate.intermediate[1].hi[0]", contains="is below the kernel's bound")
    bad = {**copy.deepcopy(second), "indices": [0, 6], "lo": [enc(lo_d[0]), None],
           "hi": [enc(hi_a[0]), enc(hi_a[6])]}
    rejected(claim, {"rule": "crown", "intermediate": [first, bad]}, g, rule="crown",
             path="certificate.intermediate[1].lo[0]", contains="is above the kernel's bound")


def test_per_row_alphas_in_an_intermediate_entry(net):
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    zlo, zhi = node_interval(g, box, "fc1")
    idx = [0, 3, 5]
    assert _unstable(zlo, zhi)
    rows = [["1" if (k + j) % 2 else "0" for j in range(8)] for k in range(2 * len(idx))]
    entry_cert = {"alpha": {"relu1": rows}}
    lo, hi = entry_bounds(g, box, "fc2", idx, entry_cert)
    entry = {"node": "fc2", "indices": idx, "lo": [enc(v) for v in lo],
             "hi": [enc(v) for v in hi], **entry_cert}
    claim = claims.bounds(g, box, [-100, -100], [100, 100], node="fc3")
    accepted(claim, {"rule": "crown", "intermediate": [entry]}, g)
    bad = copy.deepcopy(entry)
    bad["alpha"]["relu1"] = rows[:-1]
    rejected(claim, {"rule": "crown", "intermediate": [bad]}, g, rule="crown",
             path="certificate.intermediate[0].alpha.relu1",
             contains="expected 6 per-row lists, found 5")
    bad = copy.deepcopy(entry)
    bad["alpha"]["relu1"][4][1] = "-1/1024"
    rejected(claim, {"rule": "crown", "intermediate": [bad]}, g, rule="crown",
             path="certificate.intermediate[0].alpha.relu1[4][1]", contains="in [0, 1]")


def exact_chords(lo, hi):
    """Exact chord lines (slope, intercept) for unstable neurons, '0' elsewhere."""
    slope, icpt = [], []
    for a, b in zip(lo, hi):
        if a < 0 < b:
            s = b / (b - a)
            slope.append(enc(s))
            icpt.append(enc(-s * a))
        else:
            slope.append("0")
            icpt.append("0")
    return {"slope": slope, "intercept": icpt}


def test_given_valid_upper_lines_are_accepted_and_exact_chords_beat_the_default(net):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    rows = [[1, -1], [-1, 1], [1, 0], [0, -1]]
    z1 = node_interval(g, box, "fc1")
    z2 = node_interval(g, box, "fc2")
    upper = {"relu1": exact_chords(*z1), "relu2": exact_chords(*z2)}
    default = kernel_lows(g, box, "fc3", rows)
    exact = kernel_lows(g, box, "fc3", rows, {"upper": upper})
    assert all(e >= d for e, d in zip(exact, default))
    assert any(e > d for e, d in zip(exact, default))
    accepted(claims.linear_bound(g, box, rows, exact), {"rule": "crown", "upper": upper}, g)
    rejected(claims.linear_bound(g, box, rows, exact), {"rule": "crown"}, g, rule="crown",
             path=f"claim.rhs[{[e > d for e, d in zip(exact, default)].index(True)}]")
    # a looser but valid line: slope 1, intercept -l (the identity shifted up)
    loose = {"slope": ["1"] * 8, "intercept": [enc(-a) if a < 0 else "0" for a in z1[0]]}
    lows = kernel_lows(g, box, "fc3", rows, {"upper": {"relu1": loose}})
    accepted(claims.linear_bound(g, box, rows, lows), {"rule": "crown",
                                                       "upper": {"relu1": loose}}, g)


# ---------------------------------------------------------------------------------------------
# must reject: slopes, upper lines, entries, specs, ops


@pytest.mark.parametrize("bad", ["-1/1024", "1025/1024"])
def test_alpha_outside_unit_interval_rejected(net, bad):
    """Slopes as texts (shared, per row) and as integers over a den (shared, per row)."""
    g = net.graph
    claim = robustness.robust(g, X0, Fraction(1, 4), 0, clamp=None)
    cert, _ = crown_certificate(net.path, claim, "crown")
    accepted(claim, cert, g)
    assert all(a["den"] == 1 for a in cert["alpha"].values())  # CROWN's defaults: 0 or 1
    texts = copy.deepcopy(cert)
    texts["alpha"] = {k: [enc(v) for v in a["values"]] for k, a in cert["alpha"].items()}
    accepted(claim, texts, g)
    shared = copy.deepcopy(texts)
    shared["alpha"]["relu2"][5] = bad
    rejected(claim, shared, g, rule="crown", path="certificate.alpha.relu2[5]",
             contains=("expected a slope in [0, 1]", bad))
    rows = copy.deepcopy(texts)
    rows["alpha"]["relu1"] = [list(texts["alpha"]["relu1"])]
    accepted(claim, rows, g)
    rows["alpha"]["relu1"][0][2] = bad
    rejected(claim, rows, g, rule="crown", path="certificate.alpha.relu1[0][2]",
             contains="expected a slope in [0, 1]")
    num = int(Fraction(bad) * 1024)
    ints = copy.deepcopy(cert)
    ints["alpha"]["relu2"] = {"den": 1024, "values": [v * 1024 for v in
                                                      cert["alpha"]["relu2"]["values"]]}
    accepted(claim, ints, g)
    ints["alpha"]["relu2"]["values"][5] = num
    rejected(claim, ints, g, rule="crown", path="certificate.alpha.relu2.values[5]",
             contains=f"expected a slope in [0, 1], found {num} over 1024")
    ints = copy.deepcopy(cert)
    ints["alpha"]["relu1"]["values"] = [list(cert["alpha"]["relu1"]["values"])]
    accepted(claim, ints, g)
    ints["alpha"]["relu1"]["values"][0][2] = num
    rejected(claim, ints, g, rule="crown", path="certificate.alpha.relu1.values[0][2]",
             contains="expected a slope in [0, 1]")


@pytest.mark.parametrize("value, path", [
    ({"den": 1024}, "certificate.alpha.relu1"),
    ({"den": 1024, "values": [512] * 8, "x": 1}, "certificate.alpha.relu1"),
    ({"den": 0, "values": [0] * 8}, "certificate.alpha.relu1.den"),
    ({"den": True, "values": [0] * 8}, "certificate.alpha.relu1.den"),
    ({"den": "1024", "values": [0] * 8}, "certificate.alpha.relu1.den"),
    ({"den": 1024.0, "values": [0] * 8}, "certificate.alpha.relu1.den"),
    ({"den": 1024, "values": [512] * 7}, "certificate.alpha.relu1.values"),
    ({"den": 1024, "values": ["1/2"] * 8}, "certificate.alpha.relu1.values[0]"),
    ({"den": 1024, "values": [512] * 7 + [512.0]}, "certificate.alpha.relu1.values[7]"),
    ({"den": 2, "values": [1] * 7 + [True]}, "certificate.alpha.relu1.values[7]"),
    ({"den": 1024, "values": [[512] * 8] * 3}, "certificate.alpha.relu1.values"),
])
def test_malformed_integer_slopes_rejected(net, value, path):
    """{"den", "values"}: exactly those keys, a positive integer den, and integers in
    [0, den], one list (shared) or one per row; else refused at the field."""
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    accepted(claim, {"rule": "crown", "alpha": {"relu1": {"den": 2, "values": [1] * 8}}}, g)
    rejected(claim, {"rule": "crown", "alpha": {"relu1": value}}, g, rule="crown", path=path)


def test_alpha_endpoints_zero_and_one_are_accepted(net):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    for v in ("0", "1", "1/2"):
        accepted(claim, {"rule": "crown", "alpha": {"relu1": [v] * 8, "relu2": [[v] * 8] * 4}},
                 g)


@pytest.mark.parametrize("value,path,fragment", [
    (["1"] * 7, "certificate.alpha.relu1", "expected 8 numbers, found 7"),
    (["1"] * 9, "certificate.alpha.relu1", "expected 8 numbers, found 9"),
    ([["1"] * 8] * 3, "certificate.alpha.relu1", "expected 4 per-row lists, found 3"),
    ([["1"] * 8] * 3 + [["1"] * 7], "certificate.alpha.relu1[3]", "expected 8 numbers"),
    ([], "certificate.alpha.relu1", "expected 8 numbers, found 0"),
    (["1"] * 7 + ["x"], "certificate.alpha.relu1[7]", ""),
])
def test_alpha_of_the_wrong_length_rejected(net, value, path, fragment):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    rejected(claim, {"rule": "crown", "alpha": {"relu1": value}}, g, rule="crown", path=path,
             contains=fragment)


@pytest.mark.parametrize("key", ["alpha", "upper"])
def test_slopes_keyed_by_a_node_that_is_no_relu_ancestor_are_refused(net, key):
    """alpha and upper keyed by a linear node's id (or any id no relu of the claim has) were
    read by nothing and accepted (a review): refused now, at the top and in an entry."""
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    for where in ("fc2", "nope"):
        rejected(claim, {"rule": "crown", key: {where: ["1"] * 8}}, g, rule="crown",
                 path=f"certificate.{key}", contains=(f"found ['{where}']", "relu1"))
    entry = {"node": "fc2", "lo": [None] * 8, "hi": ["50"] * 8, key: {"fc1": ["1"] * 8}}
    rejected(claim, {"rule": "crown", "intermediate": [entry]}, g, rule="crown",
             path=f"certificate.intermediate[0].{key}", contains="found ['fc1']")


@pytest.mark.parametrize("end", ["l", "u"])
def test_upper_line_dipping_below_relu_at_one_endpoint_rejected(net, end):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    zlo, zhi = node_interval(g, box, "fc1")
    upper = exact_chords(zlo, zhi)
    j = _unstable(zlo, zhi)[-1]
    lj, uj = zlo[j], zhi[j]
    if end == "l":  # slope 1 through (l, -2^-40): fine at u, below relu at l
        s, t = Fraction(1), -lj - ULP
        assert s * lj + t == -ULP and s * uj + t >= uj
    else:  # flat line at u - 2^-40: fine at l, below relu at u
        s, t = Fraction(0), uj - ULP
        assert s * lj + t >= 0 and s * uj + t == uj - ULP
    upper["slope"][j], upper["intercept"][j] = enc(s), enc(t)
    claim = claims.bounds(g, box, [-50, -50], [50, 50], node="fc3")
    rejected(claim, {"rule": "crown", "upper": {"relu1": upper}}, g, rule="crown",
             path=f"certificate.upper.relu1.slope[{j}]", contains="dips below relu")
    # the same line moved up by 2^-40 touches relu: accepted
    upper["intercept"][j] = enc(t + ULP)
    accepted(claim, {"rule": "crown", "upper": {"relu1": upper}}, g)


@pytest.mark.parametrize("entry,path,fragment", [
    ({"slope": ["1"] * 8}, "certificate.upper.relu1", "expected {slope, intercept}"),
    ({"slope": ["1"] * 8, "intercept": ["0"] * 7}, "certificate.upper.relu1.intercept",
     "expected 8 numbers"),
    ({"slope": ["1"] * 8, "intercept": ["0"] * 8, "x": 1}, "certificate.upper.relu1", ""),
    ([1, 2], "certificate.upper.relu1", "expected {slope, intercept}"),
])
def test_malformed_upper_lines_rejected(net, entry, path, fragment):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    rejected(claim, {"rule": "crown", "upper": {"relu1": entry}}, g, rule="crown", path=path,
             contains=fragment)


@pytest.mark.parametrize("nodes,bad", [
    (["nope"], 0), (["fc3"], 0), (["x"], 0), (["fc2", "fc1"], 1),
    (["fc1", "relu1", "fc1"], 2), (["fc2", "relu1", "fc2"], 1),
])
def test_intermediate_entry_not_on_the_chain_or_out_of_order_rejected(net, nodes, bad):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    entries = []
    for nid in nodes:
        if nid in g.by_id and nid != "x":
            lo, hi = entry_bounds(g, box, nid)
            entries.append({"node": nid, "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi]})
        else:
            entries.append({"node": nid, "lo": [], "hi": []})
    claim = claims.bounds(g, box, [-50, -50], [50, 50], node="fc3")
    rejected(claim, {"rule": "crown", "intermediate": entries}, g, rule="crown",
             path=f"certificate.intermediate[{bad}].node",
             contains=("expected an ancestor of 'fc3' listed no earlier than", repr(nodes[bad])))


def test_intermediate_entry_after_the_claim_node_rejected(net):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    lo, hi = node_interval(g, box, "fc2")
    claim = claims.bounds(g, box, [-50] * 8, [50] * 8, node="relu1")
    rejected(claim, {"rule": "crown", "intermediate": [
        {"node": "fc2", "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi]}]}, g,
        rule="crown", path="certificate.intermediate[0].node", contains="ancestor of 'relu1'")


@pytest.mark.parametrize("change,path,fragment", [
    ({"indices": [0, 0]}, "certificate.intermediate[0].indices", "distinct neuron indices < 8"),
    ({"indices": [8]}, "certificate.intermediate[0].indices", "< 8"),
    ({"indices": [-1]}, "certificate.intermediate[0].indices", "< 8"),
    ({"indices": [True]}, "certificate.intermediate[0].indices", ""),
    ({"indices": [1.0]}, "certificate.intermediate[0].indices", ""),
    ({"indices": []}, "certificate.intermediate[0].indices", "at least one"),
    ({"indices": [0, None]}, "certificate.intermediate[0].indices", ""),
    ({"indices": "0"}, "certificate.intermediate[0].indices", ""),
    ({"indices": [0, 1]}, "certificate.intermediate[0].lo", "expected 2 numbers, found 8"),
    ({"extra": 1}, "certificate.intermediate[0]", "unexpected keys ['extra']"),
    ({"lo": "0"}, "certificate.intermediate[0].lo", "expected a list"),
])
def test_malformed_intermediate_entries_rejected(net, change, path, fragment):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    lo, hi = node_interval(g, box, "fc2")
    entry = {"node": "fc2", "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi], **change}
    claim = claims.bounds(g, box, [-50, -50], [50, 50], node="fc3")
    rejected(claim, {"rule": "crown", "intermediate": [entry]}, g, rule="crown", path=path,
             contains=fragment)


@pytest.mark.parametrize("cert,path,fragment", [
    ({"rule": "crown", "bogus": 1}, "certificate", "unexpected keys ['bogus']"),
    ({"rule": "crown", "intermediate": {}}, "certificate.intermediate", "expected a list"),
    ({"rule": "crown", "intermediate": [1]}, "certificate.intermediate[0]",
     "expected a certificate object"),
])
def test_malformed_crown_certificates_rejected(net, cert, path, fragment):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    rejected(claim, cert, g, rule="crown", path=path, contains=fragment)


def test_certificate_for_another_label_is_refused(net):
    g = net.graph
    mine = robustness.robust(g, X0, Fraction(1, 4), 0, clamp=None)
    cert, _ = crown_certificate(net.path, mine, "alpha")
    accepted(mine, cert, g)
    other = robustness.robust(g, X0, Fraction(1, 4), 1, clamp=None)
    rejected(other, cert, g, rule="crown", path="claim.unsafe[0]", contains="not excluded")


def test_certificate_for_a_moved_ball_is_refused_at_its_intermediate_bounds(net):
    """The producer's certificate for the 1/4 ball around X0, used for the ball around
    (9/16, 9/16, 9/16): its fc2 bounds no longer hold there."""
    g = net.graph
    mine = robustness.robust(g, X0, Fraction(1, 4), 0, clamp=None)
    cert, _ = crown_certificate(net.path, mine, "crown")
    accepted(mine, cert, g)
    moved = robustness.robust(g, [Fraction(9, 16)] * 3, Fraction(1, 4), 0, clamp=None)
    with pytest.raises(KernelError) as info:
        proof.check(moved, cert, g)
    err = info.value
    assert err.rule == "crown" and err.path.startswith("certificate.intermediate[0]."), err
    assert "the kernel's bound" in err.message  # (here: lo[1], neuron 3)


def test_bundle_with_a_crown_certificate_rechecks_in_a_fresh_process(net, kit):
    folder = kit.folder("crown_bundle")
    for name in ("graph.json", "weights.safetensors"):
        shutil.copy(os.path.join(net.folder, name), folder)
    gpath = os.path.join(folder, "graph.json")
    g = load_graph(gpath)
    claim = robustness.robust(g, X0, Fraction(1, 2), 0, clamp=None, name="alpha robust")
    cert, _ = crown_certificate(gpath, claim, "alpha")
    bundle = proof.write_bundle(os.path.join(folder, "proof", "crown.json"), claim, cert, gpath, g)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert ok, text
    assert text == "holds: unsat by crown, level proved, 0 assumption(s)"
    with open(bundle) as f:
        doc = json.load(f)
    for key, path in (("graph", "artifacts.graph.sha256"),
                      ("weights", "artifacts.weights.sha256")):
        bad = copy.deepcopy(doc)
        bad["artifacts"][key]["sha256"] = "0" * 64
        tampered = os.path.join(folder, "proof", f"bad_{key}.json")
        with open(tampered, "w") as f:
            json.dump(bad, f)
        with pytest.raises(KernelError) as info:
            check_bundle(tampered)
        assert (info.value.rule, info.value.path) == ("bundle", path), info.value
        assert "sha256 mismatch" in info.value.message
    # the graph file itself changed (one weight name swapped in): refused by the bundle's hash
    with open(gpath) as f:
        gdoc = json.load(f)
    gdoc["nodes"][1]["attrs"]["bias"] = None
    with open(gpath, "w") as f:
        json.dump(gdoc, f)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert not ok and "artifacts.graph.sha256" in text and "sha256 mismatch" in text


# ---------------------------------------------------------------------------------------------
# soundness: exact bounds below sampled outputs; not worse than IBP for one hidden layer


def random_net(kit, rng, n_in, hidden, n_out):
    """A ReLU MLP with small dyadic weights, parsed in memory."""
    g = GraphBuilder()
    h = g.input([n_in])
    sizes = [n_in, *hidden, n_out]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.integers(-16, 17, (b, a)) / 16).astype(np.float32)
        bias = (rng.integers(-8, 9, b) / 16).astype(np.float32)
        h = g.linear(h, w, bias, name=f"fc{i + 1}")
        if i < len(sizes) - 2:
            h = g.relu(h)
    g.output(h)
    doc = {"format": "tl.graph.v1", "nodes": g.nodes, "outputs": g.outputs}
    return kit.parse(doc, g.params)


def random_box(rng, n):
    c = rng.integers(-16, 17, n) / 16
    r = rng.integers(1, 17, n) / 16
    return Box(tuple(q(Fraction(float(v))) for v in c - r),
               tuple(q(Fraction(float(v))) for v in c + r))


def sample_points(rng, box: Box, k: int):
    lo = [fr(v) for v in box.lo]
    hi = [fr(v) for v in box.hi]
    pts = [list(v) for v in product(*zip(lo, hi))][:16]
    pts.append([(a + b) / 2 for a, b in zip(lo, hi)])
    for _ in range(k):
        pts.append([a + (b - a) * Fraction(int(rng.integers(0, 65)), 64) for a, b in zip(lo, hi)])
    return pts


def random_valid_cert(rng, graph, box):
    """Random slopes in [0, 1] and random valid upper lines (tightest line of a random slope)."""
    cert = {"alpha": {}, "upper": {}}
    for node in graph.nodes:
        if node.op != "relu":
            continue
        zlo, zhi = node_interval(graph, box, node.inputs[0])
        n = len(zlo)
        cert["alpha"][node.id] = [enc(Fraction(int(rng.integers(0, 9)), 8)) for _ in range(n)]
        slope, icpt = [], []
        for a, b in zip(zlo, zhi):
            s = Fraction(int(rng.integers(0, 9)), 8)
            slope.append(enc(s))
            icpt.append(enc(max(-s * a, (1 - s) * b)))
        cert["upper"][node.id] = {"slope": slope, "intercept": icpt}
    return cert


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 2))
def test_exact_crown_bounds_are_below_every_sampled_output(kit, seed, depth):
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 4))
    hidden = [int(rng.integers(1, 6)) for _ in range(depth)]
    n_out = int(rng.integers(1, 4))
    graph = random_net(kit, rng, n_in, hidden, n_out)
    box = random_box(rng, n_in)
    out = graph.outputs[0]
    rows = unit_rows(n_out) + [[int(v) for v in rng.integers(-3, 4, n_out)]]
    certs = [{}, random_valid_cert(rng, graph, box)]
    lows = [kernel_lows(graph, box, out, rows, c) for c in certs]
    for x in sample_points(rng, box, 12):
        y = [fr(v) for v in kit.point(graph, x)[out]]
        for r, row in enumerate(rows):
            value = sum(Fraction(c) * v for c, v in zip(row, y))
            for low in lows:
                assert low[r] <= value, (seed, r, x)
    # and the rule agrees with the bounds it computes
    lo, hi = lows[0][:n_out], [-v for v in lows[0][n_out:2 * n_out]]
    accepted(claims.bounds(graph, box, lo, hi), {"rule": "crown"}, graph)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_one_hidden_layer_crown_with_zero_slopes_and_exact_chords_beats_ibp(kit, seed):
    """With alpha = 0 and exact chords, each relu term's relaxation is no worse than its interval
    bound, and CROWN minimises their sum jointly: lower bound >= IBP's, up to the kernel's
    rounding of coefficients to COEF_BITS bits (its error is charged to the bound, so it may
    sit below IBP by that much, never above the true minimum)."""
    rng = np.random.default_rng(seed)
    n_in, width, n_out = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 4))
    graph = random_net(kit, rng, n_in, [width], n_out)
    box = random_box(rng, n_in)
    zlo, zhi = node_interval(graph, box, "fc1")
    relu = next(n.id for n in graph.nodes if n.op == "relu")
    cert = {"alpha": {relu: ["0"] * width}, "upper": {relu: exact_chords(zlo, zhi)}}
    out = graph.outputs[0]
    rows = unit_rows(n_out)
    lows = kernel_lows(graph, box, out, rows, cert)
    ylo, yhi = kit.ibp(graph, [fr(v) for v in box.lo], [fr(v) for v in box.hi])[out]
    tol = Fraction(1, 2 ** (crown.COEF_BITS - 16))
    for i in range(n_out):
        assert lows[i] >= fr(ylo[i]) - tol, (seed, i)
        assert -lows[n_out + i] <= fr(yhi[i]) + tol, (seed, i)
    lo, hi = lows[:n_out], [-v for v in lows[n_out:]]
    accepted(claims.bounds(graph, box, lo, hi), {"rule": "crown", **cert}, graph)


def test_affine_chain_bounds_are_exactly_the_minimum(kit):
    """No relu: CROWN is exact. conv2d with groups, stride and padding, avgpool2d with padding
    and count_include_pad False, a dilated conv, flatten, reshape and linear: the kernel's bound
    of each row equals the exact minimum over the box (coefficients by exact finite differences
    of the kernel's own evaluation, independent of the affine matrices CROWN builds)."""
    rng = np.random.default_rng(11)
    g = GraphBuilder()
    x = g.input([2, 5, 5])
    h = g.conv2d(x, randn(rng, 4, 1, 3, 3), randn(rng, 4), stride=(2, 2), padding=(1, 1),
                 groups=2, name="c1")
    h = g.avgpool2d(h, (2, 2), stride=(1, 1), padding=(1, 1), count_include_pad=False)
    h = g.conv2d(h, randn(rng, 2, 4, 2, 2), randn(rng, 2), padding=(1, 1), dilation=(2, 2),
                 name="c2")
    h = g.reshape(g.flatten(h), [-1])
    h = g.linear(h, randn(rng, 3, h.shape[0]), randn(rng, 3), name="fc")
    g.output(h)
    graph = kit.parse({"format": "tl.graph.v1", "nodes": g.nodes, "outputs": g.outputs},
                      g.params)
    n = 50
    lo = [Fraction(int(v), 8) for v in rng.integers(-8, 8, n)]
    hi = [a + Fraction(int(v), 16) for a, v in zip(lo, rng.integers(0, 9, n))]
    box = Box(tuple(q(v) for v in lo), tuple(q(v) for v in hi))
    rows = [[1, 0, 0], [0, -1, 0], [Fraction(1, 3), 2, -1]]
    lows = kernel_lows(graph, box, "fc", rows)

    def f(xs):
        y = [fr(v) for v in kit.point(graph, xs)["fc"]]
        return [sum(Fraction(c) * v for c, v in zip(r, y)) for r in rows]

    zero = [Fraction(0)] * n
    base = f(zero)
    coef = []
    for i in range(n):
        e = list(zero)
        e[i] = Fraction(1)
        coef.append([a - b for a, b in zip(f(e), base)])
    for r in range(len(rows)):
        exact = base[r] + sum(c[r] * (lo[i] if c[r] > 0 else hi[i]) for i, c in enumerate(coef))
        assert lows[r] == exact, r


# ---------------------------------------------------------------------------------------------
# kernel bugs: malformed certificates must be KernelErrors, never Python exceptions


@pytest.mark.parametrize("cert,path", [
    ({"rule": "crown", "alpha": "relu1"}, "certificate.alpha"),
    ({"rule": "crown", "alpha": 5}, "certificate.alpha"),
    ({"rule": "crown", "upper": "relu1"}, "certificate.upper"),
    ({"rule": "crown", "intermediate": [{"node": ["fc2"], "lo": [], "hi": []}]},
     "certificate.intermediate[0].node"),
])
def test_ill_typed_certificate_fields_are_kernel_errors(net, cert, path):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, g)
    assert info.value.rule == "crown" and info.value.path.startswith(path), info.value


@pytest.mark.parametrize("node", ["fc3", "nope"])
def test_crown_on_a_conjunction_is_a_kernel_error(net, node):
    g = net.graph
    box = ball_box(X0, Fraction(1, 4))
    part = claims.bounds(g, box, [-50, -50], [50, 50], node="fc3")
    conj = Claim("all", g.sha256, box, node, parts=(part,))
    with pytest.raises(KernelError) as info:
        proof.check(conj, {"rule": "crown"}, g)
    assert info.value.rule in ("crown", "claim"), info.value


def test_crown_on_a_claim_about_the_input_node_is_a_kernel_error(net):
    """An empty chain (the claim's node is the graph's input): ibp proves it, crown must accept
    or refuse, not crash."""
    g = net.graph
    box = claims.box([0] * 3, [1] * 3)
    claim = claims.bounds(g, box, [0] * 3, [1] * 3, node="x")
    assert proof.check(claim, {"rule": "ibp"}, g).level == Level.PROVED
    try:
        thm = proof.check(claim, {"rule": "crown"}, g)
    except KernelError as err:
        assert err.rule == "crown", err
        return
    assert thm.level == Level.PROVED


def test_intermediate_entry_with_no_indices_is_accepted_or_refused(net):
    g = net.graph
    claim = claims.bounds(g, ball_box(X0, Fraction(1, 4)), [-50, -50], [50, 50], node="fc3")
    cert = {"rule": "crown", "intermediate": [{"node": "fc2", "indices": [], "lo": [], "hi": []}]}
    try:
        thm = proof.check(claim, cert, g)
    except KernelError as err:
        assert err.path.startswith("certificate.intermediate[0]"), err
        return
    assert thm.level == Level.PROVED


@pytest.mark.parametrize("rule", ["crown", "ibp"])
def test_unsat_claim_with_an_empty_polytope_is_a_kernel_error(net, rule):
    """A polytope with no rows is all of R^n: never excluded. Built in Python (the JSON decoder
    refuses it), the claim passes the kernel's shape check; the rules must refuse it."""
    g = net.graph
    claim = claims.unsat(g, ball_box(X0, Fraction(1, 4)), [claims.polytope([], [])])
    with pytest.raises(KernelError) as info:
        proof.check(claim, {"rule": rule}, g)
    assert info.value.rule in (rule, "claim"), info.value


# ---------------------------------------------------------------------------------------------
# the affine-block route (chains of linear and relu): same bounds as the backward route


def both_routes(graph, box, rows, cert, phases=None):
    """(affine-block route, backward route) lower bounds of rows over the graph's output."""
    nodes = crown.ancestors(graph, graph.outputs[0], "crown")
    dom = domain(graph, box, phases)
    values = crown.forward(graph, nodes, dom, {})
    rows_q = [[q(v) for v in r] for r in rows]
    assert crown._route(graph, nodes, cert, []) is not None
    return ([fr(v) for v in crown.lower_bounds(graph, nodes, values, dom, rows_q, cert, "crown",
                                               "c")],
            [fr(v) for v in crown.backward_lower_bounds(graph, nodes, values, dom, rows_q, cert,
                                                        "crown", "c")])


def random_chain(kit, seed: int, depth: int) -> tuple:
    """(rng, graph, box, n_out): a random linear/relu chain of `depth` hidden layers no
    narrower than its input (the affine-block route's shape) and a box on its input."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 4))
    hidden = [int(rng.integers(n_in, 7)) for _ in range(depth)]
    n_out = int(rng.integers(1, 4))
    graph = random_net(kit, rng, n_in, hidden, n_out)
    return rng, graph, random_box(rng, n_in), n_out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 4))
def test_affine_block_route_matches_the_backward_route(kit, seed, depth):
    """Both routes use the same relaxations, so their bounds differ only by their rounding
    (the backward route keeps coefficients to COEF_BITS bits; the block route is exact with
    slopes shared by the rows and rounds like the backward route with per-row ones): with shared
    and per-row slopes, given upper lines and relu phases; and the block route's bounds are below
    every sampled output."""
    rng, graph, box, n_out = random_chain(kit, seed, depth)
    rows = unit_rows(n_out) + [[int(v) for v in rng.integers(-3, 4, n_out)]]
    per_row = random_valid_cert(rng, graph, box)
    per_row["alpha"] = {k: [[enc(Fraction(int(rng.integers(0, 9)), 8)) for _ in v]
                            for _ in rows] for k, v in per_row["alpha"].items()}
    zlo, _ = node_interval(graph, box, "fc1")
    phases = {"fc1": {0: 1 if zlo[0] >= 0 else -1}}
    points = sample_points(rng, box, 8)
    outputs = [[fr(v) for v in kit.point(graph, x)[graph.outputs[0]]] for x in points]
    for cert, ph in (({}, None), (random_valid_cert(rng, graph, box), None), (per_row, None),
                     ({}, phases)):
        fast, slow = both_routes(graph, box, rows, cert, ph)
        for a, b in zip(fast, slow, strict=True):
            assert abs(a - b) <= Fraction(1, 2**40) * (1 + abs(b)), (seed, a, b)
        for y in outputs if ph is None else ():  # and below every sampled output
            for low, row in zip(fast, rows, strict=True):
                assert low <= sum(Fraction(c) * v for c, v in zip(row, y)), (seed, low)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 4))
def test_unit_rows_with_their_absolute_values_give_the_same_bounds(kit, seed, depth):
    """A claimed entry's rows are +-e_j (`_certify` sends them with |R|): on the first relu the
    block route takes 2 min(v, 0) as R W - |R| |W| instead of entry by entry, exactly: the same
    bounds as the rows alone, with default and with given slopes and upper lines, and below
    every sampled value."""
    rng, graph, box, n_out = random_chain(kit, seed, depth)
    nodes = crown.ancestors(graph, graph.outputs[0], "crown")
    dom = domain(graph, box)
    values = crown.forward(graph, nodes, dom, {})
    signs = [int(v) for v in rng.choice([-1, 1], 2 * n_out)]
    idx = [j % n_out for j in range(2 * n_out)]
    rows, absrows = fmpz_mat(2 * n_out, n_out), fmpz_mat(2 * n_out, n_out)
    for r, (j, sg) in enumerate(zip(idx, signs)):
        rows[r, j], absrows[r, j] = sg, 1
    points = sample_points(rng, box, 8)
    outputs = [[fr(v) for v in kit.point(graph, x)[graph.outputs[0]]] for x in points]
    for cert in ({}, random_valid_cert(rng, graph, box)):
        bounds = []
        for arg in ((rows, absrows), rows):
            state = crown._route(graph, nodes, cert, [])
            for node in nodes:
                if node.op == "linear":
                    crown._paths(graph, node, values, state)
            bounds.append(crown.chain_lower_bounds(state, nodes[-1].id, values, dom.box, arg,
                                                   cert, "crown", "c"))
        assert bounds[0] == bounds[1], seed
        for y in outputs:
            for low, j, sg in zip(bounds[0], idx, signs):
                assert fr(low) <= sg * y[j], (seed, low)


def test_routes_taken(kit, net):
    """Split multipliers, an entry on a relu node, an input wider than a hidden layer or a DAG
    take the backward route; a chain takes the affine-block route."""
    g = net.graph
    nodes = crown.ancestors(g, "fc3", "crown")
    assert crown._route(g, nodes, {}, [{"node": "fc2"}]) is not None
    assert crown._route(g, nodes, {"beta": [{"node": "fc1"}]}, []) is None
    assert crown._route(g, nodes, {}, [{"node": "fc2", "beta": [{}]}]) is None
    assert crown._route(g, nodes, {}, [{"node": "relu1"}]) is None
    wide = random_net(kit, np.random.default_rng(0), 6, [5, 8], 2)
    assert crown._chain(wide, crown.ancestors(wide, "fc3", "crown")) is None
    narrow = random_net(kit, np.random.default_rng(0), 5, [5, 8], 2)
    assert crown._chain(narrow, crown.ancestors(narrow, "fc3", "crown")) is not None


def test_affine_block_route_keeps_w_d_products_within_their_bound(kit, monkeypatch):
    """Leaves with the same active neurons share W D products (`_paths`): the bounds over many
    boxes of one graph, each box twice, are those computed with nothing kept, products are
    reused, and what is kept stays under MAX_WD_ENTRIES (set small here, so it is cleared on the
    way)."""
    rng = np.random.default_rng(7)
    graph = random_net(kit, rng, 3, [6, 6, 6], 2)
    out = graph.outputs[0]
    assert crown._chain(graph, crown.ancestors(graph, out, "crown")) is not None
    boxes = [random_box(rng, 3) for _ in range(10)] * 2
    monkeypatch.setattr(crown, "MAX_WD_ENTRIES", 100)  # two 6 x 6 products
    kept, reused = [], 0
    for box in boxes:
        before = dict(graph._cache.get("wd", {}))
        kept.append(kernel_lows(graph, box, out, unit_rows(2)))
        memo = graph._cache["wd"]
        sizes = [m.nrows() * m.ncols() for k, m in memo.items() if k != "entries"]
        assert sum(sizes) == memo["entries"] <= 100
        reused += any(k in before and memo[k] is before[k] for k in memo if k != "entries")
    fresh = []
    for box in boxes:
        graph._cache.clear()
        fresh.append(kernel_lows(graph, box, out, unit_rows(2)))
    assert kept == fresh and reused > 0


def test_affine_block_route_refuses_bad_upper_lines_it_has_seen_defaults_for(net):
    """The route keeps each relu's default lines for the leaf; lines given later for that relu
    are still checked (and refused when malformed or below relu)."""
    g = net.graph
    box = ball_box(X0, Fraction(3, 8))
    lo, hi = entry_bounds(g, box, "fc2")
    entry = {"node": "fc2", "lo": [enc(v - ULP) for v in lo], "hi": [enc(v + ULP) for v in hi]}
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    accepted(claim, {"rule": "crown", "intermediate": [entry]}, g)
    z1 = node_interval(g, box, "fc1")
    bad = exact_chords(*z1)
    j = next(i for i, s in enumerate(bad["slope"]) if s != "0")
    bad["intercept"][j] = "0"  # the chord through the origin dips below relu on [0, u]
    for upper, where in (({"relu1": "junk"}, "upper.relu1"),
                         ({"relu1": bad}, f"upper.relu1.slope[{j}]"), (["junk"], "upper")):
        rejected(claim, {"rule": "crown", "intermediate": [entry], "upper": upper}, g,
                 rule="crown", path=f"certificate.{where}")


def test_slopes_given_for_a_relu_without_unstable_neurons_are_still_checked(net):
    """Both routes check what a certificate gives for every relu the bound passes through, even
    one whose neurons are all stable on the domain (the values are then unused)."""
    g = net.graph
    box = ball_box(X0, Fraction(1, 1000))
    assert not _unstable(*node_interval(g, box, "fc1"))
    claim = claims.bounds(g, box, [-100, -100], [100, 100], node="fc3")
    bad = {"alpha": {"relu1": ["2"] * 8}}
    rejected(claim, {"rule": "crown", **bad}, g, rule="crown", path="certificate.alpha.relu1[0]")
    nodes = crown.ancestors(g, "fc3", "crown")
    dom = domain(g, box)
    values = crown.forward(g, nodes, dom, {})
    with pytest.raises(KernelError, match="alpha.relu1"):
        crown.backward_lower_bounds(g, nodes, values, dom, [[q(1), q(0)]], bad, "crown", "c")


@settings(max_examples=300, deadline=None)
@given(lo=st.integers(-(1 << 80), -1), hi=st.integers(1, 1 << 80), den_bits=st.integers(0, 70))
def test_default_upper_line_is_the_rounded_up_chord_and_lies_above_relu(lo, hi, den_bits):
    """The default upper line of an unstable neuron on [l, u] = [lo, hi] / den: slope
    u / (u - l) and intercept -s l, each rounded up to a multiple of 2^-UPPER_LINE_BITS
    (integer arithmetic in the kernel, checked here with Fractions); it lies on or above relu
    at both ends."""
    den = 1 << den_bits
    s_nums, s_den, t_nums, t_den = crown._upper_lines("crown", "c", "r", [lo], [hi], den, [0],
                                                      None)
    s, t = Fraction(s_nums[0], s_den), Fraction(t_nums[0], t_den)
    scale = 1 << crown.UPPER_LINE_BITS
    lq, u = Fraction(lo, den), Fraction(hi, den)
    assert s * scale == -((-(u / (u - lq)) * scale) // 1)  # ceil(u / (u - l) scale)
    assert t * scale == -((s * lq * scale) // 1)  # ceil(-s l scale)
    assert s * lq + t >= 0 and s * u + t >= u


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_one_row_rounded_to_coef_bits_stays_a_bound_within_2_to_40_of_the_exact(kit, seed):
    """A single row's coefficients are rounded to COEF_BITS after a relu (a speed choice; with
    more rows they are not, on a narrow matrix): its bound is still below every sampled output,
    and within 2^-40 (relative) of the same row's bound computed with two more rows."""
    rng = np.random.default_rng(seed)
    built = kit.save(build_mlp(int(rng.integers(0, 2**31)), sizes=(12, 8, 8, 3)),
                     f"coef_bits_{seed}")  # float32 weights; input wider than the layers
    graph, out = built.graph, built.graph.outputs[0]
    c = rng.uniform(0.2, 0.8, 12)
    box = Box(tuple(q(Fraction(float(v - 0.1))) for v in c),
              tuple(q(Fraction(float(v + 0.1))) for v in c))
    row = [int(v) for v in rng.integers(-3, 4, 3)]
    calls = []
    shrink = crown._shrink
    crown._shrink = lambda *a: calls.append(1) or shrink(*a)
    try:
        one = kernel_lows(graph, box, out, [row])[0]
    finally:
        crown._shrink = shrink
    assert calls  # the rounding ran
    multi = kernel_lows(graph, box, out, [row, [1, 0, 0], [0, 1, 0]])[0]
    assert abs(one - multi) <= Fraction(1, 2**40) * (1 + abs(multi))
    for x in sample_points(rng, box, 12):
        y = [fr(v) for v in kit.point(graph, x)[out]]
        assert one <= sum(a * v for a, v in zip(row, y))


@pytest.mark.parametrize("hidden", ["fc1", "x", "one"])
def test_affine_block_keys_never_collide_with_node_ids(tmp_path, hidden):
    """The affine-block route keys the input's block and the constant's apart from the linear
    nodes' ids: with the hidden linear named "x" (a legal id), y = -relu(t) + relu(t - 3/2) on
    t in [1, 2] (y in [-3/2, -1]) still gets the kernel's bound -2, so y >= 0 and the unsat claim
    y > -1/2 are refused, as with any other name (a review found both accepted when the input's
    block was keyed "x")."""
    g = GraphBuilder()
    t = g.input([1], name="inp")
    z = g.linear(t, np.array([[1.0], [1.0]], np.float32), np.array([0.0, -1.5], np.float32),
                 name=hidden)
    y = g.linear(g.relu(z), np.array([[-1.0, 1.0]], np.float32), np.array([0.0], np.float32),
                 name="y")
    g.output(y)
    graph = load_graph(g.save(str(tmp_path)))
    box = claims.box([1], [2])
    rejected(claims.linear_bound(graph, box, [[1]], [0], node="y"), {"rule": "crown"}, graph,
             rule="crown", path="claim.rhs[0]", contains="lower bound -2")
    rejected(claims.unsat(graph, box, [claims.polytope([[1]], [Fraction(-1, 2)])], node="y"),
             {"rule": "crown"}, graph, rule="crown", path="claim.unsafe[0]")
    accepted(claims.linear_bound(graph, box, [[1]], [-2], node="y"), {"rule": "crown"}, graph)
