"""The text syntax for claims (tl_dsl/text.py, tl_dsl/claims.lark): every form parses into exactly
the kernel Claim that the Python builders make; errors say where and what."""

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
from tl_dsl.builder import GraphBuilder
from tl_dsl.text import (
    ClaimSyntaxError,
    ClaimValueError,
    UnknownNameError,
    parse_claim,
    parse_claims,
    parse_tree,
)


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> kernel_checker.Graph:
    """4 inputs -> linear h1 (6) -> relu -> linear out (10); also a reshape node r of shape [2, 5]
    and a node with a dotted id."""
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input([4])
    h = g.linear(x, rng.standard_normal((6, 4)).astype(np.float32), np.zeros(6, np.float32),
                 name="h1")
    d = g.linear(g.relu(h), rng.standard_normal((6, 6)).astype(np.float32), name="layer.2")
    y = g.linear(d, rng.standard_normal((10, 6)).astype(np.float32), name="out")
    g.reshape(y, [2, 5])
    g.output(y)
    folder = tmp_path_factory.mktemp("net")
    return kernel_checker.load_graph(g.save(str(folder)))


@pytest.fixture(scope="module")
def two_in(tmp_path_factory) -> kernel_checker.Graph:
    g = GraphBuilder()
    x = g.input([2])
    g.output(g.linear(x, np.array([[1, -1], [2, 1], [0, 1]], np.float32), name="y"))
    return kernel_checker.load_graph(g.save(str(tmp_path_factory.mktemp("two"))))


@pytest.fixture
def env(net):
    return {"net": net, "x0": np.array([0.5, 0.25, 0.1, 0.9], dtype=np.float32),
            "lo": [0, 0, 0, 0], "hi": ["1", "1/2", 1, 1], "ylo": [-50] * 6, "yhi": [50] * 6,
            "eps": "1/64"}


def same(a, b) -> bool:
    return a.to_json() == b.to_json() and a == b


# ---- the forms of the brief ---------------------------------------------------------------------

def test_robust_is_stdlib_robust(net, env):
    c = parse_claim("claim robust7: forall x in ball(x0, 1/50) clamp [0, 1]: argmax(net(x)) == 7",
                    env)
    want = robustness.robust(net, env["x0"], Fraction(1, 50), 7, clamp=(0, 1), name="robust7")
    assert same(c, want)
    assert c.kind == "unsat" and c.input_set.eps == fmpq(1, 50)
    # the float 1/50 is a different (binary) radius: the text is exact
    assert c != robustness.robust(net, env["x0"], 1 / 50, 7, clamp=(0, 1), name="robust7")


def test_margin_is_stdlib_margin_without_clamp(net, env):
    c = parse_claim("claim m: forall x in ball(x0, 0.01): margin(net(x), 3) >= 1/10", env)
    want = robustness.margin(net, env["x0"], "0.01", 3, Fraction(1, 10), clamp=None, name="m")
    assert same(c, want)
    assert c.input_set.clamp is None and c.kind == "linear_bound"
    assert set(c.rhs) == {fmpq(1, 10)} and len(c.rows) == 9


def test_margin_with_clamp_and_named_eps(net, env):
    c = parse_claim("claim m2: forall x in ball(x0, eps) clamp [0, 1]: margin(net(x), 0) >= -1/2",
                    env)
    assert same(c, robustness.margin(net, env["x0"], "1/64", 0, "-1/2", name="m2"))


def test_bounds_default_and_inner_node(net, env):
    c = parse_claim("claim b: forall x in box(lo, hi): net(x) in box(-3, 3)", env)
    box = dsl.box([0, 0, 0, 0], [1, Fraction(1, 2), 1, 1])
    assert same(c, dsl.bounds(net, box, [-3] * 10, [3] * 10, name="b"))
    assert c.node == "out"
    c = parse_claim("claim b: forall x in box(lo, hi): net(x)@h1 in box(ylo, yhi)", env)
    assert same(c, dsl.bounds(net, box, [-50] * 6, [50] * 6, node="h1", name="b"))
    c = parse_claim('claim b: forall x in box(lo, hi): net(x)@"layer.2" in box(ylo, yhi)', env)
    assert c.node == "layer.2"
    c2 = parse_claim('claim b: forall x in box(lo, hi): net(x)@"h1" in box(ylo, yhi)', env)
    assert c2.node == "h1"


