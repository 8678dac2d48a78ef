"""Helpers shared by the kernel rule tests (and conftest.py's fixtures): exact number
conversions, refusal assertions, and small random networks."""

import math
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


def side_value(entry: dict, key: str, k: int) -> Fraction | None:
    """An intermediate entry's claimed bound, in either encoding (integers over "den", or
    texts)."""
    v = entry[key][k]
    return None if v is None else Fraction(v, entry["den"]) if "den" in entry else Fraction(v)


def set_bound(entry: dict, key: str, k: int, value) -> None:
    """Set one claimed bound of an intermediate entry exactly, keeping its encoding (over "den",
    the entry's den grows to the value's denominator)."""
    if "den" not in entry:
        entry[key][k] = None if value is None else enc(value)
        return
    if value is not None:
        value = Fraction(value)
        f = value.denominator // math.gcd(value.denominator, entry["den"])
        for side in ("lo", "hi"):
            entry[side] = [None if v is None else v * f for v in entry[side]]
        entry["den"] *= f
        value = int(value * entry["den"])
    entry[key][k] = value


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


def build_residual(seed: int, in_shape, width: int, n_out: int) -> GraphBuilder:
    """flatten, linear, relu, a residual add of relu(linear), linear: float32 weights."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    f = g.flatten(g.input(list(in_shape)))
    n = int(np.prod(in_shape))
    h = g.relu(g.linear(f, randn(rng, width, n), randn(rng, width, scale=0.1)))
    r = g.add(h, g.relu(g.linear(h, randn(rng, width, width), None)))
    g.output(g.linear(r, randn(rng, n_out, width), randn(rng, n_out)))
    return g
