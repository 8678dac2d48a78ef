"""Branch and bound (untrusted producer) emitting `split` certificates whose leaves are `crown`
certificates (docs/crown_certificate.md). Input bisection for few inputs, ReLU splitting for wide
ones; counterexample candidates are tried along the way in float arithmetic. The kernel re-checks
the whole tree exactly."""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flint import fmpq

from kernel_checker.exact import encode_rational
from oracles.bounds_torch import (
    DECIDE_TOL,
    bounds_for_claim,
    claim_box,
    compute_bounds,
    load_chain,
    spec_of,
    to_float,
)
from oracles.pgd import pgd_attack


@dataclass
class BabResult:
    """status: "proved" (certificate: a `split` tree of `crown` leaves, or one `crown`
    certificate), "counterexample" (point: a float input, shaped like the graph's input, that
    breaks the claim in float arithmetic; move it into the claim's box exactly with
    `tl_dsl.claims.clamp_into` and let the kernel decide; only unsat claims have a kernel rule
    for it), "unknown" (nothing left to split, or max_domains reached) or "timeout"."""

    status: str
    certificate: dict | None = None
    point: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class _Node:
    lo: list  # exact box (fmpq), for input split pieces
    hi: list
    lo_f: np.ndarray  # the same box in floats
    hi_f: np.ndarray
    phases: dict  # pre-activation id -> {index: "active" | "inactive"}
    depth: int
    alpha_init: dict | None = None
    cert: dict | None = None
    split: dict | None = None
    children: list = field(default_factory=list)


def _dyadic_mid(lo: fmpq, hi: fmpq) -> fmpq | None:
    """A dyadic strictly inside (lo, hi) near the midpoint, or None when none is found."""
    mid = float((lo + hi) / 2)
    if not np.isfinite(mid):
        return None
    m = fmpq(*float(mid).as_integer_ratio())
    return m if lo < m < hi else None


def _assemble(root: _Node) -> dict:
    """The certificate tree (iterative: trees can be deep)."""
    out: dict[int, dict] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if node.cert is not None:
            out[id(node)] = node.cert
            continue
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in node.children)
            continue
        out[id(node)] = {"rule": "split", "split": node.split,
                         "children": [out[id(c)] for c in node.children]}
    return out[id(root)]