def test_never_union_of_polytopes(net, env):
    text = ("claim p: forall x in box(lo, hi): never (net(x)[0] - net(x)[1] <= 0 and "
            "net(x)[2] >= 1/3) or (net(x)[4] <= -2)")
    c = parse_claim(text, env)
    e = np.eye(10, dtype=int)
    p1 = dsl.polytope([e[0] - e[1], -e[2]], [0, Fraction(-1, 3)])
    p2 = dsl.polytope([e[4]], [-2])
    want = dsl.unsat(net, dsl.box(env["lo"], env["hi"]), (p1, p2), name="p")
    assert same(c, want)


def test_never_normalises_both_sides(net, env):
    a = parse_claim("claim p: forall x in box(lo, hi): never 2*net(x)[0] + 1 <= net(x)[1]*3 - 1/2",
                    env)
    b = parse_claim("claim p: forall x in box(lo, hi): never (2*net(x)[0] - 3*net(x)[1] <= -3/2)",
                    env)
    assert same(a, b)
    row = a.unsafe[0].a[0]
    assert row[0] == 2 and row[1] == -3 and a.unsafe[0].b == (fmpq(-3, 2),)
    # a single disjunct may skip the parentheses; 'and' binds tighter than 'or'
    c = parse_claim("claim q: forall x in box(lo, hi): never net(x)[0] <= 0 and net(x)[1] <= 0 "
                    "or net(x)[2] >= 5", env)
    assert [len(p.a) for p in c.unsafe] == [2, 1]


def test_linear_bound(net, env):
    c = parse_claim("claim lower: forall x in box(lo, hi): 2*net(x)[0] - net(x)[3] >= 1/2", env)
    row = [2, 0, 0, -1, 0, 0, 0, 0, 0, 0]
    assert same(c, dsl.linear_bound(net, dsl.box(env["lo"], env["hi"]), [row], ["1/2"],
                                    name="lower"))
    c = parse_claim("claim two: forall x in box(lo, hi): net(x)[1] >= -1, "
                    "net(x)[2] + 1/4 >= 0.5*net(x)[5] and 1 >= -net(x)[9]", env)
    assert c.rhs == (fmpq(-1), fmpq(-1, 4), fmpq(-1))
    assert c.rows[1][2] == 1 and c.rows[1][5] == fmpq(-1, 2)
    assert c.rows[2][9] == 1


def test_linear_bound_rejects_le(env):
    with pytest.raises(ClaimValueError, match=r"claim 'lb'.*line 1, column 36.*'<=' may only "
                       r"follow a constant"):
        parse_claim("claim lb: forall x in box(lo, hi): net(x)[0] <= 1", env)


def test_constant_left_of_le_is_a_lower_bound(net, env):
    """`c <= E` is the lower bound `E >= c` (a review: it was refused as "'>=' only")."""
    def lb(prop):
        return parse_claim(f"claim c: forall x in box(lo, hi): {prop}", env)

    assert same(lb("1 <= net(x)[0]"), lb("net(x)[0] >= 1"))
    assert same(lb("-1/2 <= 2*net(x)[0] - net(x)[3]"), lb("2*net(x)[0] - net(x)[3] >= -1/2"))
    assert same(lb("1 + 1/4 <= net(x)[0] + 1, net(x)[1] >= 0 and 0 <= net(x)[2]"),
                lb("net(x)[0] >= 1/4, net(x)[1] >= 0, net(x)[2] >= 0"))
    c = lb("1 <= net(x)[0]")
    assert c.rows[0][0] == 1 and c.rhs == (fmpq(1),)
    # a constant on the left of >= is an upper bound, in a linear bound and in `never`
    assert same(lb("1 >= net(x)[0]"), lb("-net(x)[0] >= -1"))
    assert same(lb("never 1 >= net(x)[0]"), lb("never net(x)[0] <= 1"))
    # '<=' after an output still reads like the set to avoid: refused, naming what is allowed
    head = "claim c: forall x in box(lo, hi): "
    for prop, at in [("net(x)[0] <= 1", 0), ("net(x)[0] >= 0, net(x)[0] <= net(x)[1]", 16)]:
        with pytest.raises(ClaimValueError) as info:
            lb(prop)
        msg, col = str(info.value), len(head) + at + 1
        assert f"line 1, column {col}" in msg and "'c <= E'" in msg and "'c >= E'" in msg
        assert "never (... <= ...)" in msg


