"""Judgment forms (DESIGN.md, "Claims") and their JSON encoding.

Every claim names a graph by the sha256 of its file, an input set over the graph's single input
node, a semantics and an output node (flattened row-major):
- Bounds:          for all x in S, lo <= G(x)[node] <= hi elementwise.
- LinearBound:     for all x in S, rows . G(x)[node] >= rhs, row by row.
- Unsat:           no x in S has G(x)[node] in the union of polytopes {y : A y <= b}.
- Counterexample:  the point x* is in S and G(x*)[node] lies in one of those polytopes.
These are in "real" semantics (exact arithmetic). One judgment is in "float32" semantics:
- Agreement:       the values y a runtime ("cuda" or "cpu") returned for node at the point x (S is
                   the box [x, x]) lie inside the enclosure of every binary32 evaluation of G at x
                   (kernel_checker/float32.py).
"""

import hashlib
import json
from dataclasses import dataclass

from flint import fmpq

from kernel_checker.errors import refuse
from kernel_checker.exact import decode_rational, decode_vector, encode_rational

RULE = "claim"
SEMANTICS = ("real", "float32")  # float32: the agreement judgment only
RUNTIMES = ("cuda", "cpu")
Vec = tuple  # of fmpq


@dataclass(frozen=True)
class Box:
    lo: Vec
    hi: Vec

    def to_json(self) -> dict:
        return {"kind": "box", "lo": _enc(self.lo), "hi": _enc(self.hi)}

    def as_box(self) -> "Box":
        return self


@dataclass(frozen=True)
class LinfBall:
    """{x : |x - center|_inf <= eps}, intersected with [clamp_lo, clamp_hi]^n when clamped."""

    center: Vec
    eps: fmpq
    clamp: tuple | None = None

    def to_json(self) -> dict:
        doc = {"kind": "linf_ball", "center": _enc(self.center), "eps": encode_rational(self.eps)}
        if self.clamp is not None:
            doc["clamp"] = _enc(self.clamp)
        return doc

    def as_box(self) -> Box:
        lo = [c - self.eps for c in self.center]
        hi = [c + self.eps for c in self.center]
        if self.clamp is not None:
            a, b = self.clamp
            lo = [v if v > a else a for v in lo]
            hi = [v if v < b else b for v in hi]
        return Box(tuple(lo), tuple(hi))


InputSet = Box | LinfBall


@dataclass(frozen=True)
class Polytope:
    """{y : A y <= b}."""

    a: tuple  # of Vec
    b: Vec

    def to_json(self) -> dict:
        return {"A": [_enc(r) for r in self.a], "b": _enc(self.b)}