def prove_with_bab(graph_path: str, claim, timeout_s: float = 60.0, method: str = "alpha",
                   strategy: str = "auto", *, device=None, dtype=torch.float64,
                   iterations: int = 20, lr: float = 0.25, max_domains: int = 100000,
                   attack: bool = True, seed: int = 0, tol: float = DECIDE_TOL,
                   lookahead: int = 8, optimize_intermediate: bool = True,
                   max_depth: int = 400) -> BabResult:
    """Prove `claim` (bounds / linear_bound / unsat) by branch and bound, or find a float
    counterexample. strategy: "input" (bisect input dimensions; the default for <= 10 inputs),
    "relu" (split unstable ReLUs by a relaxation-gap score; the default otherwise) or "auto".
    Leaves are closed by CROWN / alpha-CROWN (`method`). Each split tries the children of up to
    `lookahead` candidates with plain CROWN and takes the one whose worse child is best. Returns
    a BabResult; its stats hold leaves, domains, splits, depth and producer seconds. Trees stay
    within `max_depth` (the kernel's limit is 400)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    chain = load_chain(graph_path, claim.node, device, dtype)
    spec = spec_of(claim, chain.n_out)
    if strategy == "auto":
        strategy = "input" if chain.n_in <= 10 else "relu"
    if strategy not in ("input", "relu"):
        raise ValueError(f"strategy must be 'auto', 'input' or 'relu', found {strategy!r}")
    stats = {"strategy": strategy, "method": method, "domains": 0, "leaves": 0,
             "input_splits": 0, "relu_splits": 0, "max_depth": 0, "vacuous": 0}

    def finish(status, cert=None, point=None):
        stats["producer_s"] = time.perf_counter() - t0
        return BabResult(status, cert, point, stats)

    def breaks(points: np.ndarray) -> np.ndarray | None:
        """The first float point breaking the claim, if any."""
        with torch.no_grad():
            y = chain.forward(chain.tensor(points)).cpu().numpy()
        hit = spec.is_violation(spec.violated(y))
        return points[int(np.argmax(hit))].reshape(chain.input_shape) if hit.any() else None

    lo0, hi0 = claim_box(claim)
    lo_f0 = np.array([to_float(v) for v in lo0])
    hi_f0 = np.array([to_float(v) for v in hi0])
    root = _Node(lo0, hi0, lo_f0, hi_f0, {}, 0)
    if attack:
        point = pgd_attack(graph_path, claim, steps=20, restarts=2, seed=seed,
                           box=(lo_f0, hi_f0), device=device, dtype=dtype)
        if point is not None:
            return finish("counterexample", point=point)
    counter = itertools.count()
    heap = [(0.0, next(counter), root)]
    while heap:
        if time.perf_counter() > deadline:
            return finish("timeout")
        if stats["domains"] >= max_domains:
            return finish("unknown")
        _, _, node = heapq.heappop(heap)
        stats["domains"] += 1
        stats["max_depth"] = max(stats["max_depth"], node.depth)
        domain = {"lo": node.lo_f, "hi": node.hi_f, "relu": node.phases}
        res, _ = bounds_for_claim(graph_path, claim, method, domain, iterations=iterations,
                                  lr=lr, alpha_init=node.alpha_init, want_scores=True,
                                  chain=chain, tol=tol,
                                  optimize_intermediate=optimize_intermediate)
        node.alpha_init = None
        if res.vacuous or spec.holds(res.lower, tol):
            node.cert = res.certificate()
            stats["leaves"] += 1
            stats["vacuous"] += int(res.vacuous)
            continue
        open_rows = spec.open_rows(res.lower, tol)
        # cheap counterexample candidates: the box centre and the vertices minimising the
        # linear lower bounds of the open rows
        a_in = res.a_input[open_rows].cpu().numpy()
        verts = np.where(a_in > 0, node.lo_f[None, :], node.hi_f[None, :])
        cands = np.concatenate([((node.lo_f + node.hi_f) / 2)[None, :], verts])
        point = breaks(cands)
        if point is None and attack and stats["domains"] % 50 == 0:
            point = pgd_attack(graph_path, claim, steps=20, restarts=1,
                               seed=seed + stats["domains"], box=(node.lo_f, node.hi_f),
                               device=device, dtype=dtype)
        if point is not None:
            return finish("counterexample", point=point)
        if node.depth >= max_depth:  # the kernel refuses deeper split trees
            return finish("unknown")
        children = None
        if strategy == "relu":
            children = _relu_children(chain, spec, node, res, open_rows, lookahead)
        if children is None:
            children = _input_children(chain, spec, node, a_in, lookahead)
        if children is None:
            return finish("unknown")
        stats["input_splits" if node.split["kind"] == "input" else "relu_splits"] += 1
        node.children = children
        gap = float(np.min(res.lower[open_rows] - spec.thr[open_rows]))
        for child in children:
            child.alpha_init = res.alpha_rows or None
            heapq.heappush(heap, (gap, next(counter), child))
    return finish("proved", _assemble(root))


def _try(chain, spec, lo_f, hi_f, phases) -> float:
    """The worse child's margin under plain CROWN (for choosing a split)."""
    res = compute_bounds(chain, lo_f, hi_f, spec.c, "crown", phases)
    return np.inf if res.vacuous else spec.margin(res.lower)


