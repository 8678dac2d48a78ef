"""The mpmath reference (200 digits) that the Arb oracle's and the kernel's enclosures are
tested against: exact rationals as mpmath numbers, the true functions and their true ranges."""

import mpmath
from flint import fmpq

mpmath.mp.dps = 200


def mp(q: fmpq) -> mpmath.mpf:
    return mpmath.mpf(int(q.p)) / int(q.q)


def inside(a: fmpq, b: fmpq, t_lo, t_hi) -> bool:
    """[t_lo, t_hi] (mpmath, 200 digits) inside [a, b], up to mpmath's own rounding."""
    tol = mpmath.mpf(10) ** -190 * max(1, abs(t_lo), abs(t_hi))
    return mp(a) <= t_lo + tol and t_hi - tol <= mp(b)


def true_f(func: str, x):
    if func == "sigmoid":
        return 1 / (1 + mpmath.exp(-x))
    return getattr(mpmath, func)(x)


def true_range(func: str, lo: fmpq, hi: fmpq):
    """[min, max] of f over [lo, hi] at 200 digits (monotone, or with sin/cos critical points)."""
    a, b = mp(lo), mp(hi)
    vals = [true_f(func, a), true_f(func, b)]
    if func in ("sin", "cos"):
        half = mpmath.pi / 2
        for m in range(int(mpmath.floor(a / half)) - 1, int(mpmath.ceil(b / half)) + 2):
            if a <= m * half <= b:
                vals.append(true_f(func, m * half))
    return min(vals), max(vals)
