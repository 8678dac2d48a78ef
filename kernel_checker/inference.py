"""Inference rules over theorems (LCF style: HOL Light's few primitive rules). Each rule takes
premise theorems and a conclusion, checks the side condition exactly, and derives the conclusion;
assumptions are the union of the premises' and the level their minimum (theorem._derive).

- weaken:    looser Bounds / fewer or lower LinearBound rows / fewer Unsat polytopes, on a subset
             of the premise's input set;
- conjoin:   claims on one graph and input set -> their conjunction (kind "all");
- project:   a conjunction -> anything one part implies;
- unsat_from_bounds: LinearBound rows (or Bounds) -> Unsat, each polytope refuted by one row;
- compose:   Bounds(F, S, out, Y) and a claim on G over a box containing Y -> the same claim on
             H = G after F, checked node by node;
- cases:     a claim on S1, ..., Sk (boxes covering S exactly) -> the claim on S;
- discharge: a theorem resting on an assumption and a theorem proving the assumed statement ->
             the first without that assumption.
"""

from itertools import product

from flint import fmpq

from kernel_checker.claims import Box, Claim
from kernel_checker.errors import KernelError, refuse
from kernel_checker.exact import approx_text
from kernel_checker.graph import _ATTRS_OF_PARAMS, Graph
from kernel_checker.theorem import Theorem, _derive


def box_inside(inner: Box, outer: Box) -> bool:
    return all(o_lo <= i_lo and i_hi <= o_hi for i_lo, i_hi, o_lo, o_hi in
               zip(inner.lo, inner.hi, outer.lo, outer.hi, strict=True))


def _same_frame(p: Claim, c: Claim, rule: str) -> None:
    if (p.graph, p.semantics) != (c.graph, c.semantics):
        raise refuse(rule, "claim.graph", "premise and conclusion differ in graph or semantics")
    if not box_inside(c.input_set.as_box(), p.input_set.as_box()):
        raise refuse(rule, "claim.input_set", "the conclusion's input set is not inside the "
                     "premise's")


def implies(p: Claim, c: Claim, rule: str) -> None:
    """Premise claim p entails conclusion c (same graph; c's input set inside p's), else refuse."""
    _same_frame(p, c, rule)
    if p.kind == "all":
        for part in p.parts:
            try:
                return implies(part, c, rule)
            except KernelError:
                continue
        raise refuse(rule, "claim", "no part of the conjunction implies the conclusion")
    if c.kind == "all":
        for part in c.parts:
            implies(p, part, rule)
        return
    if c.node != p.node:
        raise refuse(rule, "claim.node", f"premise is about node {p.node!r}, conclusion about "
                     f"{c.node!r}")
    if c.kind == "bounds" and p.kind == "bounds":
        for i, (a, b, pa, pb) in enumerate(zip(c.lo, c.hi, p.lo, p.hi, strict=True)):
            if not (a <= pa and pb <= b):
                raise refuse(rule, f"claim.{'lo' if a > pa else 'hi'}[{i}]", f"[{a}, {b}] does "
                             f"not contain the premise's [{pa}, {pb}]")
        return
    known = _rows_of(p)
    if c.kind == "linear_bound":
        for i, (row, d) in enumerate(zip(c.rows, c.rhs, strict=True)):
            if _best(known, row) is None or _best(known, row) < d:
                raise refuse(rule, f"claim.rhs[{i}]", f"no premise row {i} gives >= {d}")
        return
    if c.kind == "unsat":
        if p.kind == "unsat":
            missing = [k for k, poly in enumerate(c.unsafe) if poly not in p.unsafe]
            if missing:
                raise refuse(rule, f"claim.unsafe[{missing[0]}]", "polytope not in the premise")
            return
        for k, poly in enumerate(c.unsafe):
            if not any(_best(known, row) is not None and _best(known, row) > b
                       for row, b in zip(poly.a, poly.b, strict=True)):
                raise refuse(rule, f"claim.unsafe[{k}]", f"no premise row refutes polytope {k} "
                             f"(needs a row A[i] with proven lower bound > b[i])")
        return
    raise refuse(rule, "claim.kind", f"a {p.kind} claim does not imply a {c.kind} claim here")