def test_env_names_where_numbers_go(net, env):
    """A name bound in env may stand for a label, margin, clamp bound, list element, coefficient
    or constant (a review: `net(x)[0] >= m` said "expected '(', found the end of the text")."""
    names = {**env, "m": "1/10", "lab": np.int64(3), "k": 2, "a": 0, "b": 1}

    def both(named, literal):
        text = "claim c: forall x in {}"
        assert same(parse_claim(text.format(named), names), parse_claim(text.format(literal), env))

    both("ball(x0, eps): margin(net(x), lab) >= m", "ball(x0, 1/64): margin(net(x), 3) >= 1/10")
    both("ball(x0, eps): margin(net(x), lab) >= -m", "ball(x0, 1/64): margin(net(x), 3) >= -0.1")
    both("ball(x0, eps) clamp [a, b]: argmax(net(x)) == lab",
         "ball(x0, 1/64) clamp [0, 1]: argmax(net(x)) == 3")
    both("ball([a, m, -m, b], m): argmax(net(x)) == 0",
         "ball([0, 1/10, -1/10, 1], 1/10): argmax(net(x)) == 0")
    both("box(lo, hi): net(x)[0] >= m", "box(lo, hi): net(x)[0] >= 1/10")
    both("box(lo, hi): k*net(x)[0] - net(x)[1]*m + k >= m, m <= net(x)[2]",
         "box(lo, hi): 2*net(x)[0] - 1/10*net(x)[1] >= 1/10 - 2, net(x)[2] >= 1/10")
    both("box(lo, hi): never (net(x)[0] <= -k)", "box(lo, hi): never (net(x)[0] <= -2)")
    both("box(-b, lo): argmax(net(x)) == 0", "box(-1, 0): argmax(net(x)) == 0")
    both("box(-hi, lo): argmax(net(x)) == 0", "box([-1, -1/2, -1, -1], 0): argmax(net(x)) == 0")
    # a name that is not a number (or not an integer label) is refused, naming it and the need
    cases = [  # (property, the name's position in it, error, message)
        ("margin(net(x), 0) >= lo", 21, ClaimValueError,
         "margin: expected a number, but lo is a vector"),
        ("argmax(net(x)) == m", 18, ClaimValueError, "expected an integer label, but m is 1/10"),
        ("net(x)[0] >= net", 13, ClaimValueError, "constant: expected a number, but net is a "
         "graph"),
        ("hi*net(x)[0] >= 0", 0, ClaimValueError, "coefficient: expected a number, but hi is a "
         "vector"),
        ("net(x)[0] >= mm", 13, UnknownNameError, "unknown name 'mm'"),
        ("margin(net(x), 1) >= -mm", 22, UnknownNameError, "unknown name 'mm'"),
    ]
    head = "claim r: forall x in box(lo, hi): "
    for prop, at, kind, text in cases:
        col = len(head) + at + 1
        with pytest.raises(kind) as info:
            parse_claim(head + prop, names)
        assert (info.value.line, info.value.column) == (1, col), prop
        assert f"line 1, column {col}: {text}" in str(info.value), str(info.value)
    with pytest.raises(ClaimValueError, match=r"ball centre\[1\]: expected a number, but hi is"):
        parse_claim("claim r: forall x in ball([0, hi, 0, 0], 1): argmax(net(x)) == 0", names)


