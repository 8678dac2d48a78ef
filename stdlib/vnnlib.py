"""VNN-LIB properties (VNN-COMP): parsed with a lark grammar into exact input boxes and unions of
output polytopes. Numbers are read as the exact decimals written. A property is a conjunction of
assertions; it is put in disjunctive normal form, and each disjunct splits into input bounds
(one variable per constraint) and output constraints {y : A y <= b}. Strict comparisons (<, >)
are read as non-strict in the claims: the unsafe set grows to its closure, so `unsat` stays
sound; which comparisons were strict is kept (`Region.strict_*`), so that `tl verify` can tell
whether a counterexample of the closed set breaks the property as written."""

import re
from dataclasses import dataclass
from importlib import resources
from itertools import product

from flint import fmpq
from lark import Lark, Token, Transformer, UnexpectedInput, v_args
from lark.exceptions import VisitError

from kernel_checker.claims import Polytope
from kernel_checker.errors import KernelError
from kernel_checker.exact import decode_rational

_PARSER = None
_VAR = re.compile(r"([XY])_([0-9]+)\Z")


class VnnlibError(ValueError):
    """A property we cannot read, with the line and column of the cause."""


@dataclass(frozen=True)
class Region:
    lo: tuple  # exact input lower bounds
    hi: tuple
    unsafe: tuple  # Polytope over the outputs: unsafe when G(x) is in any of them
    # which of these were written strict (x > lo, x < hi, a row's < b): read non-strict above
    strict_lo: tuple = ()
    strict_hi: tuple = ()
    strict_rows: tuple = ()  # per polytope, per row


@dataclass(frozen=True)
class Property:
    n_inputs: int
    n_outputs: int
    regions: tuple  # of Region: the property is violated iff some region has a violation
    has_strict: bool  # some comparison (in a region kept) was strict


def _parser() -> Lark:
    global _PARSER
    if _PARSER is None:
        text = (resources.files("stdlib") / "vnnlib.lark").read_text()
        _PARSER = Lark(text, parser="lalr", propagate_positions=True)
    return _PARSER


@dataclass(frozen=True)
class Lin:
    """sum coeffs[var] * var + const."""

    coeffs: tuple  # sorted (var, coeff)
    const: fmpq

    def scale(self, k: fmpq) -> "Lin":
        return Lin(tuple((v, c * k) for v, c in self.coeffs), self.const * k)

    def add(self, other: "Lin") -> "Lin":
        d = dict(self.coeffs)
        for v, c in other.coeffs:
            d[v] = d.get(v, fmpq(0)) + c
        return Lin(tuple(sorted((v, c) for v, c in d.items() if c != 0)), self.const + other.const)