def _input_children(chain, spec, node: _Node, a_in: np.ndarray, lookahead: int) -> list | None:
    """Bisect an input dimension at a dyadic near its midpoint: among the `lookahead` dimensions
    with the largest |coefficient| * width (open rows summed), the one whose worse half has the
    best CROWN margin."""
    width = node.hi_f - node.lo_f
    score = np.abs(a_in).sum(axis=0) * width if a_in.size else width.copy()
    score = score + 1e-12 * width  # ties and zero coefficients: the widest
    cands = []
    for d in np.argsort(-score):
        d = int(d)
        if score[d] <= 0 or len(cands) >= max(1, lookahead):
            break
        m = _dyadic_mid(node.lo[d], node.hi[d])
        if m is not None:
            cands.append((d, m))
    if not cands:
        return None
    best, best_v = cands[0], -np.inf
    if len(cands) > 1:
        for d, m in cands:
            mf = to_float(m)
            lo_f, hi_f = node.lo_f.copy(), node.hi_f.copy()
            hi_f[d] = mf
            v = _try(chain, spec, node.lo_f, hi_f, node.phases)
            lo_f[d] = mf
            v = min(v, _try(chain, spec, lo_f, node.hi_f, node.phases))
            if v > best_v:
                best, best_v = (d, m), v
    d, m = best
    node.split = {"kind": "input", "dim": d,
                  "pieces": [[encode_rational(node.lo[d]), encode_rational(m)],
                             [encode_rational(m), encode_rational(node.hi[d])]]}
    mf = to_float(m)
    out = []
    for lo_d, hi_d, lo_fd, hi_fd in ((node.lo[d], m, node.lo_f[d], mf),
                                      (m, node.hi[d], mf, node.hi_f[d])):
        lo, hi = list(node.lo), list(node.hi)
        lo[d], hi[d] = lo_d, hi_d
        lo_f, hi_f = node.lo_f.copy(), node.hi_f.copy()
        lo_f[d], hi_f[d] = lo_fd, hi_fd
        out.append(_Node(lo, hi, lo_f, hi_f, node.phases, node.depth + 1))
    return out


def _with_phase(phases: dict, nid: str, j: int, phase: str) -> dict:
    out = {key: dict(v) for key, v in phases.items()}
    out.setdefault(nid, {})[j] = phase
    return out


def _relu_children(chain, spec, node: _Node, res, open_rows, lookahead: int) -> list | None:
    """Split an unstable neuron: among the `lookahead` best by relaxation gap on the open rows
    (a BaBSR-like score) and the best by |l * u| / (u - l), the one whose worse child has the
    best CROWN margin (without beta multipliers a child can be worse than its parent, so the
    children are tried). None when no neuron is unstable."""
    cands = []
    for k, gap in res.scores.items():
        if k == 0:  # a relu on the input itself has no splittable pre-activation node
            continue
        r = res.relax[k]
        g = gap[open_rows].sum(dim=0) if len(open_rows) else gap.sum(dim=0)
        width = -r.lo * r.hi / (r.hi - r.lo).clamp(min=1e-30)
        for j in torch.nonzero(r.unstable).reshape(-1).tolist():
            cands.append((float(g[j]), float(width[j]), k, j))
    if not cands:
        return None
    by_gap = sorted(cands, key=lambda c: -c[0])[:max(1, lookahead)]
    by_width = sorted(cands, key=lambda c: -c[1])[:max(1, lookahead // 4)]
    pool = list({(c[2], c[3]): c for c in by_gap + by_width}.values())
    best, best_v = pool[0], -np.inf
    if len(pool) > 1:
        for c in pool:
            nid = chain.ids[c[2]]
            v = min(_try(chain, spec, node.lo_f, node.hi_f, _with_phase(node.phases, nid, c[3], ph))
                    for ph in ("inactive", "active"))
            if v > best_v:
                best, best_v = c, v
    _, _, k, j = best
    nid = chain.ids[k]
    node.split = {"kind": "relu", "node": nid, "index": j}
    return [_Node(node.lo, node.hi, node.lo_f, node.hi_f, _with_phase(node.phases, nid, j, ph),
                  node.depth + 1) for ph in ("inactive", "active")]
