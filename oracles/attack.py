"""Counterexample search (untrusted producer): random sampling and corner search in float64.
A candidate is only a suggestion; the kernel evaluates it exactly before anything is claimed."""

import numpy as np

from oracles.numpy_forward import NumpyGraph


def polytope_violation(y: np.ndarray, polytopes) -> np.ndarray:
    """Per sample, max over polytopes of min over rows of (b - A y): >= 0 means inside one."""
    best = np.full(y.shape[0], -np.inf)
    for poly in polytopes:
        a = np.array([[float(v) for v in row] for row in poly.a])
        b = np.array([float(v) for v in poly.b])
        slack = (b[None, :] - y.reshape(y.shape[0], -1) @ a.T).min(axis=1)
        best = np.maximum(best, slack)
    return best


def random_search(net: NumpyGraph, lo: np.ndarray, hi: np.ndarray, polytopes, node=None,
                  samples: int = 2000, seed: int = 0) -> np.ndarray | None:
    """Try box corners and uniform samples; return the point deepest inside the unsafe set, if
    any point lands inside it in float64."""
    rng = np.random.default_rng(seed)
    shape = tuple(net.input["shape"])
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    signs = rng.integers(0, 2, size=(samples // 2, lo.size)).astype(bool)
    corners = np.where(signs, hi, lo)
    uniform = rng.uniform(lo, hi, size=(samples - samples // 2, lo.size))
    xs = np.concatenate([corners, uniform]).reshape((-1,) + shape)
    slack = polytope_violation(net.forward(xs, node), polytopes)
    i = int(np.argmax(slack))
    return xs[i] if slack[i] >= 0 else None