def test_index_count_message(env):
    """(a review: "expected 1 or 1 indices")"""
    with pytest.raises(ClaimValueError) as info:
        parse_claim("claim r: forall x in box(lo, hi): net(x)[1, 2] >= 0", env)
    assert "expected 1 index for node 'out' of shape [10], found 2" in str(info.value)
    assert "1 or 1" not in str(info.value)
    with pytest.raises(ClaimValueError, match=r"expected 1 or 2 indices for node 'reshape2' of "
                       r"shape \[2, 5\], found 3"):
        parse_claim("claim r: forall x in box(lo, hi): net(x)@reshape2[1, 2, 3] >= 0", env)


def test_empty_claim_name_refused(env):
    with pytest.raises(ClaimValueError) as info:
        parse_claims('claim a: forall x in box(lo, hi): net(x)[0] >= 0\n'
                     'claim "": forall x in box(lo, hi): net(x)[0] >= 0', env)
    err = info.value
    assert (err.line, err.column) == (2, 7)
    assert "claim #2: line 2, column 7: a claim name must not be empty" in str(err)
    assert "claim: ..." in str(err)  # says how to write an unnamed claim
    assert parse_claim('claim " ": forall x in box(lo, hi): net(x)[0] >= 0', env).name == " "


def test_inline_vectors_and_exact_numbers(two_in):
    env = {"g": two_in}
    c = parse_claim("claim c: forall x in box([0, 0], [1, 1/2]): g(x) in box(-10, 10)", env)
    assert c.input_set.lo == (0, 0) and c.input_set.hi == (1, fmpq(1, 2))
    c = parse_claim("claim c: forall x in ball([0.1, -3], 1e-3): argmax(g(x)) == 1", env)
    assert c.input_set.center == (fmpq(1, 10), fmpq(-3))
    assert c.input_set.eps == fmpq(1, 1000)
    for text, value in [("0.1", fmpq(1, 10)), ("1/50", fmpq(1, 50)), ("0.02", fmpq(1, 50)),
                        ("3", fmpq(3)), ("1e-3", fmpq(1, 1000)), ("2.5E2", fmpq(250)),
                        (".5", fmpq(1, 2)), ("0.5/3", fmpq(1, 6)), ("1 / 3", fmpq(1, 3)),
                        ("0.30000000000000004", fmpq(30000000000000004, 10**17))]:
        c = parse_claim(f"claim c: forall x in ball([0, 0], {text}): argmax(g(x)) == 0", env)
        assert c.input_set.eps == value, text
    assert fmpq(1, 10) != dsl.to_rational(0.1)  # the float 0.1 is not 1/10; the text 0.1 is


def test_negative_eps_refused(two_in):
    with pytest.raises(ClaimValueError, match="radius >= 0"):
        parse_claim("claim c: forall x in ball([0, 0], -1/2): argmax(g(x)) == 0", {"g": two_in})


def test_box_input_argmax_and_margin(two_in):
    env = {"g": two_in}
    s = dsl.box([0, 0], [1, 1])
    c = parse_claim("claim r: forall x in box(0, 1): argmax(g(x)) == 2", env)
    assert same(c, dsl.unsat(two_in, s, robustness.misclassification_polytopes(3, 2), name="r"))
    c = parse_claim("claim r: forall x in box(0, 1): margin(g(x), 1) >= 0", env)
    assert same(c, dsl.linear_bound(two_in, s, [[-1, 1, 0], [0, 1, -1]], [0, 0], name="r"))


def test_multi_dimensional_index(net, env):
    c = parse_claim("claim i: forall x in box(lo, hi): net(x)@reshape2[1, 2] >= 0", env)
    assert c.node == "reshape2"
    assert c.rows[0] == tuple(fmpq(1 if i == 7 else 0) for i in range(10))
    d = parse_claim("claim i: forall x in box(lo, hi): net(x)@reshape2[7] >= 0", env)
    assert same(c, d)
    with pytest.raises(ClaimValueError, match=r"outside the shape \[2, 5\]"):
        parse_claim("claim i: forall x in box(lo, hi): net(x)@reshape2[2, 0] >= 0", env)


