"""Rule `crown` beyond chains (kernel_checker/crown.py): residual `add` (the claim node's ancestors
form a DAG), `batchnorm` (eval) and `maxpool2d`. Must-accept: the kernel's own bounds, which are
sound against exact point evaluations (tests/reference_fraction.py, sharing no code with the
kernel; batchnorm nets against the kernel's own point enclosures and a float64 evaluation), and
intermediate entries on nodes feeding an add or a maxpool. Must-reject: one 2^-40 step past the
kernel's bound (claim and intermediate entry), unsupported ops (named with node and the supported
set), broadcasting adds."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from reference_fraction import evaluate as reference_evaluate
from rule_helpers import batched_and_alone, enc, fr, q, randn, rejected

from kernel_checker import crown
from kernel_checker.claims import Box
from kernel_checker.rules import box_interval
from kernel_checker.tensor import numel
from kernel_checker.theorem import Level
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

ULP = Fraction(1, 2**40)


def residual_mlp(seed: int) -> GraphBuilder:
    """x -> fc1 -> relu -> fc2 -> add(x) -> relu -> fc3 (a residual block on vectors)."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([4])
    h = g.relu(g.linear(x, randn(rng, 6, 4), randn(rng, 6, scale=0.1), name="fc1"))
    h = g.linear(h, randn(rng, 4, 6), randn(rng, 4, scale=0.1), name="fc2")
    h = g.relu(g.add(h, x))
    g.output(g.linear(h, randn(rng, 3, 4), randn(rng, 3, scale=0.1), name="fc3"))
    return g


def pool_cnn(seed: int) -> GraphBuilder:
    """conv -> relu -> maxpool (overlapping windows, padding) -> conv -> add (residual) -> relu
    -> maxpool -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 6, 6])
    h = g.relu(g.conv2d(x, randn(rng, 2, 1, 3, 3), randn(rng, 2, scale=0.1), padding=(1, 1),
                        name="conv1"))
    h = g.maxpool2d(h, (3, 3), stride=(1, 1), padding=(1, 1))
    r = g.conv2d(h, randn(rng, 2, 2, 3, 3, scale=0.3), None, padding=(1, 1), name="conv2")
    h = g.maxpool2d(g.relu(g.add(r, h)), (2, 2))
    g.output(g.linear(g.flatten(h), randn(rng, 3, 18, scale=0.3), None, name="fc"))
    return g


def bn_cnn(seed: int, negative_gamma: bool = False) -> GraphBuilder:
    """conv -> batchnorm -> relu -> maxpool -> flatten -> linear -> batchnorm -> relu -> linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 4, 4])
    h = g.conv2d(x, randn(rng, 3, 1, 3, 3), None, padding=(1, 1), name="conv")
    gamma = rng.uniform(0.5, 2.0, 3).astype(np.float32) * (-1 if negative_gamma else 1)
    h = g.batchnorm(h, gamma, randn(rng, 3, scale=0.2), randn(rng, 3, scale=0.2),
                    rng.uniform(0.3, 3.0, 3).astype(np.float32), name="bn1")
    h = g.flatten(g.maxpool2d(g.relu(h), (2, 2)))
    h = g.linear(h, randn(rng, 5, 12), None, name="fc1")
    h = g.batchnorm(h, rng.uniform(0.5, 2.0, 5).astype(np.float32), randn(rng, 5, scale=0.2),
                    randn(rng, 5, scale=0.2), rng.uniform(0.3, 3.0, 5).astype(np.float32),
                    name="bn2")
    g.output(g.linear(g.relu(h), randn(rng, 2, 5), None, name="fc2"))
    return g


def random_box(rng, n: int, width: float) -> Box:
    lo = [Fraction(int(v), 64) for v in rng.integers(-64, 64, n)]
    return Box(tuple(q(v) for v in lo), tuple(q(v + Fraction(width).limit_denominator(64))
                                              for v in lo))


def kernel_bounds(graph, box: Box, node: str, cert=None, lower=crown.lower_bounds
                  ) -> tuple[list, list]:
    """The kernel's CROWN bounds (lo, hi) of every neuron of `node` (no intermediate entries)."""
    nodes = crown.ancestors(graph, node, "crown")
    dom = crown.Domain(box_interval(box, graph.the_input("t", "t").shape))
    values = crown.forward(graph, nodes, dom, {})
    n = numel(graph.by_id[node].shape)
    rows = [[1 if i == j else 0 for i in range(n)] for j in range(n)]
    rows += [[-v for v in r] for r in rows]
    lows = [fr(v) for v in lower(graph, nodes, values, dom, [[q(v) for v in r] for r in rows],
                                 cert or {}, "crown", "t")]
    return lows[:n], [-v for v in lows[n:]]


