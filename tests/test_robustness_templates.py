"""stdlib.robustness's claim templates refuse a label that is not a class index (a review found
margin() building an all-zero row for label -1, and robust() reading True as class 1)."""

import numpy as np
import pytest

from stdlib import robustness


@pytest.mark.parametrize("label", [-1, 3, True, 1.0])
def test_a_label_outside_the_classes_is_refused(label):
    with pytest.raises(ValueError, match="is not a class index in 0..2"):
        robustness.misclassification_polytopes(3, label)


def test_class_indices_build_one_polytope_per_other_class():
    for label in (0, 2, np.int64(1)):
        polys = robustness.misclassification_polytopes(3, label)
        assert len(polys) == 2 and all(p.a[0][label] == 1 for p in polys)


def test_margin_refuses_a_label_outside_the_classes(mlp):
    with pytest.raises(ValueError, match="is not a class index"):
        robustness.margin(mlp.graph, [0.5] * 6, 0.1, -1, 0)
    claim = robustness.margin(mlp.graph, [0.5] * 6, 0.1, 2, 0)
    assert len(claim.rows) == 2 and all(r[2] == 1 for r in claim.rows)


def test_user_numbers_are_read_exactly_and_non_finite_ones_refused_at_their_path():
    """tl_dsl.claims.to_rational reads every float as the binary value it holds: a long double
    and a 50-digit sympy Float were rounded to float64 first (a review found 1/3 in long double
    changed); NaN and infinities name the field (they raised a bare ValueError or
    OverflowError from the conversion before the check); a string for a vector is refused."""
    from fractions import Fraction

    import mpmath
    import sympy

    from tl_dsl import claims

    third = np.longdouble(1) / 3
    num, den = third.as_integer_ratio()
    assert claims.to_rational(third) == claims.to_rational(Fraction(num, den))
    if np.finfo(np.longdouble).nmant > 52:  # (x86: 64-bit significand)
        assert claims.to_rational(third) != claims.to_rational(float(third))
    f50 = sympy.Float("0.1", 50)
    assert claims.to_rational(f50) == claims.to_rational(Fraction(*map(int, (
        sympy.Rational(f50).p, sympy.Rational(f50).q))))
    assert claims.to_rational(mpmath.mpf(0.1)) == claims.to_rational(0.1)  # (any mp.prec)
    assert claims.to_rational(np.float32(0.1)) == claims.to_rational(Fraction(13421773, 2**27))
    for bad in (float("nan"), float("-inf"), np.float32("inf"), np.longdouble("nan"),
                mpmath.mpf("nan"), mpmath.inf):
        with pytest.raises(ValueError, match=r"^center\[1\]: expected a finite number"):
            claims.ball([0, bad], 0.1)
    with pytest.raises(TypeError, match="expected a list of numbers, found a string"):
        claims.to_vector("0.5")


def test_an_unknown_node_and_an_empty_builder_are_named_errors(tmp_path):
    import kernel_checker
    from tl_dsl.builder import GraphBuilder

    with pytest.raises(ValueError, match="the graph has no nodes"):
        GraphBuilder().save(str(tmp_path / "empty"))
    g = GraphBuilder()
    g.output(g.relu(g.input([2])))
    graph = kernel_checker.load_graph(g.save(str(tmp_path / "g")))
    with pytest.raises(ValueError, match="node 'nope' is not in the graph"):
        robustness.robust(graph, [0.5, 0.5], "1/10", 0, node="nope")
