"""Readable printing (tl_dsl/printing.py): claim text close to the input syntax that parses back
to an equal claim, theorems with level and assumptions, and LaTeX."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernel_checker
from stdlib import robustness
from tl_dsl import claims as dsl
from tl_dsl import proof
from tl_dsl.builder import GraphBuilder
from tl_dsl.printing import claim_to_latex, fmt_vector, format_claim, format_theorem
from tl_dsl.text import parse_claim, parse_claims


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> kernel_checker.Graph:
    rng = np.random.default_rng(1)
    g = GraphBuilder()
    x = g.input([4])
    h = g.linear(x, rng.standard_normal((6, 4)).astype(np.float32), name="h1")
    d = g.linear(g.relu(h), rng.standard_normal((6, 6)).astype(np.float32), name="layer.2")
    g.output(g.linear(d, rng.standard_normal((10, 6)).astype(np.float32), name="out"))
    return kernel_checker.load_graph(g.save(str(tmp_path_factory.mktemp("net"))))


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory) -> kernel_checker.Graph:
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    x = g.input([784])
    g.output(g.linear(x, (rng.standard_normal((10, 784)) / 100).astype(np.float32), name="y"))
    return kernel_checker.load_graph(g.save(str(tmp_path_factory.mktemp("mnist"))))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> kernel_checker.Graph:
    g = GraphBuilder()
    x = g.input([2])
    g.output(g.linear(x, np.array([[1, -1], [2, 1], [0, 1]], np.float32), name="y"))
    return kernel_checker.load_graph(g.save(str(tmp_path_factory.mktemp("small"))))


X0 = np.array([0.5, 0.25, 0.1, 0.9], dtype=np.float32)


@pytest.fixture
def env(net):
    return {"net": net, "x0": X0, "lo": [0, 0, 0, 0], "hi": ["1", "1/2", 1, 1]}


EXAMPLES = [
    "claim robust7: forall x in ball(x0, 1/50) clamp [0, 1]: argmax(net(x)) == 7",
    "claim m: forall x in ball(x0, 0.01): margin(net(x), 3) >= 1/10",
    "claim b: forall x in box(lo, hi): net(x)@h1 in box(-7/2, [1, 2, 3, 4, 5, 6])",
    'claim "dotted node": forall x in box(lo, hi): net(x)@"layer.2" in box(-1, 1)',
    "claim p: forall x in box(lo, hi): never (net(x)[0] - net(x)[1] <= 0 and "
    "net(x)[2] >= 1/3) or (net(x)[4] <= -2)",
    "claim lower: forall x in box([0, 0, 0, 0], [1, 1/2, 1, 1]): "
    "2*net(x)[0] - net(x)[3] >= 1/2, -net(x)[1] + 1/3*net(x)[2] >= -5",
    "claim: forall x in ball([0, 1/3, 2/3, 1], 0.125): never 0 <= 1 and net(x)[9] >= 0",
    "claim up: forall x in box(lo, hi): 1/4 <= net(x)[2] - net(x)[0], 3 >= net(x)[1]",
]


def test_robust_text_and_short_sha(net, env):
    c = robustness.robust(net, X0, Fraction(1, 50), 7, clamp=(0, 1), name="robust7")
    text = format_claim(c, env)
    assert text == ("claim robust7: forall x in ball(x0, 1/50) clamp [0, 1]: argmax(net(x)) == 7"
                    f"  # net: graph {net.sha256[:12]}")
    assert net.sha256 not in text
    bare = format_claim(c)  # no env: inline centre (exact binary values as p/q), node written
    assert "ball([1/2, 1/4, 13421773/134217728, 7549747/8388608], 1/50)" in bare
    assert "argmax(net(x)@out) == 7" in bare
    assert format_claim(c, graph_name="G").count("G(x)@out") == 1


def test_margin_and_polytope_text(net, env):
    c = robustness.margin(net, X0, "0.01", 3, "1/10", clamp=None, name="m")
    assert format_claim(c, env).startswith(
        "claim m: forall x in ball(x0, 1/100): margin(net(x), 3) >= 1/10  # net: graph ")
    p = parse_claim(EXAMPLES[4], env)
    assert ("never (net(x)[0] - net(x)[1] <= 0 and net(x)[2] >= 1/3) or (net(x)[4] <= -2)"
            in format_claim(p, env))


def test_long_vectors_abbreviated(mnist_like):
    rng = np.random.default_rng(3)
    x0 = rng.integers(0, 256, 784) / 256
    x0[:3] = [0, 0.5, 0.25]
    c = robustness.robust(mnist_like, x0, "1/50", 3, name="digit")
    text = format_claim(c)
    assert "ball([0, 1/2, 1/4, ... (784 values)], 1/50) clamp [0, 1]" in text
    assert len(text) < 200
    assert "ball(img, 1/50)" in format_claim(c, {"img": x0, "mnist": mnist_like})
    b = dsl.bounds(mnist_like, dsl.box(np.zeros(784), np.ones(784)), [-5] * 10, [5] * 10)
    text = format_claim(b, {"mnist": mnist_like})
    assert text.startswith("claim: forall x in box(0, 1): mnist(x) in box(-5, 5)  # mnist: graph")
    assert parse_claim(text, {"mnist": mnist_like}) == b
    assert fmt_vector([fmpq(1, 3)] * 9) == "1/3"
    assert fmt_vector([fmpq(1, 3)] * 4) == "1/3"
    assert fmt_vector([fmpq(1, 3)] * 3) == "[1/3, 1/3, 1/3]"
    assert fmt_vector(range(20), max_inline=4) == "[0, 1, 2, ... (20 values)]"


@pytest.mark.parametrize("text", EXAMPLES)
def test_examples_round_trip(net, env, text):
    claim = parse_claim(text, env)
    for printed in (format_claim(claim, env), format_claim(claim), format_claim(claim, {})):
        again = parse_claim(printed, {**env, "net": net})
        assert again == claim and again.to_json() == claim.to_json(), printed


def test_many_claims_round_trip(net, env):
    found = parse_claims("\n".join(EXAMPLES), env)
    printed = "\n".join(format_claim(c, env) for c in found.values())
    assert parse_claims(printed, env) == found


def test_env_names_only_for_equal_non_constant_vectors(small, mnist_like):
    """(a review: `box(0, 1)` over 2 inputs printed as `box(lo, [1, 1])` when env had
    lo = [0, 0]) A claim does not record how it was written: an env name is printed only for a
    vector equal to the whole env entry, and never for a constant vector (printed as without env).
    """
    env = {"g": small, "lo": [0, 0], "ones": np.ones(2), "half": [0, "1/2"], "pre": [0]}
    c = parse_claim("claim c: forall x in box(0, 1): g(x) in box(-1, 1)", env)
    text = format_claim(c, env)
    assert text.startswith("claim c: forall x in box([0, 0], [1, 1]): g(x) in box("), text
    assert format_claim(c, env).split("  #")[0] == format_claim(c, {"g": small}).split("  #")[0]
    assert parse_claim(text, env) == c
    # a non-constant vector equal to an env entry is printed by its name; a prefix is not it
    c = parse_claim("claim c: forall x in ball([0, 1/2], 1/4): argmax(g(x)) == 1", env)
    text = format_claim(c, env)
    assert text.startswith("claim c: forall x in ball(half, 1/4): "), text
    assert parse_claim(text, env) == c
    c = parse_claim("claim c: forall x in box([0, 0], [0, 1/2]): g(x)[0] >= 0", env)
    assert "box([0, 0], half)" in format_claim(c, env)
    # long constant vectors print as one number, whatever env binds
    zeros = {"mnist": mnist_like, "z": np.zeros(784), "o": [1] * 784}
    b = dsl.bounds(mnist_like, dsl.box(np.zeros(784), np.ones(784)), [-5] * 10, [5] * 10)
    text = format_claim(b, zeros)
    assert text.startswith("claim: forall x in box(0, 1): mnist(x) in box(-5, 5)"), text
    assert parse_claim(text, zeros) == b
    assert "[0, 1]^{2}" in claim_to_latex(parse_claim(
        "claim c: forall x in box(0, 1): g(x)[0] >= 0", env), env)


def test_quoting_of_names(net, env):
    c = dsl.bounds(net, dsl.box(env["lo"], env["hi"]), [0] * 6, [1] * 6, node="h1", name="in")
    text = format_claim(c, env)
    assert text.startswith('claim "in": ')  # a reserved word is quoted
    assert parse_claim(text, env) == c


def test_counterexample_text(small):
    u = dsl.unsat(small, dsl.box([0, 0], [1, 1]), (dsl.polytope([[1, 0, 0]], [1]),), name="u")
    cx = dsl.counterexample(u, ["1/2", 0])
    text = format_claim(cx, {"g": small})
    assert text.startswith("counterexample u: the point x = [1/2, 0] in box([0, 0], [1, 1]) has "
                           "(g(x)[0] <= 1)")
    assert "x^\\ast = (\\tfrac{1}{2}, 0)" in claim_to_latex(cx)


def test_format_theorem_proved_and_assumed(net, env):
    c = parse_claim("claim b: forall x in box(lo, hi): net(x)@h1 in box(-1000, 1000)", env)
    thm = proof.check(c, proof.ibp(), net)
    text = format_theorem(thm, env)
    lines = text.splitlines()
    # lo is [0, 0, 0, 0]: a constant vector prints as its number, not by an env name
    assert lines[0].startswith("theorem (proved, by rule ibp): claim b: forall x in box(0, hi): "
                               "net(x)@h1 in box(-1000, 1000)")
    assert f"graph {net.sha256[:12]}" in lines[0]
    assert lines[1] == "  assumptions: none"
    thm = proof.check(c, proof.assume("user.hypothesis", reason="checked by hand", tool="pen"),
                      net)
    text = format_theorem(thm, env)
    assert text.startswith("theorem (shape-checked, by rule assume): claim b:")
    assert "  assumptions:\n    - user.hypothesis: " in text
    assert "[reason=checked by hand, tool=pen]" in text


def test_latex(net, env, small):
    c = robustness.robust(net, X0, Fraction(1, 50), 7, clamp=(0, 1), name="robust7")
    assert claim_to_latex(c, env) == (
        "\\forall x \\in B_\\infty(x_0, \\tfrac{1}{50}) \\cap [0,1]^{4}:\\ "
        "\\arg\\max_i f(x)_i = 7")
    assert claim_to_latex(c).startswith("\\forall x \\in B_\\infty((\\tfrac{1}{2}, \\tfrac{1}{4}")
    m = robustness.margin(net, X0, "0.01", 3, "-1/10", clamp=None)
    assert claim_to_latex(m, env).endswith(
        "f(x)_{3} - f(x)_j \\ge -\\tfrac{1}{10} \\text{ for all } j \\ne 3")
    p = parse_claim(EXAMPLES[4], env)
    assert claim_to_latex(p, env) == (
        "\\forall x \\in [0, 1] \\times [0, \\tfrac{1}{2}] \\times [0, 1] \\times [0, 1]:\\ "
        "\\neg\\big((f(x)_{0} - f(x)_{1} \\le 0 \\wedge f(x)_{2} \\ge \\tfrac{1}{3}) \\vee "
        "(f(x)_{4} \\le -2)\\big)")
    lb = parse_claim(EXAMPLES[5], env)
    assert claim_to_latex(lb, env).endswith(
        ":\\ 2 f(x)_{0} - f(x)_{3} \\ge \\tfrac{1}{2},\\ "
        "-f(x)_{1} + \\tfrac{1}{3} f(x)_{2} \\ge -5")
    b = parse_claim(EXAMPLES[2], env)
    assert claim_to_latex(b, env).endswith(
        ":\\ -\\tfrac{7}{2} \\le f_{\\mathrm{h1}}(x) \\le (1, 2, 3, 4, 5, 6)")
    s = parse_claim("claim s: forall x in box(0, 1): g(x) in box(-1, 1)", {"g": small})
    assert claim_to_latex(s, {"g": small}) == (
        "\\forall x \\in [0, 1]^{2}:\\ f(x) \\in [-1, 1]^{3}")
    # without env the node is always named (a hidden layer's bound read as the output's: a
    # review), its LaTeX specials escaped
    name = s.node.replace("_", "\\_")
    assert claim_to_latex(s) == (
        "\\forall x \\in [0, 1]^{2}:\\ f_{\\mathrm{" + name + "}}(x) \\in [-1, 1]^{3}")


# ---- property-based round trip ------------------------------------------------------------------

rationals = st.builds(Fraction, st.integers(-30, 30), st.integers(1, 9))
small_rationals = st.builds(Fraction, st.integers(-3, 3), st.integers(1, 4))
rows3 = st.lists(small_rationals, min_size=3, max_size=3)


@st.composite
def input_sets(draw):
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(rationals, rationals), min_size=2, max_size=2))
        return dsl.box([min(p) for p in pairs], [max(p) for p in pairs])
    center = draw(st.lists(rationals, min_size=2, max_size=2))
    eps = draw(st.builds(Fraction, st.integers(0, 20), st.integers(1, 16)))
    if draw(st.booleans()):
        lo = min(center) - eps
        hi = max(center) + eps + draw(st.builds(Fraction, st.integers(0, 5), st.integers(1, 3)))
        return dsl.ball(center, eps, (lo, hi))
    return dsl.ball(center, eps)


@st.composite
def claims_on(draw, graph):
    s = draw(input_sets())
    name = draw(st.one_of(st.none(), st.sampled_from(["c", "in", "a b", "x_1", "q\"uote"])))
    kind = draw(st.sampled_from(["bounds", "linear", "unsat", "argmax", "margin"]))
    if kind == "bounds":
        pairs = draw(st.lists(st.tuples(rationals, rationals), min_size=3, max_size=3))
        return dsl.bounds(graph, s, [min(p) for p in pairs], [max(p) for p in pairs], name=name)
    if kind == "linear":
        rows = draw(st.lists(rows3, min_size=1, max_size=3))
        rhs = draw(st.lists(rationals, min_size=len(rows), max_size=len(rows)))
        return dsl.linear_bound(graph, s, rows, rhs, name=name)
    if kind == "unsat":
        polys = []
        for _ in range(draw(st.integers(1, 3))):
            rows = draw(st.lists(rows3, min_size=1, max_size=3))
            b = draw(st.lists(rationals, min_size=len(rows), max_size=len(rows)))
            polys.append(dsl.polytope(rows, b))
        return dsl.unsat(graph, s, tuple(polys), name=name)
    label = draw(st.integers(0, 2))
    clamp = s.clamp if hasattr(s, "clamp") else None
    center = s.center if hasattr(s, "center") else s.lo
    eps = s.eps if hasattr(s, "eps") else 0
    if kind == "argmax":
        return robustness.robust(graph, center, eps, label, clamp=clamp, name=name)
    return robustness.margin(graph, center, eps, label, draw(rationals), clamp=clamp, name=name)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_round_trip_random_claims(small, data):
    claim = data.draw(claims_on(small))
    env = {"g": small}
    # env vectors that the claim's vectors may happen to equal (constant or not)
    crowded = {"g": small, "z": [0, 0], "o": [1, 1], "u": [0, 1], "w": [1, 0], "t": [0, 0, 0]}
    for printed in (format_claim(claim, env), format_claim(claim), format_claim(claim, crowded)):
        again = parse_claim(printed, {**crowded, "net": small})
        assert again == claim, printed
        assert again.to_json() == claim.to_json()
    assert claim_to_latex(claim).startswith("\\forall x \\in ")


def test_a_conjunction_prints_part_by_part(small):
    """A VNN-LIB property over several input regions is a conjunction (kind `all`): printed
    (for reading) part by part, and a theorem of it too (`tl audit` of such a bundle)."""
    poly = dsl.polytope([[1, 0, 0]], [-100])
    parts = tuple(dsl.unsat(small, dsl.box([a, 0], [a + 1, 1]), [poly]) for a in (0, 1))
    whole = kernel_checker.Claim("all", small.sha256, dsl.box([0, 0], [2, 1]), "", parts=parts)
    text = format_claim(whole, graph_name="G")
    assert text.startswith("claim: all of 2 parts: forall x in box([0, 0], [1, 1]): never ")
    assert "; forall x in box([1, 0], [2, 1]): never " in text and text.count("G(x)@y") == 2
    thm = proof.check(whole, proof.by_rule(
        "conjoin", premises=[proof.premise(p, proof.ibp()) for p in parts]), small)
    assert format_theorem(thm).startswith("theorem (proved, by rule conjoin): claim: all of 2")