def samples(rng, box: Box, count: int) -> list:
    lo, hi = [fr(v) for v in box.lo], [fr(v) for v in box.hi]
    pts = [lo, hi]
    for _ in range(count):
        pts.append([a + (b - a) * Fraction(int(rng.integers(0, 257)), 256)
                    for a, b in zip(lo, hi)])
    return pts


def accepted(claim, cert, graph):
    thm = proof.check(claim, cert, graph)
    assert thm.rule == "crown" and thm.level == Level.PROVED and not thm.assumptions
    return thm


@pytest.mark.parametrize("recipe,seed,width", [
    (residual_mlp, 0, 1), (residual_mlp, 1, 2), (residual_mlp, 2, Fraction(1, 4)),
    (pool_cnn, 3, Fraction(1, 2)), (pool_cnn, 4, Fraction(1, 8))])
def test_dag_bounds_are_sound_and_exactly_the_kernels(kit, recipe, seed, width):
    built = kit.save(recipe(seed), f"dag{seed}")
    g = built.graph
    rng = np.random.default_rng(seed)
    box = random_box(rng, numel(g.the_input("t", "t").shape), width)
    out = g.outputs[0]
    lo, hi = kernel_bounds(g, box, out)
    for x in samples(rng, box, 12):
        shape, y = reference_evaluate(built.doc, built.weights, x)[out]
        for i, v in enumerate(y):
            assert lo[i] <= v <= hi[i], (seed, i, x)
    claim = claims.bounds(g, box, lo, hi)
    accepted(claim, {"rule": "crown"}, g)
    for i in range(len(lo)):
        raised = list(lo)
        raised[i] += ULP
        rejected(claims.bounds(g, box, raised, hi), {"rule": "crown"}, g, rule="crown",
                 path=f"claim.lo[{i}]", contains="above the kernel's bound")
    lowered = list(hi)
    lowered[0] -= ULP
    rejected(claims.bounds(g, box, lo, lowered), {"rule": "crown"}, g, rule="crown",
             path="claim.hi[0]", contains="below the kernel's bound")


@pytest.mark.parametrize("negative_gamma", [False, True])
def test_batchnorm_bounds_are_sound_and_tight_to_the_ulp(kit, negative_gamma):
    built = kit.save(bn_cnn(7, negative_gamma), "bn")
    g = built.graph
    rng = np.random.default_rng(8)
    box = random_box(rng, 16, Fraction(1, 2))
    out = g.outputs[0]
    lo, hi = kernel_bounds(g, box, out)
    model = torch_model(built)
    for x in samples(rng, box, 40):
        enc_lo, enc_hi = kit.enclosure(g, x)[out]
        y = model(torch.tensor([float(v) for v in x], dtype=torch.float64).reshape(1, 1, 4, 4))
        for i in range(len(lo)):
            assert lo[i] <= fr(enc_lo[i]) and fr(enc_hi[i]) <= hi[i]
            assert lo[i] - 1e-9 <= float(y[0, i]) <= hi[i] + 1e-9
    accepted(claims.bounds(g, box, lo, hi), {"rule": "crown"}, g)
    raised = list(lo)
    raised[1] += ULP
    rejected(claims.bounds(g, box, raised, hi), {"rule": "crown"}, g, rule="crown",
             path="claim.lo[1]", contains="above the kernel's bound")


def torch_model(built):
    """The bn_cnn graph in float64 torch (an independent evaluation of batchnorm)."""
    w = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in built.weights.items()}

    def bn(x, node):
        a = node["attrs"]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        k = w[a["weight"]] / torch.sqrt(w[a["running_var"]] + float(Fraction(a["eps"])))
        return (x - w[a["running_mean"]].reshape(shape)) * k.reshape(shape) + \
            w[a["bias"]].reshape(shape)

    def run(x):
        vals = {}
        for node in built.doc["nodes"]:
            op, a = node["op"], node.get("attrs") or {}
            args = [vals[i] for i in node.get("inputs", [])]
            if op == "input":
                y = x
            elif op == "conv2d":
                y = torch.nn.functional.conv2d(args[0], w[a["weight"]], None, 1, a["padding"])
            elif op == "batchnorm":
                y = bn(args[0], node)
            elif op == "relu":
                y = torch.relu(args[0])
            elif op == "maxpool2d":
                y = torch.nn.functional.max_pool2d(args[0], a["kernel"])
            elif op == "flatten":
                y = args[0].reshape(1, -1)
            else:
                assert op == "linear", op
                y = args[0] @ w[a["weight"]].T
            vals[node["id"]] = y
        return vals[built.doc["outputs"][0]]

    return run