@v_args(meta=True)
class _ToLinear(Transformer):
    def num(self, meta, items):
        tok = items[0]
        return Lin((), decode_rational(str(tok), f"line {tok.line} column {tok.column}", "vnnlib"))

    def var(self, meta, items):
        tok = items[0]
        if not _VAR.match(str(tok)):
            raise VnnlibError(f"line {tok.line}, column {tok.column}: expected a variable X_i "
                              f"or Y_j, found {tok}")
        return Lin(((str(tok), fmpq(1)),), fmpq(0))

    def plus(self, meta, items):
        out = items[0]
        for t in items[1:]:
            out = out.add(t)
        return out

    def minus(self, meta, items):
        if len(items) == 1:
            return items[0].scale(fmpq(-1))
        out = items[0]
        for t in items[1:]:
            out = out.add(t.scale(fmpq(-1)))
        return out

    def times(self, meta, items):
        out = items[0]
        for t in items[1:]:
            if not t.coeffs:
                out = out.scale(t.const)
            elif not out.coeffs:
                out = t.scale(out.const)
            else:
                raise VnnlibError(f"line {meta.line}, column {meta.column}: a product of two "
                                  "variables is not linear")
        return out

    def atom(self, meta, items):
        op, lhs, rhs = str(items[0]), items[1], items[2]
        strict = op in ("<", ">")
        le = lhs.add(rhs.scale(fmpq(-1)))  # lhs - rhs
        if op in ("<=", "<"):
            return [[(le, meta, strict)]]
        if op in (">=", ">"):
            return [[(le.scale(fmpq(-1)), meta, strict)]]
        return [[(le, meta, False), (le.scale(fmpq(-1)), meta, False)]]  # "="

    def __init__(self, max_disjuncts: int):
        super().__init__()
        self.max_disjuncts = max_disjuncts

    def _bounded(self, dnf: list, meta) -> list:
        if len(dnf) > self.max_disjuncts:  # (checked as it grows: one assert of k nested
            # (or a b) doubles it k times)
            raise VnnlibError(f"line {meta.line}, column {meta.column}: more than "
                              f"{self.max_disjuncts} disjuncts in normal form")
        return dnf

    def conj(self, meta, items):
        out = [[]]
        for dnf in items:
            if len(out) * len(dnf) > self.max_disjuncts:
                self._bounded(range(len(out) * len(dnf)), meta)
            out = [a + b for a, b in product(out, dnf)]
        return out

    def disj(self, meta, items):
        return self._bounded([term for dnf in items for term in dnf], meta)

    def assertion(self, meta, items):
        return items[0]

    def declare(self, meta, items):
        name, sort = items
        if str(sort) != "Real":
            raise VnnlibError(f"line {name.line}, column {name.column}: expected sort Real, "
                              f"found {sort}")
        if not _VAR.match(str(name)):
            raise VnnlibError(f"line {name.line}, column {name.column}: expected a variable "
                              f"named X_i or Y_j, found {name}")
        return ("declare", str(name))


def _readable(terminals) -> list[str]:
    """The grammar's terminal names as a reader writes them: "(" for LPAR, "declare-const"
    for an anonymous keyword; a name or a number for the patterns."""
    out = set()
    for name in terminals:
        try:
            pattern = _parser().get_terminal(name).pattern
        except KeyError:
            out.add(name)
            continue
        out.add(repr(pattern.value) if pattern.type == "str" else
                {"NAME": "a name", "NUMBER": "a number", "CMP": "a comparison", "_PLUS": "'+'",
                 "_MINUS": "'-'", "_TIMES": "'*'"}.get(name, name))
    return sorted(out)


