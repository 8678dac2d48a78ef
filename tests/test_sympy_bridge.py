"""sympy expressions -> kernel expression ASTs (Enclosure claims) and back, and LaTeX."""

import mpmath
import pytest
import sympy
from flint import fmpq

from kernel_checker.enclosure import check_enclosure, parse_enclosure
from kernel_checker.errors import KernelError
from kernel_checker.theorem import Level
from tl_dsl.sympy_bridge import (
    BridgeError,
    enclose,
    enclosure_claim,
    enclosure_latex,
    from_ast,
    latex_number,
    oracle_request,
    sigmoid,
    to_ast,
)

x, y = sympy.symbols("x y")
EXPRS = [
    sympy.exp(x) * sympy.sin(y) + sympy.Rational(1, 3),
    sympy.sqrt(x + 1) / (y**2 + 1) - sympy.log(x + 2),
    sympy.tanh(x - y) ** 3 + sigmoid(2 * x) - sympy.cos(x * y),
    sympy.Abs(x - y) + sympy.atan(x) + sympy.erf(y) + sympy.Max(0, x - y),
    (x + 1) ** sympy.Rational(3, 2) + x ** -2 + sympy.E,
]


@pytest.mark.parametrize("e", EXPRS)
def test_round_trip_is_the_same_function(e):
    ast = to_ast(e)
    back = from_ast(ast)
    for xv, yv in ((sympy.Rational(1, 3), sympy.Rational(5, 4)), (2, -1)):
        a = sympy.N(e.subs({x: xv, y: yv}), 50)
        b = sympy.N(back.subs({x: xv, y: yv}), 50)
        assert abs(a - b) < sympy.Float(10) ** -40


def test_claims_are_kernel_documents():
    doc = enclosure_claim(EXPRS[0], {x: ("0", "1/2"), "y": (1, 2)}, ("0", "3"), name="c")
    assert doc["vars"] == {"x": ["0", "1/2"], "y": ["1", "2"]} and doc["name"] == "c"
    thm = check_enclosure({"claim": doc, "certificate": {"rule": "enclosure"}})
    assert thm.level == Level.PROVED
    with pytest.raises(KernelError, match="claim is false"):
        check_enclosure({"claim": enclosure_claim(EXPRS[0], {x: ("0", "1/2"), y: (1, 2)},
                                                  ("5", "6")),
                         "certificate": {"rule": "enclosure"}})
    req = oracle_request(EXPRS[1], {x: ("0", "1"), y: ("-1", "1")}, prec_bits=96)
    assert req["kind"] == "expr" and req["prec_bits"] == 96


@pytest.mark.parametrize("e, match", [
    (sympy.pi * x, "pi"),
    (sympy.Float("0.1") * x, "not exact"),
    (x**y, "exponent"),
    (x ** sympy.Rational(1, 3), "exponent"),
    (sympy.gamma(x), "no kernel expression form"),
])
def test_refusals(e, match):
    with pytest.raises(BridgeError, match=match):
        to_ast(e)