def test_maxpool_relaxation_exact_window_and_loose_window(kit):
    g = GraphBuilder()
    x = g.input([1, 2, 2])
    g.output(g.flatten(g.maxpool2d(x, (2, 2))))
    graph = kit.save(g, "pool").graph
    out = graph.outputs[0]
    # x0 in [5, 6] is above every other upper bound: the max is x0 exactly
    box = Box(tuple(map(q, (5, 0, 0, 1))), tuple(map(q, (6, 1, 1, 2))))
    assert kernel_bounds(graph, box, out) == ([5], [6])
    # overlapping: lower line is the input with the largest lower bound (x1), upper the max u
    box = Box(tuple(map(q, (0, 1, 0, 0))), tuple(map(q, (2, 3, 1, Fraction(5, 2)))))
    assert kernel_bounds(graph, box, out) == ([1], [3])


def test_intermediate_entries_before_an_add_and_a_maxpool(kit):
    built = kit.save(pool_cnn(5), "dag_entries")
    g = built.graph
    rng = np.random.default_rng(5)
    box = random_box(rng, 36, Fraction(1, 4))
    entries = []
    for node in ("conv1", "conv2"):  # conv2 feeds the add, conv1 feeds a relu and a maxpool
        lo, hi = kernel_bounds(g, box, node, {})
        entries.append({"node": node, "lo": [enc(v) for v in lo], "hi": [enc(v) for v in hi]})
    out = g.outputs[0]
    lo, hi = kernel_bounds(g, box, out)
    cert = {"rule": "crown", "intermediate": entries}
    accepted(claims.bounds(g, box, lo, hi), cert, g)
    bad = {"rule": "crown", "intermediate": [dict(entries[0]), entries[1]]}
    bad["intermediate"][0]["lo"] = list(entries[0]["lo"])
    bad["intermediate"][0]["lo"][3] = enc(Fraction(entries[0]["lo"][3]) + ULP)
    rejected(claims.bounds(g, box, lo, hi), bad, g, rule="crown",
             path="certificate.intermediate[0].lo[3]", contains="above the kernel's bound")
    swapped = {"rule": "crown", "intermediate": [entries[1], entries[0]]}
    rejected(claims.bounds(g, box, lo, hi), swapped, g, rule="crown",
             path="certificate.intermediate[1].node", contains="ancestor of")


def test_unsupported_op_is_refused_naming_op_node_and_set(kit):
    rng = np.random.default_rng(1)
    g = GraphBuilder()
    x = g.input([3])
    h = g.abs(g.linear(x, randn(rng, 4, 3), None, name="fc1"))
    g.output(g.linear(h, randn(rng, 2, 4), None, name="fc2"))
    graph = kit.save(g, "abs").graph
    bad = next(n.id for n in graph.nodes if n.op == "abs")
    claim = claims.bounds(graph, claims.box([0] * 3, [1] * 3), [-100] * 2, [100] * 2)
    err = rejected(claim, {"rule": "crown"}, graph, rule="crown", path=f"node {bad!r}",
                   contains=("op 'abs' is not supported", str(list(crown.CROWN_OPS))))
    assert "maxpool2d" in err.message and "batchnorm" in err.message


def test_broadcasting_add_is_refused(kit):
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    x = g.input([3])
    a = g.linear(x, randn(rng, 4, 3), None, name="fa")
    b = g.linear(x, randn(rng, 1, 3), None, name="fb")
    g.output(g.add(a, b))
    graph = kit.save(g, "bcast").graph
    add = next(n.id for n in graph.nodes if n.op == "add")
    claim = claims.bounds(graph, claims.box([0] * 3, [1] * 3), [-100] * 4, [100] * 4)
    rejected(claim, {"rule": "crown"}, graph, rule="crown", path=f"node {add!r}",
             contains="add with broadcasting")


