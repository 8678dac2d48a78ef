"""`tl verify --cex`: the VNN-COMP counterexample file holds the kernel-checked point and its
exact outputs. Rationals whose denominator is 2^a 5^b (dyadic floats, VNN-LIB decimals and what
affine maps and relus make of them) are written as their exact decimals; any other rational is
rounded half-even to 40 significant digits and the file is reported as not exact. Whether the
point also breaks float32 execution is decided exactly: the float32 input nearest to the point
inside the box (no double rounding), with finite outputs inside an unsafe polytope. A graph the
bound-propagation producers cannot take (sigmoid) gets the torch attacks and the kernel's own
interval replay, and the written outputs are then the midpoints of the kernel's enclosures."""

import pathlib
import re
import subprocess
import sys
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from flint import fmpq
from hypothesis import given
from hypothesis import strategies as st

import kernel_checker
from stdlib.vnnlib import read_vnnlib
from tl_dsl.verify import (
    _decimal,
    _float32_input,
    _float32_verdict,
    _nearest_float32,
    load_model,
    write_cex,
)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"


@given(p=st.integers(-10**60, 10**60), a=st.integers(0, 80), b=st.integers(0, 80))
def test_two_five_denominators_are_written_exactly(p, a, b):
    q = fmpq(p, 2**a * 5**b)
    text, exact = _decimal(q)
    assert exact and Fraction(text) == Fraction(int(q.p), int(q.q))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]*[1-9])?", text), text  # no exponent, no trailing 0


