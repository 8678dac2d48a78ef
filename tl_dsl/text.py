"""Claims as text: a small language parsed with lark (LALR(1), grammar in `claims.lark`) into the
same kernel `Claim` objects that `tl_dsl.claims` and `stdlib.robustness` build.

A file holds any number of claims; whitespace and line breaks are free, `#` starts a comment::

    claim robust7: forall x in ball(x0, 1/50) clamp [0, 1]: argmax(net(x)) == 7
    claim m: forall x in ball(x0, 0.01): margin(net(x), 3) >= 1/10
    claim b: forall x in box(lo, hi): net(x)@h1 in box(ylo, yhi)
    claim p: forall x in box([0, 0], [1, 1/2]):
        never (net(x)[0] - net(x)[1] <= 0 and net(x)[2] >= 1/3) or (net(x)[4] <= -2)
    claim lower: forall x in box(lo, hi): 2*net(x)[0] - net(x)[3] >= 1/2, net(x)[1] >= -1

Form of a claim: ``claim NAME: forall VAR in SET: PROPERTY``. NAME is an identifier or a quoted
string (``claim "mnist #0": ...``), not empty; it may be left out (``claim: ...``), giving a claim
whose `name` is None, listed by `parse_claims` under the key ``"claim#K"`` (K = its position,
from 1).

Input sets (over the graph's single input node, flattened row-major):
- ``ball(CENTER, EPS)`` is the L-inf ball; ``ball(CENTER, EPS) clamp [A, B]`` intersects it with
  [A, B]^n (as `stdlib.robustness.robust(..., clamp=(A, B))`); without ``clamp`` it is unclamped.
- ``box(LO, HI)``.
A vector (CENTER, LO, HI) is an inline list ``[0, 1/2, -3]``, a name bound in `env` (``-name``
negates it), or a single number repeated to the needed length (``box(0, 1)`` is [0, 1]^n; a name
bound to a number is repeated too). EPS is a number or a name.

Outputs: ``net(x)`` is the graph bound to ``net`` in `env` applied to the bound variable; it means
the graph's first output node. ``net(x)@h1`` names another node by id; ids that are not plain
identifiers are quoted: ``net(x)@"layer1/relu"``. ``net(x)[i]`` is component i of the node's
value flattened row-major; ``net(x)@c[0, 2, 1]`` indexes a multi-dimensional node by position.
One claim talks about one graph and one node.

Properties:
- ``argmax(OUT) == L``: the robustness template, an Unsat claim whose unsafe set is the union over
  j != L of {y : y_L - y_j <= 0} (ties count as unsafe), exactly `stdlib.robustness.robust`.
- ``margin(OUT, L) >= M``: a LinearBound claim, y_L - y_j >= M for all j != L
  (exactly `stdlib.robustness.margin`).
- ``OUT in box(LO, HI)``: a Bounds claim.
- ``never P1 or P2 or ...``: an Unsat claim; each Pk is a conjunction ``I1 and I2 ...`` of linear
  inequalities (in parentheses when there are several disjuncts), and is the polytope
  {y : A y <= b} with one row per inequality (``>=`` rows are negated into ``<=``).
- ``I1, I2, ...`` (or joined by ``and``): a LinearBound claim with one row per inequality,
  C y >= d. Each Ik is ``E1 >= E2``, or ``c <= E`` with no output on the left (a lower bound on E,
  read as ``E >= c``); an upper bound is written ``c >= E``. ``E <= ...`` with an output on the
  left is refused: it reads like the set to avoid, which is written ``never (E <= ...)``.
A linear inequality is ``E1 <= E2`` or ``E1 >= E2`` where each side is a sum of terms ``c*OUT[i]``,
``OUT[i]*c``, ``OUT[i]`` or a constant ``c``, with signs ``+``/``-``; it is normalised by moving
every output term to the left and every constant to the right.

Numbers are exact rationals, never binary64: integers ``-3``, decimals ``0.1`` (= 1/10) and
``1e-3``, and quotients ``1/50`` or ``0.5/3``. Wherever a number goes (a label, EPS, a margin, a
clamp bound, an element of an inline list, a coefficient or constant of a linear inequality) a
name bound in `env` to a number may stand instead, negated as ``-m`` where a sign may go:
``margin(net(x), L) >= -m``, ``net(x)[0] >= lo0``, ``k*net(x)[1]``, ``clamp [a, b]``; a label's
value must be an integer, and anything else is refused naming the name and what was expected.
(A name followed by ``(`` is always an output, ``net(x)``.) Values taken from `env` are converted
by `tl_dsl.claims.to_rational` (a Python or NumPy float is the binary value it holds; a string is
read as the exact decimal or "p/q" it spells).

Reserved words: claim forall in ball box clamp argmax margin never and or.

Errors: malformed text raises `ClaimSyntaxError` (line, column, what was expected, and a snippet);
a name missing from `env` raises `UnknownNameError` (the name, line and column); anything else
wrong (label or index out of range, vector lengths, a vector where a graph is needed, ...) raises
`ClaimValueError` naming the claim, line and column. All three are ValueErrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from flint import fmpq
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

import kernel_checker
from kernel_checker.claims import Box, Claim, LinfBall, check_claim_shapes
from kernel_checker.errors import KernelError
from kernel_checker.exact import decode_rational
from kernel_checker.tensor import numel
from stdlib import robustness
from tl_dsl import claims as dsl

GRAMMAR_PATH = Path(__file__).with_name("claims.lark")
KEYWORDS = frozenset({"claim", "forall", "in", "ball", "box", "clamp", "argmax", "margin",
                      "never", "and", "or"})
_TOKEN_NAMES = {"NAME": ["a name"], "NUMBER": ["a number"], "STRING": ["a quoted string"],
                "SIGN": ["'+'", "'-'"], "$END": ["the end of the text"]}


class ClaimTextError(ValueError):
    """An error in claim text, with its 1-based `line` and `column` (None when unknown)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


