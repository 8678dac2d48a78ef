"""Readable printing of claims and theorems: text close to the claim syntax of `tl_dsl.text`,
and LaTeX.

`format_claim` writes one line in the text syntax followed by a comment naming the graph by the
first 12 hex digits of its sha256. When every vector is short enough to be written inline (or is
constant, or bound in `env`), parsing the printed text with the same `env` gives back an equal
claim; longer vectors are abbreviated, e.g. ``[0, 1/2, 1/4, ... (784 values)]``, which is for
reading only; so is a conjunction (kind ``all``: a VNN-LIB property over several input regions),
printed part by part.

Pass `env` (the mapping given to `tl_dsl.text.parse_claims`) to print the graph and any vectors
by their names there, and to leave out ``@node`` when the claim is about the graph's first output;
without it the node is always written and the graph is called `net` (or `graph_name`). A claim
does not record how it was written, so an env name is printed for a vector only when the whole
vector equals that env entry and is not constant: a constant vector is printed as its number (or
inline when short), as it is without env, so that ``box(0, 1)`` never prints as ``box(lo, ...)``
because env happens to bind some ``lo`` to zeros (the printed text parses to the same claim either
way).
"""

from __future__ import annotations

import json
import re

import numpy as np
from flint import fmpq

import kernel_checker
from kernel_checker.claims import Box, Claim, LinfBall
from stdlib.robustness import misclassification_polytopes
from tl_dsl import claims as dsl
from tl_dsl.text import KEYWORDS

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def fmt_rational(value) -> str:
    """A rational as "n" or "p/q"."""
    q = fmpq(value)
    return str(q.p) if q.q == 1 else f"{q.p}/{q.q}"


def _ident_or_string(name: str) -> str:
    return name if _IDENT.match(name) and name not in KEYWORDS else json.dumps(name)


class _Names:
    """Reverse look-up of graphs and vectors in an env."""

    def __init__(self, claim: Claim, env: dict | None, graph_name: str | None):
        self.graph = None
        self.graph_name = graph_name or "net"
        self.vectors: dict[tuple, str] = {}
        for key, value in (env or {}).items():
            if isinstance(value, kernel_checker.Graph):
                if value.sha256 == claim.graph and self.graph is None:
                    self.graph = value
                    if graph_name is None:
                        self.graph_name = key
                continue
            try:
                if np.ndim(np.asarray(value, dtype=object)) == 0:
                    continue
                vec = dsl.to_vector(value, key)
            except Exception:  # an env entry we cannot read is just not used
                continue
            if len(set(vec)) <= 1:  # constant: printed as its number, never by a name that
                continue           # merely happens to hold equal values
            self.vectors.setdefault(vec, key)

    def output(self, claim: Claim) -> str:
        text = f"{self.graph_name}(x)"
        if self.graph is None or claim.node != self.graph.outputs[0]:
            text += "@" + _ident_or_string(claim.node)
        return text

    def node_is_default(self, claim: Claim) -> bool:
        return self.graph is None or claim.node == self.graph.outputs[0]


def fmt_vector(values, names: _Names | None = None, max_inline: int = 8) -> str:
    """A vector by its env name, as one repeated number (when constant, over 3 values), inline
    (up to `max_inline` values), or abbreviated."""
    values = tuple(values)
    if names is not None and values in names.vectors:
        return names.vectors[values]
    if len(values) > 3 and len(set(values)) == 1:
        return fmt_rational(values[0])
    if len(values) <= max_inline:
        return "[" + ", ".join(fmt_rational(v) for v in values) + "]"
    head = ", ".join(fmt_rational(v) for v in values[:3])
    return f"[{head}, ... ({len(values)} values)]"


def _fmt_set(s, names: _Names, max_inline: int) -> str:
    if isinstance(s, Box):
        return f"box({fmt_vector(s.lo, names, max_inline)}, {fmt_vector(s.hi, names, max_inline)})"
    text = f"ball({fmt_vector(s.center, names, max_inline)}, {fmt_rational(s.eps)})"
    if s.clamp is not None:
        text += f" clamp [{fmt_rational(s.clamp[0])}, {fmt_rational(s.clamp[1])}]"
    return text


def _robust_label(claim: Claim) -> int | None:
    """The label L when the unsafe set is exactly the argmax = L template."""
    if claim.kind != "unsat" or not claim.unsafe:
        return None
    n = len(claim.unsafe[0].a[0])
    if n < 2 or len(claim.unsafe) != n - 1:
        return None
    row = claim.unsafe[0].a[0]
    for label in range(n):
        if row[label] == 1:
            try:
                if tuple(claim.unsafe) == misclassification_polytopes(n, label):
                    return label
            except ValueError:
                return None
    return None