@dataclass(frozen=True)
class Claim:
    kind: str  # bounds | linear_bound | unsat | counterexample
    graph: str
    input_set: InputSet
    node: str
    semantics: str = "real"
    lo: Vec = ()
    hi: Vec = ()
    rows: tuple = ()
    rhs: Vec = ()
    unsafe: tuple = ()  # of Polytope
    point: Vec = ()
    values: Vec = ()  # agreement: the runtime's outputs
    runtime: str | None = None  # agreement: which runtime returned them
    name: str | None = None
    parts: tuple = ()  # of Claim, for kind "all" (a conjunction on one graph and input set)

    def to_json(self) -> dict:
        doc = {"kind": self.kind, "graph": self.graph, "semantics": self.semantics,
               "input_set": self.input_set.to_json(), "node": self.node}
        if self.name is not None:
            doc["name"] = self.name
        if self.kind == "all":
            doc["parts"] = [p.to_json() for p in self.parts]
        elif self.kind == "bounds":
            doc.update(lo=_enc(self.lo), hi=_enc(self.hi))
        elif self.kind == "linear_bound":
            doc.update(rows=[_enc(r) for r in self.rows], rhs=_enc(self.rhs))
        elif self.kind == "agreement":
            doc.update(point=_enc(self.point), values=_enc(self.values), runtime=self.runtime)
        else:
            doc["unsafe"] = [p.to_json() for p in self.unsafe]
            if self.kind == "counterexample":
                doc["point"] = _enc(self.point)
        return doc

    def spec_sha256(self) -> str:
        """Content hash of the claim: sha256 of its canonical JSON."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _enc(values) -> list[str]:
    return [encode_rational(v) for v in values]


def _obj(doc: object, path: str, required: set, optional: set = frozenset()) -> dict:
    if not isinstance(doc, dict):
        raise refuse(RULE, path, f"expected an object, found {type(doc).__name__}")
    missing = required - set(doc)
    if missing:
        raise refuse(RULE, path, f"missing keys {sorted(missing)}")
    extra = set(doc) - required - set(optional)
    if extra:
        raise refuse(RULE, path, f"unexpected keys {sorted(extra)}")
    return doc


def parse_input_set(doc: object, path: str) -> InputSet:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "box":
        _obj(doc, path, {"kind", "lo", "hi"})
        lo = decode_vector(doc["lo"], f"{path}.lo", RULE)
        hi = decode_vector(doc["hi"], f"{path}.hi", RULE, len(lo))
        return check_input_set(Box(tuple(lo), tuple(hi)), path)
    if kind == "linf_ball":
        _obj(doc, path, {"kind", "center", "eps"}, {"clamp"})
        center = decode_vector(doc["center"], f"{path}.center", RULE)
        eps = decode_rational(doc["eps"], f"{path}.eps", RULE)
        clamp = None
        if doc.get("clamp") is not None:
            c = decode_vector(doc["clamp"], f"{path}.clamp", RULE, 2)
            clamp = (c[0], c[1])
        return check_input_set(LinfBall(tuple(center), eps, clamp), path)
    raise refuse(RULE, f"{path}.kind", f"expected 'box' or 'linf_ball', found {kind!r}")


def _exact(values, path: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, fmpq):
            raise refuse(RULE, f"{path}[{i}]", f"expected an exact rational (fmpq), found "
                         f"{type(v).__name__}")


def check_input_set(s: InputSet, path: str) -> InputSet:
    """A well-formed, non-empty input set of exact numbers (claims built in Python included)."""
    if isinstance(s, LinfBall):
        _exact(s.center, f"{path}.center")
        _exact((s.eps,), f"{path}.eps")
        if s.eps < 0:
            raise refuse(RULE, f"{path}.eps", f"expected eps >= 0, found {s.eps}")
        if s.clamp is not None:
            _exact(s.clamp, f"{path}.clamp")
            if s.clamp[0] > s.clamp[1]:
                raise refuse(RULE, f"{path}.clamp", f"expected lo <= hi, found {s.clamp}")
        key = "center"
    elif isinstance(s, Box):
        _exact(s.lo, f"{path}.lo")
        _exact(s.hi, f"{path}.hi")
        if len(s.hi) != len(s.lo):
            raise refuse(RULE, f"{path}.hi", f"expected {len(s.lo)} numbers, found {len(s.hi)}")
        key = "lo"
    else:
        raise refuse(RULE, path, f"expected a Box or LinfBall, found {type(s).__name__}")
    box = s.as_box()
    for i, (a, b) in enumerate(zip(box.lo, box.hi, strict=True)):
        if a > b:
            why = ("the ball misses the clamp domain" if key == "center"
                   else "expected lo <= hi")
            raise refuse(RULE, f"{path}.{key}[{i}]", f"{why} (empty set): {a} > {b}")
    return s


def _parse_polytopes(doc: object, path: str) -> tuple:
    if not isinstance(doc, list) or not doc:
        raise refuse(RULE, path, "expected a non-empty list of polytopes {A, b}")
    out = []
    for k, p in enumerate(doc):
        pp = f"{path}[{k}]"
        _obj(p, pp, {"A", "b"})
        if not isinstance(p["A"], list) or not p["A"]:
            raise refuse(RULE, f"{pp}.A", "expected a non-empty list of rows")
        rows = tuple(tuple(decode_vector(r, f"{pp}.A[{i}]", RULE)) for i, r in enumerate(p["A"]))
        b = decode_vector(p["b"], f"{pp}.b", RULE, len(rows))
        out.append(Polytope(rows, tuple(b)))
    return tuple(out)


_FIELDS = {"bounds": {"lo", "hi"}, "linear_bound": {"rows", "rhs"}, "unsat": {"unsafe"},
           "counterexample": {"unsafe", "point"}, "all": {"parts"},
           "agreement": {"point", "values", "runtime"}}


def parse_claim(doc: object, path: str = "claim") -> Claim:
    """A claim document to a Claim; shapes are checked against the graph by `check_claim_shapes`."""
    common = {"kind", "graph", "semantics", "input_set", "node"}
    kind = doc.get("kind") if isinstance(doc, dict) else None
    kind = kind if isinstance(kind, str) else repr(kind)
    fields = _FIELDS
    if kind not in fields:
        raise refuse(RULE, f"{path}.kind", f"expected one of {sorted(fields)}, found {kind!r}")
    _obj(doc, path, common | fields[kind], {"name"})
    if not isinstance(doc["graph"], str) or len(doc["graph"]) != 64:
        raise refuse(RULE, f"{path}.graph", f"expected the graph's sha256, found {doc['graph']!r}")
    _semantics(kind, doc["semantics"], f"{path}.semantics")
    if not isinstance(doc["node"], str):
        raise refuse(RULE, f"{path}.node", "expected a node id")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise refuse(RULE, f"{path}.name", "expected a string")
    base = dict(kind=kind, graph=doc["graph"], semantics=doc["semantics"], node=doc["node"],
                input_set=parse_input_set(doc["input_set"], f"{path}.input_set"), name=name)
    if kind == "all":
        if not isinstance(doc["parts"], list) or not doc["parts"]:
            raise refuse(RULE, f"{path}.parts", "expected a non-empty list of claims")
        parts = tuple(parse_claim(p, f"{path}.parts[{i}]") for i, p in enumerate(doc["parts"]))
        outer = base["input_set"].as_box()
        for i, p in enumerate(parts):
            inner = p.input_set.as_box()
            if (p.graph, p.semantics) != (base["graph"], base["semantics"]) or not all(
                    o_lo <= i_lo and i_hi <= o_hi for i_lo, i_hi, o_lo, o_hi in
                    zip(inner.lo, inner.hi, outer.lo, outer.hi, strict=True)):
                raise refuse(RULE, f"{path}.parts[{i}]", "a conjunction's parts share its graph "
                             "and semantics, and their input sets lie inside its input set")
        return Claim(parts=parts, **base)
    if kind == "bounds":
        lo = decode_vector(doc["lo"], f"{path}.lo", RULE)
        hi = decode_vector(doc["hi"], f"{path}.hi", RULE, len(lo))
        return Claim(lo=tuple(lo), hi=tuple(hi), **base)
    if kind == "linear_bound":
        if not isinstance(doc["rows"], list) or not doc["rows"]:
            raise refuse(RULE, f"{path}.rows", "expected a non-empty list of rows")
        rows = tuple(tuple(decode_vector(r, f"{path}.rows[{i}]", RULE))
                     for i, r in enumerate(doc["rows"]))
        rhs = decode_vector(doc["rhs"], f"{path}.rhs", RULE, len(rows))
        return Claim(rows=rows, rhs=tuple(rhs), **base)
    if kind == "agreement":
        if doc["runtime"] not in RUNTIMES:
            raise refuse(RULE, f"{path}.runtime", f"expected one of {list(RUNTIMES)}, found "
                         f"{doc['runtime']!r}")
        return Claim(point=tuple(decode_vector(doc["point"], f"{path}.point", RULE)),
                     values=tuple(decode_vector(doc["values"], f"{path}.values", RULE)),
                     runtime=doc["runtime"], **base)
    unsafe = _parse_polytopes(doc["unsafe"], f"{path}.unsafe")
    if kind == "unsat":
        return Claim(unsafe=unsafe, **base)
    point = decode_vector(doc["point"], f"{path}.point", RULE)
    return Claim(unsafe=unsafe, point=tuple(point), **base)


def _semantics(kind: str, semantics: object, path: str) -> None:
    """Agreement is in float32 semantics, every other judgment in real semantics, and a
    conjunction in its parts' (checked where its parts are)."""
    want = "float32" if kind == "agreement" else "real"
    if semantics != want and not (kind == "all" and semantics in SEMANTICS):
        raise refuse(RULE, path, f"expected {want!r} for a claim of kind {kind!r} (of "
                     f"{list(SEMANTICS)}), found {semantics!r}")