def test_symbols_are_plain_or_real_one_per_name_and_boxes_exact_pairs():
    """The kernel's AST knows a variable by its name, and sympy simplifies by a symbol's facts
    when the expression is built: a Dummy or a second symbol named x made "x - x" a claim about
    the difference of two variables (proved over one variable's box), and a positive x made
    Abs(x) - x the number 0 (proved for x in [-1, 1], where it is 2 at -1). Such symbols are
    refused, in the expression and as box keys; floats in boxes need allow_float as they do in
    the expression, and a box is a (lo, hi) pair, not a string of digits."""
    d, xr, xp = sympy.Dummy("x"), sympy.Symbol("x", real=True), sympy.Symbol("x", positive=True)
    for e, match in ((d - x, "Dummy"), (xr - x, "two different symbols are named 'x'"),
                     (sympy.Symbol("A", commutative=False) * x, "commutative"),
                     (sympy.Symbol("n", integer=True) + x, "integer")):
        with pytest.raises(BridgeError, match=match):
            enclosure_claim(e, {"x": (0, 1), "A": (0, 1), "n": (0, 1)}, (-9, 9))
    assert sympy.Abs(xp) - xp == 0 and sympy.sqrt(xp**2) == xp  # (what sympy did already)
    for e in (sympy.Abs(xp) - xp, sympy.sqrt(xp**2) - xp):
        with pytest.raises(BridgeError, match="positive"):
            enclosure_claim(e, {xp: ("-1", "1")}, ("0", "0"))
        with pytest.raises(BridgeError, match="positive"):
            enclose(e, {xp: ("-1", "1")})
    with pytest.raises(BridgeError, match="another symbol than the expression's 'x'"):
        enclosure_claim(xr * 2, {x: (0, 1)}, (0, 2))
    with pytest.raises(BridgeError, match="two boxes for the variable 'x'"):
        enclosure_claim(x * 2, {x: (0, 1), "x": (0, 1)}, (0, 2))
    with pytest.raises(BridgeError, match=r"boxes\['x'\].lo: the float 0.1 is not exact"):
        enclosure_claim(sympy.exp(x), {"x": (0.1, "3/10")}, (1, 2))
    with pytest.raises(BridgeError, match=r"interval.hi: the float"):
        enclosure_claim(sympy.exp(x), {"x": (0, 1)}, (1, 2.75))
    assert enclosure_claim(sympy.exp(x), {"x": (0.5, 1)}, (1, 2.75), allow_float=True)[
        "vars"] == {"x": ["1/2", "1"]}
    with pytest.raises(BridgeError, match=r"boxes\['x'\]: expected \(lo, hi\), found '01'"):
        enclosure_claim(sympy.exp(x), {"x": "01"}, (1, 3))
    assert to_ast(xr * 2) == to_ast(x * 2)  # a real symbol is a plain one here


def test_log_with_a_base_is_a_quotient():
    ast = to_ast(sympy.log(x, 2))  # sympy writes log(x) / log(2)
    assert sympy.simplify(from_ast(ast) - sympy.log(x) / sympy.log(2)) == 0


def test_floats_only_when_allowed_and_then_exact_binary():
    ast = to_ast(sympy.Float(0.1) * x, allow_float=True)
    const = next(a for a in ast["args"] if a["op"] == "const")
    assert fmpq(*[int(v) for v in const["value"].split("/")]) == fmpq(3602879701896397, 2**55)


def test_enclose_asks_the_oracle_and_the_kernel_checks():
    e = sympy.exp(x) * sympy.cos(y) + sigmoid(x * y)
    thm = enclose(e, {x: ("-1/2", "1/2"), y: ("0", "1")}, prec_bits=128, name="g")
    assert thm.level == Level.PROVED and not thm.assumptions
    lo, hi = thm.claim.lo, thm.claim.hi
    for xv, yv in ((-0.5, 0), (0.5, 0), (0.1, 0.9), (-0.3, 1)):
        v = mpmath.exp(xv) * mpmath.cos(yv) + 1 / (1 + mpmath.exp(-xv * yv))
        assert mpmath.mpf(int(lo.p)) / int(lo.q) <= v <= mpmath.mpf(int(hi.p)) / int(hi.q)
    thm = enclose(sympy.erf(x), {x: ("0", "1")})
    assert [a.name for a in thm.assumptions] == ["oracle.arb.enclosure"]
    with pytest.raises(BridgeError, match="refused"):
        enclose(sympy.log(x), {x: ("-1", "1")})


def test_latex():
    assert latex_number(fmpq(1, 3)) == r"\frac{1}{3}"
    assert latex_number(fmpq(-7, 20)) == "-0.35"
    assert latex_number(fmpq(5)) == "5"
    doc = enclosure_claim(sympy.exp(x) + sigmoid(y), {x: ("0", "1/2"), y: ("1", "2")},
                          ("1", "3"))
    tex = enclosure_latex(doc)
    assert tex.startswith(r"\forall x \in \left[0, 0.5\right],\; y \in \left[1, 2\right]:")
    assert r"e^{x}" in tex and r"\sigma\left(y\right)" in tex
    assert tex.endswith(r"\in \left[1, 3\right]")
    assert enclosure_latex(parse_enclosure(doc)) == tex