def _margin_label(claim: Claim) -> int | None:
    """The label L when the rows are exactly y_L - y_j (j != L) with one right-hand side."""
    if claim.kind != "linear_bound" or not claim.rows or len(set(claim.rhs)) != 1:
        return None
    n = len(claim.rows[0])
    if n < 2 or len(claim.rows) != n - 1:
        return None
    for label in range(n):
        if claim.rows[0][label] != 1:
            continue
        rows = []
        for j in range(n):
            if j != label:
                row = [fmpq(0)] * n
                row[label], row[j] = fmpq(1), fmpq(-1)
                rows.append(tuple(row))
        if tuple(claim.rows) == tuple(rows):
            return label
    return None


def _fmt_lin(row, ref, mul: str = "*", max_terms: int = 12, num=fmt_rational) -> str:
    """sum_i row[i] * ref(i), e.g. `2*net(x)[0] - net(x)[3]` ("0" when the row is zero)."""
    terms = [(i, c) for i, c in enumerate(row) if c != 0]
    if not terms:  # written with an output term, so that the text still names the graph
        return f"0{mul}{ref(0)}" if mul == "*" else "0"
    shown = terms if len(terms) <= max_terms else terms[:max_terms - 1]
    parts = []
    for k, (i, c) in enumerate(shown):
        mag = -c if c < 0 else c
        body = ref(i) if mag == 1 else f"{num(mag)}{mul}{ref(i)}"
        if k == 0:
            parts.append(f"-{body}" if c < 0 else body)
        else:
            parts.append(f"- {body}" if c < 0 else f"+ {body}")
    if len(shown) < len(terms):
        parts.append(f"+ ... ({len(terms)} terms)")
    return " ".join(parts)


def _fmt_row_le(row, b, ref, le: str, ge: str, **kw) -> str:
    """A polytope row `row . y <= b`, written with >= when every coefficient is negative."""
    nonzero = [c for c in row if c != 0]
    num = kw.get("num", fmt_rational)
    if nonzero and all(c < 0 for c in nonzero):
        return f"{_fmt_lin([-c for c in row], ref, **kw)} {ge} {num(-b)}"
    return f"{_fmt_lin(row, ref, **kw)} {le} {num(b)}"


def _fmt_unsafe(claim: Claim, out: str, max_terms: int) -> str:
    def ref(i):
        return f"{out}[{i}]"

    polys = []
    for p in claim.unsafe:
        conj = " and ".join(_fmt_row_le(r, b, ref, "<=", ">=", max_terms=max_terms)
                            for r, b in zip(p.a, p.b, strict=True))
        polys.append(f"({conj})")
    return " or ".join(polys)


def _fmt_property(claim: Claim, names: _Names, max_inline: int) -> str:
    out = names.output(claim)
    if claim.kind == "unsat":
        label = _robust_label(claim)
        if label is not None:
            return f"argmax({out}) == {label}"
        return "never " + _fmt_unsafe(claim, out, max_inline + 4)
    if claim.kind == "linear_bound":
        label = _margin_label(claim)
        if label is not None:
            return f"margin({out}, {label}) >= {fmt_rational(claim.rhs[0])}"
        return ", ".join(
            f"{_fmt_lin(r, lambda i: f'{out}[{i}]', max_terms=max_inline + 4)} >= "
            f"{fmt_rational(d)}" for r, d in zip(claim.rows, claim.rhs, strict=True))
    if claim.kind == "bounds":
        return (f"{out} in box({fmt_vector(claim.lo, names, max_inline)}, "
                f"{fmt_vector(claim.hi, names, max_inline)})")
    raise ValueError(f"no text form for claim kind {claim.kind!r}")


def _fmt_agreement(claim: Claim, names: _Names, max_inline: int) -> str:
    """(no text syntax: printed for reading)"""
    return (f"{claim.runtime} returned {names.output(claim)} = "
            f"{fmt_vector(claim.values, names, max_inline)} at x = "
            f"{fmt_vector(claim.point, names, max_inline)}, inside every binary32 evaluation's "
            "enclosure")


def _comment(claim: Claim, names: _Names) -> str:
    note = f"# {names.graph_name}: graph {claim.graph[:12]}"
    if claim.semantics != "real":
        note += f", {claim.semantics} semantics"
    return note


