"""VNN-LIB parsing: exact numbers, normal form, regions, and errors with line and column."""

import pathlib

import pytest
from flint import fmpq

from stdlib.vnnlib import VnnlibError, parse_vnnlib, read_vnnlib

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"
HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n" \
       "(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 0.1))\n(assert (<= X_0 0.3))\n(assert (>= X_1 -1))\n(assert (<= X_1 1e-3))\n"


def test_box_and_single_polytope_exact():
    prop = parse_vnnlib(HEAD + BOX + "(assert (<= Y_0 Y_1))\n")
    (region,) = prop.regions
    assert region.lo == (fmpq(1, 10), fmpq(-1)) and region.hi == (fmpq(3, 10), fmpq(1, 1000))
    (poly,) = region.unsafe
    assert poly.a == ((fmpq(1), fmpq(-1)),) and poly.b == (fmpq(0),)


def test_disjunction_of_conjunctions_becomes_union_of_polytopes():
    prop = parse_vnnlib(HEAD + BOX + "(assert (or (and (>= Y_0 0.5) (<= Y_1 2)) (and (<= Y_0 "
                        "Y_1))))")
    (region,) = prop.regions
    assert len(region.unsafe) == 2
    first = region.unsafe[0]
    assert first.a == ((fmpq(-1), fmpq(0)), (fmpq(0), fmpq(1)))
    assert first.b == (fmpq(-1, 2), fmpq(2))


def test_linear_terms_and_equality():
    prop = parse_vnnlib(HEAD + BOX + "(assert (= (+ Y_0 (* 2 Y_1)) (- 3)))")
    (poly,) = prop.regions[0].unsafe
    assert poly.a == ((fmpq(1), fmpq(2)), (fmpq(-1), fmpq(-2)))
    assert poly.b == (fmpq(-3), fmpq(3))


def test_disjunctive_inputs_give_several_regions():
    text = HEAD + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)) (and (>= X_0 2) " \
                  "(<= X_0 3) (>= X_1 0) (<= X_1 1))))\n(assert (<= Y_0 Y_1))"
    prop = parse_vnnlib(text)
    assert [r.lo[0] for r in prop.regions] == [0, 2]


def test_strict_comparisons_are_kept_per_constraint():
    """Strict comparisons are read non-strict in the sets (their closures), and which ones were
    strict is kept per input bound and per row: the tighter bound's flag, or either's when two
    bounds are equal; `=` is non-strict. A strict constant comparison that fails only strictly
    (1 < 1) and a strict bound meeting the other side (0 < X_0 <= 0) empty their disjunct."""
    prop = parse_vnnlib(HEAD + "(assert (> X_0 0))\n(assert (>= X_0 -1))\n(assert (<= X_0 1))\n"
                        "(assert (>= X_1 0))\n(assert (> X_1 0))\n(assert (< X_1 2))\n"
                        "(assert (<= X_1 3))\n(assert (or (and (< Y_0 1) (>= Y_1 2)) "
                        "(and (= Y_0 Y_1))))")
    (region,) = prop.regions
    assert prop.has_strict and region.lo == (0, 0) and region.hi == (1, 2)
    assert region.strict_lo == (True, True) and region.strict_hi == (False, True)
    assert region.strict_rows == ((True, False), (False, False))
    assert region.unsafe[0].b == (fmpq(1), fmpq(-2))
    plain = parse_vnnlib(HEAD + BOX + "(assert (<= Y_0 Y_1))")
    assert not plain.has_strict and plain.regions[0].strict_rows == ((False,),)
    assert plain.regions[0].strict_lo == plain.regions[0].strict_hi == (False, False)
    two = parse_vnnlib(HEAD + BOX + "(assert (or (and (<= Y_0 1) (< 1 1)) (and (<= Y_1 2) "
                       "(<= 1 1))))")
    assert [p.b for p in two.regions[0].unsafe] == [(fmpq(2),)] and not two.has_strict
    cut = HEAD + "(assert (or (and (> X_0 0) (<= X_0 0)) (and (>= X_0 0) (<= X_0 0))))\n" \
                 "(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_0 Y_1))"
    (left,) = parse_vnnlib(cut).regions
    assert left.lo[0] == left.hi[0] == 0 and left.strict_lo == (False, False)


def test_syntax_error_names_line_and_column():
    with pytest.raises(VnnlibError, match=r"line 5, column 16: syntax error"):
        parse_vnnlib(HEAD + "(assert (<= X_0))")


def test_a_document_cut_short_says_the_input_ended():
    with pytest.raises(VnnlibError, match=r"line 5, column 20: syntax error, found the end of "
                       r"the input; expected one of '\(', '\)'"):
        parse_vnnlib(HEAD + "(assert (<= X_0 0.5)")


@pytest.mark.parametrize("body, message", [
    ("(assert (<= (+ X_0 X_1) 1))", "several variables"),
    ("(assert (<= X_0 Y_0))", "mixing inputs and outputs"),
    ("(assert (<= (* X_0 X_1) 1))", "not linear"),
    ("(assert (<= X_7 1))", "undeclared"),
])
def test_unsupported_constraints_are_refused_with_position(body, message):
    with pytest.raises(VnnlibError, match=message):
        parse_vnnlib(HEAD + BOX + body + "\n(assert (<= Y_0 0))")


def test_unbounded_input_is_refused():
    with pytest.raises(VnnlibError, match="X_1 has no lower or upper bound"):
        parse_vnnlib(HEAD + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (<= Y_0 0))")


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
def test_vnncomp_properties_parse():
    for path in sorted((SHARED / "acasxu").glob("*.vnnlib")):
        prop = read_vnnlib(str(path))
        assert (prop.n_inputs, prop.n_outputs) == (5, 5)
    prop6 = read_vnnlib(str(SHARED / "acasxu" / "prop_6.vnnlib"))
    assert len(prop6.regions) == 2
    mnist = read_vnnlib(str(SHARED / "mnistfc" / "prop_0_0.03.vnnlib"))
    assert (mnist.n_inputs, mnist.n_outputs, len(mnist.regions[0].unsafe)) == (784, 10, 9)


@pytest.mark.parametrize("text", ["(assert (<= 0X_0 1))", "(assert (<= Y_0-1 0))",
                                  "(assert (<= (-1 2) Y_0))", "(assert (<= 1.5.5 Y_0))"])
def test_tokens_run_together_are_refused(text):
    """SMT-LIB separates tokens: "0X_0" read as 0 <= X_0 and "(-1 2)" as (- 1 2), so a typo
    could change the property silently (a review)."""
    head = "(declare-const X_0 Real)(declare-const Y_0 Real)"
    with pytest.raises(VnnlibError, match="syntax error"):
        parse_vnnlib(head + "(assert (>= X_0 0))(assert (<= X_0 1))" + text)


def test_one_assert_of_nested_ors_is_bounded_as_it_grows():
    """(and (or a b) ... k times) doubled k times before the limit was checked (21: 14 s and
    1.1 GiB); the limit holds inside an assert now."""
    import time

    head = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))"
    body = "(assert (and " + "(or (<= Y_0 0) (>= Y_0 1)) " * 30 + "))"
    t = time.perf_counter()
    with pytest.raises(VnnlibError, match="more than 100000 disjuncts"):
        parse_vnnlib(head + body)
    assert time.perf_counter() - t < 10
