"""Claim templates: local robustness (argmax = label), margins, and output-polytope properties.
Untrusted: these only build claims; the kernel checks them."""

import numbers

from kernel_checker import Claim, Graph
from kernel_checker.claims import Polytope
from kernel_checker.tensor import numel
from tl_dsl import claims


def _check_label(n_classes: int, label) -> None:
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not (
            0 <= label < n_classes):  # (True is not class 1; numpy integers are fine)
        raise ValueError(f"label {label!r} is not a class index in 0..{n_classes - 1}")


def misclassification_polytopes(n_classes: int, label: int) -> tuple[Polytope, ...]:
    """Unsafe set for argmax = label: the union over j != label of {y : y_label - y_j <= 0}."""
    _check_label(n_classes, label)
    polys = []
    for j in range(n_classes):
        if j != label:
            row = [0] * n_classes
            row[label], row[j] = 1, -1
            polys.append(claims.polytope([row], [0]))
    return tuple(polys)


def _output(graph: Graph, node) -> str:
    out = node or graph.outputs[0]
    if out not in graph.by_id:
        raise ValueError(f"node {out!r} is not in the graph (outputs: {list(graph.outputs)})")
    return out


def robust(graph: Graph, x0, eps, label: int, clamp=(0, 1), node=None, name=None) -> Claim:
    """For all x in ball(x0, eps) (clamped): argmax G(x) = label (ties count as unsafe)."""
    out = _output(graph, node)
    n = numel(graph.by_id[out].shape)
    return claims.unsat(graph, claims.ball(x0, eps, clamp), misclassification_polytopes(n, label),
                        node=out, name=name)


def margin(graph: Graph, x0, eps, label: int, m, clamp=(0, 1), node=None, name=None) -> Claim:
    """For all x in the ball: y_label - y_j >= m for every j != label."""
    out = _output(graph, node)
    n = numel(graph.by_id[out].shape)
    _check_label(n, label)
    rows = []
    for j in range(n):
        if j != label:
            row = [0] * n
            row[label], row[j] = 1, -1
            rows.append(row)
    return claims.linear_bound(graph, claims.ball(x0, eps, clamp), rows, [m] * len(rows),
                               node=out, name=name)


def output_avoids(graph: Graph, input_set, a_rows, b, node=None, name=None) -> Claim:
    """No x in the set has A G(x) <= b (one unsafe polytope, as a VNN-LIB property)."""
    return claims.unsat(graph, input_set, (claims.polytope(a_rows, b),), node=node, name=name)


def output_in_box(graph: Graph, input_set, lo, hi, node=None, name=None) -> Claim:
    """For all x in the set, lo <= G(x) <= hi."""
    return claims.bounds(graph, input_set, lo, hi, node=node, name=name)