def test_several_claims_comments_and_unnamed(net, env):
    text = """
    # two claims and an unnamed one
    claim a: forall x in box(lo, hi):   # the set
        net(x) in box(-1, 1)
    claim "b c": forall x in ball(x0, 1/50) clamp [0, 1]:
        argmax(net(x)) == 7
    claim: forall x in box(lo, hi): net(x)[0] >= 0
    """
    found = parse_claims(text, env)
    assert list(found) == ["a", "b c", "claim#3"]
    assert found["b c"].name == "b c" and found["claim#3"].name is None
    with pytest.raises(ClaimValueError, match="exactly one claim, found 3"):
        parse_claim(text, env)
    assert parse_claims("  # nothing\n", env) == {}


def test_duplicate_names(env):
    text = "claim a: forall x in box(lo, hi): net(x)[0] >= 0\n" * 2
    with pytest.raises(ClaimValueError, match="line 2, column 1: a second claim named 'a'"):
        parse_claims(text, env)


def test_keywords_as_names_where_unambiguous(two_in):
    c = parse_claim("claim box: forall x in box(0, 1): box(x) in box(0, 5)", {"box": two_in})
    assert c.name == "box" and c.kind == "bounds"


# ---- errors -------------------------------------------------------------------------------------

def test_missing_colon_line_and_column(env):
    text = ("claim r: forall x in ball(x0, 1/50) clamp [0, 1]\n"
            "    argmax(net(x)) == 7\n")
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claims(text, env)
    err = info.value
    assert (err.line, err.column) == (2, 5)
    assert err.expected == ["':'"]
    assert "line 2, column 5: expected ':', found 'argmax'" in str(err)
    assert "argmax(net(x)) == 7\n    ^" in str(err)  # the snippet with a caret under the token
    assert isinstance(err, ValueError)


def test_syntax_error_expected_list_and_end_of_text(env):
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claim("claim r: forall x in box(lo, hi): argmax(net(x)) ==", env)
    assert info.value.line == 1 and info.value.column == 52
    assert "found the end of the text" in str(info.value)
    assert "a number" in info.value.expected
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claim("claim r: forall x in box(lo, hi):\n  argmax(net(x)) = 7", env)
    assert (info.value.line, info.value.column) == (2, 18)
    with pytest.raises(ClaimSyntaxError, match=r"line 1, column 22: expected one of 'ball', 'box'"):
        parse_tree("claim r: forall x in sphere(x0, 1): argmax(net(x)) == 7")
    with pytest.raises(ClaimSyntaxError, match="line 1, column 34: expected ':', found 'argmax'"):
        parse_tree("claim r: forall x in box(lo, hi) argmax(net(x)) == 7")


def test_unknown_names(env):
    with pytest.raises(UnknownNameError) as info:
        parse_claim("claim r: forall x in ball(x0, 1/50):\n  argmax(nett(x)) == 7", env)
    err = info.value
    assert err.name == "nett" and (err.line, err.column) == (2, 10)
    assert "unknown name 'nett'" in str(err) and "line 2, column 10" in str(err)
    with pytest.raises(UnknownNameError, match=r"line 1, column 27: unknown name 'x1'"):
        parse_claim("claim r: forall x in ball(x1, 1/50): argmax(net(x)) == 7", env)
    with pytest.raises(UnknownNameError, match="unknown name 'e'"):
        parse_claim("claim r: forall x in ball(x0, e): argmax(net(x)) == 7", env)


def test_wrong_kinds_of_names(env):
    with pytest.raises(ClaimValueError, match="x0 is a vector, not a graph"):
        parse_claim("claim r: forall x in ball(x0, 1/50): argmax(x0(x)) == 7", env)
    with pytest.raises(ClaimValueError, match="expected a vector, but net is a graph"):
        parse_claim("claim r: forall x in ball(net, 1/50): argmax(net(x)) == 7", env)
    with pytest.raises(ClaimValueError, match="expected a number, but lo is a vector"):
        parse_claim("claim r: forall x in ball(x0, lo): argmax(net(x)) == 7", env)
    with pytest.raises(ClaimValueError, match="expected the bound variable 'x', found 'z'"):
        parse_claim("claim r: forall x in ball(x0, 1/50): argmax(net(z)) == 7", env)
    with pytest.raises(ClaimValueError, match="no node 'h9'"):
        parse_claim("claim r: forall x in box(lo, hi): net(x)@h9 in box(0, 1)", env)


