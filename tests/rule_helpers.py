"""Helpers shared by the kernel rule tests (and conftest.py's fixtures): exact number
conversions, refusal assertions, and small random networks."""

from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq

from kernel_checker import KernelError
from tl_dsl import proof
from tl_dsl.builder import GraphBuilder


def fr(v) -> Fraction:
    """An fmpq / Fraction / int as a Fraction, exactly."""
    return Fraction(int(v.p), int(v.q)) if hasattr(v, "q") else Fraction(v)


def q(v) -> fmpq:
    """A Fraction / int / fmpq as an fmpq, exactly."""
    if isinstance(v, fmpq):
        return v
    v = Fraction(v)
    return fmpq(v.numerator, v.denominator)


def enc(v) -> str:
    v = Fraction(v)
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def rejected(claim, cert, *graphs, rule, path, contains=()):
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, *graphs)
    err = info.value
    assert (err.rule, err.path) == (rule, path), err
    for fragment in (contains if isinstance(contains, tuple) else (contains,)):
        assert fragment in err.message, err
    return err


def batched_and_alone(monkeypatch, check) -> tuple[list, list]:
    """The lower bounds the kernel concludes crown leaves with while `check()` runs: with the
    leaves' last products batched (`crown._flush`), then with each leaf alone (no deferral).
    Both sorted: leaves that are not deferred conclude before the batch they skip."""
    from kernel_checker import crown

    runs: list = []
    conclude, back = crown.conclude, crown.backward_lower_bounds
    monkeypatch.setattr(crown, "conclude", lambda c, lows, rule: (
        runs[-1].append(tuple(lows)), conclude(c, lows, rule))[1])
    runs.append([])
    check()
    monkeypatch.setattr(crown, "backward_lower_bounds", lambda *a: back(*a[:8]))  # no defer
    runs.append([])
    check()
    return sorted(runs[0]), sorted(runs[1])


def randn(rng, *shape, scale=0.5):
    """Random float32 weights that are never exactly zero."""
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    w[w == 0] = np.float32(0.125)
    return w


def build_mlp(seed=1, sizes=(3, 8, 8, 2)) -> GraphBuilder:
    """A small 'trained-looking' ReLU MLP with float32 weights."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    h = g.input([sizes[0]])
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        h = g.linear(h, randn(rng, b, a, scale=1.0 / np.sqrt(a)), randn(rng, b, scale=0.1),
                     name=f"fc{i + 1}")
        if i < len(sizes) - 2:
            h = g.relu(h)
    g.output(h)
    return g
