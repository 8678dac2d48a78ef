"""Differential, property-based test of the VNN-LIB reader (stdlib/vnnlib.py).

Random VNN-LIB documents (declarations, input boxes, possibly inside or/and, output constraints
as nested and/or of comparisons between linear terms, numbers written in many ways) are built as
s-expressions here, written out as text, and read by `parse_vnnlib`. An evaluator of this file's
own (exact Fractions over the generated s-expression, none of the reader's code) then decides,
at many exact points (x, y), several of them on constraint boundaries, whether every assert
holds; that must equal "x lies in some region's box and y in one of its unsafe polytopes", read
the way `tl verify` reads the parse result (`Region.lo/hi`, `strict_lo/strict_hi`, the
polytopes' rows and right-hand sides, `strict_rows`; strict comparisons strictly).

Documents the reader must refuse (every disjunct empty; a disjunct with no output constraint;
syntax errors; unsupported terms or comparisons; bad declarations; unbounded inputs; numbers
beyond the exact decoder's limits) must be refused with a VnnlibError, never half-accepted."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stdlib.vnnlib import VnnlibError, parse_vnnlib

# ---------------------------------------------------------------------------------------------
# s-expressions: ("num", value, text) | ("var", name) | (op, (term, ...)) for op in + - *
# | ("cmp", op, lhs, rhs) | ("and", (formula, ...)) | ("or", (formula, ...))

OPS = ("<=", ">=", "<", ">", "=")
EPS = Fraction(1, 10**40)  # below any gap between two numbers written here (at most 30 digits)

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _plain(v: Fraction, extra_zeros: int = 0) -> str:
    """A finite decimal written exactly, with `extra_zeros` trailing zeros after the point."""
    k = 0
    while (v * 10**k).denominator != 1:
        k += 1
    digits = str(abs((v * 10**k).numerator)).rjust(k + 1, "0")
    whole, frac = digits[:len(digits) - k], digits[len(digits) - k:] + "0" * extra_zeros
    return ("-" if v < 0 else "") + whole + ("." + frac if frac else "")


def number_text(draw, v: Fraction) -> str:
    """`v` (a finite decimal) written as VNN-LIB files write numbers: plain, many digits,
    trailing zeros, leading zeros, no leading digit, trailing point, exponent, explicit plus.
    (One draw picks the form and its details.)"""
    code = draw(st.integers(0, 7 * 61 * 2 - 1))
    form, e, upper = code % 7, (code // 7) % 61 - 30, code // (7 * 61) == 1
    if form == 1:
        text = _plain(v, e % 12 + 1)
    elif form == 2:
        text = ("-" if v < 0 else "") + "00" + _plain(abs(v))
    elif form == 3 and 0 < abs(v) < 1:
        text = _plain(v).replace("0.", ".", 1)  # .5, -.5
    elif form == 4 and v.denominator == 1:
        text = _plain(v) + "."
    elif form == 5:
        text = _plain(v / Fraction(10) ** e) + ("E" if upper else "e") + (
            ("+" if upper else "") + str(e) if e >= 0 else str(e))
    elif form == 6 and v >= 0:
        text = "+" + _plain(v)
    else:
        text = _plain(v)
    assert Fraction(text) == v, (text, v)  # (Python's own reading of the text)
    return text


def decimals() -> st.SearchStrategy:
    """Finite decimals: small ones, and ones of up to 30 significant digits."""
    return st.builds(lambda m, k: Fraction(m, 10**k),
                     st.integers(-2000, 2000) | st.integers(-10**30, 10**30),
                     st.integers(0, 25))


def num(draw, pool, v: Fraction | None = None):
    if v is None:
        v = draw(st.sampled_from(pool)) if draw(st.integers(0, 4)) else draw(decimals())
    return ("num", v, number_text(draw, v))


def const_term(draw, pool, v: Fraction):
    """A term without variables whose value is v."""
    form = draw(st.integers(0, 5))
    if form == 1:
        return ("-", (num(draw, pool, -v),))
    if form == 2:
        a = draw(st.sampled_from(pool))
        return ("+", (num(draw, pool, a), num(draw, pool, v - a)))
    if form == 3:
        return ("*", (num(draw, pool, Fraction(2)), num(draw, pool, v / 2)))
    if form == 4:
        a = draw(st.sampled_from(pool))
        return ("-", (num(draw, pool, v + a), num(draw, pool, a)))
    return num(draw, pool, v)


SCALES = [Fraction(2), Fraction(3), Fraction(1, 2), Fraction(5, 4), Fraction(10), Fraction(7)]


def bound_atom(draw, pool, i: int, side: str, v: Fraction, strict: bool):
    """X_i >= v (side "lo"), X_i <= v ("hi") or X_i = v ("eq"), strict where asked, written in
    one of several equivalent forms."""
    x = ("var", f"X_{i}")
    sign = 1 if side == "lo" else -1  # sign * X_i >= sign * v
    ge, le = (">", "<") if strict else (">=", "<=")
    if side == "eq":
        ge = le = "="
    form = draw(st.integers(0, 6))
    if form == 1:  # v <= X_i
        return ("cmp", le, const_term(draw, pool, v), x) if sign > 0 else \
            ("cmp", ge, const_term(draw, pool, v), x)
    if form == 2:  # k X_i >= k v, k > 0
        k = draw(st.sampled_from(SCALES))
        return ("cmp", ge if sign > 0 else le, ("*", (num(draw, pool, k), x)),
                const_term(draw, pool, k * v))
    if form == 3:  # -k X_i <= -k v
        k = draw(st.sampled_from(SCALES))
        return ("cmp", le if sign > 0 else ge, ("*", (x, num(draw, pool, -k))),
                const_term(draw, pool, -k * v))
    if form == 4:  # X_i + a >= v + a
        a = draw(st.sampled_from(pool))
        return ("cmp", ge if sign > 0 else le, ("+", (x, num(draw, pool, a))),
                const_term(draw, pool, v + a))
    if form == 5:  # (- X_i) <= -v
        return ("cmp", le if sign > 0 else ge, ("-", (x,)), const_term(draw, pool, -v))
    if form == 6:  # k X_i >= w, w/k a hair inside v: a bound like 1/3, no finite decimal
        k = draw(st.sampled_from([Fraction(3), Fraction(7), Fraction(-3)]))
        w = k * v + sign * abs(k) * Fraction(1, 10**30)
        return ("cmp", (ge if sign > 0 else le) if k > 0 else (le if sign > 0 else ge),
                ("*", (num(draw, pool, k), x)), num(draw, pool, w))
    return ("cmp", ge if sign > 0 else le, x, const_term(draw, pool, v))


def box_atoms(draw, pool, n: int) -> list:
    """Atoms bounding every input on both sides; sometimes an empty box (lo > hi, or lo = hi
    with a strict side), sometimes redundant extra bounds."""
    atoms = []
    for i in range(n):
        if draw(st.integers(0, 6)) == 0:
            atoms.append(bound_atom(draw, pool, i, "eq", draw(st.sampled_from(pool)), False))
            continue
        a, b = sorted(draw(st.lists(st.sampled_from(pool), min_size=2, max_size=2,
                                    unique=True)))
        if draw(st.integers(0, 12)) == 0:
            a, b = (b, a) if draw(st.booleans()) else (a, a)  # (an empty or a thin box)
        strict = {"lo": draw(st.integers(0, 3)) == 0, "hi": draw(st.integers(0, 3)) == 0}
        atoms.append(bound_atom(draw, pool, i, "lo", a, strict["lo"]))
        atoms.append(bound_atom(draw, pool, i, "hi", b, strict["hi"]))
        for _ in range(draw(st.integers(1, 2)) if draw(st.integers(0, 2)) == 0 else 0):
            # the same bound again, mostly with the other strictness; a looser or tighter one
            side = draw(st.sampled_from(["lo", "hi"]))
            near, far = (a, a - 1) if side == "lo" else (b, b + 1)
            extra = draw(st.sampled_from([near, near, near, far, (a + b) / 2]))
            atoms.append(bound_atom(draw, pool, i, side, extra,
                                    strict[side] != (draw(st.integers(0, 2)) > 0)))
    return draw(st.permutations(atoms))


def y_term(draw, pool, m: int, depth: int):
    """A linear term over Y_0..Y_{m-1} (products keep one factor with variables)."""
    form = draw(st.integers(0, 8 if depth > 0 else 3))
    if form in (0, 1, 8) or (form == 3 and depth == 0):
        return ("var", f"Y_{draw(st.integers(0, m - 1))}")
    if form == 2:
        return num(draw, pool)
    sub = [y_term(draw, pool, m, depth - 1) for _ in range(draw(st.integers(1, 3)))]
    if form == 3:
        return ("+", tuple(sub))
    if form in (4, 5):
        return ("-", tuple(sub))
    factors = [const_term(draw, pool, draw(st.sampled_from([v for v in pool if v] or [2])))
               for _ in range(draw(st.integers(1, 2)))]  # (nonzero: a zero factor is rare)
    factors.insert(draw(st.integers(0, len(factors))), sub[0])
    return ("*", tuple(factors))


def y_atom(draw, pool, m: int):
    op = draw(st.sampled_from(OPS + ("<=", ">=")))
    if draw(st.integers(0, 2)) == 0:  # VNN-COMP style: Y_i <= Y_j, Y_i >= c
        i = draw(st.integers(0, m - 1))
        j = (i + draw(st.integers(1, m - 1))) % m if m > 1 and draw(st.integers(0, 9)) else i
        lhs = ("var", f"Y_{i}")
        rhs = ("var", f"Y_{j}") if m > 1 and draw(st.booleans()) else num(draw, pool)
        return ("cmp", op, lhs, rhs)
    lhs, rhs = y_term(draw, pool, m, 2), y_term(draw, pool, m, 2)
    if "Y_" not in repr((lhs, rhs)) and draw(st.integers(0, 9)):  # (few without variables)
        lhs = ("+", (lhs, ("var", f"Y_{draw(st.integers(0, m - 1))}")))
    return ("cmp", op, lhs, rhs)


def x_atom(draw, pool, n: int):
    i = draw(st.integers(0, n - 1))
    return bound_atom(draw, pool, i, draw(st.sampled_from(["lo", "hi"] * 4 + ["eq"])),
                      draw(st.sampled_from(pool)), draw(st.booleans()))


def const_atom(draw, pool):
    """A comparison between constant terms (1 < 1, (- 0.5) <= (+ 0.25 0.25) ...), true about
    half the time. (Output terms that cancel, like (- Y_0 Y_0), come from y_term.)"""
    a = draw(st.sampled_from(pool))
    b = a if draw(st.booleans()) else draw(st.sampled_from(pool))
    op = draw(st.sampled_from(OPS))
    if draw(st.booleans()):  # (a true one, half the time)
        op = "=" if a == b else "<=" if a < b else ">"
    return ("cmp", op, const_term(draw, pool, a), const_term(draw, pool, b))


def out_formula(draw, pool, n: int, m: int, depth: int, loose: bool):
    """A nested and/or of output comparisons; `and`s may carry input and constant comparisons
    too, and where `loose`, an `or` may have a branch without output comparisons."""
    form = draw(st.integers(0, 3 if depth > 0 else 0))
    if form <= 1:
        return y_atom(draw, pool, m)
    if form == 2:
        parts = [out_formula(draw, pool, n, m, depth - 1, loose)
                 for _ in range(draw(st.integers(1, 3)))]
        if draw(st.integers(0, 2)) == 0:
            parts.append(x_atom(draw, pool, n) if draw(st.booleans()) else const_atom(draw, pool))
        return ("and", tuple(draw(st.permutations(parts))))
    parts = [out_formula(draw, pool, n, m, depth - 1, loose)
             for _ in range(draw(st.integers(1, 3)))]
    if loose and draw(st.integers(0, 5)) == 0:
        parts.append(x_atom(draw, pool, n) if draw(st.booleans()) else const_atom(draw, pool))
    return ("or", tuple(draw(st.permutations(parts))))


def x_formula(draw, pool, n: int, depth: int):
    """Extra input constraints: and/or of bounds (several boxes from one `or`)."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return x_atom(draw, pool, n)
    parts = tuple(x_formula(draw, pool, n, depth - 1) for _ in range(draw(st.integers(1, 3))))
    return (draw(st.sampled_from(["and", "or", "or"])), parts)