def _rows_of(p: Claim) -> list:
    """(row, lower bound) pairs a premise proves about its node."""
    if p.kind == "linear_bound":
        return list(zip(p.rows, p.rhs, strict=True))
    if p.kind == "bounds":
        n = len(p.lo)
        unit = [tuple(fmpq(1) if i == j else fmpq(0) for j in range(n)) for i in range(n)]
        return [(u, lo) for u, lo in zip(unit, p.lo, strict=True)] + [
            (tuple(-v for v in u), -hi) for u, hi in zip(unit, p.hi, strict=True)]
    return []


def _best(known: list, row: tuple):
    vals = [d for r, d in known if tuple(r) == tuple(row)]
    return max(vals) if vals else None


def weaken(premise: Theorem, conclusion: Claim, rule: str = "weaken") -> Theorem:
    if conclusion.kind != premise.claim.kind or conclusion.kind == "all":
        raise refuse(rule, "claim.kind", f"weakening keeps the kind {premise.claim.kind!r}")
    implies(premise.claim, conclusion, rule)
    return _derive(conclusion, rule, premises=(premise,))


def unsat_from_bounds(premise: Theorem, conclusion: Claim) -> Theorem:
    if conclusion.kind != "unsat" or premise.claim.kind not in ("linear_bound", "bounds", "all"):
        raise refuse("unsat_from_bounds", "claim.kind", "expected LinearBound/Bounds -> Unsat")
    implies(premise.claim, conclusion, "unsat_from_bounds")
    return _derive(conclusion, "unsat_from_bounds", premises=(premise,))


def conjoin(premises: list[Theorem], conclusion: Claim) -> Theorem:
    if conclusion.kind != "all" or [p.claim for p in premises] != list(conclusion.parts):
        raise refuse("conjoin", "claim.parts", "the conjunction's parts must be the premises' "
                     "claims, in order")
    return _derive(conclusion, "conjoin", premises=tuple(premises))


def project(premise: Theorem, conclusion: Claim) -> Theorem:
    if premise.claim.kind != "all":
        raise refuse("project", "premise.claim.kind", "expected a conjunction")
    implies(premise.claim, conclusion, "project")
    return _derive(conclusion, "project", premises=(premise,))


MAX_CASES_WORK = 1 << 22  # cells of the breakpoint grid times the boxes tested on each


def cases(premises: list[Theorem], conclusion: Claim) -> Theorem:
    """The premises are the conclusion on boxes S1..Sk whose union is exactly S (closed boxes:
    every elementary cell of the breakpoint grid lies in some Si)."""
    if conclusion.kind not in ("bounds", "linear_bound", "unsat"):
        raise refuse("cases", "claim.kind", f"cases combine universal claims (bounds, "
                     f"linear_bound, unsat), not {conclusion.kind!r}")
    target = conclusion.input_set.as_box()
    boxes = []
    for i, p in enumerate(premises):
        c = p.claim
        same = Claim(**{**c.__dict__, "input_set": conclusion.input_set, "name": conclusion.name})
        if same != conclusion:
            raise refuse("cases", f"premises[{i}].claim", "a case must be the conclusion on a "
                         "smaller input set")
        boxes.append(c.input_set.as_box())
    dims = [d for d in range(len(target.lo))
            if any((b.lo[d], b.hi[d]) != (target.lo[d], target.hi[d]) for b in boxes)]
    cells_per_dim = []
    for d in dims:
        cuts = sorted({v for b in boxes for v in (b.lo[d], b.hi[d])
                       if target.lo[d] <= v <= target.hi[d]} | {target.lo[d], target.hi[d]})
        cells = [(v, v) for v in cuts] + [(a, b) for a, b in zip(cuts, cuts[1:])]
        cells_per_dim.append(cells)
    full = [b for b in boxes if all(b.lo[d] <= target.lo[d] and target.hi[d] <= b.hi[d]
                                    for d in range(len(target.lo)) if d not in dims)]
    work = max(1, len(full))  # cell-box tests: the grid grows as (2k + 1)^d
    for cells in cells_per_dim:
        work *= len(cells)
    if work > MAX_CASES_WORK:
        raise refuse("cases", "premises", f"the breakpoint grid of {len(premises)} cases over "
                     f"{len(dims)} split dimensions needs {work} cell-box tests, more than "
                     f"{MAX_CASES_WORK}: nest the cases (a split per level)")
    for cell in product(*cells_per_dim):
        if not any(all(b.lo[d] <= lo and hi <= b.hi[d] for d, (lo, hi) in zip(dims, cell))
                   for b in full):
            where = ", ".join(f"x[{d}] in [{approx_text(lo)}, {approx_text(hi)}]"
                              for d, (lo, hi) in zip(dims, cell))
            raise refuse("cases", "premises", f"the cases leave a gap: {where}")
    return _derive(conclusion, "cases", premises=tuple(premises))