class ClaimSyntaxError(ClaimTextError):
    """The text does not follow the grammar; `expected` lists what could have come next."""

    def __init__(self, message: str, line: int, column: int, expected: list[str]):
        super().__init__(message, line, column)
        self.expected = expected


class UnknownNameError(ClaimTextError):
    """A name used in the text is not bound in `env`."""

    def __init__(self, message: str, name: str, line: int, column: int):
        super().__init__(message, line, column)
        self.name = name


class ClaimValueError(ClaimTextError):
    """Well-formed text that does not make a valid claim (range, length, type errors)."""


@lru_cache(maxsize=1)
def parser() -> Lark:
    return Lark(GRAMMAR_PATH.read_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True)


def parse_tree(text: str) -> Tree:
    """The lark parse tree of claim text, or a ClaimSyntaxError."""
    try:
        return parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(text, err) from None


def parse_claims(text: str, env: dict) -> dict[str, Claim]:
    """Every claim in the text, by name (unnamed claims under "claim#K"), in order."""
    tree = parse_tree(text)
    out: dict[str, Claim] = {}
    for k, node in enumerate(tree.children, start=1):
        claim = _ClaimReader(env, k).read(node)
        key = claim.name if claim.name is not None else f"claim#{k}"
        if key in out:
            raise ClaimValueError(f"line {node.meta.line}, column {node.meta.column}: a second "
                                  f"claim named {key!r}", node.meta.line, node.meta.column)
        out[key] = claim
    return out


def parse_claim(text: str, env: dict) -> Claim:
    """The one claim the text holds."""
    found = parse_claims(text, env)
    if len(found) != 1:
        raise ClaimValueError(f"expected exactly one claim, found {len(found)}"
                              + (f" ({', '.join(found)})" if found else ""))
    return next(iter(found.values()))


# ---- syntax errors ------------------------------------------------------------------------------

