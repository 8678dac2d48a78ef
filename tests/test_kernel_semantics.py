"""Exact semantics (kernel_checker.semantics) against the Fraction reference evaluator, op by op;
interval bound propagation (IBP) tight on affine graphs and sound everywhere (Hypothesis);
batchnorm against NumPy float64."""

import zlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_fraction import Interval, exact_array
from reference_fraction import evaluate as reference

from kernel_checker.errors import KernelError
from tl_dsl.builder import GraphBuilder

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def w32(rng, *shape, scale=0.5):
    """Random float32 values that are never exactly zero."""
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    w[w == 0] = np.float32(0.25)
    return w


def rand_point(rng, n):
    """Exact rationals in about [-2, 2]: mostly dyadic, some with odd denominators."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.7:
            out.append(Fraction(int(rng.integers(-2**12, 2**12)), 2**11))
        elif r < 0.9:
            out.append(Fraction(float(np.float32(rng.standard_normal()))))
        else:
            out.append(Fraction(int(rng.integers(-20, 21)), int(rng.choice([3, 7, 9]))))
    return out


def in_size(built) -> int:
    return int(np.prod(built.graph.the_input("t", "x").shape))


def assert_matches_reference(kit, built, x):
    """Every node's exact kernel value equals the Fraction reference's, shape included."""
    got = kit.point(built.graph, x)
    want = reference(built.doc, built.weights, x)
    assert set(got) == set(want)
    for nid, vals in got.items():
        shape, ref = want[nid]
        assert built.graph.by_id[nid].shape == tuple(shape), nid
        assert [kit.to_frac(v) for v in vals] == ref, f"node {nid}"


# ---------------------------------------------------------------- per-op cases

def _linear(rng, g):
    x = g.input([5])
    g.output(g.linear(x, w32(rng, 3, 5), w32(rng, 3)))


def _linear_nobias_batched(rng, g):
    x = g.input([2, 5])
    g.output(g.linear(x, w32(rng, 4, 5)))


def _linear_f64_f16(rng, g):
    x = g.input([4])
    h = g.linear(x, w32(rng, 3, 4).astype(np.float64) / 3, w32(rng, 3).astype(np.float16))
    g.output(g.linear(h, w32(rng, 2, 3).astype(np.float16), name="half"))


def _linear_with_zero_weights(rng, g):
    x = g.input([4])
    w = w32(rng, 3, 4)
    w[0, 1] = 0.0
    w[2, :] = 0.0
    w[1, 3] = -0.0
    g.output(g.linear(x, w, np.array([0.0, 1.5, -0.0], np.float32)))


def _matmul(a_shape, b_shape, input_side):
    def build(rng, g):
        if input_side == "a":
            x = g.input(a_shape)
            g.output(g.matmul(x, g.const(w32(rng, *b_shape))))
        elif input_side == "b":
            x = g.input(b_shape)
            g.output(g.matmul(g.const(w32(rng, *a_shape)), x))
        else:  # both sides from the input: [2,3] @ [3,2]
            x = g.input([6])
            a = g.reshape(x, [2, 3])
            g.output(g.matmul(a, g.transpose(a, [1, 0])))
    return build


def _conv(stride, padding, dilation, groups, bias, in_shape=(4, 6, 7), out=6):
    def build(rng, g):
        x = g.input(list(in_shape))
        w = w32(rng, out, in_shape[0] // groups, 3, 2)
        g.output(g.conv2d(x, w, w32(rng, out) if bias else None, stride=stride, padding=padding,
                          dilation=dilation, groups=groups))
    return build


def _binary(op, a_shape, b_shape, const_first=False):
    def build(rng, g):
        x = g.input(a_shape)
        c = g.const(w32(rng, *b_shape))
        a, b = (c, x) if const_first else (x, c)
        g.output(getattr(g, op)(a, b))
    return build


def _self_binary(op):
    def build(rng, g):
        x = g.input([3, 4])
        g.output(getattr(g, op)(x, g.relu(x)))
    return build


def _unary_chain(rng, g):
    x = g.input([7])
    g.output(g.abs(g.neg(g.relu(g.neg(x)))))


def _unary(op):
    def build(rng, g):
        g.output(getattr(g, op)(g.input([2, 5])))
    return build


def _flatten(start):
    def build(rng, g):
        g.output(g.flatten(g.input([2, 3, 4]), start_dim=start))
    return build


def _reshape(rng, g):
    x = g.input([2, 3, 4])
    g.output(g.linear(g.reshape(x, [-1, 6]), w32(rng, 2, 6)))


def _transpose(perm):
    def build(rng, g):
        x = g.input([2, 3, 4])
        g.output(g.transpose(x, perm))
    return build


def _concat(axis):
    def build(rng, g):
        x = g.input([2, 3, 4])
        shape = [2, 3, 4]
        shape[axis % 3] = 2
        c = g.const(w32(rng, *shape))
        g.output(g.concat([x, c, g.neg(x)], axis))
    return build


def _pool(op, kernel, stride, padding, include=True):
    def build(rng, g):
        x = g.input([2, 5, 6])
        if op == "max":
            g.output(g.maxpool2d(x, kernel, stride, padding))
        else:
            g.output(g.avgpool2d(x, kernel, stride, padding, count_include_pad=include))
    return build


def _reduce(op, axes, keepdims):
    def build(rng, g):
        x = g.input([2, 3, 4])
        g.output(getattr(g, op)(x, axes, keepdims))
    return build


CASES = {
    "linear": _linear,
    "linear-batched-nobias": _linear_nobias_batched,
    "linear-f64-f16-weights": _linear_f64_f16,
    "linear-zero-weights": _linear_with_zero_weights,
    "matmul-x[3,4]@c[4,2]": _matmul([3, 4], [4, 2], "a"),
    "matmul-x[4]@c[4,2]": _matmul([4], [4, 2], "a"),
    "matmul-x[3,4]@c[4]": _matmul([3, 4], [4], "a"),
    "matmul-x[4]@c[4]": _matmul([4], [4], "a"),
    "matmul-x[2,3,4]@c[4,5]": _matmul([2, 3, 4], [4, 5], "a"),
    "matmul-c[2,3]@x[3,2]": _matmul([2, 3], [3, 2], "b"),
    "matmul-c[2,3]@x[3]": _matmul([2, 3], [3], "b"),
    "matmul-c[3]@x[3,2]": _matmul([3], [3, 2], "b"),
    "matmul-x@xT": _matmul(None, None, "both"),
    "conv-plain": _conv((1, 1), (0, 0), (1, 1), 1, True),
    "conv-stride": _conv((2, 3), (0, 0), (1, 1), 1, False),
    "conv-padding": _conv((1, 1), (2, 1), (1, 1), 1, True),
    "conv-dilation": _conv((1, 1), (1, 0), (2, 3), 1, True),
    "conv-groups2": _conv((1, 2), (1, 1), (1, 1), 2, True),
    "conv-depthwise": _conv((2, 1), (1, 1), (2, 1), 4, False, out=8),
    "conv-small": _conv((1, 2), (1, 1), (2, 1), 2, True, in_shape=(2, 4, 5), out=4),
    "add-broadcast": _binary("add", [2, 3, 4], [3, 1]),
    "add-broadcast-rank": _binary("add", [3, 1], [2, 1, 4]),
    "sub-broadcast": _binary("sub", [2, 3, 4], [2, 1, 1]),
    "sub-const-first": _binary("sub", [3, 4], [1, 4], const_first=True),
    "mul-broadcast": _binary("mul", [2, 3, 4], [4], const_first=True),
    "mul-scalar-like": _binary("mul", [2, 3], [1]),
    "add-self": _self_binary("add"),
    "mul-self": _self_binary("mul"),
    "sub-self": _self_binary("sub"),
    "neg-relu-abs": _unary_chain,
    "relu": _unary("relu"),
    "abs": _unary("abs"),
    "neg": _unary("neg"),
    "flatten-0": _flatten(0),
    "flatten-1": _flatten(1),
    "flatten-2": _flatten(2),
    "reshape": _reshape,
    "transpose-201": _transpose([2, 0, 1]),
    "transpose-102": _transpose([1, 0, 2]),
    "transpose-021": _transpose([0, 2, 1]),
    "concat-0": _concat(0),
    "concat-1": _concat(1),
    "concat-2": _concat(2),
    "concat--1": _concat(-1),
    "maxpool-2x2": _pool("max", (2, 2), None, (0, 0)),
    "maxpool-3x2-s1-p1": _pool("max", (3, 2), (1, 1), (1, 1)),
    "maxpool-2x3-s2x1-p1": _pool("max", (2, 3), (2, 1), (1, 1)),
    "avgpool-2x2": _pool("avg", (2, 2), None, (0, 0)),
    "avgpool-3x3-p1-incl": _pool("avg", (3, 3), (2, 2), (1, 1), True),
    "avgpool-3x3-p1-excl": _pool("avg", (3, 3), (2, 2), (1, 1), False),
    "avgpool-2x3-p1-excl": _pool("avg", (2, 3), (1, 2), (1, 1), False),
    "sum-all": _reduce("sum", None, False),
    "sum-1": _reduce("sum", [1], False),
    "sum-02-keep": _reduce("sum", [0, 2], True),
    "mean-all-keep": _reduce("mean", None, True),
    "mean--1": _reduce("mean", [-1], False),
    "mean-01": _reduce("mean", [0, 1], False),
}


@pytest.fixture(scope="module")
def case_graphs(kit):
    cache = {}

    def get(name):
        if name not in cache:
            g = GraphBuilder()
            CASES[name](np.random.default_rng(zlib.crc32(name.encode())), g)
            cache[name] = kit.save(g, "op")
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_fraction_reference(kit, case_graphs, name):
    built = case_graphs(name)
    rng = np.random.default_rng(7)
    for _ in range(3):
        assert_matches_reference(kit, built, rand_point(rng, in_size(built)))


def test_every_evaluated_op_is_covered(case_graphs):
    from kernel_checker.ops import OPS

    seen = set()
    for name in CASES:
        seen |= {n["op"] for n in case_graphs(name).doc["nodes"]}
    # batchnorm and the transcendental ops are enclosures, not exact points: their own tests
    # (test_batchnorm_*, tests/test_kernel_enclosure.py) compare them with float64 and mpmath
    transcendental = {"tanh", "sigmoid", "exp", "log", "sin", "cos"}
    assert seen >= {op for op, spec in OPS.items()
                    if spec.evaluated and op != "batchnorm" and op not in transcendental}


def test_inline_const_values_and_b64(kit):
    import base64
    import hashlib

    data = np.array([[0.5, -1.25], [3.0, 0.1]], dtype=np.float32).tobytes()
    b64 = {"dtype": "F32", "shape": [2, 2], "b64": base64.b64encode(data).decode(),
           "sha256": hashlib.sha256(data).hexdigest()}
    doc = {"format": "tl.graph.v1", "outputs": ["out"], "nodes": [
        {"id": "x", "op": "input", "inputs": [], "shape": [2], "attrs": {}},
        {"id": "c", "op": "const", "inputs": [], "shape": [2],
         "attrs": {"value": {"shape": [2], "values": ["1/3", "-0.1"]}}},
        {"id": "m", "op": "const", "inputs": [], "shape": [2, 2], "attrs": {"value": b64}},
        {"id": "a", "op": "mul", "inputs": ["x", "c"], "shape": [2], "attrs": {}},
        {"id": "out", "op": "matmul", "inputs": ["a", "m"], "shape": [2], "attrs": {}}]}
    graph = kit.parse(doc)
    x = [Fraction(3, 4), Fraction(-2)]
    got = kit.point(graph, x)
    m = [Fraction(float(v)) for v in np.frombuffer(data, np.float32)]
    a = [x[0] / 3, x[1] * Fraction(-1, 10)]
    want = [a[0] * m[0] + a[1] * m[2], a[0] * m[1] + a[1] * m[3]]
    assert [kit.to_frac(v) for v in got["out"]] == want


def test_cnn_fixture_matches_reference(kit, cnn):
    rng = np.random.default_rng(3)
    for _ in range(2):
        assert_matches_reference(kit, cnn, rand_point(rng, in_size(cnn)))


def test_maxpool_dilation_matches_reference(kit):
    doc = {"format": "tl.graph.v1", "outputs": ["p"], "nodes": [
        {"id": "x", "op": "input", "inputs": [], "shape": [2, 6, 7], "attrs": {}},
        {"id": "p", "op": "maxpool2d", "inputs": ["x"], "shape": [2, 5, 3],
         "attrs": {"kernel": [2, 3], "stride": [1, 2], "padding": [1, 1], "dilation": [3, 2]}}]}
    graph = kit.parse(doc)
    x = rand_point(np.random.default_rng(1), 84)
    got = kit.point(graph, x)["p"]
    assert [kit.to_frac(v) for v in got] == reference(doc, {}, x)["p"][1]


def test_avgpool_dilation_honoured_or_refused(kit):
    """avgpool2d accepts a `dilation` attribute and shape inference uses it: then evaluation must
    use it too (or the graph must be refused)."""
    doc = {"format": "tl.graph.v1", "outputs": ["p"], "nodes": [
        {"id": "x", "op": "input", "inputs": [], "shape": [1, 5, 5], "attrs": {}},
        {"id": "p", "op": "avgpool2d", "inputs": ["x"], "shape": [1, 2, 2],
         "attrs": {"kernel": [2, 2], "dilation": [2, 2]}}]}
    try:
        graph = kit.parse(doc)
    except KernelError:
        return
    x = [Fraction(i) for i in range(25)]
    want = reference(doc, {}, x)["p"][1]
    # window (0, 0) reads x[0,0], x[0,2], x[2,0], x[2,2] = 0, 2, 10, 12
    assert want == [6, 8, 16, 18]
    assert [kit.to_frac(v) for v in kit.point(graph, x)["p"]] == want


def test_maxpool_window_entirely_in_padding_is_refused_cleanly(kit):
    """kernel 2, dilation 3, padding 1 on a 2x2 input: the only window reads rows/cols -1 and 2,
    both padding. The kernel must refuse (KernelError), not crash on max() of nothing."""
    doc = {"format": "tl.graph.v1", "outputs": ["p"], "nodes": [
        {"id": "x", "op": "input", "inputs": [], "shape": [1, 2, 2], "attrs": {}},
        {"id": "p", "op": "maxpool2d", "inputs": ["x"], "shape": [1, 1, 1],
         "attrs": {"kernel": [2, 2], "padding": [1, 1], "dilation": [3, 3]}}]}
    with pytest.raises(KernelError):
        graph = kit.parse(doc)
        kit.point(graph, [1, 2, 3, 4])


# ---------------------------------------------------------------- IBP = textbook intervals

def assert_ibp_matches_reference(kit, built, lo, hi):
    """Every node's kernel interval bounds equal the textbook interval extension exactly."""
    got = kit.ibp(built.graph, lo, hi)
    want = reference(built.doc, built.weights, [Interval(a, b) for a, b in zip(lo, hi)])
    assert set(got) == set(want)
    for nid, (g_lo, g_hi) in got.items():
        ref = want[nid][1]
        assert [kit.to_frac(v) for v in g_lo] == [Interval.of(r).lo for r in ref], f"{nid} lo"
        assert [kit.to_frac(v) for v in g_hi] == [Interval.of(r).hi for r in ref], f"{nid} hi"