def test_coefficient_rounding_error_is_charged(kit, monkeypatch):
    """Coefficients rounded to few bits (COEF_BITS forced down to 12, so the backward route
    rounds after every relu): the error is charged, the bound stays below every sampled output
    and below the unrounded bound, and with the default COEF_BITS it is within 2^-30 of the
    unrounded one."""
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    h = g.input([3])
    for k in range(4):
        h = g.relu(g.linear(h, randn(rng, 5, h.shape[0]), randn(rng, 5, scale=0.1),
                            name=f"fc{k}"))
    g.output(g.linear(h, randn(rng, 2, 5), None, name="out"))
    built = kit.save(g, "deep")
    box = Box(tuple(q(Fraction(-1, 3)) for _ in range(3)), tuple(q(Fraction(1, 3))
                                                                 for _ in range(3)))
    bounds = {}
    for bits in (12, crown.COEF_BITS, 10**6):  # 10**6: no rounding at all
        monkeypatch.setattr(crown, "COEF_BITS", bits)
        bounds[bits] = kernel_bounds(built.graph, box, "out", lower=crown.backward_lower_bounds)
    monkeypatch.undo()
    lo12, hi12 = bounds[12]
    lo, hi = bounds[crown.COEF_BITS]
    lo_exact, hi_exact = bounds[10**6]
    assert (lo12, hi12) != (lo_exact, hi_exact)  # rounding happened
    for x in samples(rng, box, 30):
        _, y = reference_evaluate(built.doc, built.weights, x)["out"]
        assert all(a <= v <= b for a, v, b in zip(lo12, y, hi12))
    for a, b in list(zip(lo12, lo_exact)) + list(zip(hi_exact, hi12)):
        assert a <= b
    for a, b in list(zip(lo, lo_exact)) + list(zip(hi_exact, hi)):
        assert a <= b <= a + Fraction(1, 2**30)


def test_split_leaves_on_a_residual_block_keep_the_skip_path_when_batched(kit, monkeypatch):
    """Under a split the kernel defers a one-row leaf's last product to a batch (`_flush`)
    only when nothing else is pending: on a residual block the input also takes the skip
    path's coefficients. Every leaf's lower bound is the one it gets alone, and the split
    holds."""
    built = kit.save(residual_mlp(5), "res_batch")
    g = built.graph
    box = random_box(np.random.default_rng(5), 4, 1)
    lo, _ = kernel_bounds(g, box, g.outputs[0])
    claim = claims.linear_bound(g, box, [[1, 0, 0]], [lo[0] - 1])
    a, b = fr(box.lo[0]), fr(box.hi[0])
    cuts = [a + (b - a) * k / 10 for k in range(11)]
    cert = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": [
        [enc(u), enc(v)] for u, v in zip(cuts, cuts[1:])]}, "children": [{"rule": "crown"}] * 10}
    assert proof.check(claim, cert, g).rule == "split"
    batched, alone = batched_and_alone(monkeypatch, lambda: proof.check(claim, cert, g))
    assert len(batched) == 10 > crown.FLUSH_LEAVES
    assert batched == alone


@pytest.mark.parametrize("split", [False, True])
def test_a_maxpool_claim_node_with_a_window_in_the_padding_is_refused(kit, split):
    """The claim node's own interval replay is skipped only for a linear node: a maxpool2d
    whose window lies entirely in the padding (dilation 3 on a 2x2 input) is refused there,
    as it was, not a crash in the back-substitution."""
    g = GraphBuilder()
    g.output(g.maxpool2d(g.input([1, 2, 2]), [2, 2], [1, 1], [1, 1]))
    doc = kit.save(g, "mp_pad").doc
    pool = next(n for n in doc["nodes"] if n["op"] == "maxpool2d")
    pool["attrs"]["dilation"], pool["shape"] = [3, 3], [1, 1, 1]
    graph = kit.parse(doc)
    claim = claims.bounds(graph, claims.box([0] * 4, [1] * 4), [-5], [5])
    cert = {"rule": "crown"}
    if split:
        cert = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": [
            ["0", "1/2"], ["1/2", "1"]]}, "children": [{"rule": "crown"}, {"rule": "crown"}]}
    rejected(claim, cert, graph, rule="semantics", path=f"node {pool['id']!r}",
             contains="lies entirely in the padding")
