"""Build claims in Python. Numbers are converted exactly: a Python or NumPy float becomes the
binary value it holds, a string is read as the exact decimal or "p/q" it spells."""

from numbers import Integral, Rational, Real

import numpy as np
from flint import fmpq

import kernel_checker
from kernel_checker.claims import Box, Claim, LinfBall, Polytope
from kernel_checker.exact import decode_rational


def to_rational(value, path: str = "value") -> fmpq:
    """One user number to an exact rational (floats exactly as stored, never rounded)."""
    if isinstance(value, str):
        return decode_rational(value, path, "dsl")
    if isinstance(value, fmpq):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{path}: expected a number, found a boolean")
    if isinstance(value, (Integral, np.integer)):
        return fmpq(int(value))
    if isinstance(value, Rational):
        return fmpq(int(value.numerator), int(value.denominator))
    if isinstance(value, (Real, np.floating)) and hasattr(value, "_mpf_"):  # sympy, mpmath
        sign, man, exp, _ = value._mpf_  # (binary: man 2^exp; NaN and infinities have man 0)
        if not man and exp:
            raise ValueError(f"{path}: expected a finite number, found {value}")
        return fmpq(-man if sign else man) * fmpq(2) ** exp
    if isinstance(value, (Real, np.floating)) and hasattr(value, "as_integer_ratio"):
        try:  # (exact for Python, numpy and long double floats; NaN and infinities raise)
            num, den = value.as_integer_ratio()
        except (ValueError, OverflowError):
            raise ValueError(f"{path}: expected a finite number, found {value}") from None
        return fmpq(num, den)
    raise TypeError(f"{path}: expected a number, found {type(value).__name__}")


def to_vector(values, path: str = "values") -> tuple:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{path}: expected a list of numbers, found a string {values!r}")
    flat = np.asarray(values, dtype=object).reshape(-1)
    return tuple(to_rational(v, f"{path}[{i}]") for i, v in enumerate(flat))


def box(lo, hi) -> Box:
    lo_v, hi_v = to_vector(lo, "lo"), to_vector(hi, "hi")
    if len(lo_v) != len(hi_v):
        raise ValueError(f"box: lo has {len(lo_v)} numbers, hi has {len(hi_v)}")
    return Box(lo_v, hi_v)


def ball(center, eps, clamp=None) -> LinfBall:
    """The L-inf ball of radius eps around center, intersected with [a, b]^n if clamp=(a, b)."""
    c = None if clamp is None else (to_rational(clamp[0]), to_rational(clamp[1]))
    return LinfBall(to_vector(center, "center"), to_rational(eps, "eps"), c)


def polytope(a_rows, b) -> Polytope:
    """{y : A y <= b}."""
    return Polytope(tuple(to_vector(r, f"A[{i}]") for i, r in enumerate(a_rows)), to_vector(b, "b"))


def _node(graph: kernel_checker.Graph, node: str | None) -> str:
    return node if node is not None else graph.outputs[0]


def bounds(graph, input_set, lo, hi, node=None, name=None) -> Claim:
    return Claim("bounds", graph.sha256, input_set, _node(graph, node), lo=to_vector(lo, "lo"),
                 hi=to_vector(hi, "hi"), name=name)


def linear_bound(graph, input_set, rows, rhs, node=None, name=None) -> Claim:
    """For all x in the set, rows . G(x) >= rhs (row by row)."""
    return Claim("linear_bound", graph.sha256, input_set, _node(graph, node),
                 rows=tuple(to_vector(r, f"rows[{i}]") for i, r in enumerate(rows)),
                 rhs=to_vector(rhs, "rhs"), name=name)


def unsat(graph, input_set, polytopes, node=None, name=None) -> Claim:
    """No x in the set maps into the union of the polytopes."""
    return Claim("unsat", graph.sha256, input_set, _node(graph, node), unsafe=tuple(polytopes),
                 name=name)


def counterexample(claim: Claim, point) -> Claim:
    """The counterexample claim for an Unsat claim: this point is in the set and maps into the
    unsafe union."""
    return Claim("counterexample", claim.graph, claim.input_set, claim.node, unsafe=claim.unsafe,
                 point=to_vector(point, "point"), name=claim.name)


def clamp_into(point, box: Box) -> tuple:
    """A producer's float point, read exactly, then moved into the box (exact clamping)."""
    out = []
    for v, lo, hi in zip(to_vector(point, "point"), box.lo, box.hi):
        out.append(lo if v < lo else hi if v > hi else v)
    return tuple(out)