def _describe_terminal(name: str) -> list[str]:
    if name in _TOKEN_NAMES:
        return _TOKEN_NAMES[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return [name]
    if pattern.type == "str":
        return [repr(pattern.value)]
    return [name]


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _syntax_error(text: str, err: UnexpectedInput) -> ClaimSyntaxError:
    if isinstance(err, UnexpectedCharacters):
        expected = err.allowed or set()
        found = repr(text[err.pos_in_stream]) if err.pos_in_stream < len(text) else "end of text"
        line, column = err.line, err.column
    elif isinstance(err, UnexpectedToken):
        expected = err.expected or set()
        if err.token.type == "$END":
            found = "the end of the text"
            line, column = _end_position(text)
        else:
            found = repr(str(err.token))
            line, column = err.line, err.column
    elif isinstance(err, UnexpectedEOF):
        expected = err.expected or set()
        found = "the end of the text"
        line, column = _end_position(text)
    else:  # pragma: no cover - lark has no other UnexpectedInput kinds
        expected, found, line, column = set(), "?", err.line, err.column
    names = sorted({d for t in expected if t not in ("WS", "COMMENT")
                    for d in _describe_terminal(t)})
    message = f"line {line}, column {column}: expected {_one_of(names)}, found {found}"
    at_end = found == "the end of the text"
    snippet = _context(text, _offset(text, line, column)) if at_end else err.get_context(text)
    message += "\n" + snippet.rstrip("\n")
    return ClaimSyntaxError(message, line, column, names)


def _one_of(names: list[str]) -> str:
    if not names:
        return "nothing more"
    if len(names) == 1:
        return names[0]
    return "one of " + ", ".join(names)


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(s) + 1 for s in lines[:line - 1]) + column - 1