def check_claim_shapes(claim: Claim, graph, path: str = "claim") -> None:
    """Every vector in the claim has the length the graph says (input and output node sizes)."""
    from kernel_checker.tensor import numel

    # (what parse_claim refuses in a document, for claims built in Python)
    if claim.kind not in _FIELDS:
        raise refuse(RULE, f"{path}.kind", f"expected one of {sorted(_FIELDS)}, found "
                     f"{claim.kind!r}")
    _semantics(claim.kind, claim.semantics, f"{path}.semantics")
    if claim.kind == "agreement" and claim.runtime not in RUNTIMES:
        raise refuse(RULE, f"{path}.runtime", f"expected one of {list(RUNTIMES)}, found "
                     f"{claim.runtime!r}")
    if claim.kind == "agreement" and (not isinstance(claim.input_set, Box) or not (
            claim.input_set.lo == claim.input_set.hi == claim.point)):
        raise refuse(RULE, f"{path}.input_set", "expected the box [point, point]: an agreement "
                     "is about one input")
    field = {"all": "parts", "linear_bound": "rows", "bounds": "lo",
             "agreement": "values"}.get(claim.kind, "unsafe")
    if not getattr(claim, field):
        raise refuse(RULE, f"{path}.{field}", "expected at least one")
    if claim.kind == "linear_bound" and len(claim.rhs) != len(claim.rows):
        raise refuse(RULE, f"{path}.rhs", f"expected {len(claim.rows)} numbers (one per row), "
                     f"found {len(claim.rhs)}")
    check_input_set(claim.input_set, f"{path}.input_set")
    for key in ("lo", "hi", "rhs", "point", "values"):
        _exact(getattr(claim, key), f"{path}.{key}")
    for i, row in enumerate(claim.rows):
        _exact(row, f"{path}.rows[{i}]")
    for k, poly in enumerate(claim.unsafe):
        if not poly.a or len(poly.a) != len(poly.b):
            raise refuse(RULE, f"{path}.unsafe[{k}]", "expected at least one row, and one b per "
                         "row")
        _exact(poly.b, f"{path}.unsafe[{k}].b")
        for i, row in enumerate(poly.a):
            _exact(row, f"{path}.unsafe[{k}].A[{i}]")
    if claim.graph != graph.sha256:
        raise refuse(RULE, f"{path}.graph", f"expected the graph's sha256 {graph.sha256}, found "
                     f"{claim.graph}")
    n_in = numel(graph.the_input(RULE, f"{path}.input_set").shape)
    s = claim.input_set
    vecs = (("lo", s.lo), ("hi", s.hi)) if isinstance(s, Box) else (("center", s.center),)
    for key, vec in vecs:
        if len(vec) != n_in:
            raise refuse(RULE, f"{path}.input_set.{key}", f"expected {n_in} numbers (the input "
                         f"size), found {len(vec)}")
    if claim.kind == "all":
        outer = claim.input_set.as_box()
        for i, part in enumerate(claim.parts):
            check_claim_shapes(part, graph, f"{path}.parts[{i}]")
            inner = part.input_set.as_box()
            if part.semantics != claim.semantics or not all(
                    o_lo <= i_lo and i_hi <= o_hi for i_lo, i_hi, o_lo, o_hi in
                    zip(inner.lo, inner.hi, outer.lo, outer.hi, strict=True)):
                raise refuse(RULE, f"{path}.parts[{i}]", "a part's input set must lie inside the "
                             "conjunction's, with the same semantics")
        return
    if claim.node not in graph.by_id:
        raise refuse(RULE, f"{path}.node", f"no node {claim.node!r} in the graph")
    n_out = numel(graph.by_id[claim.node].shape)
    vectors = []
    if claim.kind == "bounds":
        vectors = [("lo", claim.lo), ("hi", claim.hi)]
    elif claim.kind == "agreement":
        vectors = [("values", claim.values)]
    elif claim.kind == "linear_bound":
        vectors = [(f"rows[{i}]", r) for i, r in enumerate(claim.rows)]
    else:
        vectors = [(f"unsafe[{k}].A[{i}]", r) for k, p in enumerate(claim.unsafe)
                   for i, r in enumerate(p.a)]
    for key, vec in vectors:
        if len(vec) != n_out:
            raise refuse(RULE, f"{path}.{key}", f"expected {n_out} numbers (the size of node "
                         f"{claim.node!r}), found {len(vec)}")
    if claim.kind in ("counterexample", "agreement") and len(claim.point) != n_in:
        raise refuse(RULE, f"{path}.point", f"expected {n_in} numbers (the input size), found "
                     f"{len(claim.point)}")