def test_value_errors_name_the_claim(env):
    cases = [
        ("argmax(net(x)) == 10", r"claim 'r'.*label 10 outside 0\.\.9"),
        ("argmax(net(x)) == -1", r"claim 'r'.*label -1 outside"),
        ("argmax(net(x)) == 1/2", r"claim 'r'.*expected an integer label"),
        ("margin(net(x), 12) >= 0", r"claim 'r'.*label 12 outside"),
        ("net(x)[10] >= 0", r"claim 'r'.*index 10 outside 0\.\.9"),
        ("net(x) in box([0, 1], 2)", r"claim 'r'.*expected 10 numbers, found 2"),
        ("net(x) in box(1, 0)", r"claim 'r'.*empty output box"),
        ("net(x)[0] >= net(x)@h1[0]", r"claim 'r'.*one graph and node"),
        ("never 0 <= 1", r"claim 'r'.*mentions no graph output"),
        ("net(x)[0] >= 1/0", r"claim 'r'.*division by zero"),
    ]
    for prop, pattern in cases:
        with pytest.raises(ClaimValueError, match=pattern):
            parse_claim(f"claim r: forall x in box(lo, hi): {prop}", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r': line 1, column 48: .*exponent"):
        parse_claim("claim r: forall x in box(lo, hi): net(x)[0] >= 1e99999", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r'.*expected an integer index, found 1\.0"):
        parse_claim("claim r: forall x in box(lo, hi): net(x)[1.0] >= 0", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r'.*ball centre: expected 4 numbers, "
                       r"found 2"):
        parse_claim("claim r: forall x in ball([0, 1], 1/2): argmax(net(x)) == 1", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r'.*empty box"):
        parse_claim("claim r: forall x in box(1, 0): argmax(net(x)) == 1", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r'.*misses the clamp"):
        parse_claim("claim r: forall x in ball(3, 1/2) clamp [0, 1]: argmax(net(x)) == 1", env)
    with pytest.raises(ClaimValueError, match=r"claim 'r'.*\bbad\b"):
        parse_claim("claim r: forall x in box(lo, bad): argmax(net(x)) == 1",
                    {**env, "bad": ["1", "x", "1", "1"]})


def test_unnamed_claim_errors_use_position(env):
    with pytest.raises(ClaimValueError, match=r"claim #2: line 2, column \d+: label 99"):
        parse_claims("claim a: forall x in box(lo, hi): net(x)[0] >= 0\n"
                     "claim: forall x in box(lo, hi): argmax(net(x)) == 99", env)


# ---- property-based ---------------------------------------------------------------------------

rationals = st.builds(lambda p, q: Fraction(p, q), st.integers(-40, 40), st.integers(1, 12))


def _txt(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(rationals, rationals), min_size=2, max_size=2),
       st.lists(st.lists(rationals, min_size=3, max_size=3), min_size=1, max_size=3),
       st.lists(rationals, min_size=3, max_size=3))
def test_random_box_and_linear_rows_are_exact(two_in, bounds, rows, rhs):
    lo = [min(a, b) for a, b in bounds]
    hi = [max(a, b) for a, b in bounds]
    ineqs = []
    for row, d in zip(rows, rhs[:len(rows)], strict=True):
        terms = " + ".join(f"{_txt(c)}*g(x)[{i}]" for i, c in enumerate(row))
        terms = terms.replace("+ -", "- ")
        ineqs.append(f"{terms} >= {_txt(d)}")
    text = (f"claim h: forall x in box([{', '.join(map(_txt, lo))}], [{', '.join(map(_txt, hi))}])"
            f": {', '.join(ineqs)}")
    c = parse_claim(text, {"g": two_in})
    want = dsl.linear_bound(two_in, dsl.box(lo, hi), rows, rhs[:len(rows)], name="h")
    assert same(c, want)