def format_claim(claim: Claim, env: dict | None = None, *, graph_name: str | None = None,
                 max_inline: int = 8) -> str:
    """One line of claim text (see the module docstring) and a comment naming the graph."""
    names = _Names(claim, env, graph_name)
    head = "claim" if claim.name is None else f"claim {_ident_or_string(claim.name)}"
    if claim.kind == "all":  # (no text syntax for a conjunction: printed for reading)
        parts = "; ".join(_fmt_agreement(p, names, max_inline) if p.kind == "agreement" else
                          f"forall x in {_fmt_set(p.input_set, names, max_inline)}: "
                          f"{_fmt_property(p, names, max_inline)}" for p in claim.parts)
        return f"{head}: all of {len(claim.parts)} parts: {parts}  {_comment(claim, names)}"
    if claim.kind == "agreement":
        return f"{head}: {_fmt_agreement(claim, names, max_inline)}  {_comment(claim, names)}"
    s = _fmt_set(claim.input_set, names, max_inline)
    if claim.kind == "counterexample":
        point = fmt_vector(claim.point, names, max_inline)
        body = (f"counterexample{'' if claim.name is None else ' ' + _ident_or_string(claim.name)}"
                f": the point x = {point} in {s} has "
                f"{_fmt_unsafe(claim, names.output(claim), max_inline + 4)}")
        return f"{body}  {_comment(claim, names)}"
    return f"{head}: forall x in {s}: {_fmt_property(claim, names, max_inline)}  " \
           f"{_comment(claim, names)}"


def format_theorem(theorem: kernel_checker.Theorem, env: dict | None = None, *,
                   graph_name: str | None = None, max_inline: int = 8) -> str:
    """The claim, the rule that derived it, its level and each assumption with provenance."""
    lines = [f"theorem ({theorem.level.label}, by rule {theorem.rule}): "
             + format_claim(theorem.claim, env, graph_name=graph_name, max_inline=max_inline)]
    if theorem.premises:
        lines.append(f"  from {len(theorem.premises)} premise(s)")
    if not theorem.assumptions:
        lines.append("  assumptions: none")
    else:
        lines.append("  assumptions:")
        for a in sorted(theorem.assumptions):
            meaning = kernel_checker.ASSUMPTIONS.get(a.name)
            prov = ", ".join(f"{k}={v}" for k, v in a.provenance)
            text = f"    - {a.name}"
            if meaning:
                text += f": {meaning}"
            text += f" [{prov}]" if prov else " [no provenance]"
            lines.append(text)
    return "\n".join(lines)


# ---- LaTeX -----------------------------------------------------------------------------------

def latex_rational(value) -> str:
    q = fmpq(value)
    if q.q == 1:
        return str(q.p)
    sign = "-" if q < 0 else ""
    return f"{sign}\\tfrac{{{abs(int(q.p))}}}{{{int(q.q)}}}"


def _latex_name(name: str) -> str:
    m = re.fullmatch(r"([A-Za-z])_?([0-9]+)", name)
    if m:
        return f"{m.group(1)}_{{{m.group(2)}}}" if len(m.group(2)) > 1 else \
            f"{m.group(1)}_{m.group(2)}"
    if len(name) == 1:
        return name
    return "\\mathrm{" + name.replace("_", "\\_") + "}"


def _latex_vec(values, names: _Names, default: str, short: int = 4) -> str:
    values = tuple(values)
    if values in names.vectors:
        return _latex_name(names.vectors[values])
    if len(values) <= short:
        return "(" + ", ".join(latex_rational(v) for v in values) + ")"
    return default


def _latex_bound(values: tuple, names: _Names, default: str) -> str:
    if len(set(values)) == 1:
        return latex_rational(values[0])
    return _latex_vec(values, names, default, short=8)


def _latex_box(lo, hi, names: _Names, what: str) -> str:
    """`what \\in [a, b]^n`, `what \\in [a1, b1] \\times ...`, or `lo \\le what \\le hi`."""
    lo, hi = tuple(lo), tuple(hi)
    n = len(lo)
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        return f"{what} \\in [{latex_rational(lo[0])}, {latex_rational(hi[0])}]^{{{n}}}"
    if n <= 4:
        return f"{what} \\in " + " \\times ".join(
            f"[{latex_rational(a)}, {latex_rational(b)}]" for a, b in zip(lo, hi, strict=True))
    low, high = _latex_bound(lo, names, "\\ell"), _latex_bound(hi, names, "u")
    return f"{low} \\le {what} \\le {high}"


def _latex_set(s, names: _Names) -> str:
    if isinstance(s, LinfBall):
        center = _latex_vec(s.center, names, "x_0")
        text = f"B_\\infty({center}, {latex_rational(s.eps)})"
        if s.clamp is not None:
            text += (f" \\cap [{latex_rational(s.clamp[0])},{latex_rational(s.clamp[1])}]"
                     f"^{{{len(s.center)}}}")
        return text
    inside = _latex_box(s.lo, s.hi, names, "x")
    if inside.startswith("x \\in "):
        return inside[len("x \\in "):]
    return f"\\{{x \\in \\mathbb{{Q}}^{{{len(s.lo)}}} : {inside}\\}}"