@given(p=st.integers(-10**30, 10**30).filter(bool), d=st.integers(2, 10**12))
def test_other_rationals_are_rounded_to_40_significant_digits(p, d):
    q = Fraction(p, d)
    text, exact = _decimal(fmpq(p, d))
    m = q.denominator  # in lowest terms
    while m % 2 == 0:
        m //= 2
    while m % 5 == 0:
        m //= 5
    assert exact == (m == 1)
    got = Fraction(text)
    if exact:
        assert got == q
    else:  # within half a unit of the 40th significant digit
        digits = re.sub(r"[-.]", "", text).lstrip("0")
        assert len(digits.rstrip("0")) <= 40
        e = len(str(abs(q.numerator) // q.denominator)) if abs(q) >= 1 else -len(
            str(q.denominator // abs(q.numerator))) + 1
        assert abs(got - q) <= Fraction(10) ** (e - 40) / 2


def test_write_cex_says_whether_every_value_is_exact(tmp_path):
    f = tmp_path / "c.txt"
    assert write_cex(str(f), (fmpq(-328422877, 10**9), fmpq(1, 8)), [fmpq(3, 40)])
    assert f.read_text() == "((X_0 -0.328422877)\n (X_1 0.125)\n (Y_0 0.075))\n"
    assert not write_cex(str(f), (fmpq(1, 2),), [fmpq(1, 3)])
    assert f.read_text().endswith("(Y_0 0.3333333333333333333333333333333333333333))\n")


def _read_cex(text: str) -> dict:
    return {name: Fraction(v) for name, v in re.findall(r"\(([XY]_[0-9]+) ([-0-9.]+)\)", text)}


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
def test_acas_counterexample_file_is_the_exact_point_and_outputs(tmp_path):
    """ACAS Xu 1_9 prop_7 is sat; its box bounds are decimals that are no dyadics, so a point on
    the box's faces must be written as those decimals, and the outputs exactly."""
    onnx, prop = SHARED / "acasxu" / "ACASXU_run2a_1_9_batch_2000.onnx", SHARED / "acasxu" / (
        "prop_7.vnnlib")
    cex = tmp_path / "c.txt"
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "verify", str(onnx), str(prop),
                        "--cex", str(cex)], capture_output=True, text=True, timeout=300)
    assert r.stdout.splitlines()[0] == "sat", r.stdout + r.stderr
    assert "(every value written exactly)" in r.stdout
    vals = _read_cex(cex.read_text())
    x = [vals[f"X_{i}"] for i in range(5)]
    region = read_vnnlib(str(prop)).regions[0]
    assert all(Fraction(int(a.p), int(a.q)) <= v <= Fraction(int(b.p), int(b.q))
               for v, a, b in zip(x, region.lo, region.hi))
    graph = kernel_checker.load_graph(load_model(str(onnx), str(tmp_path / "m")))
    pt = kernel_checker.rules.point_interval(tuple(fmpq(v.numerator, v.denominator) for v in x),
                                             graph.the_input("v", "v").shape)
    out = graph.outputs[0]
    y = kernel_checker.semantics.evaluate(graph, pt, upto=out)[out]
    assert [vals[f"Y_{j}"] for j in range(5)] == [Fraction(v, y.den) for v in y.lo]


def test_nearest_float32_avoids_double_rounding():
    """1 + 2^-24 + 2^-60 rounds to float64 1 + 2^-24, a float32 tie that goes to even (1.0);
    the nearest float32 of the rational is 1 + 2^-23."""
    q = fmpq(2**60 + 2**36 + 1, 2**60)
    assert np.float32(float(q)) == np.float32(1.0)  # the double rounding this avoids
    assert _nearest_float32(q) == np.float32(1 + 2.0**-23)
    assert _nearest_float32(fmpq(2**60 + 2**36, 2**60)) == np.float32(1.0)  # a true tie: even
    assert _nearest_float32(fmpq(-1, 10)) == np.float32(-0.1)


class _Claim:
    def __init__(self, lo, hi, rows, b):
        self.input_set = SimpleNamespace(as_box=lambda: SimpleNamespace(lo=lo, hi=hi))
        self.unsafe = [SimpleNamespace(a=rows, b=b)]


def _region(n_in=1, rows=1, lo=False, hi=False, strict_rows=None):
    """The strictness of a region's comparisons (stdlib.vnnlib.Region's flags)."""
    return SimpleNamespace(strict_lo=(lo,) * n_in, strict_hi=(hi,) * n_in,
                           strict_rows=(strict_rows or (False,) * rows,))


@pytest.mark.parametrize("x32, y32, verdict", [
    ([0.5], [0.25], "also a counterexample"),
    ([0.5], [0.75], "NOT a counterexample (outputs)"),
    ([np.float32(1) + np.float32(2**-23)], [0.25], "NOT a counterexample (the input leaves"),
    ([0.5], [np.nan], "not decided (the float32 execution overflowed"),
    ([0.5], [np.inf], "not decided (the float32 execution overflowed"),
    ([0.5], None, "not checked"),
])
def test_float32_verdict_is_decided_exactly(x32, y32, verdict):
    claim = _Claim((fmpq(0),), (fmpq(1),), ((fmpq(1),),), (fmpq(1, 2),))  # unsafe: y <= 1/2
    y = None if y32 is None else np.array(y32, dtype=np.float32)
    assert _float32_verdict(claim, _region(), np.array(x32, dtype=np.float32),
                            y).startswith(verdict)


def test_float32_verdict_and_input_honour_strict_comparisons():
    """A review found the float32 report reading every comparison non-strictly: with
    0.5 < X_0 the input 0.5 was taken, and with Y_0 < 1/2 an output 1/2 was called a
    counterexample. Both now follow the region's flags."""
    claim = _Claim((fmpq(0),), (fmpq(1),), ((fmpq(1),),), (fmpq(1, 2),))  # y <= 1/2, y < 1/2
    half = np.array([0.5], dtype=np.float32)
    assert _float32_verdict(claim, _region(strict_rows=(True,)), half, half).startswith(
        "NOT a counterexample (outputs)")
    assert _float32_verdict(claim, _region(), half, half) == "also a counterexample"
    edge = _Claim((fmpq(1, 2),), (fmpq(1),), ((fmpq(1),),), (fmpq(1),))
    assert _float32_verdict(edge, _region(lo=True), half, half).startswith(
        "NOT a counterexample (the input leaves")
    box = SimpleNamespace(lo=(fmpq(1, 2),), hi=(fmpq(1, 2) + fmpq(1, 10**10),))
    assert _float32_input((fmpq(1, 2),), box, _region())[0] == np.float32(0.5)
    assert _float32_input((fmpq(1, 2),), box, _region(lo=True)) is None  # no float32 in it
    wide = SimpleNamespace(lo=(fmpq(1, 2),), hi=(fmpq(1),))
    assert _float32_input((fmpq(1, 2),), wide, _region(lo=True))[0] == np.nextafter(
        np.float32(0.5), np.float32(1))
    huge = SimpleNamespace(lo=(fmpq(10**39),), hi=(fmpq(2 * 10**39),))  # beyond float32
    assert _float32_input((fmpq(10**39),), huge, _region()) is None
    vast = SimpleNamespace(lo=(fmpq(10**400),), hi=(fmpq(2 * 10**400),))  # beyond float64
    assert _float32_input((fmpq(10**400),), vast, _region()) is None


def test_forward_float32_takes_linear_rows_and_refuses_weights_that_are_no_float32(tmp_path):
    """The IR's linear acts on the last axis of [..., k]: the reference took the first axis
    of a [2, 2] input as the vector (wrong outputs, or a crash after `sat` was printed). A
    float64 weight (a Gemm's alpha folded in) was rounded to float32: now not checked."""
    from oracles.float32_reference import forward_float32
    from tl_dsl.builder import GraphBuilder

    g = GraphBuilder()
    x = g.input([2, 2])
    g.output(g.linear(x, np.array([[1, 2], [3, 4]], np.float32), np.float32([0.5, 0]),
                      name="fc"))
    y = forward_float32(g.save(str(tmp_path / "rows")), np.float32([1, 2, 3, 4]))
    assert y.tolist() == [5.5, 11, 11.5, 25]
    g = GraphBuilder()
    x = g.input([1])
    g.output(g.linear(x, np.array([[3 * (1 + 2.0**-23)]], np.float64), name="fc"))
    assert forward_float32(g.save(str(tmp_path / "f64")), np.float32([1])) is None
    g = GraphBuilder()
    x = g.input([1])
    g.output(g.linear(x, np.array([[0.5]], np.float64), name="fc"))  # a float32 number
    assert forward_float32(g.save(str(tmp_path / "f64ok")), np.float32([3])).tolist() == [1.5]


def test_float32_input_steps_inwards_when_the_nearest_float32_leaves_the_box():
    """lo = 1 + 0.4 * 2^-23 has the nearest float32 1.0, below it; the float32 input is the next
    one up, 1 + 2^-23, inside. A box narrower than a float32 step holds none."""
    lo = fmpq(5 * 2**23 + 2, 5 * 2**23)
    box = SimpleNamespace(lo=(lo,), hi=(fmpq(2),))
    assert _nearest_float32(lo) == np.float32(1.0)
    assert _float32_input((lo,), box, _region())[0] == np.float32(1 + 2.0**-23)
    assert _float32_input((fmpq(3, 2),), box, _region())[0] == np.float32(1.5)  # unchanged
    thin = SimpleNamespace(lo=(fmpq(2**30 + 1, 2**32),), hi=(fmpq(2**30 + 2, 2**32),))
    assert _float32_input((thin.lo[0],), thin, _region()) is None  # none in [1/4 + 2^-32, ..]


def _sigmoid_model(tmp_path) -> pathlib.Path:
    """y = sigmoid(x W) on [0, 1]^2, an op the bound-propagation producers do not take."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1, -2], [0.5, 1]], dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
             helper.make_node("Sigmoid", ["h"], ["Y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [1, 2])], [helper.make_tensor_value_info(
            "Y", TensorProto.FLOAT, [1, 2])], [w])
    path = tmp_path / "sig.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _prop(tmp_path, out: str) -> pathlib.Path:
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    box = "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(2))
    path = tmp_path / "p.vnnlib"
    path.write_text(head + box + out)
    return path


@pytest.mark.parametrize("out, word, lines", [
    ("(assert (<= Y_0 -5))", "unsat", ["kernel: unsat by ibp", "bound propagation unavailable "
                                        "(op 'sigmoid' at node 'sig'"]),
    ("(assert (>= Y_0 0.7))", "sat", ["outputs enclosed, radius < 2^-", "outputs: the "
                                       "midpoints of the kernel's enclosures"]),
])
def test_a_graph_without_bound_propagation_gets_an_attack_and_interval_replay(tmp_path, out,
                                                                                word, lines):
    """sigmoid(x0 + x1 / 2) reaches 0.7 near the corner (1, 1) and never -5."""
    cex = tmp_path / "c.txt"
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "verify", str(_sigmoid_model(
        tmp_path)), str(_prop(tmp_path, out)), "--cex", str(cex)], capture_output=True,
        text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines()[0] == word, r.stdout
    for line in lines:
        assert line in r.stdout, r.stdout
    if word == "sat":  # the written outputs are sigmoid at the written point
        vals = _read_cex(cex.read_text())
        x0, x1 = float(vals["X_0"]), float(vals["X_1"])
        assert 0 <= x0 <= 1 and 0 <= x1 <= 1 and vals["Y_0"] >= Fraction(7, 10)
        want = 1 / (1 + np.exp(-(x0 + 0.5 * x1)))
        assert abs(vals["Y_0"] - Fraction(want)) < Fraction(1, 10**15)


@pytest.mark.parametrize("text, fragment", [
    ("".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0")) +
     "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(2)) +
     "(assert (<= Y_0 -5))", "declares 2 inputs X and 1 outputs Y; the model has 2 input values"),
    ("".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1")) +
     "(assert (>= X_0 1))\n(assert (<= X_0 0))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n"
     "(assert (<= Y_0 -5))", "every disjunct is empty"),
], ids=["fewer-outputs-declared", "empty-input-box"])
def test_a_property_that_does_not_fit_the_model_or_is_empty_is_unknown_with_the_reason(
        tmp_path, text, fragment):
    """Sizes are checked against the model before anything runs (a property declaring fewer
    Y than the model has crashed in the producers), and a property none of whose disjuncts can
    hold says so (it crashed on an empty list of regions): `unknown`, then the reason."""
    import io

    from tl_dsl.verify import verify

    prop = tmp_path / "p.vnnlib"
    prop.write_text(text)
    out = io.StringIO()
    res = verify(str(_sigmoid_model(tmp_path)), str(prop), timeout_s=30, out=out,
                 err=io.StringIO())
    lines = out.getvalue().splitlines()
    assert res["result"] == "unknown" and lines[0] == "unknown" and fragment in lines[1], lines


def _relu_model(tmp_path) -> pathlib.Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"], name="r")], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("box, out, word", [
    ("(assert (>= X_0 -1))\n(assert (<= X_0 0))\n", "(assert (> Y_0 0))", "unknown"),
    ("(assert (>= X_0 -1))\n(assert (<= X_0 0))\n", "(assert (>= Y_0 0))", "sat"),
    ("(assert (>= (* 3 X_0) 1))\n(assert (<= X_0 1))\n", "(assert (<= (* 3 Y_0) 2))", "sat"),
    ("(assert (>= X_0 -1))\n(assert (<= X_0 0))\n", "(assert (and (>= Y_0 0) (< Y_1 1)))", "sat"),
], ids=["strict-reached-only-on-its-boundary", "non-strict", "bound-one-third",
        "strict-met-non-strict-on-its-boundary"])
def test_sat_breaks_the_property_as_written_and_the_cex_file_holds_the_point(tmp_path, box, out,
                                                                             word):
    """y = relu(x): with X_0 in [-1, 0], Y_0 > 0 is never reached, though its closure Y_0 >= 0
    is everywhere (a review found `sat` printed); with the bound 1/3 on X_0 the point checked
    and written moves to a finite decimal inside the box (it was written rounded below 1/3).
    Strictness is per comparison: Y_0 >= 0 met on its boundary with Y_1 < 1 met strictly is
    `sat` (it was `unknown` while one strict comparison made every one strict)."""
    import io

    from tl_dsl.verify import verify

    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(head + box + "(assert (>= X_1 0))\n(assert (<= X_1 1))\n" + out)
    cex, text = tmp_path / "c.txt", io.StringIO()
    res = verify(str(_relu_model(tmp_path)), str(prop), timeout_s=60, cex=str(cex), out=text,
                 err=io.StringIO())
    assert res["result"] == word, text.getvalue()
    if word == "sat":
        x0 = _read_cex(cex.read_text())["X_0"]
        assert (Fraction(1, 3) <= x0 <= Fraction(2, 3)) if "3" in box else (-1 <= x0 <= 0)
    else:
        assert "boundary of a strict comparison" in text.getvalue()


def test_an_alarm_ringing_as_the_check_returns_leaves_no_bundle_beside_timeout(tmp_path,
                                                                                monkeypatch):
    """The budget's alarm (`_until`) may ring after the kernel's check returned its theorem and
    before the timer is disarmed: the answer is then `timeout`, and no bundle may be written
    beside it (it was: the theorem had been assigned). The ring is simulated at the block's
    end; the same instance without it answers `unsat` with its bundle."""
    import contextlib
    import io

    from tl_dsl import verify as verify_mod

    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(head + "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                    "(assert (<= X_1 1))\n(assert (<= Y_1 -1))")  # relu >= 0: unsat
    model, bundle = _relu_model(tmp_path), tmp_path / "b.json"
    rang = []

    @contextlib.contextmanager
    def late_ring(seconds):
        yield
        rang.append(seconds)
        raise verify_mod._DeadlineError

    real_decide = verify_mod.decide_region
    monkeypatch.setattr(verify_mod, "decide_region", lambda *a, **k: _without_theorem(
        real_decide(*a, **k)))
    res = verify_mod.verify(str(model), str(prop), timeout_s=60, bundle=str(bundle),
                            out=io.StringIO(), err=io.StringIO())
    assert res["result"] == "unsat" and bundle.is_file()
    monkeypatch.setattr(verify_mod, "_until", late_ring)
    text = io.StringIO()
    res = verify_mod.verify(str(model), str(prop), timeout_s=60, bundle=str(bundle), out=text,
                            err=io.StringIO())
    assert rang and res["result"] == "timeout" and text.getvalue().splitlines()[0] == "timeout"
    assert not bundle.exists()


def _without_theorem(decision):
    """A decision whose theorem the final check must derive from its certificate (the path
    that runs under `_until`)."""
    decision.theorem = None
    return decision


def test_a_file_that_is_not_onnx_is_unknown_and_no_temporary_model_is_left(tmp_path,
                                                                           monkeypatch):
    """A corrupt .onnx answered with a protobuf DecodeError's traceback (exit 1); now `unknown`
    and the reason. Without --bundle the model is imported into a temporary folder, which was
    never removed (68 KB per ACAS Xu run): it is removed at the end, whatever the answer."""
    import io
    import tempfile

    from tl_dsl.verify import verify

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is no protobuf \xff\xff")
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(head + "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                    "(assert (<= X_1 1))\n(assert (<= Y_1 -1))")
    text = io.StringIO()
    res = verify(str(bad), str(prop), timeout_s=30, out=text, err=io.StringIO())
    assert res["result"] == "unknown" and "not an ONNX model" in text.getvalue(), text.getvalue()
    res = verify(str(_relu_model(tmp_path)), str(prop), timeout_s=60, out=io.StringIO(),
                 err=io.StringIO())
    assert res["result"] == "unsat" and list(tmp.iterdir()) == []


def test_a_model_through_an_op_the_kernel_does_not_evaluate_is_unknown_at_once(tmp_path):
    """Softmax is imported, but the kernel's exact semantics does not evaluate it, so no answer
    could be checked: `tl verify` ran the whole attack budget and then said unknown (a new
    user's trial); it now says so before producing anything, naming the node and the op."""
    import io
    import time

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tl_dsl.verify import verify

    graph = helper.make_graph([helper.make_node("Softmax", ["X"], ["Y"], name="sm", axis=1)],
                              "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])])
    model = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(head + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                    "(assert (<= X_1 1))\n(assert (>= Y_0 0.4))")
    text, t0 = io.StringIO(), time.perf_counter()
    res = verify(str(model), str(prop), timeout_s=60, out=text, err=io.StringIO())
    assert res["result"] == "unknown" and time.perf_counter() - t0 < 20
    assert "node 'sm' (op softmax) is not evaluated by the kernel's exact semantics" in \
        text.getvalue()


def test_the_model_folder_beside_a_bundle_stays_only_with_the_bundle(tmp_path):
    """--bundle B.json imports the model into B.model/, which the bundle's paths name; when no
    bundle is written (sat, unknown) that folder was left behind alone (a new user's trial)."""
    import io

    from tl_dsl.verify import verify

    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    box = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n"
    model = _relu_model(tmp_path)
    for name, out, word in (("sat", "(assert (>= Y_1 0.5))", "sat"),
                            ("unsat", "(assert (<= Y_1 -1))", "unsat")):
        prop = tmp_path / f"{name}.vnnlib"
        prop.write_text(head + box + out)
        bundle = tmp_path / "out" / f"{name}.json"
        res = verify(str(model), str(prop), timeout_s=60, bundle=str(bundle), out=io.StringIO(),
                     err=io.StringIO())
        assert res["result"] == word
        assert bundle.is_file() == (word == "unsat")
        assert (tmp_path / "out" / f"{name}.model").is_dir() == (word == "unsat")