def _context(text: str, pos: int, span: int = 40) -> str:
    """The line around `pos` with a caret under it (lark's get_context, for the end of text)."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    lo = max(start, pos - span)
    hi = min(end, pos + span)
    before = text[lo:pos].expandtabs()
    return text[lo:hi].expandtabs() + "\n" + " " * len(before) + "^"


# ---- reading a claim ----------------------------------------------------------------------------

@dataclass
class _Out:
    """`net(x)@node` as written: the graph, node id and where it appeared."""

    graph: kernel_checker.Graph
    graph_name: str
    node: str
    size: int
    shape: tuple
    where: object


@dataclass
class _Lin:
    """A linear expression: output index -> coefficient, plus a constant."""

    coeffs: dict = field(default_factory=dict)
    const: fmpq = field(default_factory=lambda: fmpq(0))

    def add(self, other: _Lin, sign: int) -> None:
        for i, c in other.coeffs.items():
            self.coeffs[i] = self.coeffs.get(i, fmpq(0)) + sign * c
        self.const += sign * other.const


class _ClaimReader:
    def __init__(self, env: dict, index: int):
        self.env = env
        self.index = index
        self.name: str | None = None
        self.var: str | None = None
        self.out: _Out | None = None

    # -- errors --
    def _where(self, item) -> tuple[int | None, int | None]:
        if isinstance(item, Token):
            return item.line, item.column
        meta = getattr(item, "meta", None)
        if meta is not None and not meta.empty:
            return meta.line, meta.column
        return None, None

    def fail(self, item, message: str) -> ClaimValueError:
        line, column = self._where(item)
        label = repr(self.name) if self.name is not None else f"#{self.index}"
        at = f"line {line}, column {column}: " if line is not None else ""
        return ClaimValueError(f"claim {label}: {at}{message}", line, column)

    def lookup(self, token: Token):
        name = str(token)
        if name not in self.env:
            known = ", ".join(sorted(self.env)) or "none"
            label = repr(self.name) if self.name is not None else f"#{self.index}"
            raise UnknownNameError(f"claim {label}: line {token.line}, column {token.column}: "
                                   f"unknown name {name!r} (names in env: {known})", name,
                                   token.line, token.column)
        return self.env[name]

    # -- numbers --
    def ratio(self, tree: Tree) -> fmpq:
        num, den = tree.children
        value = self.convert(num, lambda: decode_rational(str(num), "number", "text"))
        if den is not None:
            d = self.convert(den, lambda: decode_rational(str(den), "number", "text"))
            if d == 0:
                raise self.fail(den, f"division by zero in {num}/{den}")
            value = value / d
        return value

    def signed(self, tree: Tree) -> fmpq:
        sign, ratio = tree.children
        value = self.ratio(ratio)
        return -value if sign is not None and str(sign) == "-" else value

    def integer(self, tree: Tree, what: str) -> int:
        """A `scalar` that must be an integer (a label)."""
        value = self.scalar(tree, what)
        if value.q != 1:
            if tree.data == "scalar_name":
                token = tree.children[1]
                raise self.fail(token, f"expected an integer {what}, but {token} is {value}")
            raise self.fail(tree, f"expected an integer {what}, found {value}")
        return int(value.p)

    def named_number(self, token: Token, what: str) -> fmpq:
        """The number bound to a name in env (refused, naming it, when it is not a number)."""
        value = self.lookup(token)
        if isinstance(value, kernel_checker.Graph) or np.ndim(np.asarray(value, dtype=object)):
            raise self.fail(token, f"{what}: expected a number, but {token} is "
                            f"{_kind_of(value)}")
        return self.convert(token, lambda: dsl.to_rational(value, str(token)))

    def scalar(self, tree: Tree, what: str) -> fmpq:
        """A number, or a name bound to one (`-name` negates it)."""
        if tree.data == "scalar_number":
            return self.signed(tree.children[0])
        sign, token = tree.children
        value = self.named_number(token, what)
        return -value if sign is not None and str(sign) == "-" else value

    def coef(self, item, what: str) -> fmpq:
        """A coefficient or constant of a linear inequality: a `ratio` or a name."""
        if isinstance(item, Token):
            return self.named_number(item, what)
        return self.ratio(item)

    def vector(self, tree: Tree, length: int, what: str) -> tuple:
        if tree.data == "vec_list":
            values = tuple(self.scalar(c, f"{what}[{i}]") for i, c in enumerate(tree.children))
        elif tree.data == "vec_scalar":
            return (self.signed(tree.children[0]),) * length
        else:
            sign, token = tree.children
            value = self.lookup(token)
            if isinstance(value, kernel_checker.Graph):
                raise self.fail(token, f"{what}: expected a vector, but {token} is a graph")
            if np.ndim(np.asarray(value, dtype=object)) == 0:
                values = (self.convert(token, lambda: dsl.to_rational(value, str(token))),) * length
            else:
                values = self.convert(token, lambda: dsl.to_vector(value, str(token)))
            if sign is not None and str(sign) == "-":
                values = tuple(-v for v in values)
        if len(values) != length:
            raise self.fail(tree, f"{what}: expected {length} numbers, found {len(values)}")
        return values

    def convert(self, item, fn):
        try:
            return fn()
        except (KernelError, TypeError, ValueError) as err:
            raise self.fail(item, str(err)) from None

    # -- outputs --
    def output(self, tree: Tree) -> _Out:
        gname, var, node = tree.children
        if str(var) != self.var:
            raise self.fail(var, f"expected the bound variable {self.var!r}, found {str(var)!r}")
        graph = self.lookup(gname)
        if not isinstance(graph, kernel_checker.Graph):
            raise self.fail(gname, f"{gname} is {_kind_of(graph)}, not a graph "
                            "(kernel_checker.Graph)")
        if node is None:
            node_id = graph.outputs[0]
        else:
            tok = node.children[0]
            node_id = json.loads(str(tok)) if tok.type == "STRING" else str(tok)
            if node_id not in graph.by_id:
                raise self.fail(tok, f"no node {node_id!r} in graph {gname} (outputs: "
                                f"{', '.join(graph.outputs)})")
        shape = tuple(graph.by_id[node_id].shape)
        out = _Out(graph, str(gname), node_id, numel(shape), shape, tree)
        if self.out is None:
            self.out = out
        elif (out.graph.sha256, out.node) != (self.out.graph.sha256, self.out.node):
            raise self.fail(tree, f"one claim talks about one graph and node: found "
                            f"{out.graph_name}(..)@{out.node} after "
                            f"{self.out.graph_name}(..)@{self.out.node}")
        return out

    def ref(self, tree: Tree) -> int:
        out = self.output(tree.children[0])
        idx = []
        for tok in tree.children[1:]:
            if not str(tok).isdigit() or len(str(tok)) > 18:
                raise self.fail(tok, f"expected an integer index, found {tok}")
            idx.append(int(str(tok)))
        if len(idx) == 1:
            i = idx[0]
            if not 0 <= i < out.size:
                raise self.fail(tree, f"index {i} outside 0..{out.size - 1} (node {out.node!r} "
                                f"has {out.size} values)")
            return i
        if len(idx) != len(out.shape):
            allowed = "1 index" if len(out.shape) <= 1 else f"1 or {len(out.shape)} indices"
            raise self.fail(tree, f"expected {allowed} for node {out.node!r} of shape "
                            f"{list(out.shape)}, found {len(idx)}")
        for i, d in zip(idx, out.shape, strict=True):
            if not 0 <= i < d:
                raise self.fail(tree, f"index {idx} outside the shape {list(out.shape)} of node "
                                f"{out.node!r}")
        return int(np.ravel_multi_index(tuple(idx), out.shape))

    def linexpr(self, tree: Tree) -> _Lin:
        result = _Lin()
        children = list(tree.children)
        sign = children[0]
        terms = children[1:]
        signs = [sign] + terms[1::2]
        for s, term in zip(signs, terms[0::2], strict=True):
            result.add(self.term(term), -1 if s is not None and str(s) == "-" else 1)
        return result

    def term(self, tree: Tree) -> _Lin:
        if tree.data == "constant":
            return _Lin({}, self.coef(tree.children[0], "constant"))
        if tree.data == "plain_ref":
            return _Lin({self.ref(tree.children[0]): fmpq(1)})
        if tree.data == "scaled_ref":
            coef, ref = tree.children
        else:
            ref, coef = tree.children
        return _Lin({self.ref(ref): self.coef(coef, "coefficient")})

    def sides(self, tree: Tree) -> tuple[_Lin, str, _Lin]:
        """`lhs OP rhs` as (lhs, OP, rhs) with OP '<=' or '>='."""
        lhs, op, rhs = tree.children
        return self.linexpr(lhs), str(op), self.linexpr(rhs)

    def ineq(self, tree: Tree) -> tuple[str, _Lin]:
        """`lhs OP rhs` as (OP, lhs - rhs) with OP '<=' or '>='."""
        lhs, op, rhs = self.sides(tree)
        lhs.add(rhs, -1)
        return op, lhs

    def row(self, lin: _Lin) -> tuple:
        n = self.out.size
        return tuple(lin.coeffs.get(i, fmpq(0)) for i in range(n))

    # -- the claim --
    def read(self, tree: Tree) -> Claim:
        name_tree, var, set_tree, prop = tree.children
        if name_tree is not None:
            tok = name_tree.children[0]
            name = json.loads(str(tok)) if tok.type == "STRING" else str(tok)
            if name == "":
                raise self.fail(tok, "a claim name must not be empty: write an identifier or a "
                                "non-empty quoted string, or leave the name out ('claim: ...') "
                                "for an unnamed claim")
            self.name = name
        self.var = str(var)
        build = getattr(self, f"prop_{prop.data}")
        maker = build(prop)  # reads the outputs first: they fix the graph and its input size
        graph = self.out.graph
        try:
            n_in = numel(graph.the_input("text", "input").shape)
        except KernelError as err:
            raise self.fail(prop, str(err)) from None
        input_set = self.input_set(set_tree, n_in)
        claim = maker(input_set)
        try:
            check_claim_shapes(claim, graph)
        except KernelError as err:
            raise self.fail(tree, str(err)) from None
        return claim

    def input_set(self, tree: Tree, n: int):
        if tree.data == "box":
            lo = self.vector(tree.children[0], n, "box lower corner")
            hi = self.vector(tree.children[1], n, "box upper corner")
            for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
                if a > b:
                    raise self.fail(tree, f"empty box: lo[{i}] = {a} > hi[{i}] = {b}")
            return Box(lo, hi)
        center_t, eps_t, clamp_t = tree.children
        center = self.vector(center_t, n, "ball centre")
        eps = self.scalar(eps_t, "ball radius")
        if eps < 0:
            raise self.fail(eps_t, f"expected a radius >= 0, found {eps}")
        clamp = None
        if clamp_t is not None:
            a, b = (self.scalar(c, "clamp bound") for c in clamp_t.children)
            if a > b:
                raise self.fail(clamp_t, f"empty clamp domain [{a}, {b}]")
            clamp = (a, b)
        ball = LinfBall(center, eps, clamp)
        box = ball.as_box()
        for i, (a, b) in enumerate(zip(box.lo, box.hi, strict=True)):
            if a > b:
                raise self.fail(tree, f"the ball misses the clamp domain at component {i}")
        return ball

    def _node_arg(self) -> str | None:
        """None (the graph's default output) unless a node was named."""
        out = self.out
        return None if out.node == out.graph.outputs[0] else out.node

    def prop_argmax(self, tree: Tree):
        out = self.output(tree.children[0])
        label = self.integer(tree.children[1], "label")
        if not 0 <= label < out.size:
            raise self.fail(tree.children[1], f"label {label} outside 0..{out.size - 1} (node "
                            f"{out.node!r} has {out.size} values)")
        node, name = self._node_arg(), self.name

        def make(s):
            if isinstance(s, LinfBall):
                return robustness.robust(out.graph, s.center, s.eps, label, clamp=s.clamp,
                                         node=node, name=name)
            polys = robustness.misclassification_polytopes(out.size, label)
            return dsl.unsat(out.graph, s, polys, node=node, name=name)
        return make

    def prop_margin(self, tree: Tree):
        out_t, label_t, _ge, m_t = tree.children
        out = self.output(out_t)
        label = self.integer(label_t, "label")
        if not 0 <= label < out.size:
            raise self.fail(label_t, f"label {label} outside 0..{out.size - 1} (node "
                            f"{out.node!r} has {out.size} values)")
        if out.size < 2:
            raise self.fail(tree, "a margin needs a node with at least 2 values")
        m = self.scalar(m_t, "margin")
        node, name = self._node_arg(), self.name

        def make(s):
            if isinstance(s, LinfBall):
                return robustness.margin(out.graph, s.center, s.eps, label, m, clamp=s.clamp,
                                         node=node, name=name)
            rows = []
            for j in range(out.size):
                if j != label:
                    row = [0] * out.size
                    row[label], row[j] = 1, -1
                    rows.append(row)
            return dsl.linear_bound(out.graph, s, rows, [m] * len(rows), node=node, name=name)
        return make

    def prop_bounds(self, tree: Tree):
        out = self.output(tree.children[0])
        box_t = tree.children[1]
        lo = self.vector(box_t.children[0], out.size, f"lower bounds of node {out.node!r}")
        hi = self.vector(box_t.children[1], out.size, f"upper bounds of node {out.node!r}")
        for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
            if a > b:
                raise self.fail(box_t, f"empty output box: lo[{i}] = {a} > hi[{i}] = {b}")
        node, name = self._node_arg(), self.name
        return lambda s: dsl.bounds(out.graph, s, lo, hi, node=node, name=name)

    def prop_never(self, tree: Tree):
        conjs = []
        for poly in tree.children:
            conj = poly.children[0]
            conjs.append([(c, self.ineq(c)) for c in conj.children])
        if self.out is None:
            raise self.fail(tree, "the property mentions no graph output")
        polys = []
        for conj in conjs:
            a_rows, b = [], []
            for _t, (op, lin) in conj:
                sign = 1 if op == "<=" else -1  # lin OP 0  ->  sign*coeffs . y <= -sign*const
                a_rows.append(tuple(sign * v for v in self.row(lin)))
                b.append(-sign * lin.const)
            polys.append(dsl.polytope(a_rows, b))
        out, node, name = self.out, self._node_arg(), self.name
        return lambda s: dsl.unsat(out.graph, s, tuple(polys), node=node, name=name)

    def prop_linear_bound(self, tree: Tree):
        """Rows C y >= d. Each inequality is `E1 >= E2`, or `c <= E` with no output on the
        left (a lower bound on E, read as `E >= c`); `E <= ...` with an output on the left is
        refused: in a claim that reads like the set to avoid (`never`)."""
        items = [(c, self.sides(c)) for c in tree.children]
        if self.out is None:
            raise self.fail(tree, "the property mentions no graph output")
        rows, rhs = [], []
        for t, (lhs, op, rhs_lin) in items:
            if op == ">=":
                lin, other = lhs, rhs_lin   # lhs - rhs >= 0
            elif not lhs.coeffs:
                lin, other = rhs_lin, lhs   # c <= E:  E - c >= 0
            else:
                raise self.fail(t, "in a linear bound '<=' may only follow a constant ('c <= "
                                "E', read as 'E >= c'): write 'E >= c' for a lower bound, "
                                "'c >= E' for an upper bound, or 'never (... <= ...)' for a set "
                                "to avoid")
            lin.add(other, -1)
            rows.append(self.row(lin))
            rhs.append(-lin.const)
        out, node, name = self.out, self._node_arg(), self.name
        return lambda s: dsl.linear_bound(out.graph, s, rows, rhs, node=node, name=name)


def _kind_of(value) -> str:
    if isinstance(value, kernel_checker.Graph):
        return "a graph"
    if np.ndim(np.asarray(value, dtype=object)) == 0:
        return "a number"
    return "a vector"