def _random_box(rng, n, width=Fraction(1, 4)):
    c = rand_point(rng, n)
    r = [width * int(rng.integers(0, 5)) for _ in range(n)]
    return [a - b for a, b in zip(c, r)], [a + b for a, b in zip(c, r)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_ibp_equals_textbook_interval_arithmetic(kit, case_graphs, name):
    built = case_graphs(name)
    rng = np.random.default_rng(13)
    for _ in range(2):
        assert_ibp_matches_reference(kit, built, *_random_box(rng, in_size(built)))


def test_ibp_on_the_cnn_equals_textbook_interval_arithmetic(kit, cnn):
    rng = np.random.default_rng(17)
    assert_ibp_matches_reference(kit, cnn, *_random_box(rng, in_size(cnn), Fraction(1, 16)))


# ---------------------------------------------------------------- IBP tight on affine graphs

AFFINE = ["linear", "linear-batched-nobias", "matmul-x[3,4]@c[4,2]", "matmul-x[4]@c[4]",
          "matmul-c[2,3]@x[3,2]", "matmul-c[3]@x[3,2]", "conv-small", "add-broadcast",
          "sub-const-first", "mul-broadcast", "neg", "flatten-1", "reshape", "transpose-201",
          "concat-1", "avgpool-3x3-p1-excl", "avgpool-3x3-p1-incl", "sum-02-keep", "mean-01"]


def _affine_hull(built, lo, hi):
    """The exact range of an affine graph over a box, from its exact coefficients (found with
    the reference evaluator by unit vectors)."""
    n = len(lo)
    out_id = built.doc["outputs"][0]
    y0 = reference(built.doc, built.weights, [0] * n)[out_id][1]
    cols = [reference(built.doc, built.weights, [int(i == j) for i in range(n)])[out_id][1]
            for j in range(n)]
    hull_lo, hull_hi = [], []
    for i, b in enumerate(y0):
        s_lo = s_hi = b
        for j in range(n):
            w = cols[j][i] - b
            s_lo += min(w * lo[j], w * hi[j])
            s_hi += max(w * lo[j], w * hi[j])
        hull_lo.append(s_lo)
        hull_hi.append(s_hi)
    return hull_lo, hull_hi


@pytest.mark.parametrize("name", AFFINE)
def test_ibp_is_the_exact_hull_of_an_affine_graph(kit, case_graphs, name):
    built = case_graphs(name)
    rng = np.random.default_rng(11)
    n = in_size(built)
    c = rand_point(rng, n)
    r = [Fraction(int(rng.integers(0, 9)), 8) for _ in range(n)]
    lo = [a - b for a, b in zip(c, r)]
    hi = [a + b for a, b in zip(c, r)]
    out_id = built.doc["outputs"][0]
    got_lo, got_hi = kit.ibp(built.graph, lo, hi)[out_id]
    want_lo, want_hi = _affine_hull(built, lo, hi)
    assert [kit.to_frac(v) for v in got_lo] == want_lo
    assert [kit.to_frac(v) for v in got_hi] == want_hi


@pytest.mark.parametrize("name", ["relu", "abs", "neg-relu-abs", "maxpool-3x2-s1-p1"])
def test_ibp_is_exact_for_monotone_elementwise_and_maxpool(kit, case_graphs, name):
    """relu/abs/maxpool of a box: the kernel's bounds are attained (the exact hull)."""
    built = case_graphs(name)
    rng = np.random.default_rng(5)
    n = in_size(built)
    c = rand_point(rng, n)
    lo = [v - Fraction(1, 2) for v in c]
    hi = [v + Fraction(1, 2) for v in c]
    out_id = built.doc["outputs"][0]
    got_lo, got_hi = kit.ibp(built.graph, lo, hi)[out_id]
    # each output depends monotonically (or via |.|) on its inputs: the hull is attained at
    # the box corners lo/hi or at 0 for abs
    if name == "maxpool-3x2-s1-p1":
        want_lo = reference(built.doc, {}, lo)[out_id][1]
        want_hi = reference(built.doc, {}, hi)[out_id][1]
    else:
        vals = [reference(built.doc, {}, p)[out_id][1] for p in (lo, hi)]
        want_lo = [min(a, b) for a, b in zip(*vals)]
        want_hi = [max(a, b) for a, b in zip(*vals)]
        if name != "relu":  # |.| is 0 where the box straddles 0
            want_lo = [Fraction(0) if (a < 0 < b) else m
                       for a, b, m in zip(lo, hi, want_lo)] if name == "abs" else want_lo
    assert [kit.to_frac(v) for v in got_hi] == want_hi
    assert [kit.to_frac(v) for v in got_lo] == want_lo


# ---------------------------------------------------------------- batchnorm vs NumPy float64

def _bn_builder(rng, eps="1e-5", var=None, then_linear=False):
    g = GraphBuilder()
    x = g.input([3, 4, 4])
    gamma = w32(rng, 3)
    gamma[1] = -abs(gamma[1])
    beta = w32(rng, 3)
    mean = w32(rng, 3)
    var = var if var is not None else (np.abs(w32(rng, 3)) + 0.1).astype(np.float32)
    h = g.batchnorm(x, gamma, beta, mean, var, eps=eps, name="bn")
    if then_linear:
        h = g.linear(g.flatten(g.relu(h)), w32(rng, 2, 48), w32(rng, 2), name="fc")
    g.output(h)
    return g, (gamma, beta, mean, var)


def _bn_numpy(x, params, eps):
    gamma, beta, mean, var = (p.astype(np.float64)[:, None, None] for p in params)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _le_scaled(a: Fraction, t: Fraction, v: Fraction) -> bool:
    """a <= t / sqrt(v), decided exactly by squaring (v > 0)."""
    if t >= 0:
        return a <= 0 or a * a * v <= t * t
    return a < 0 and a * a * v >= t * t


def _encloses_scaled(lo, hi, t, v) -> bool:
    """lo <= t / sqrt(v) <= hi, exactly."""
    return _le_scaled(lo, t, v) and _le_scaled(-hi, -t, v)


@FAST
@given(v=st.fractions(min_value=Fraction(1, 10**12), max_value=10**12, max_denominator=10**12))
def test_inv_sqrt_enclosure_is_sound_and_tight(v):
    from flint import fmpq

    from kernel_checker.semantics import inv_sqrt_enclosure

    if v <= 0:
        return
    lo, hi = inv_sqrt_enclosure(fmpq(v.numerator, v.denominator))
    lo, hi = Fraction(int(lo.p), int(lo.q)), Fraction(int(hi.p), int(hi.q))
    assert 0 < lo <= hi
    assert lo * lo * v <= 1 <= hi * hi * v
    assert hi - lo <= lo / 2**90


def test_inv_sqrt_enclosure_exact_for_dyadic_roots():
    from flint import fmpq

    from kernel_checker.semantics import inv_sqrt_enclosure

    for v, want in ((fmpq(4), fmpq(1, 2)), (fmpq(1, 16), fmpq(4)), (fmpq(1), fmpq(1)),
                    (fmpq(2**40), fmpq(1, 2**20))):
        assert inv_sqrt_enclosure(v) == (want, want)


def test_batchnorm_encloses_the_real_value_exactly(kit):
    """lo <= (x - mean) * gamma / sqrt(var + eps) + beta <= hi, decided by exact squaring."""
    rng = np.random.default_rng(20)
    g, (gamma, beta, mean, var) = _bn_builder(rng)
    built = kit.save(g, "bn0")
    x = rand_point(rng, 48)
    lo, hi = kit.enclosure(built.graph, x)["bn"]
    eps = Fraction(1, 10**5)
    for i, (a, b) in enumerate(zip(lo, hi)):
        ch = i // 16
        t = (x[i] - Fraction(float(mean[ch]))) * Fraction(float(gamma[ch]))
        v = Fraction(float(var[ch])) + eps
        shift = Fraction(float(beta[ch]))
        assert _encloses_scaled(kit.to_frac(a) - shift, kit.to_frac(b) - shift, t, v), i


def test_batchnorm_encloses_numpy_float64(kit):
    rng = np.random.default_rng(21)
    g, params = _bn_builder(rng)
    built = kit.save(g, "bn")
    x32 = (rng.standard_normal((3, 4, 4)) * 2).astype(np.float32)
    x = [Fraction(float(v)) for v in x32.reshape(-1)]
    lo, hi = kit.enclosure(built.graph, x)["bn"]
    want = _bn_numpy(x32.astype(np.float64), params, 1e-5).reshape(-1)
    for a, b, w in zip(lo, hi, want):
        a, b = kit.to_frac(a), kit.to_frac(b)
        assert a <= b
        assert a - Fraction(1, 10**9) <= Fraction(float(w)) <= b + Fraction(1, 10**9)
        assert abs((a + b) / 2 - Fraction(float(w))) <= Fraction(1, 10**9)
        scale = max(abs(a), abs(b))
        assert b - a <= scale / 2**60, "enclosure wider than 2^-60 relative"


def test_batchnorm_then_linear_encloses_numpy(kit):
    rng = np.random.default_rng(22)
    g, params = _bn_builder(rng, then_linear=True)
    built = kit.save(g, "bn2")
    x32 = rng.standard_normal((3, 4, 4)).astype(np.float32)
    lo, hi = kit.enclosure(built.graph, [Fraction(float(v)) for v in x32.reshape(-1)])["fc"]
    h = np.maximum(_bn_numpy(x32.astype(np.float64), params, 1e-5), 0).reshape(-1)
    w = built.weights["fc.weight"].astype(np.float64)
    want = w @ h + built.weights["fc.bias"].astype(np.float64)
    for a, b, v in zip(lo, hi, want):
        a, b = kit.to_frac(a), kit.to_frac(b)
        assert a - Fraction(1, 10**9) <= Fraction(float(v)) <= b + Fraction(1, 10**9)
        assert b - a <= max(abs(a), abs(b)) / 2**60


def test_batchnorm_exact_when_the_square_root_is_dyadic(kit):
    """var + eps = 4 exactly (var 3.75, eps 1/4): 1/sqrt = 1/2, the enclosure is exact."""
    rng = np.random.default_rng(23)
    var = np.full(3, 3.75, np.float32)
    g, (gamma, beta, mean, _) = _bn_builder(rng, eps="1/4", var=var)
    built = kit.save(g, "bn3")
    x = rand_point(rng, 48)
    lo, hi = kit.enclosure(built.graph, x)["bn"]
    for i, (a, b) in enumerate(zip(lo, hi)):
        ch = i // 16
        want = (x[i] - Fraction(float(mean[ch]))) * Fraction(float(gamma[ch])) / 2 + Fraction(
            float(beta[ch]))
        assert kit.to_frac(a) == want == kit.to_frac(b)


def test_batchnorm_ibp_encloses_points(kit):
    rng = np.random.default_rng(24)
    g, params = _bn_builder(rng)
    built = kit.save(g, "bn4")
    c = rand_point(rng, 48)
    lo = [v - Fraction(1, 4) for v in c]
    hi = [v + Fraction(1, 4) for v in c]
    box_lo, box_hi = kit.ibp(built.graph, lo, hi)["bn"]
    for t in (Fraction(0), Fraction(1, 3), Fraction(1)):
        p = [a + (b - a) * t for a, b in zip(lo, hi)]
        p_lo, p_hi = kit.enclosure(built.graph, p)["bn"]
        for bl, bh, pl, ph in zip(box_lo, box_hi, p_lo, p_hi):
            assert bl <= pl <= ph <= bh


def test_batchnorm_negative_variance_refused(kit):
    rng = np.random.default_rng(25)
    var = np.array([1.0, -2.0, 1.0], np.float32)
    g, _ = _bn_builder(rng, var=var)
    built = kit.save(g, "bn5")
    with pytest.raises(KernelError) as info:
        kit.enclosure(built.graph, [0] * 48)
    assert info.value.rule == "semantics"
    assert info.value.path == "bn.running_var[1]"


# ---------------------------------------------------------------- Hypothesis: MLPs vs reference

floats32 = st.floats(min_value=-4, max_value=4, width=32, allow_subnormal=True)
rationals = st.fractions(min_value=-3, max_value=3, max_denominator=2**20)


@st.composite
def mlps(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = np.array(draw(st.lists(floats32, min_size=a * b, max_size=a * b)),
                     np.float32).reshape(b, a)
        bias = np.array(draw(st.lists(floats32, min_size=b, max_size=b)), np.float32)
        layers.append((w, bias if draw(st.booleans()) else None))
    x = draw(st.lists(rationals, min_size=sizes[0], max_size=sizes[0]))
    return sizes, layers, x


@FAST
@given(case=mlps())
def test_random_mlps_fast_path_equals_fraction_reference(kit, case):
    sizes, layers, x = case
    g = GraphBuilder()
    h = g.input([sizes[0]])
    for i, (w, b) in enumerate(layers):
        h = g.linear(h, w, b)
        if i < len(layers) - 1:
            h = g.relu(h)
    g.output(h)
    built = kit.save(g, "hyp_mlp")
    assert_matches_reference(kit, built, x)


# ---------------------------------------------------------------- Hypothesis: IBP soundness

@st.composite
def chains(draw):
    """A random chain of linear/relu/conv2d/add/maxpool/avgpool/flatten (plus mul/sub/abs) with
    small float32 weights, some pruned to exactly zero. The structure comes from a seeded NumPy
    generator (Hypothesis draws the seed), so every example is a full-size random chain."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sparsity = 0.4 if rng.random() < 0.3 else 0.0

    def weights(*shape):
        w = (rng.standard_normal(shape) * 0.7).astype(np.float32)
        if sparsity:
            w[rng.random(shape) < sparsity] = 0.0
        return w

    def pick(options):
        return options[int(rng.integers(len(options)))]

    g = GraphBuilder()
    if rng.random() < 0.6:
        cur = g.input([int(rng.integers(1, 4)), int(rng.integers(3, 7)), int(rng.integers(3, 7))])
    else:
        cur = g.input([int(rng.integers(1, 7))])
    seen = [cur]
    for _ in range(int(rng.integers(2, 7))):
        if len(cur.shape) == 3:
            op = pick(["conv2d", "conv2d", "relu", "maxpool", "avgpool", "add", "mul", "abs",
                       "flatten"])
        else:
            op = pick(["linear", "linear", "relu", "add", "sub", "abs"])
        c, h, w = cur.shape if len(cur.shape) == 3 else (0, 0, 0)
        if op == "conv2d":
            groups = pick([d for d in (1, 2, 3) if c % d == 0])
            out = groups * int(rng.integers(1, 3))
            k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            pad = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
            dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            if dil[0] * (k[0] - 1) + 1 > h + 2 * pad[0] or dil[1] * (k[1] - 1) + 1 > w + 2 * pad[1]:
                k, dil = (1, 1), (1, 1)
            cur = g.conv2d(cur, weights(out, c // groups, *k),
                           weights(out) if rng.random() < 0.5 else None, stride=stride,
                           padding=pad, dilation=dil, groups=groups)
        elif op in ("maxpool", "avgpool"):
            k = (int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1)))
            pad = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
            stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            if op == "maxpool":
                cur = g.maxpool2d(cur, k, stride, pad)
            else:
                cur = g.avgpool2d(cur, k, stride, pad, count_include_pad=bool(rng.random() < .5))
        elif op in ("add", "sub", "mul"):
            same = [r for r in seen if r.shape == cur.shape and r is not cur]
            if same and rng.random() < 0.5:
                other = pick(same)
            elif len(cur.shape) == 3:
                other = g.const(weights(*pick([(c, 1, 1), (1, h, w), (c, h, w), (w,)])))
            else:
                other = g.const(weights(*cur.shape))
            cur = getattr(g, op)(cur, other)
        elif op == "linear":
            out = int(rng.integers(1, 7))
            cur = g.linear(cur, weights(out, cur.shape[0]),
                           weights(out) if rng.random() < 0.5 else None)
        else:
            cur = getattr(g, op)(cur)
        seen.append(cur)
    g.output(cur)
    n = int(np.prod(seen[0].shape))
    center = [Fraction(float(v)) for v in (rng.standard_normal(n)).astype(np.float32)]
    radius = pick([Fraction(0), Fraction(1, 2**10), Fraction(1, 8), Fraction(1, 2),
                   Fraction(3, 2)])
    ts = [[int(t) for t in rng.integers(0, 2**16 + 1, n)] for _ in range(3)]
    return g, center, radius, ts


@FAST
@given(case=chains())
def test_exact_points_lie_inside_ibp_bounds(kit, case):
    g, center, radius, ts = case
    built = kit.save(g, "hyp_chain")
    lo = [c - radius for c in center]
    hi = [c + radius for c in center]
    bounds = kit.ibp(built.graph, lo, hi)
    points = [lo, hi] + [[a + (b - a) * Fraction(t, 2**16) for a, b, t in zip(lo, hi, tt)]
                         for tt in ts]
    want_bounds = reference(built.doc, built.weights, [Interval(a, b) for a, b in zip(lo, hi)])
    for nid, (b_lo, b_hi) in bounds.items():
        assert [kit.to_frac(v) for v in b_lo] == [Interval.of(r).lo for r in want_bounds[nid][1]]
        assert [kit.to_frac(v) for v in b_hi] == [Interval.of(r).hi for r in want_bounds[nid][1]]
    for p in points:
        values = kit.point(built.graph, p)
        want = reference(built.doc, built.weights, p)
        for nid, vals in values.items():
            assert [kit.to_frac(v) for v in vals] == want[nid][1], f"node {nid}"
            b_lo, b_hi = bounds[nid]
            for i, v in enumerate(vals):
                assert b_lo[i] <= v <= b_hi[i], f"node {nid}[{i}]: {v} not in IBP bounds"
    if radius == 0:  # a degenerate box is a point: IBP must give the point itself
        values = kit.point(built.graph, lo)
        for nid, vals in values.items():
            assert bounds[nid][0] == vals == bounds[nid][1], nid


def test_reference_reads_weights_exactly():
    shape, vals = exact_array(np.array([[0.1, -2.5]], np.float32))
    assert shape == (1, 2) and vals == [Fraction(13421773, 2**27), Fraction(-5, 2)]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_updated_from_the_last_input_equals_the_full_product(kit, bias):
    """Relu-split leaves replay intervals that differ from the previous leaf's in one or two
    entries: linear then updates its last output by the changed columns (_linear_update). The
    update must give the very numerators (and denominator) the full product gives."""
    from kernel_checker.semantics import Interval as KInterval
    from kernel_checker.semantics import _linear_update, _weight_matrix, linear

    rng = np.random.default_rng(31)
    b = w32(rng, 5)
    b[0] = np.float32(1e-30)  # a finer bias than the weights: the output's den is a multiple
    g = GraphBuilder()
    g.output(g.linear(g.input([256]), w32(rng, 5, 256), b if bias else None))
    graph = kit.save(g, "lin").graph
    node = graph.by_id[graph.outputs[0]]
    wt = graph.param(node.attrs["weight"])
    w_den = _weight_matrix(graph, node.attrs["weight"], 5, 256)[2]
    big = st.integers(-2**70, 2**70)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(big, st.integers(0, 2**70)), min_size=256, max_size=256),
           st.lists(st.tuples(st.integers(0, 255), big, st.integers(0, 2**70)), max_size=4),
           st.integers(1, 2**80))
    def check(base, changes, den):
        x0 = KInterval((256,), [a for a, _ in base], [a + r for a, r in base], den)
        lo, hi = list(x0.lo), list(x0.hi)
        for j, a, r in changes:
            lo[j], hi[j] = a, a + r
        x1 = KInterval((256,), lo, hi, den)
        graph._cache.pop(("linear", node.id), None)
        y0 = linear(x0, node, graph)
        upd = _linear_update(x0, y0, x1, wt, w_den)
        via_cache = linear(x1, node, graph)  # updates from x0's output
        graph._cache.pop(("linear", node.id), None)
        full = linear(x1, node, graph)
        assert upd is not None
        assert (upd.lo, upd.hi, upd.den) == (full.lo, full.hi, full.den)
        assert (via_cache.lo, via_cache.hi, via_cache.den) == (full.lo, full.hi, full.den)
        # x1 over another denominator: not an update of x0's output
        x2 = KInterval((256,), [3 * v for v in lo], [3 * v for v in hi], 3 * den)
        graph._cache[("linear", node.id)] = (x0, y0)
        via_other = linear(x2, node, graph)
        graph._cache.pop(("linear", node.id), None)
        full = linear(x2, node, graph)
        assert (via_other.lo, via_other.hi, via_other.den) == (full.lo, full.hi, full.den)

    check()