@st.composite
def documents(draw, loose: bool = True):
    """(n, m, asserts, declaration names): a VNN-LIB property as s-expressions."""
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool = draw(st.lists(decimals(), min_size=2, max_size=5)) + [
        Fraction(0), Fraction(1), Fraction(-1, 2)]
    mode = draw(st.sampled_from(["box", "box", "boxes", "paired"]))
    asserts = []
    if mode == "box":  # VNN-COMP: one assert per bound, or the box in one `and`
        atoms = box_atoms(draw, pool, n)
        asserts += [("and", tuple(atoms))] if draw(st.booleans()) else atoms
    elif mode == "boxes":  # (or (and box1) (and box2) ...)
        asserts.append(("or", tuple(("and", tuple(box_atoms(draw, pool, n)))
                                    for _ in range(draw(st.integers(1, 3))))))
    else:  # (or (and box1 out1) (and box2 out2) ...)
        asserts.append(("or", tuple(
            ("and", tuple(box_atoms(draw, pool, n)) + (out_formula(draw, pool, n, m, 2, loose),))
            for _ in range(draw(st.integers(1, 3))))))
    for _ in range(draw(st.integers(0 if mode == "paired" else 1, 3))):
        asserts.append(out_formula(draw, pool, n, m, 3, loose))
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        asserts.append(x_formula(draw, pool, n, 2))
    if draw(st.integers(0, 5)) == 0:
        asserts.append(const_atom(draw, pool))
    names = [f"X_{i}" for i in range(n)] + [f"Y_{j}" for j in range(m)]
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    return n, m, tuple(draw(st.permutations(asserts))), tuple(names)