def discharge(premise: Theorem, proof: Theorem) -> Theorem:
    sha = proof.claim.spec_sha256()
    if not any(a.statement == sha for a in premise.assumptions):
        raise refuse("discharge", "proof.claim", "the premise assumes no statement with this "
                     "claim's hash")
    return _derive(premise.claim, "discharge", premises=(premise, proof), discharged=sha)


def _node_equal(n1, g1: Graph, n2, g2: Graph, rename: dict) -> bool:
    if (n1.op, n1.shape, tuple(rename.get(i, i) for i in n1.inputs)) != (n2.op, n2.shape,
                                                                           n2.inputs):
        return False
    if n1.attrs.keys() != n2.attrs.keys():
        return False
    for key, v1 in n1.attrs.items():
        v2 = n2.attrs[key]
        if key in _ATTRS_OF_PARAMS and v1 is not None and v2 is not None:  # values, not names
            t1, t2 = g1.param(v1), g2.param(v2)
            if t1.shape != t2.shape or any(a * t2.den != b * t1.den
                                           for a, b in zip(t1.nums, t2.nums, strict=True)):
                return False
        elif v1 != v2:
            return False
    return True


def compose(first: Theorem, second: Theorem, conclusion: Claim, graphs: dict) -> Theorem:
    """H's nodes are F's nodes, then G's non-input nodes with G's input read from F's node."""
    f, s = first.claim, second.claim
    if f.kind != "bounds" or s.kind not in ("bounds", "linear_bound", "unsat"):
        raise refuse("compose", "first.claim.kind", "expected Bounds on F and Bounds, "
                     "LinearBound or Unsat on G")
    gf, gg, gh = graphs[f.graph], graphs[s.graph], graphs[conclusion.graph]
    g_in = gg.the_input("compose", "second")
    if s.node == g_in.id:  # (in H that id names F's input or node, not what G's input reads)
        raise refuse("compose", "second.claim.node", "G's claim must be about a node after G's "
                     "input (a claim about G's input is F's)")
    f_shape = gf.by_id[f.node].shape if f.node in gf.by_id else None
    if f_shape != g_in.shape:  # (the same size is not enough: a sum over axes [0, 2] or a
        # strided conv reads other flat positions of a [2, 2, 3] input than of a [3, 2, 2] one)
        raise refuse("compose", "second.claim.input_set", f"F's node {f.node!r} has shape "
                     f"{list(f_shape or ())}, G's input {list(g_in.shape)}")
    if not box_inside(Box(f.lo, f.hi), s.input_set.as_box()):
        raise refuse("compose", "second.claim.input_set", "G's input set does not contain F's "
                     "proven output box")
    glued = [n for n in gf.nodes] + [n for n in gg.nodes if n.op != "input"]
    if len(glued) != len(gh.nodes):
        raise refuse("compose", "claim.graph", f"H has {len(gh.nodes)} nodes, F then G has "
                     f"{len(glued)}")
    rename = {g_in.id: f.node}
    for i, (a, b) in enumerate(zip(glued, gh.nodes, strict=True)):
        src = gf if i < len(gf.nodes) else gg
        if a.id != b.id or not _node_equal(a, src, b, gh, rename if src is gg else {}):
            raise refuse("compose", f"claim.graph.nodes[{i}]", f"H's node {b.id!r} is not node "
                         f"{a.id!r} of {'F' if src is gf else 'G'}")
    expected = Claim(**{**s.__dict__, "graph": gh.sha256, "input_set": f.input_set,
                        "name": conclusion.name})
    if expected != conclusion or f.semantics != s.semantics:
        raise refuse("compose", "claim", "the conclusion must be G's claim on H over F's input "
                     "set")
    return _derive(conclusion, "compose", premises=(first, second))
