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