# ---------------------------------------------------------------------------------------------
# writing the text


def _tokens(e) -> list:
    kind = e[0]
    if kind == "num":
        return [e[2]]
    if kind == "var":
        return [e[1]]
    if kind == "cmp":
        return ["(", e[1], *_tokens(e[2]), *_tokens(e[3]), ")"]
    out = ["(", kind]
    for c in e[1]:
        out += _tokens(c)
    return out + [")"]


def write(draw, names, asserts, sorts: dict | None = None) -> str:
    """The document's text, with whitespace, newlines, comments and declarations placed in
    several ways (declarations first, as VNN-COMP writes them, or some after the asserts)."""
    items = [["(", "declare-const", name, (sorts or {}).get(name, "Real"), ")"]
             for name in names]
    asserted = [["(", "assert", *_tokens(a), ")"] for a in asserts]
    if draw(st.integers(0, 5)) == 0:
        k = draw(st.integers(0, len(items)))
        items = items[:k] + asserted + items[k:]
    else:
        items = items + asserted
    style = draw(st.sampled_from(["space", "lines", "dense", "comments"]))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    out = ["; generated property (with parens: ( ) in a comment)\n"] if style == "comments" else []
    for item in items:
        prev = None
        for tok in item:
            if prev is not None:
                tight = prev == "(" or tok == ")" or prev == ")" or tok == "("
                if style == "dense" and tight:
                    sep = ""
                elif style == "lines":
                    sep = rnd.choice([" ", "\n", "\n  ", "\t", "\r\n"])
                elif style == "comments" and rnd.random() < 0.1:
                    sep = " ; a comment ( (( ) <= X_0 1\n"
                else:
                    sep = " "
                out.append(sep)
            out.append(tok)
            prev = tok
        out.append("\n" if style != "dense" else "")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# the independent meaning: exact evaluation, linear forms, normal form