MAX_DEPTH = 200  # parentheses nested deeper are refused (VNN-COMP's files nest a few levels)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser and the transformer, which
    recurse, meet it (about 490 levels raised a RecursionError)."""
    depth, line, col, comment = 0, 1, 0, False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment = line + 1, 0, False
        elif comment or ch == ";":
            comment = True
        elif ch == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise VnnlibError(f"line {line}, column {col}: parentheses nested deeper than "
                                  f"{MAX_DEPTH} levels")
        elif ch == ")":
            depth -= 1


def parse_vnnlib(text: str, max_disjuncts: int = 100_000) -> Property:
    """A VNN-LIB document to exact input regions and unsafe output polytopes."""
    _check_depth(text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        expected = _readable(getattr(err, "expected", None) or getattr(err, "allowed", None)
                             or [])
        found = getattr(err, "token", None)
        raise VnnlibError(f"line {err.line}, column {err.column}: syntax error"
                          + (f", found {str(found)!r}" if isinstance(found, Token) and str(found)
                             else ", found the end of the input" if isinstance(found, Token)
                             else "")
                          + ("; expected one of " + ", ".join(expected) if expected else "")
                          + "\n" + err.get_context(text)) from None
    t = _ToLinear(max_disjuncts)
    try:
        items = t.transform(tree).children
    except VisitError as err:  # lark wraps what the transformer raises
        if isinstance(err.orig_exc, (VnnlibError, KernelError)):
            raise VnnlibError(str(err.orig_exc)) from None
        raise
    declared = {name for kind, name in (i for i in items if isinstance(i, tuple))}
    n_in = 1 + max((int(v[2:]) for v in declared if v[0] == "X"), default=-1)
    n_out = 1 + max((int(v[2:]) for v in declared if v[0] == "Y"), default=-1)
    if {f"X_{i}" for i in range(n_in)} | {f"Y_{j}" for j in range(n_out)} != declared:
        raise VnnlibError("declarations must be X_0..X_{n-1} and Y_0..Y_{m-1} without gaps")
    dnf = [[]]
    for item in items:
        if isinstance(item, tuple):
            continue
        dnf = [a + b for a, b in product(dnf, item)]
        if len(dnf) > max_disjuncts:
            raise VnnlibError(f"more than {max_disjuncts} disjuncts in normal form")
    regions: dict = {}
    for term in dnf:
        lo, hi = [None] * n_in, [None] * n_in
        strict_lo, strict_hi = [False] * n_in, [False] * n_in
        rows = []
        for lin, meta, strict in term:
            names = {v for v, _ in lin.coeffs}
            for v in names:
                if v not in declared:
                    raise VnnlibError(f"line {meta.line}, column {meta.column}: undeclared "
                                      f"variable {v}")
            kinds = {v[0] for v in names}
            where = f"line {meta.line}, column {meta.column}"
            if kinds == {"X"}:
                if len(lin.coeffs) != 1:
                    raise VnnlibError(f"{where}: input constraints over several variables are "
                                      "not supported (inputs must form a box)")
                (v, c), = lin.coeffs
                k, bound = int(v[2:]), -lin.const / c  # c x + const <= 0
                side, flags, tighter = (hi, strict_hi, bound.__lt__) if c > 0 else (
                    lo, strict_lo, bound.__gt__)
                if side[k] is None or tighter(side[k]):
                    side[k], flags[k] = bound, strict
                elif bound == side[k]:
                    flags[k] |= strict
            elif kinds == {"Y"}:
                row = [fmpq(0)] * n_out
                for v, c in lin.coeffs:
                    row[int(v[2:])] = c
                rows.append((tuple(row), -lin.const, strict))
            elif kinds:
                raise VnnlibError(f"{where}: a constraint mixing inputs and outputs is not "
                                  "supported")
            elif lin.const > 0 or (strict and lin.const == 0):
                rows = None  # a false constant constraint: this disjunct is empty
                break
        if rows is None:
            continue
        missing = [i for i in range(n_in) if lo[i] is None or hi[i] is None]
        if missing:
            raise VnnlibError(f"input X_{missing[0]} has no lower or upper bound in some "
                              "disjunct (inputs must form a bounded box)")
        if any(a > b or (a == b and (s or t)) for a, b, s, t in zip(lo, hi, strict_lo,
                                                                       strict_hi)):
            continue  # empty input box
        key = (tuple(lo), tuple(hi), tuple(strict_lo), tuple(strict_hi))
        poly = (Polytope(tuple(r for r, _, _ in rows), tuple(b for _, b, _ in rows)),
                tuple(s for _, _, s in rows)) if rows else None
        regions.setdefault(key, []).append(poly)
    out = []
    for (lo, hi, strict_lo, strict_hi), polys in regions.items():
        if any(p is None for p in polys):
            raise VnnlibError("a disjunct has no output constraint: every input is unsafe")
        out.append(Region(lo, hi, tuple(p for p, _ in polys), strict_lo, strict_hi,
                          tuple(s for _, s in polys)))
    if not out:
        raise VnnlibError("every disjunct is empty (an empty input box or a constant-false "
                          "constraint): no input violates the property, and there is nothing "
                          "for the kernel to check")
    return Property(n_in, n_out, tuple(out), any(
        any(r.strict_lo) or any(r.strict_hi) or any(map(any, r.strict_rows)) for r in out))


def read_vnnlib(path: str) -> Property:
    with open(path) as f:
        return parse_vnnlib(f.read())