def _latex_union(claim: Claim, ref, lat: dict) -> str:
    """The unsafe union as (row \\wedge row) \\vee (...)."""
    polys = []
    for p in claim.unsafe:
        rows = [_fmt_row_le(r, b, ref, "\\le", "\\ge", **lat)
                for r, b in zip(p.a, p.b, strict=True)]
        polys.append("(" + " \\wedge ".join(rows) + ")")
    return " \\vee ".join(polys)


def _latex_text(text: str) -> str:
    """text with LaTeX's special characters escaped (node ids hold _ and .)."""
    out = []
    for ch in text:
        out.append({"\\": "\\textbackslash{}", "~": "\\textasciitilde{}",
                    "^": "\\textasciicircum{}"}.get(ch, "\\" + ch if ch in "_#$%&{}" else ch))
    return "".join(out)


def claim_to_latex(claim: Claim, env: dict | None = None) -> str:
    """The claim as a LaTeX formula (math mode, without delimiters), e.g.
    `\\forall x \\in B_\\infty(x_0, \\tfrac{1}{50}) \\cap [0,1]^{784}:\\ \\arg\\max_i f(x)_i = 7`.
    `f` is the graph's first output when `env` names the graph; any other node, and every node
    when no graph is named, is a subscript (a bound on a hidden layer must not read as one on
    the output)."""
    names = _Names(claim, env, None)
    f = "f" if names.graph is not None and names.node_is_default(claim) else \
        f"f_{{\\mathrm{{{_latex_text(claim.node)}}}}}"

    def ref(i):
        return f"{f}(x)_{{{i}}}"

    lat = {"mul": " ", "num": latex_rational, "max_terms": 8}
    s = _latex_set(claim.input_set, names)
    if claim.kind == "counterexample":
        point = _latex_vec(claim.point, names, "x^\\ast")
        polys = _latex_union(claim, lambda i: f"{f}(x^\\ast)_{{{i}}}", lat)
        return f"x^\\ast = {point} \\in {s} \\ \\wedge\\ {polys}"
    if claim.kind == "unsat":
        label = _robust_label(claim)
        if label is not None:
            prop = f"\\arg\\max_i {f}(x)_i = {label}"
        else:
            prop = f"\\neg\\big({_latex_union(claim, ref, lat)}\\big)"
    elif claim.kind == "linear_bound":
        label = _margin_label(claim)
        if label is not None:
            prop = (f"{f}(x)_{{{label}}} - {f}(x)_j \\ge {latex_rational(claim.rhs[0])}"
                    f" \\text{{ for all }} j \\ne {label}")
        else:
            rows = [f"{_fmt_lin(r, ref, **lat)} \\ge {latex_rational(d)}"
                    for r, d in zip(claim.rows, claim.rhs, strict=True)]
            if len(rows) > 4:
                rows = rows[:3] + [f"\\ldots\\ ({len(claim.rows)} \\text{{ inequalities}})"]
            prop = ",\\ ".join(rows)
    elif claim.kind == "bounds":
        prop = _latex_box(claim.lo, claim.hi, names, f"{f}(x)")
    else:
        raise ValueError(f"no LaTeX form for claim kind {claim.kind!r}")
    return f"\\forall x \\in {s}:\\ {prop}"


def format_derivation(theorem, indent: str = "") -> str:
    """The derivation tree: each line a rule, the claim's kind and node, its level and the
    assumptions it adds; premises indented below their conclusion."""
    c = theorem.claim
    what = f"{c.kind}" + (f" on {c.node}" if c.node else "") + f" graph {c.graph[:12]}"
    if c.name:
        what = f"{c.name}: {what}"
    own = sorted(a.name for a in theorem.assumptions
                 if not any(a in p.assumptions for p in theorem.premises))
    line = f"{indent}{theorem.rule:<18} {what} [{theorem.level.label}]"
    if own:
        line += " assumes " + ", ".join(own)
    return "\n".join([line] + [format_derivation(p, indent + "  ") for p in theorem.premises])


def derivation_to_json(theorem) -> dict:
    return {"rule": theorem.rule, "claim_sha256": theorem.claim.spec_sha256(),
            "kind": theorem.claim.kind, "level": theorem.level.label,
            "premises": [derivation_to_json(p) for p in theorem.premises]}