def value(t, env) -> Fraction:
    kind = t[0]
    if kind == "num":
        return t[1]
    if kind == "var":
        return env[t[1]]
    vals = [value(c, env) for c in t[1]]
    if kind == "+":
        return sum(vals, Fraction(0))
    if kind == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:], Fraction(0))
    out = Fraction(1)
    for v in vals:
        out *= v
    return out


def holds(f, env) -> bool:
    kind = f[0]
    if kind == "and":
        return all(holds(c, env) for c in f[1])
    if kind == "or":
        return any(holds(c, env) for c in f[1])
    a, b = value(f[2], env), value(f[3], env)
    return {"<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b, "=": a == b}[f[1]]


def linear(t) -> dict:
    """A linear term as {variable: coefficient, "": constant}, zero coefficients dropped."""
    kind = t[0]
    if kind == "num":
        return {"": t[1]}
    if kind == "var":
        return {t[1]: Fraction(1)}
    parts = [linear(c) for c in t[1]]
    if kind == "*":
        out = {"": Fraction(1)}
        for p in parts:
            if set(p) - {""} and set(out) - {""}:
                raise AssertionError("generated a nonlinear term")
            k, other = (p.get("", Fraction(0)), out) if not set(p) - {""} else \
                (out.get("", Fraction(0)), p)
            out = {v: c * k for v, c in other.items()}
    else:
        signs = [1] * len(parts) if kind == "+" else [-1] if len(parts) == 1 else \
            [1] + [-1] * (len(parts) - 1)
        out = {}
        for s, p in zip(signs, parts):
            for v, c in p.items():
                out[v] = out.get(v, Fraction(0)) + s * c
    return {v: c for v, c in out.items() if c != 0 or v == ""}


def atom_form(a) -> dict:
    """lhs - rhs of a comparison, as a linear form."""
    lhs, rhs = linear(a[2]), linear(a[3])
    out = {"": Fraction(0)} | lhs
    for v, c in rhs.items():
        out[v] = out.get(v, Fraction(0)) - c
    return {v: c for v, c in out.items() if c != 0 or v == ""}


def atoms_of(f) -> list:
    return [f] if f[0] == "cmp" else [a for c in f[1] for a in atoms_of(c)]


def dnf(f) -> list:
    if f[0] == "cmp":
        return [[f]]
    if f[0] == "or":
        return [d for c in f[1] for d in dnf(c)]
    out = [[]]
    for c in f[1]:
        out = [a + b for a in out for b in dnf(c)]
    return out


def expected_refusal(n: int, asserts) -> str | None:
    """Which refusal the reader owes this (well-formed) document, by this file's own reading:
    "empty" where every disjunct of the normal form has an empty input box or a false constant
    comparison, "unsafe" where a non-empty one has no output comparison, else None."""
    disjuncts = dnf(("and", tuple(asserts)))
    forms = {id(a): atom_form(a) for f in asserts for a in atoms_of(f)}
    live_without_rows = live = False
    for d in disjuncts:
        lo = [(None, False)] * n
        hi = [(None, False)] * n
        dead, has_rows = False, False
        for a in d:
            form = dict(forms[id(a)])
            const, op = form.pop(""), a[1]
            if not form:
                dead |= not {"<=": const <= 0, ">=": const >= 0, "<": const < 0,
                             ">": const > 0, "=": const == 0}[op]
                continue
            if all(v.startswith("Y") for v in form):
                has_rows = True
                continue
            ((v, c),) = form.items()  # (only one input per comparison is generated)
            i, bound, strict = int(v[2:]), -const / c, op in ("<", ">")
            up = {"<=": c > 0, "<": c > 0, ">=": c < 0, ">": c < 0, "=": None}[op]
            for side, is_up in ((hi, True), (lo, False)):
                if up is None or up == is_up:
                    old, old_strict = side[i]
                    if old is None or (bound < old if is_up else bound > old):
                        side[i] = (bound, strict)
                    elif bound == old:
                        side[i] = (bound, old_strict or strict)
        assert all(b is not None for b, _ in lo + hi), "generated an unbounded input"
        empty = any(a > b or (a == b and (s or t)) for (a, s), (b, t) in zip(lo, hi))
        if not dead and not empty:
            live = True
            live_without_rows |= not has_rows
    return None if live and not live_without_rows else "unsafe" if live else "empty"


# ---------------------------------------------------------------------------------------------
# points: boundaries of every comparison, a little inside and outside, and in between


def _q(v) -> Fraction:
    return Fraction(int(v.p), int(v.q))


def _solve(forms: list, y: list) -> list | None:
    """y changed in some coordinates so that every form (over Y only) is exactly 0; None where
    the system has no solution."""
    m = len(y)
    rows = [[f.get(f"Y_{j}", Fraction(0)) for j in range(m)] + [-f[""]] for f in forms]
    pivots = []
    for r in range(len(rows)):
        row = rows[r]
        for p, col in pivots:
            if row[col]:
                row[:] = [a - row[col] * b for a, b in zip(row, rows[p])]
        col = next((j for j in range(m) if row[j]), None)
        if col is None:
            if row[m]:
                return None
            continue
        row[:] = [a / row[col] for a in row]
        for p, _ in pivots:
            if rows[p][col]:
                rows[p][:] = [a - rows[p][col] * b for a, b in zip(rows[p], row)]
        pivots.append((r, col))
    out = list(y)
    for r, col in pivots:
        out[col] = rows[r][m] - sum(rows[r][j] * out[j] for j in range(m)
                                    if j != col and j not in {c for _, c in pivots})
    return out


def _sense(a) -> tuple[dict, str]:
    """A comparison as g op 0 with op in <=, <, =."""
    form, op = atom_form(a), a[1]
    if op in (">=", ">"):
        form, op = {v: -c for v, c in form.items()}, {">=": "<=", ">": "<"}[op]
    return form, op


def _pick(f, rnd: random.Random) -> list:
    """The atoms of one disjunct of f's normal form, chosen at random."""
    if f[0] == "cmp":
        return [f]
    if f[0] == "or":
        return _pick(rnd.choice(f[1]), rnd)
    return [a for c in f[1] for a in _pick(c, rnd)]


def points(rnd: random.Random, n: int, m: int, asserts, pool, count: int):
    """Points (x, y): half of them from the boundaries of every comparison (a little inside
    and outside, in between), half aimed at one disjunct of the normal form: x at its box's
    corners, middle, or just inside or outside them; y moved onto (or just inside or outside)
    the boundaries of some of its output comparisons, then of those it violates."""
    every = [a for f in asserts for a in atoms_of(f)]
    sense = {id(a): _sense(a) for a in every}
    forms = [(atom_form(a), a[1]) for a in every]
    xs = [set(pool) | {Fraction(0)} for _ in range(n)]
    for form, _ in forms:
        vars_ = [v for v in form if v]
        if len(vars_) == 1 and vars_[0][0] == "X":
            b = -form[""] / form[vars_[0]]
            xs[int(vars_[0][2:])] |= {b, b - EPS, b + EPS, b + Fraction(1, 1000)}
    xs = [sorted(s) for s in xs]
    xs = [s + [(a + b) / 2 for a, b in zip(s, s[1:])] for s in xs]
    y_forms = [f for f, _ in forms if any(v.startswith("Y") for v in f if v)]
    ys = sorted(set(pool))

    def some_y():
        return [rnd.choice(ys) if rnd.random() < 0.7 else Fraction(rnd.randint(-999, 999), 100)
                for _ in range(m)]

    for k in range(count):
        if k % 2 == 0:
            x, y = [rnd.choice(c) for c in xs], some_y()
            if y_forms and rnd.random() < 0.8:
                y = _solve(rnd.sample(y_forms, rnd.randint(1, min(m, len(y_forms)))), y) or y
        else:
            atoms = _pick(("and", tuple(asserts)), rnd)
            x = []
            for i in range(n):
                ends = [(-f[""] / f[v], f[v] > 0, op == "=")
                        for f, op in (sense[id(a)] for a in atoms)
                        for v in f if v == f"X_{i}" and len(f) == 2]
                a = max((e for e, up, eq in ends if eq or not up), default=Fraction(0))
                b = min((e for e, up, eq in ends if eq or up), default=Fraction(1))
                x.append(rnd.choice([a, b, a, b, (a + b) / 2, (a + b) / 2, a + EPS, b - EPS,
                                     a - EPS, b + EPS]))
            senses = [sense[id(a)] for a in atoms if any(v[0] == "Y" for v in sense[id(a)][0] if v)]
            y, tight = some_y(), []

            def target(g, op):
                t = rnd.choice([0, 0, -EPS, EPS, Fraction(-1, 1000)]) if op != "=" else 0
                return g | {"": g[""] - t}
            for g, op in rnd.sample(senses, rnd.randint(0, min(m, len(senses)))):
                tight.append(target(g, op))
            for _ in range(4):
                y = _solve(tight, y) or y if tight else y
                bad = [(g, op) for g, op in senses if not (
                    sum(c * y[int(v[2:])] for v, c in g.items() if v) + g[""] <= 0
                    if op != "=" else
                    sum(c * y[int(v[2:])] for v, c in g.items() if v) + g[""] == 0)]
                if not bad:
                    break
                tight.append(target(*rnd.choice(bad)))
            if rnd.random() < 0.2:
                y[rnd.randrange(m)] += rnd.choice([EPS, -EPS])
        yield x, y


def as_fractions(prop) -> list:
    """The regions as (box, polytopes): box [(lo, hi, strict_lo, strict_hi)] per input,
    polytopes [[(row, rhs, strict)] per row], in Fractions."""
    return [([(_q(a), _q(b), s, t) for a, b, s, t in zip(r.lo, r.hi, r.strict_lo, r.strict_hi)],
             [[([_q(c) for c in row], _q(b), s) for row, b, s in zip(p.a, p.b, flags)]
              for p, flags in zip(r.unsafe, r.strict_rows)]) for r in prop.regions]


def reader_says(regions, x, y) -> bool:
    """x in some region's box and y in one of that region's polytopes, strict where flagged."""
    for box, polys in regions:
        if all((a < v if s else a <= v) and (v < b if t else v <= b)
               for v, (a, b, s, t) in zip(x, box)):
            for poly in polys:
                if all((lhs < b if s else lhs <= b) for lhs, b, s in (
                        (sum(c * v for c, v in zip(row, y)), b, s) for row, b, s in poly)):
                    return True
    return False


def check_shape(prop, n: int, m: int) -> None:
    """What tl verify relies on: sizes that zip(strict=True) accepts, non-empty boxes, no
    polytope without rows, has_strict saying whether any flag is set."""
    assert (prop.n_inputs, prop.n_outputs) == (n, m), "sizes"
    assert prop.regions, "no region"
    flags = False
    for r in prop.regions:
        assert len(r.lo) == len(r.hi) == len(r.strict_lo) == len(r.strict_hi) == n, "box size"
        assert all(a < b or (a == b and not s and not t)
                   for a, b, s, t in zip(r.lo, r.hi, r.strict_lo, r.strict_hi)), "empty box"
        assert r.unsafe and len(r.unsafe) == len(r.strict_rows), "strict_rows size"
        for poly, rf in zip(r.unsafe, r.strict_rows):
            assert len(poly.a) == len(poly.b) == len(rf) >= 1, "rows, rhs and flags"
            assert all(len(row) == m for row in poly.a), "row size"
        flags |= any(r.strict_lo) or any(r.strict_hi) or any(map(any, r.strict_rows))
    assert prop.has_strict == flags, "has_strict"


# ---------------------------------------------------------------------------------------------
# the tests


@SETTINGS
@given(st.data())
def test_regions_mean_what_the_document_says(data):
    n, m, asserts, names = data.draw(documents())
    text = write(data.draw, names, asserts)
    pool = sorted({a[1] for f in asserts for a in _nums(f)})
    owed = expected_refusal(n, asserts)
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    env_points = list(points(rnd, n, m, asserts, pool, 80))
    try:
        prop = parse_vnnlib(text)
    except VnnlibError as e:
        assert owed is not None, f"refused a readable document: {e}\n{text}"
        if owed == "empty":
            assert "every disjunct is empty" in str(e), f"{e}\n{text}"
            for x, y in env_points:  # (no point may satisfy it)
                assert not _doc_holds(asserts, x, y), f"{x} {y}\n{text}"
        else:
            assert "no output constraint" in str(e), f"{e}\n{text}"
        return
    assert owed is None, f"accepted a document owed the refusal {owed!r}:\n{text}"
    try:
        check_shape(prop, n, m)
    except AssertionError as e:
        raise AssertionError(f"{e}: {prop}\n{text}") from None
    regions = as_fractions(prop)
    for x, y in env_points:
        want, got = _doc_holds(asserts, x, y), reader_says(regions, x, y)
        assert want == got, (f"at x={[str(v) for v in x]}, y={[str(v) for v in y]}: the "
                             f"document says {want}, the regions say {got}\n{text}")


def _nums(f):
    if f[0] == "num":
        return [f]
    if f[0] == "var":
        return []
    if f[0] == "cmp":
        return _nums(f[2]) + _nums(f[3])
    return [a for c in f[1] for a in _nums(c)]


def _doc_holds(asserts, x, y) -> bool:
    env = {f"X_{i}": v for i, v in enumerate(x)} | {f"Y_{j}": v for j, v in enumerate(y)}
    return all(holds(a, env) for a in asserts)


def test_points_reach_both_answers():
    """The generator and the points are not vacuous: over a fixed sample of documents that the
    reader must accept, over a third get both points where they hold and points where they do
    not (the rest are mostly documents no point satisfies: random output constraints often
    contradict each other), and on average over three points a document satisfy it and over
    three do not."""
    seen = {"docs": 0, "both": 0, True: 0, False: 0}

    @settings(SETTINGS, max_examples=25)
    @given(st.data())
    def run(data):
        n, m, asserts, _ = data.draw(documents(loose=False))
        if expected_refusal(n, asserts) is not None:
            return
        pool = sorted({a[1] for f in asserts for a in _nums(f)})
        answers = [_doc_holds(asserts, x, y)
                   for x, y in points(random.Random(0), n, m, asserts, pool, 60)]
        seen["docs"] += 1
        seen["both"] += any(answers) and not all(answers)
        seen[True] += sum(answers)
        seen[False] += len(answers) - sum(answers)

    run()
    assert seen["docs"] >= 10 and seen["both"] > seen["docs"] / 3, seen
    assert seen[True] > 3 * seen["docs"] and seen[False] > 3 * seen["docs"], seen


# refusals: a readable document made unreadable in one way, refused with a VnnlibError


DEFECTS = ("paren", "truncate", "operator", "nonlinear", "mixed", "several", "undeclared",
           "sort", "gap", "name", "unbounded", "exponent", "nan", "empty-op", "chain")


def _defect(draw, kind: str, n: int, m: int, names, asserts) -> tuple[str, str]:
    """(text, the refusal's message pattern) for one defect put into a readable document."""
    pos = r"line \d+, column \d+"
    if kind in ("paren", "truncate", "operator", "empty-op", "chain"):
        text = write(draw, names, asserts)
        if kind == "paren":  # one parenthesis fewer: unbalanced
            where = [i for i, ch in enumerate(text) if ch in "()" and not _in_comment(text, i)]
            i = draw(st.sampled_from(where))
            return text[:i] + " " + text[i + 1:], pos + ": syntax error"
        if kind == "truncate":  # cut inside the last item
            start, end = _items(text)[-1]
            return text[:draw(st.integers(start + 1, end))], pos + ": syntax error"
        if kind == "operator":
            op = draw(st.sampled_from(["not", "=>", "xor", "distinct", "ite", "/", "abs"]))
            bad = f"(assert (<= ({op} Y_0 2) 1))" if op in ("/", "abs") else \
                f"(assert ({op} (<= Y_0 1) (<= Y_0 2)))"
        elif kind == "empty-op":
            bad = f"(assert ({draw(st.sampled_from(['and', 'or']))}))"
        else:
            bad = "(assert (<= Y_0 1 2))"
        return _insert(draw, text, bad), pos + ": syntax error"
    extra, message = {
        "nonlinear": (["(assert (<= (* Y_0 Y_0) 1))", "(assert (>= (* 2 X_0 Y_0) 1))"],
                      pos + ": a product of two variables is not linear"),
        "mixed": (["(assert (<= X_0 Y_0))", "(assert (>= (+ Y_0 (* 2 X_0)) 1))"],
                  pos + ": a constraint mixing inputs and outputs|every disjunct is empty"),
        "several": (["(assert (<= (+ X_0 X_1) 1))"] if n > 1 else ["(assert (<= X_0 Y_0))"],
                    pos + ": (input constraints over several variables|a constraint mixing)"
                    "|every disjunct is empty"),
        "undeclared": ([f"(assert (<= X_{n} 1))", f"(assert (>= Y_{m} 1))"],
                       pos + ": undeclared variable|every disjunct is empty"),
        "nan": (["(assert (<= Y_0 nan))", "(assert (>= Y_0 inf))", "(assert (<= Y_0 Inf))"],
                pos + ": expected a variable X_i or Y_j"),
        "exponent": (["(assert (<= Y_0 1e5000))", "(assert (<= Y_0 -2.5E-9999))",
                      "(assert (<= Y_0 " + "1" * 4100 + "))"],
                     r"line \d+ column \d+.*(exponent|longer)"),
    }.get(kind, ([], ""))
    if extra:
        return _insert(draw, write(draw, names, asserts), draw(st.sampled_from(extra))), message
    if kind == "sort":
        sorts = {draw(st.sampled_from(names)): draw(st.sampled_from(["Int", "Bool", "real"]))}
        return write(draw, names, asserts, sorts), pos + ": expected sort Real"
    if kind == "gap":
        names = list(names) + [draw(st.sampled_from([f"X_{n + 1}", f"Y_{m + 1}", "X_00"]))]
        return write(draw, names, asserts), "without gaps"
    if kind == "name":
        names = list(names) + [draw(st.sampled_from(["Z_0", "x_0", "X0", "X_0.5", "input"]))]
        return write(draw, names, asserts), pos + ": expected a variable named X_i or Y_j"
    # unbounded: a new input bounded on one side only
    names = list(names) + [f"X_{n}"]
    text = _insert(draw, write(draw, names, asserts), f"(assert (>= X_{n} 0))")
    return text, f"X_{n} has no lower or upper bound|every disjunct is empty"


def _in_comment(text: str, i: int) -> bool:
    return ";" in text[text.rfind("\n", 0, i) + 1:i]


def _items(text: str) -> list:
    """(start, end) of each top-level item: its "(" and its ")"."""
    out, depth, comment = [], 0, False
    for i, ch in enumerate(text):
        if comment or ch == ";":
            comment = ch != "\n"
        elif ch == "(":
            depth += 1
            if depth == 1:
                start = i
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append((start, i))
    return out


def _insert(draw, text: str, item: str) -> str:
    """item put before a top-level item (or at the end)."""
    i = draw(st.sampled_from([a for a, _ in _items(text)] + [len(text)]))
    return text[:i] + item + "\n" + text[i:]


@settings(SETTINGS, max_examples=25)
@given(st.data())
def test_unreadable_documents_are_refused(data):
    n, m, asserts, names = data.draw(documents(loose=False))
    if expected_refusal(n, asserts) == "empty":  # (refused already, for another reason)
        return
    for kind in DEFECTS:
        text, message = _defect(data.draw, kind, n, m, names, asserts)
        try:
            prop = parse_vnnlib(text)
        except VnnlibError as e:
            assert re.search(message, str(e)), f"refusal {str(e)!r} is not {message!r}:\n{text}"
        else:
            pytest.fail(f"accepted ({len(prop.regions)} regions) a document owed {message!r}:"
                        f"\n{text}")


@pytest.mark.parametrize("text, pattern", [
    ("", "no output constraint"),  # (true everywhere: every input is unsafe)
    ("(declare-const X_0 Real)(declare-const Y_0 Real)", "X_0 has no lower or upper bound"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))"
     "(assert (or (<= Y_0 0) (<= X_0 0.5)))", "no output constraint"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 1))(assert (< X_0 1))"
     "(assert (<= Y_0 0))", "every disjunct is empty"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))"
     "(assert (<= Y_0 0))(assert (< 0 0))", "every disjunct is empty"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))"
     "(assert (<= Y_0 0)", r"line 1, column \d+: syntax error, found the end of the input"),
])
def test_small_refusals(text, pattern):
    with pytest.raises(VnnlibError, match=pattern):
        parse_vnnlib(text)


@pytest.mark.parametrize("kind", ["term", "formula"])
def test_deep_nesting_is_read_or_refused(kind):
    """A document nested 600 deep is refused with the reason; 150 deep is read."""
    head = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))"
    body = ("(assert (<= " + "(- " * 600 + "Y_0" + ")" * 600 + " 0))" if kind == "term" else
            "(assert " + "(and " * 600 + "(<= Y_0 0)" + ")" * 600 + ")")
    with pytest.raises(VnnlibError, match="nested deeper than 200 levels"):
        parse_vnnlib(head + body)  # (about 490 raised a RecursionError through lark)
    shallow = ("(assert (<= " + "(- " * 150 + "Y_0" + ")" * 150 + " 0))" if kind == "term" else
               "(assert " + "(and " * 150 + "(<= Y_0 0)" + ")" * 150 + ")")
    assert parse_vnnlib(head + shallow).n_outputs == 1
