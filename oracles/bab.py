"""Branch and bound (untrusted producer) emitting `split` certificates whose leaves are `crown`
certificates (docs/crown_certificate.md). Input bisection for few inputs, ReLU splitting for wide
ones (leaves with beta multipliers on their split constraints: beta-CROWN); counterexample
candidates are tried along the way in float arithmetic. The kernel re-checks the whole tree
exactly."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flint import fmpq

from kernel_checker.exact import encode_rational
from oracles.bounds_torch import (
    ALPHA_BITS,
    BOUND_BITS,
    DECIDE_TOL,
    BatchChain,
    _relax,
    bounds_for_claim,
    caster,
    claim_box,
    compute_bounds,
    encode_bounds,
    encode_dyadic,
    encode_slopes,
    load_chain,
    spec_of,
    to_float,
)
from oracles.pgd import _slack, pgd_attack, sample_attack


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
    beta_init: dict | None = None  # the parent's multipliers, (position, index) -> [m]
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
                   max_depth: int = 400, beta: bool = True, progress=None) -> BabResult:
    """Prove `claim` (bounds / linear_bound / unsat) by branch and bound, or find a float
    counterexample. strategy: "input" (bisect input dimensions; the default for <= 10 inputs),
    "relu" (split unstable ReLUs by a relaxation-gap score; the default otherwise) or "auto".
    Leaves are closed by CROWN / alpha-CROWN (`method`); under relu splits alpha-CROWN also
    optimises beta multipliers for the split constraints (beta-CROWN, unless `beta` is off),
    warm-started with the slopes from the parent domain. Each split tries the children of up to
    `lookahead` candidates with plain CROWN and takes the one whose worse child is best. Returns
    a BabResult; its stats hold leaves, domains, splits, depth and producer seconds. Trees stay
    within `max_depth` (the kernel's limit is 400). `progress(stats)`, if given, is called once
    per domain taken from the queue (for a live display)."""
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
        if progress is not None:
            progress(stats)
        stats["max_depth"] = max(stats["max_depth"], node.depth)
        domain = {"lo": node.lo_f, "hi": node.hi_f, "relu": node.phases}
        res, _ = bounds_for_claim(graph_path, claim, method, domain, iterations=iterations,
                                  lr=lr, alpha_init=node.alpha_init, want_scores=True,
                                  chain=chain, tol=tol,
                                  optimize_intermediate=optimize_intermediate, beta=beta,
                                  beta_init=node.beta_init)
        node.alpha_init = node.beta_init = None
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
            child.beta_init = res.beta_rows or None
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
        if chain.layers[k].src[0] == 0:  # a relu on the input has no splittable node
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
            nid = chain.ids[chain.layers[c[2]].src[0]]
            v = min(_try(chain, spec, node.lo_f, node.hi_f, _with_phase(node.phases, nid, c[3], ph))
                    for ph in ("inactive", "active"))
            if v > best_v:
                best, best_v = c, v
    _, _, k, j = best
    nid = chain.ids[chain.layers[k].src[0]]  # the relu's input (pre-activation) node
    node.split = {"kind": "relu", "node": nid, "index": j}
    return [_Node(node.lo, node.hi, node.lo_f, node.hi_f, _with_phase(node.phases, nid, j, ph),
                  node.depth + 1) for ph in ("inactive", "active")]


# --------------------------------------------------------------------------------------------
# Batched input-split branch and bound (few inputs, linear / relu chains)


def _breaking_point(chain, spec, points: torch.Tensor) -> np.ndarray | None:
    """The first of the float points [B, n_in] whose outputs break the spec, or None."""
    with torch.no_grad():
        y = chain.forward(points).reshape(points.shape[0], -1).cpu().numpy()
    hit = spec.is_violation(spec.violated(y))
    if not hit.any():
        return None
    return points[int(np.argmax(hit))].cpu().numpy().reshape(chain.input_shape)


def _tree(certs: dict, splits: dict) -> dict:
    """The certificate tree rooted at domain 0 from leaf certificates {id: cert} and splits
    {id: (split, child ids)}, assembled bottom-up without recursion (trees can be deep)."""
    out: dict[int, dict] = {}
    stack = [(0, False)]
    while stack:
        nid, done = stack.pop()
        if nid in certs:
            out[nid] = certs.pop(nid)
            continue
        split, kids = splits[nid]
        if not done:
            stack.append((nid, True))
            stack.extend((kk, False) for kk in kids)
            continue
        out[nid] = {"rule": "split", "split": split, "children": [out.pop(kk) for kk in kids]}
    return out[0]


def _outward_floats(lo: list, hi: list) -> tuple[np.ndarray, np.ndarray]:
    """Float boxes containing the exact box (each bound rounded outward)."""
    lo_f = np.array([float(v) for v in lo])
    hi_f = np.array([float(v) for v in hi])
    for i, (a, b) in enumerate(zip(lo, hi)):
        if fmpq(*lo_f[i].as_integer_ratio()) > a:
            lo_f[i] = np.nextafter(lo_f[i], -np.inf)
        if fmpq(*hi_f[i].as_integer_ratio()) < b:
            hi_f[i] = np.nextafter(hi_f[i], np.inf)
    return lo_f, hi_f


def spec_margins(spec, lower: torch.Tensor, tol: float = DECIDE_TOL) -> torch.Tensor:
    """Per domain (rows of `lower` [B, m]): how far the bounds are from proving the claim, less
    the decision slack (> 0: proved). Unsat: min over polytopes of the best row's gap."""
    thr = torch.as_tensor(spec.thr, dtype=lower.dtype, device=lower.device)
    gap = lower - thr - tol * (1 + thr.abs())
    if spec.kind != "unsat":
        return gap.amin(dim=1)
    out = None
    for a, b in spec.groups:
        g = gap[:, a:b].amax(dim=1)
        out = g if out is None else torch.minimum(out, g)
    return out


def _open_rows_coef(spec, lower: torch.Tensor, a_in: torch.Tensor):
    """([B, n_in], [B, n_in]): summed |coefficients| and summed coefficients at the input of
    the rows still to improve (the best row of each open polytope; failing rows otherwise)."""
    thr = torch.as_tensor(spec.thr, dtype=lower.dtype, device=lower.device)
    gap = lower - thr
    if spec.kind != "unsat":
        w = (gap <= 0).to(lower.dtype)[:, :, None]
        return (a_in.abs() * w).sum(dim=1), (a_in * w).sum(dim=1)
    out = torch.zeros(a_in.shape[0], a_in.shape[2], dtype=lower.dtype, device=lower.device)
    signed = out.clone()
    ar = torch.arange(a_in.shape[0], device=lower.device)
    for a, b in spec.groups:
        g = gap[:, a:b]
        best = g.argmax(dim=1)
        open_ = (g.amax(dim=1) <= 0).to(lower.dtype)[:, None]
        out = out + a_in[ar, a + best].abs() * open_
        signed = signed + a_in[ar, a + best] * open_
    return out, signed


def _leaf_cert(chain, r, i: int, alpha_inter: dict | None = None,
               alpha_final: dict | None = None, row: int | None = None,
               last: tuple | None = None) -> tuple[dict, int]:
    """The `crown` certificate of domain i of a BatchBounds: intermediate entries for the
    neurons CROWN tightened, with the entry's shared lower slopes (alpha_inter) and per-row
    final slopes (alpha_final) when given (else CROWN's defaults: no `alpha`); with `row`, the
    final slopes of that row alone, shared by every row (enough when that row decides the
    claim; smaller for the kernel). `last` (pos, coef, drop): pos is the input of the last
    relu, whose output only the claim node reads, and coef [n] the deciding row's coefficients
    on that output (or None); there an active neuron's upper bound enters nothing, nor, with
    `row`, an unstable neuron's bounds where coef > 0 (its lower line alpha z is given), nor
    the neurons drop [n] (`_prune_last`; or None): left unclaimed. Also returns the number
    of intermediate neurons claimed."""
    entries, count = [], 0
    for pos, use, lb_lo, lb_hi in r.inter:
        idx = torch.nonzero(use[i]).reshape(-1)
        if not len(idx):
            continue
        # an inactive neuron's lower bound enters no relaxation: left unclaimed (null), which
        # spares the kernel a row
        live = lb_hi[i][idx] > 0
        tab = (alpha_inter or {}).get(pos)
        drop_lo = drop_hi = torch.zeros_like(live)
        if last is not None and pos == last[0] and not bool(r.vacuous[i]) and all(
                t.dim() == 2 for t in (tab or {}).values()):
            lo_f, hi_f = r.relax[pos].lo[i][idx], r.relax[pos].hi[i][idx]
            drop_hi = lo_f >= 0
            if last[1] is not None and alpha_final and row is not None:
                drop_lo = (lo_f < 0) & (hi_f > 0) & (last[1][idx] > 0)
                drop_hi = drop_hi | drop_lo
            if len(last) > 2 and last[2] is not None:  # pruned (`_prune_last`)
                drop_lo, drop_hi = drop_lo | last[2][idx], drop_hi | last[2][idx]
        los, his, den = encode_bounds(lb_lo[i][idx], lb_hi[i][idx], BOUND_BITS)
        if tab and pos in r.defaults:  # two entries: sides from default slopes, then alpha's
            lo_d, hi_d = (v[i][idx] for v in r.defaults[pos])
            parts = [(live & lo_d, hi_d, None), (live & ~lo_d, ~hi_d, tab)]
        else:
            parts = [(live, torch.ones_like(live), tab)]
        kept = torch.zeros_like(live)
        for lo_on, hi_on, tb in parts:
            lo_on, hi_on = lo_on & ~drop_lo, hi_on & ~drop_hi
            keep = lo_on | hi_on
            kept |= keep
            if not bool(keep.any()):
                continue
            sub = torch.nonzero(keep).reshape(-1).tolist()
            e = {"node": chain.ids[pos], "indices": idx[sub].tolist(), **den,
                 "lo": [los[j] if lo_on[j] else None for j in sub],
                 "hi": [his[j] if hi_on[j] else None for j in sub]}
            if tb:  # per-row tables: rows e_j (claimed lower bounds), then -e_j
                rows = torch.cat([idx[lb_hi[i][idx] > 0], idx + use.shape[1]])
                e["alpha"] = {chain.layers[k].id: encode_slopes(
                    t[i] if t.dim() == 2 else t[i][rows], ALPHA_BITS) for k, t in tb.items()}
            entries.append(e)
        count += int(kept.sum())
    cert = {"rule": "crown"}
    if entries:
        cert["intermediate"] = entries
    if alpha_final and row is not None:
        cert["alpha"] = {chain.layers[k].id: encode_slopes(t[i][row], ALPHA_BITS)
                         for k, t in alpha_final.items()}
    elif alpha_final:
        cert["alpha"] = {chain.layers[k].id: encode_slopes(t[i], ALPHA_BITS)
                         for k, t in alpha_final.items()}
    return cert, count


PRUNE_TOL = 1e-6  # a pruned leaf's bound must clear the claim by this relative slack


def _prune_last(bc: BatchChain, r, idx: torch.Tensor, box: tuple, c: torch.Tensor, last: int,
                ok, alphas: dict | None = None, rows: torch.Tensor | None = None,
                coef: torch.Tensor | None = None, best: torch.Tensor | None = None
                ) -> torch.Tensor:
    """For the proved domains idx of bounds r over the boxes box (lo, hi [B, n_in]): which
    neurons at the last relu's input (`last`; only the claim node reads its output) may go
    unclaimed, their bounds then the interval replay's, as the kernel's are, with every row's
    bound still proving (`ok(lower)`: [P] bool). The claimed neurons are tried cheapest first
    (|row coefficient| times how much CROWN narrowed them), the longest prefix that still
    proves kept, by bisection over batched backward passes of the claim rows alone: the other
    bounds do not move, as the last relu feeds no other bound. alphas {relu: [B, m, n]}: the
    final slopes (rows [B]: the row whose slopes every row shares, as the certificate gives
    them; coef [P, n]: that row's coefficients on the last relu's output, whose unstable
    neurons with coef > 0 `_leaf_cert` leaves unclaimed in any case; best [B]: the row that
    decides each domain, whose coefficients rank the neurons, else every row's largest).
    Returns drop [P, n] bool."""
    sub = r.take(idx)
    relax = dict(sub.relax)
    l6, u6 = relax[last].lo, relax[last].hi
    use = next((u for p, u, _, _ in sub.inter if p == last), None)
    prev = max((k for k in range(last) if bc.steps[k] is not None and bc.steps[k][0] == "relu"),
               default=None)
    if use is None or prev is None:
        return torch.zeros_like(l6, dtype=torch.bool)
    cur = relax[prev].lo, relax[prev].hi
    for k in range(prev, last):
        cur = bc._ibp_step(k, *cur)
    il, iu = torch.minimum(cur[0], l6), torch.maximum(cur[1], u6)
    if coef is not None:  # (as `_leaf_cert` drops them; the kernel's other rows see that)
        gone = (l6 < 0) & (u6 > 0) & (coef > 0)
        l6, u6, use = torch.where(gone, il, l6), torch.where(gone, iu, u6), use & ~gone
    lam = (c @ bc.steps[last + 1][1]).abs()
    lam = lam[best[idx]] if best is not None else lam.amax(dim=0)
    cost = torch.where(use, lam * ((iu - u6) + (l6 - il)), torch.inf)
    order = torch.argsort(cost, dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    al = None
    if alphas:
        al = {k: (t[idx, rows[idx]] if rows is not None else t[idx]) for k, t in alphas.items()}
    box_lo, box_hi = box[0][idx], box[1][idx]
    lo_n = torch.zeros(len(idx), dtype=torch.long, device=use.device)
    hi_n = use.sum(dim=1)
    while bool((lo_n < hi_n).any()):
        mid = (lo_n + hi_n + 1) // 2
        drop = rank < mid[:, None]
        relax[last] = _relax(torch.where(drop, il, l6), torch.where(drop, iu, u6))
        lower = bc.backward(c, len(bc.steps) - 1, relax, box_lo, box_hi, None, al)[0]
        good = ok(lower)
        lo_n = torch.where(good, mid, lo_n)
        hi_n = torch.where(good, hi_n, mid - 1)
    return (rank < lo_n[:, None]) & use


def prove_input_split(graph_path: str, claim, timeout_s: float = 60.0, *, device=None,
                      dtype=torch.float64, batch: int = 256, lookahead: float = 0.1,
                      fracs: tuple = (0.5,), alpha_iters: int = 6,
                      alpha_lr: float = 0.5, max_domains: int = 2_000_000, attack: bool = True,
                      seed: int = 0, tol: float = DECIDE_TOL, max_depth: int = 400,
                      chain=None, kernel_cost: tuple = (1e-3, 0.6e-4), progress=None,
                      search_dtype=torch.float64, hand_off: int = 0,
                      sample: bool = True, roots: list | None = None,
                      depths: list | None = None, stop=None,
                      soft_max: float = 0.01, dual: bool = True,
                      alpha_intermediate: bool = True, prune: bool = True) -> BabResult:
    """Input-split branch and bound over batches of boxes (few inputs; linear / relu chains).

    Per batch of `batch` domains: IBP, CROWN with IBP intermediate bounds and CROWN with CROWN
    intermediate bounds, all batched. A proved domain becomes the cheapest leaf for the kernel:
    `ibp`, `crown` without intermediate entries, or `crown` with entries only for the neurons
    CROWN tightened (default slopes: no `alpha`), less those at the last relu's input that
    the leaf proves without (`prune`, `_prune_last`). An open domain is cut: among the dimensions
    whose |coefficient| * width on the open rows is at least `lookahead` times the largest, and
    the cut points at `fracs` of the width, the cut maximising the volume-weighted sum of the
    two parts' (clamped) CROWN margins. Before cutting, alpha-CROWN (`alpha_iters` steps;
    slopes shared per intermediate node, per row for the final rows; with
    alpha_intermediate=False the final rows' slopes alone, each step one backward pass) is tried
    on the domain: a success is one leaf instead of a subtree. Domain centres and
    the vertices minimising the open rows' linear bounds, pushed by a few ascent steps, are
    tried as counterexamples. The time budget covers the kernel's check too: it stops
    ("timeout") once the time spent plus an estimate of the kernel's time for the leaves so far
    (kernel_cost: seconds per leaf, per intermediate neuron; the kernel took 47-69 us per
    intermediate neuron besides 1 ms per leaf on this 2-core machine at b61458b (1_1 prop_3,
    2_9 prop_1, 4_9 prop_1 of ACAS Xu), 59-85 us counted without the per-leaf part at
    b05505d; an estimate too high gives up on instances the budget would have held, and since
    `tl verify` stops the kernel's check at the budget, one too low costs nothing but the time
    until then) passes it. `progress(stats)`, if given, is called once per batch (for a live
    display). The alpha-CROWN steps and the
    lookahead's bounds, which only rank choices, run in `search_dtype` (`_search_chain`); every
    bound that decides a domain or enters a certificate is `dtype`'s. float32 made the producer
    about 1.5 times faster on the slowest ACAS Xu instances (1_1 prop_3: 12.0 s to 7.5 s, the
    same leaves give or take 5%), but the kernel's check of these leaves did not get faster, so
    its share of the benchmark's time rose to 22.8%, past the 20% set for it: float64 stays the
    default until the kernel checks input-split leaves faster. The soft maximum of a polytope's
    rows as alpha-CROWN's objective (`soft_max`; the hard maximum moves only the best row's
    slopes) shrank the multi-row ACAS Xu trees: 1_1 prop_3 1,033 -> 945 domains, 1_1 prop_2
    597 -> 559, 1_9 prop_2 303 -> 259; 0.003, 0.02 and 0.05 did worse. The lookahead bounds the
    parts of a cut with their parent's bounds as a hint (valid on the parts; intersected before
    CROWN, so fewer neurons are unstable: cheaper, tighter margins). `dual`: alpha-CROWN's steps
    bound only the neurons the domain's CROWN bounds left unstable, and an alpha leaf's
    intermediate bounds are the tighter of CROWN's with default and with alpha slopes (two
    entries per node for the kernel). Together, on the 72 ACAS Xu instances of props 1-4 and
    networks 1_x, 2_x (`--parallel 2`): 129.7 s -> 97.1 s, the 14 slowest 88.2 s -> 64.5 s; the
    hint alone 114.6 s and 76.7 s.
    For `tl verify --jobs`: `roots`, exact boxes (lo, hi) inside the claim's, start the search
    from those domains (ids 0, 1, ...; at `depths` in the whole tree, for max_depth) instead of
    the claim's box; it stops ("partial") once
    `hand_off` (> 0) domains are open after a batch, or after a batch when `stop()` is true.
    Stopped, or with `roots` or `stop` given, the certificate is the forest so far:
    {"leaves": {id: leaf certificate}, "splits": {id: (split, child ids)}, "boxes": {id: (lo,
    hi) exact}, "open": [ids of open domains]} ("proved": none open). sample=False skips the random
    sampling attack on the whole box first (for domains of a claim whose box had it).
    Returns a BabResult (certificate: a `split` tree, or a single leaf)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    chain = chain or load_chain(graph_path, claim.node, device, dtype)
    bc = BatchChain(chain)
    sc = _search_chain(graph_path, claim, bc, search_dtype)
    spec = spec_of(claim, chain.n_out)
    c = chain.tensor(spec.c)
    to_s = caster(sc.chain.dtype)
    c_s = to_s(c)
    thr_t = torch.as_tensor(spec.thr, dtype=dtype, device=chain.device)
    dev = chain.device

    def margins(lower):
        return spec_margins(spec, lower, tol)

    def objective(lower):
        """What alpha-CROWN maximises: per polytope (unsat) a soft maximum of its rows' gaps
        (T log-sum-exp at T = soft_max, in the outputs' units; 0: the best row's gap), the
        rows' gaps otherwise."""
        gap = lower - thr_t
        if spec.kind != "unsat":
            return gap.clamp(max=0).sum(dim=1)
        if soft_max > 0:
            return sum(soft_max * torch.logsumexp(gap[:, a:b] / soft_max, dim=1)
                       for a, b in spec.groups)
        return sum(gap[:, a:b].amax(dim=1) for a, b in spec.groups)

    stats = {"strategy": "input-batched", "method": "crown", "domains": 0, "leaves": 0,
             "input_splits": 0, "relu_splits": 0, "max_depth": 0, "vacuous": 0,
             "leaf_ibp": 0, "leaf_crown": 0, "leaf_inter": 0, "leaf_alpha": 0,
             "inter_neurons": 0, "lookahead_evals": 0, "alpha_domains": 0}

    def finish(status, cert=None, point=None):
        stats["producer_s"] = time.perf_counter() - t0
        return BabResult(status, cert, point, stats)

    def breaks(points: torch.Tensor) -> np.ndarray | None:
        return _breaking_point(chain, spec, points)

    lo0, hi0 = claim_box(claim)
    lo_f0, hi_f0 = _outward_floats(lo0, hi0)
    n_in = len(lo0)
    if attack and sample:
        point = sample_attack(graph_path, claim, (lo_f0, hi_f0), seed=seed, device=device,
                              dtype=dtype)
        if point is not None:
            return finish("counterexample", point=point)
    c_thr = chain.tensor(spec.thr)

    def local_attack(x, blo, bhi, steps: int = 8):
        """Signed-gradient ascent on the violation from points x [B, n_in], each in its own
        box: a breaking point or None."""
        width = bhi - blo
        for t in range(steps + 1):
            x = x.detach().requires_grad_(True)
            s = _slack(chain.forward(x), c, c_thr, spec, None)
            hit = spec.is_violation(s.detach().cpu().numpy())
            if hit.any():
                return x[int(np.argmax(hit))].detach().cpu().numpy().reshape(chain.input_shape)
            if t == steps:
                return None
            (grad,) = torch.autograd.grad(s.sum(), x)
            with torch.no_grad():
                x = x + width * (0.25 * (1 - t / steps)) * grad.sign()
                x = torch.maximum(torch.minimum(x, bhi), blo)

    def clamped_margins(allo, alhi, hint):
        """CROWN margins of domains, clamped at 0 (proved or empty: 0); `hint`: bounds valid
        on the domains (their parents'), so that CROWN bounds fewer unstable neurons."""
        ms = []
        allo, alhi, hint = to_s(allo), to_s(alhi), to_s(hint)
        for s in range(0, len(allo), batch):
            rr = sc.bounds(allo[s:s + batch], alhi[s:s + batch], c_s, plain=False, hint={
                p: (a[s:s + batch], b[s:s + batch]) for p, (a, b) in hint.items()})
            m_ = margins(rr.lower)
            ms.append(torch.where(rr.vacuous, torch.zeros_like(m_), m_.clamp(max=0)))
        stats["lookahead_evals"] += len(allo)
        return torch.cat(ms)

    def cut_values(olo, ohi, dm, dd, fr, hint):
        """For domains dm cut on dims dd at fractions fr: the parts' clamped CROWN margins,
        weighted by the parts' widths (higher is better); `hint`: the domains' bounds."""
        width = ohi[dm, dd] - olo[dm, dd]
        cut = olo[dm, dd] + fr * width
        ap = torch.arange(len(dm), device=dev)
        h1, l2 = ohi[dm].clone(), olo[dm].clone()
        h1[ap, dd] = cut
        l2[ap, dd] = cut
        ms = clamped_margins(torch.cat([olo[dm], l2]), torch.cat([h1, ohi[dm]]), {
            p: (torch.cat([a[dm], a[dm]]), torch.cat([b[dm], b[dm]])) for p, (a, b) in
            hint.items()})
        return ms[:len(dm)] * fr + ms[len(dm):] * (1 - fr) + 1e-12 * width

    certs: dict[int, dict] = {}  # node id -> leaf certificate
    splits: dict[int, tuple] = {}  # node id -> (split dict, child ids)
    forest = roots is not None or stop is not None  # (hand_off alone: a tree when done)
    keep_boxes = forest or hand_off > 0  # the boxes of every domain, not only the open ones
    roots = [(tuple(lo0), tuple(hi0))] if roots is None else roots
    boxes = dict(enumerate(roots))  # domain id -> exact box
    floats = [_outward_floats(a, b) for a, b in roots]
    lo = torch.as_tensor(np.stack([f[0] for f in floats]), dtype=dtype, device=dev)
    hi = torch.as_tensor(np.stack([f[1] for f in floats]), dtype=dtype, device=dev)
    ids, depth = list(range(len(roots))), list(depths or [0] * len(roots))
    next_id = len(roots)

    def grown(status):
        return finish(status, {"leaves": certs, "splits": splits, "boxes": boxes,
                               "open": list(ids)})

    single = (spec.kind == "unsat" and len(spec.groups) == 1) or len(spec.thr) == 1

    # the last relu's input, when only the claim node (a linear) reads its output, and each
    # spec row's coefficients on that output (exact signs: kept only where clearly positive)
    last = max(bc.inter_pos, default=None)
    if last is not None and last + 2 == len(bc.steps) and (bc.steps[last + 1] or ("",))[0] == "lin":
        lam = c @ bc.steps[last + 1][1]
        lam = torch.where(lam > 1e-9 * lam.abs().amax(dim=1, keepdim=True), lam, 0)
    else:
        last = None

    def prunable(r, idx, box, alphas=None, rows=None) -> dict:
        """{domain index: neurons at `last` to leave unclaimed} (`_prune_last`)."""
        if last is None or not prune or not len(idx):
            return {}
        best = rows if rows is not None or not single else (r.lower - thr_t).argmax(dim=1)
        drop = _prune_last(bc, r, idx, box, c, last, lambda lower: spec_margins(
            spec, lower, max(tol, PRUNE_TOL)) > 0, alphas, rows,
            None if rows is None else lam[rows[idx]], best)
        return dict(zip(idx.tolist(), drop))

    def leaf(nid, r, i, ai=None, af=None, kind="leaf_inter", row=None, drop=None):
        certs[nid], cnt = _leaf_cert(chain, r, i, ai, af, row, None if last is None else (
            last, None if row is None else lam[row], drop))
        stats[kind] += 1
        stats["inter_neurons"] += cnt
        stats["leaves"] += 1

    while ids:
        if (hand_off and len(ids) >= hand_off) or (stop and stats["domains"] and stop()):
            return grown("partial")
        kernel_est = kernel_cost[0] * stats["leaves"] + kernel_cost[1] * stats["inter_neurons"]
        if time.perf_counter() + kernel_est > deadline:
            return finish("timeout")
        if stats["domains"] >= max_domains:
            return finish("unknown")
        k = min(batch, len(ids))
        blo, bhi, bids, bdepth = lo[:k], hi[:k], ids[:k], depth[:k]
        lo, hi, ids, depth = lo[k:], hi[k:], ids[k:], depth[k:]
        bbox = {b: boxes[b] if keep_boxes else boxes.pop(b) for b in bids}
        stats["domains"] += k
        if progress is not None:
            progress(stats)
        r = bc.bounds(blo, bhi, c)
        mg = margins(r.lower)
        proved = (mg > 0) | r.vacuous
        ibp_ok = (margins(r.ibp) > 0) & ~r.vacuous
        plain_ok = (margins(r.plain) > 0) & ~r.vacuous
        pruned = prunable(r, torch.nonzero(proved & ~ibp_ok & ~plain_ok & ~r.vacuous
                                           ).reshape(-1), (blo, bhi))
        for i in torch.nonzero(proved).reshape(-1).tolist():
            if bool(ibp_ok[i]):
                certs[bids[i]] = {"rule": "ibp"}
                stats["leaf_ibp"] += 1
                stats["leaves"] += 1
            elif bool(plain_ok[i]):
                certs[bids[i]] = {"rule": "crown"}
                stats["leaf_crown"] += 1
                stats["leaves"] += 1
            else:
                leaf(bids[i], r, i, drop=pruned.get(i))
            stats["vacuous"] += int(bool(r.vacuous[i]))
        open_ = torch.nonzero(~proved).reshape(-1)
        if not len(open_):
            continue
        olo, ohi = blo[open_], bhi[open_]
        coef, signed = _open_rows_coef(spec, r.lower[open_], r.a_input[open_])
        verts = torch.where(signed > 0, olo, ohi)
        if attack:
            point = local_attack(torch.cat([(olo + ohi) / 2, verts]), olo.repeat(2, 1),
                                 ohi.repeat(2, 1))
        else:
            point = breaks(torch.cat([(olo + ohi) / 2, verts]))
        if point is not None:
            return finish("counterexample", point=point)
        if alpha_iters > 0:
            sel = torch.arange(len(open_), device=dev)
            stats["alpha_domains"] += len(sel)
            ra, ri, rf = bc.optimise(olo[sel], ohi[sel], c, objective, margins,
                                     iterations=alpha_iters, lr=alpha_lr,
                                     base=r.take(open_[sel]), search=sc, dual=dual,
                                     intermediate=alpha_intermediate)
            good = (margins(ra.lower) > 0) | ra.vacuous
            # one polytope (or one row): the best row's final slopes, shared, decide it
            rows = (ra.lower - thr_t).argmax(dim=1) if single else None
            pruned = prunable(ra, torch.nonzero(good & ~ra.vacuous).reshape(-1),
                              (olo[sel], ohi[sel]), rf, rows)
            for j in torch.nonzero(good).reshape(-1).tolist():
                leaf(bids[int(open_[sel[j]])], ra, j, ri, rf, "leaf_alpha",
                     None if rows is None or bool(ra.vacuous[j]) else int(rows[j]),
                     pruned.get(j))
            keep = torch.ones(len(open_), dtype=torch.bool, device=dev)
            keep[sel[good]] = False
            if not bool(keep.any()):
                continue
            open_, olo, ohi, coef = open_[keep], olo[keep], ohi[keep], coef[keep]
            # the lookahead's hint: the domains' bounds, alpha-CROWN's and CROWN's
            hint = {p: (torch.maximum(x.lo[keep], r.relax[p].lo[open_]),
                        torch.minimum(x.hi[keep], r.relax[p].hi[open_]))
                    for p, x in ra.relax.items()}
        else:
            hint = {p: (x.lo[open_], x.hi[open_]) for p, x in r.relax.items()}
        nd = len(open_)
        width = ohi - olo
        tiny = width <= 1e-12 * (1 + olo.abs())
        score = torch.where(tiny, torch.full_like(width, -1.0), coef * width + 1e-30 * width)
        if bool((score.amax(dim=1) < 0).any()):
            return finish("unknown")  # a box too thin to cut
        choice = score.argmax(dim=1)
        frac_pick = torch.full((nd,), 0.5, dtype=dtype, device=dev)
        if lookahead > 0:
            # stage 1: halve each candidate dimension; stage 2: other cut points of the best
            cand = (score >= lookahead * score.amax(dim=1, keepdim=True)) & ~tiny
            pairs = torch.nonzero(cand)  # (domain, dim)
            if len(pairs) > nd:
                half = torch.full((len(pairs),), 0.5, dtype=dtype, device=dev)
                val = cut_values(olo, ohi, pairs[:, 0], pairs[:, 1], half, hint)
                table = torch.full((nd, n_in), -torch.inf, dtype=dtype, device=dev)
                table[pairs[:, 0], pairs[:, 1]] = val
                choice = table.argmax(dim=1)
                best_v = table.amax(dim=1)
            else:
                best_v = None
            other = [f for f in fracs if f != 0.5]
            if other:
                if best_v is None:  # one candidate dimension
                    top = choice[:, None]
                    best_v = cut_values(olo, ohi, torch.arange(nd, device=dev), choice,
                                        frac_pick, hint)
                else:
                    top = table.topk(min(2, n_in), dim=1).indices
                    top = torch.where(torch.isfinite(table.gather(1, top)), top, choice[:, None])
                nt, no = top.shape[1], len(other)
                dm = torch.arange(nd, device=dev).repeat(nt * no)
                dd = top.T.reshape(-1).repeat(no)
                fr = torch.tensor(other, dtype=dtype, device=dev).repeat_interleave(nd * nt)
                val = cut_values(olo, ohi, dm, dd, fr, hint).reshape(no * nt, nd)
                alt, which = val.max(dim=0)
                better = alt > best_v
                choice = torch.where(better, dd.reshape(no * nt, nd)[which,
                                     torch.arange(nd, device=dev)], choice)
                frac_pick = torch.where(better, fr.reshape(no * nt, nd)[which,
                                        torch.arange(nd, device=dev)], frac_pick)
        ar = torch.arange(nd, device=dev)
        cuts = (olo + frac_pick[:, None] * width)[ar, choice]
        new_ids, new_depth = [], []
        for j in range(nd):
            i = int(open_[j])
            d = int(choice[j])
            blo_e, bhi_e = bbox[bids[i]]
            ea, eb = blo_e[d], bhi_e[d]
            em = fmpq(*float(cuts[j]).as_integer_ratio())
            if not ea < em < eb or bdepth[i] + 1 > max_depth:
                return finish("unknown")
            c1, c2 = next_id, next_id + 1
            next_id += 2
            splits[bids[i]] = ({"kind": "input", "dim": d,
                                "pieces": [[encode_rational(ea), encode_rational(em)],
                                           [encode_rational(em), encode_rational(eb)]]},
                               (c1, c2))
            new_ids += [c1, c2]
            new_depth += [bdepth[i] + 1] * 2
            boxes[c1] = (blo_e, bhi_e[:d] + (em,) + bhi_e[d + 1:])
            boxes[c2] = (blo_e[:d] + (em,) + blo_e[d + 1:], bhi_e)
            stats["input_splits"] += 1
            stats["max_depth"] = max(stats["max_depth"], bdepth[i] + 1)
        h1, l2 = ohi.clone(), olo.clone()
        h1[ar, choice] = cuts
        l2[ar, choice] = cuts
        kids_lo = torch.stack([olo, l2], dim=1).reshape(-1, n_in)
        kids_hi = torch.stack([h1, ohi], dim=1).reshape(-1, n_in)
        lo, hi = torch.cat([kids_lo, lo]), torch.cat([kids_hi, hi])
        ids, depth = new_ids + ids, new_depth + depth
    if forest:
        return grown("proved")
    if 0 in certs:
        return finish("proved", certs[0])
    return finish("proved", _tree(certs, splits))


# --------------------------------------------------------------------------------------------
# Batched relu-split branch and bound (many inputs, linear / relu chains; beta-CROWN leaves)


def _relu_objective(spec, lower: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """What the slopes and multipliers maximise, per domain: the rows' gaps (unsat: each
    polytope's best row), each capped at 0 so proved rows stop pulling."""
    gap = lower - thr
    if spec.kind != "unsat":
        return gap.clamp(max=0).sum(dim=1)
    return sum(gap[:, a:b].amax(dim=1).clamp(max=0) for a, b in spec.groups)


def _beta_cert(chain, phases: dict, betas: dict, i: int) -> list:
    """Certificate `beta` entries of domain i: the multipliers of its split constraints (all
    rows), leaving out constraints whose multipliers are all 0."""
    out = []
    for pos, v in betas.items():
        for j in torch.nonzero(phases[pos][i]).reshape(-1).tolist():
            col = v[i, :, j]
            if bool((col > 0).any()):
                out.append({"node": chain.ids[pos], "index": j,
                            "values": encode_dyadic(col, ALPHA_BITS)})
    return out


def _settle_leaves(chain, r, ai, af, bt, ph, idx, take, certs, stats) -> None:
    """Leaf certificates of the proved or empty domains idx of a batch's bounds r (slopes ai,
    af, multipliers bt, phases ph); take maps batch rows to node ids."""
    for i in idx.tolist():
        nid = take[i]
        if bool(r.vacuous[i]):
            certs[nid], _ = _leaf_cert(chain, r, i, ai)
            stats["vacuous"] += 1
        else:
            certs[nid], _ = _leaf_cert(chain, r, i, ai, af)
            beta = _beta_cert(chain, ph, bt, i)
            if beta:
                certs[nid]["beta"] = beta
        stats["leaves"] += 1


def _search_chain(graph_path: str, claim, bc: BatchChain, dtype) -> BatchChain:
    """The BatchChain the searches' bounds run on: `bc` itself, or its chain in `dtype`.
    float32 halves the memory the batched products stream and steps about 1.4-1.6 times faster
    than float64 on the 2-core CPU machine (ACAS Xu input splits, MNIST-FC relu splits); its
    bounds only rank slopes and split choices, so a rounding error there costs tightness, never
    soundness."""
    if dtype == bc.chain.dtype:
        return bc
    return BatchChain(load_chain(graph_path, claim.node, bc.chain.device, dtype))


def _lookahead_choice(bc, c, margins, score, choice, lookahead, ks, offsets, split_pos, ph,
                      open_, ai, af, bt, lo_r, hi_r, batch, fixed=None):
    """Among each open domain's `lookahead` best-scored neurons, the one whose worse child has
    the best margin: the children bounded (intermediate bounds recomputed) with the parent's
    slopes and multipliers (0 on the new constraint). `bc` may be the search chain: the other
    tensors are taken to its float type."""
    cast = caster(bc.chain.dtype)
    c, ai, af, bt, lo_r, hi_r, fixed = cast((c, ai, af, bt, lo_r, hi_r, fixed))
    top = score.topk(min(lookahead, score.shape[1]), dim=1)
    cand = torch.where(top.values >= 0, top.indices, choice[:, None])  # [d, K]
    nd, kk = cand.shape
    flat = cand.reshape(-1)
    dom = open_.repeat_interleave(kk)  # batch rows of the parent domains
    layer = torch.as_tensor(np.searchsorted(offsets, flat.cpu().numpy(), side="right") - 1,
                            device=flat.device)
    vals = []
    for s in (-1, 1):
        kph = {pos: v[dom].clone() for pos, v in ph.items()}
        for li, k in enumerate(ks):
            sel = torch.nonzero(layer == li).reshape(-1)
            if len(sel):
                kph[split_pos[k]][sel, flat[sel] - int(offsets[li])] = s
        out = []
        for a in range(0, len(dom), 4 * batch):
            b = slice(a, a + 4 * batch)
            d = dom[b]
            nb = len(d)
            r = bc.bounds(lo_r.expand(nb, -1), hi_r.expand(nb, -1), c, plain=False,
                          alpha_inter={pos: {k: t[d] for k, t in tab.items()}
                                       for pos, tab in ai.items()},
                          alpha_final={k: t[d] for k, t in af.items()},
                          phases={pos: v[b] for pos, v in kph.items()},
                          beta_final={pos: t[d] for pos, t in bt.items()}, fixed=fixed)
            mg = margins(r.lower)
            out.append(torch.where(r.vacuous, torch.full_like(mg, torch.inf), mg))
        vals.append(torch.cat(out))
    worse = torch.minimum(vals[0], vals[1]).reshape(nd, kk)
    return cand[torch.arange(nd, device=cand.device), worse.argmax(dim=1)]


def prove_relu_batched(graph_path: str, claim, timeout_s: float = 60.0, *, device=None,
                       dtype=torch.float64, batch: int = 64, iterations: int = 20,
                       lr: float = 0.1, beta_lr: float = 0.05, root_iterations: int = 40,
                       max_domains: int = 2_000_000, seed: int = 0, attack: bool = True,
                       tol: float = DECIDE_TOL, max_depth: int = 400, chain=None,
                       kernel_cost: float = 0.0, lookahead: int = 48,
                       per_row_inter: bool = True, fix_inter: bool = False,
                       progress=None, search_dtype=torch.float32) -> BabResult:
    """ReLU-split branch and bound over batches of domains (beta-CROWN, Wang et al. 2021; as
    alpha-beta-CROWN batches it), for linear / relu chains. Per batch (the `batch` domains
    with the worst margins, stacked with their phase constraints): an exact pass with the
    slopes and multipliers inherited from the parent (a domain it proves is a leaf), then
    `BatchChain.optimise` on the others: the lower slopes of the intermediate bounds (one list
    per row with `per_row_inter`, else shared per node), per-row slopes of the final rows and
    one multiplier per final row and split constraint, by projected Adam (`iterations` steps,
    warm-started from the parent; the root gets `root_iterations`), rounded (slopes to
    multiples of 2^-16, multipliers down to them) and replayed exactly as the kernel does. A
    proved or empty domain becomes a `crown` leaf with its intermediate entries, slopes and
    multipliers; an open one is split on an unstable neuron: among its `lookahead` best by
    relaxation gap on the open rows (BaBSR-like), the one whose worse child bounds best with
    the parent's slopes (1: the best gap; 48 by default: on MNIST-FC 256x2 prop_3 at eps 0.03,
    its hardest polytope alone, 8 candidates took 25,909 domains, 16 took 1,125, 32 took 521 and
    64 took 523; on prop_1 at eps 0.03, its nine polytopes one by one, 32 took 10,099 domains,
    48 took 6,141, 64 and 96 took 6,151). The vertices minimising the open rows' linear
    bounds and the box centre are tried as counterexamples. A batch is not started when the
    previous one's time plus `kernel_cost` seconds per leaf (the kernel's check) would pass
    the budget. With `fix_inter` the intermediate bounds are the root's (alpha-CROWN with
    `root_iterations` steps), certified once by the root split's `intermediate` entries, which
    the kernel hands down to every leaf (as alpha-beta-CROWN keeps them fixed in its branch and
    bound): a domain optimises only its final rows' slopes and multipliers, and its leaf
    certificate has no intermediate entries. `progress(stats)`, if given, is called once per
    batch. The optimisation steps and the lookahead's bounds, which only rank choices, run in
    `search_dtype` (`_search_chain`); every bound that decides a domain or enters a
    certificate is `dtype`'s. Returns a BabResult (certificate: a `split` tree of relu splits,
    or one leaf)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    chain = chain or load_chain(graph_path, claim.node, device, dtype)
    bc = BatchChain(chain)
    sc = _search_chain(graph_path, claim, bc, search_dtype)
    spec = spec_of(claim, chain.n_out)
    dev = chain.device
    c = chain.tensor(spec.c)
    m = c.shape[0]
    thr = torch.as_tensor(spec.thr, dtype=dtype, device=dev)
    n = len(chain.layers)
    stats = {"strategy": "relu-batched", "method": "beta", "domains": 0, "leaves": 0,
             "input_splits": 0, "relu_splits": 0, "max_depth": 0, "vacuous": 0, "batches": 0}

    def finish(status, cert=None, point=None):
        stats["producer_s"] = time.perf_counter() - t0
        return BabResult(status, cert, point, stats)

    def margins(lower):
        return spec_margins(spec, lower, tol)

    def breaks(points: torch.Tensor) -> np.ndarray | None:
        return _breaking_point(chain, spec, points)

    lo0, hi0 = claim_box(claim)
    lo_f0, hi_f0 = _outward_floats(lo0, hi0)
    if attack:
        point = pgd_attack(graph_path, claim, steps=20, restarts=2, seed=seed,
                           box=(lo_f0, hi_f0), device=device, dtype=dtype)
        if point is not None:
            return finish("counterexample", point=point)
    lo_r = torch.as_tensor(lo_f0, dtype=dtype, device=dev)[None]
    hi_r = torch.as_tensor(hi_f0, dtype=dtype, device=dev)[None]
    # splittable relus: k -> position of its input (pre-activation) node
    split_pos = {k: chain.layers[k].src[0] for k in chain.relus if chain.layers[k].src[0] != 0}
    widths = {pos: math.prod(chain.layers[pos - 1].out_shape) for pos in split_pos.values()}

    def objective(lower):
        return _relu_objective(spec, lower, thr)

    def vertex_attack(a_in):
        """The box centre and, per domain and row of the input coefficients a_in [B, m, n_in]
        (every domain has the root's box), the vertex minimising the row's linear bound."""
        return breaks(torch.cat([(lo_r + hi_r) / 2, torch.where(
            a_in > 0, lo_r, hi_r).reshape(-1, lo_r.shape[1])]))

    # the root's vertices under CROWN, then under alpha-CROWN (cheap counterexamples first)
    point = vertex_attack(bc.bounds(lo_r, hi_r, c, plain=False).a_input) if attack else None
    if point is not None:
        return finish("counterexample", point=point)
    r0, ai0, af0 = bc.optimise(lo_r, hi_r, c, objective, margins, iterations=root_iterations,
                               lr=0.25, per_row_inter=per_row_inter, search=sc)
    point = vertex_attack(r0.a_input) if attack and not bool(margins(r0.lower)[0] > 0) else None
    if point is not None:
        return finish("counterexample", point=point)
    if bool(r0.vacuous[0]) or bool(margins(r0.lower)[0] > 0):
        cert, _ = _leaf_cert(chain, r0, 0, ai0, af0)
        stats["leaves"] = stats["domains"] = 1
        return finish("proved", cert)
    fixed, root_inter = None, None
    if fix_inter:
        fixed = {pos: (r0.relax[pos].lo[:1], r0.relax[pos].hi[:1]) for pos in bc.inter_pos}
        root_inter = _leaf_cert(chain, r0, 0, ai0)[0].get("intermediate")
        ai0 = {}
    # a pending domain: (phases {pos: int8 [n]}, final slopes {k: [m, n_k]}, multipliers
    # {pos: [m, n]}, intermediate slopes {pos: {k: [2 n, n_k] or [n_k]}}, depth)
    pending: dict[int, tuple] = {0: ({pos: torch.zeros(w, dtype=torch.int8, device=dev)
                                      for pos, w in widths.items()},
                                     {k: t[0] for k, t in af0.items()},
                                     {pos: torch.zeros((m, w), dtype=dtype, device=dev)
                                      for pos, w in widths.items()},
                                     {pos: {k: t[0] for k, t in tab.items()}
                                      for pos, tab in ai0.items()}, 0)}
    heap = [(float(margins(r0.lower)[0]), 0)]
    certs: dict[int, dict] = {}
    splits: dict[int, tuple] = {}
    next_id = 1
    last = 0.0  # the previous batch's seconds: a batch that cannot finish is not started
    while heap:
        now = time.perf_counter()
        if now + last + kernel_cost * stats["leaves"] > deadline:
            return finish("timeout")
        if stats["domains"] >= max_domains:
            return finish("unknown")
        take = [heapq.heappop(heap)[1] for _ in range(min(batch, len(heap)))]
        doms = [pending.pop(i) for i in take]
        bn = len(take)
        stats["domains"] += bn
        stats["batches"] += 1
        if progress is not None:
            progress(stats)
        ph = {pos: torch.stack([d[0][pos] for d in doms]) for pos in widths}
        af = {k: torch.stack([d[1][k] for d in doms]) for k in af0}
        bt = {pos: torch.stack([d[2][pos] for d in doms]) for pos in widths}
        ai = {pos: {k: torch.stack([d[3][pos][k] for d in doms]) for k in tab}
              for pos, tab in ai0.items()}
        lo, hi = lo_r.expand(bn, -1), hi_r.expand(bn, -1)
        r = bc.bounds(lo, hi, c, plain=False, alpha_inter=ai, alpha_final=af, phases=ph,
                      beta_final=bt, fixed=fixed)
        live = torch.nonzero(~r.vacuous & (margins(r.lower) <= 0)).reshape(-1)
        if iterations > 0 and len(live):
            # every slope and the final rows' multipliers, warm-started from the parent; the
            # other domains are leaves already
            ro, rio, rfo = bc.optimise(
                lo_r.expand(len(live), -1), hi_r.expand(len(live), -1), c, objective, margins,
                iterations, lr, base=r.take(live),
                phases={pos: v[live] for pos, v in ph.items()},
                init_inter={pos: {k: t[live] for k, t in tab.items()} for pos, tab in ai.items()},
                init_final={k: t[live] for k, t in af.items()},
                init_beta={pos: t[live] for pos, t in bt.items()}, beta_lr=beta_lr,
                fixed=fixed, search=sc)
            _settle_leaves(chain, r, ai, af, bt, ph, torch.nonzero(
                r.vacuous | (margins(r.lower) > 0)).reshape(-1), take, certs, stats)
            r, ai, af, bt = ro, rio, rfo, ro.betas
            ph = {pos: v[live] for pos, v in ph.items()}
            take = [take[i] for i in live.tolist()]
            doms = [doms[i] for i in live.tolist()]
            lo, hi = lo_r.expand(len(live), -1), hi_r.expand(len(live), -1)
        with torch.no_grad():
            record: dict = {}
            lower, a_in, _ = bc.backward(c, n - 1, r.relax, lo, hi, None, af,
                                         bc.signed_betas(ph, bt), record=record)
        mg = margins(lower)
        proved = r.vacuous | (mg > 0)
        _settle_leaves(chain, r, ai, af, bt, ph, torch.nonzero(proved).reshape(-1), take,
                       certs, stats)
        open_ = torch.nonzero(~proved).reshape(-1)
        if not len(open_):
            continue
        point = vertex_attack(a_in[open_])
        if point is not None:
            return finish("counterexample", point=point)
        # split scores: relaxation gaps on the open rows (each open polytope's best row)
        gap = lower[open_] - thr
        if spec.kind != "unsat":
            wrow = (gap <= 0).to(dtype)
        else:
            wrow = torch.zeros_like(gap)
            for a, b in spec.groups:
                g = gap[:, a:b]
                best_row = g.argmax(dim=1)
                wrow[torch.arange(len(open_), device=dev), a + best_row] = \
                    (g.amax(dim=1) <= 0).to(dtype)
        ks = sorted(split_pos)
        if not ks:
            return finish("unknown")
        score = torch.cat([(record[k][open_] * wrow[:, :, None]).sum(dim=1)
                           + 1e-12 * r.relax[k].unstable[open_] for k in ks], dim=1)
        uns = torch.cat([r.relax[k].unstable[open_] > 0 for k in ks], dim=1)
        score = torch.where(uns, score, torch.full_like(score, -1.0))
        offsets = np.cumsum([0] + [widths[split_pos[k]] for k in ks])
        choice = score.argmax(dim=1)
        if lookahead > 1:
            choice = _lookahead_choice(sc, c, margins, score, choice, lookahead, ks, offsets,
                                       split_pos, ph, open_, ai, af, bt, lo_r, hi_r, batch,
                                       fixed)
        choice = choice.tolist()
        for t, i in enumerate(open_.tolist()):
            if score[t, choice[t]] < 0:
                return finish("unknown")  # nothing left to split
            li = int(np.searchsorted(offsets, choice[t], side="right") - 1)
            k, j = ks[li], choice[t] - int(offsets[li])
            pos = split_pos[k]
            phases, depth = doms[i][0], doms[i][4]
            if depth + 1 > max_depth:
                return finish("unknown")
            kids = (next_id, next_id + 1)
            next_id += 2
            splits[take[i]] = ({"kind": "relu", "node": chain.ids[pos], "index": j}, kids)
            # copies (not views of the batch's tensors, which would stay alive), shared by
            # both children
            warm = ({q: t[i].clone() for q, t in af.items()},
                    {q: t[i].clone() for q, t in bt.items()},
                    {q: {kk: t[i].clone() for kk, t in tab.items()} for q, tab in ai.items()})
            for kid, s in zip(kids, (-1, 1)):
                kph = {p: v.clone() for p, v in phases.items()}
                kph[pos][j] = s
                pending[kid] = (kph, *warm, depth + 1)
                heapq.heappush(heap, (float(mg[i]), kid))
            stats["relu_splits"] += 1
            stats["max_depth"] = max(stats["max_depth"], depth + 1)
        last = time.perf_counter() - now
    tree = _tree(certs, splits)
    if root_inter and tree["rule"] == "split":
        tree["intermediate"] = root_inter
    return finish("proved", tree)
