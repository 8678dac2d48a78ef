"""`tl verify MODEL PROP.vnnlib`: decide a VNN-LIB property on an ONNX (or tl.graph.v1) model,
and answer only what the kernel checked: `unsat` when the kernel derived Unsat from the
certificate (bundle written, re-checkable with `tl check`), `sat` when the kernel checked the
counterexample exactly. Producers (attacks, IBP/CROWN/alpha-CROWN, branch and bound) only
propose."""

import contextlib
import dataclasses
import decimal
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from flint import fmpq

import kernel_checker
from kernel_checker import inference
from kernel_checker import pool as kernel_pool
from kernel_checker.claims import Box, Claim
from kernel_checker.ops import OPS
from kernel_checker.tensor import numel
from stdlib.vnnlib import VnnlibError, read_vnnlib
from tl_dsl import claims as dsl_claims
from tl_dsl import proof, workers


@dataclass
class Decision:
    status: str  # unsat | sat | unknown | timeout
    certificate: dict | None = None
    point: np.ndarray | None = None
    producer_s: float = 0.0
    leaves: int = 0
    method: str = ""
    notes: list = field(default_factory=list)
    theorem: kernel_checker.Theorem | None = None  # derived here as the parts came (--jobs)
    kernel_s: float = 0.0  # this process's time deriving `theorem`


def load_model(model: str, workdir: str) -> str:
    """The tl.graph.v1 path for an ONNX file (imported into workdir) or a graph.json."""
    if model.endswith(".onnx"):
        from oracles.onnx_import import import_onnx

        return import_onnx(model, workdir, check=False).graph_path
    return model


def region_claim(graph: kernel_checker.Graph, region) -> Claim:
    node = graph.outputs[0]
    return Claim("unsat", graph.sha256, Box(region.lo, region.hi), node, unsafe=region.unsafe)


def produce(graph_path: str, claim_doc: dict, budget_s: float, seed: int = 0,
            progress=None, hand_off: int = 0, sample: bool = True) -> Decision:
    """Propose: an attack point, or a certificate (ibp / crown / alpha / branch and bound).
    Runs in a worker process with --jobs, so it takes and returns plain data. Few-input linear /
    relu chains (ACAS Xu-like) go straight to batched input-split branch and bound, which tries
    IBP and CROWN on the whole box first and attacks along the way; other nets try an attack,
    IBP, CROWN and alpha-CROWN on the whole box, then branch and bound: batched relu splits
    with the root's intermediate bounds for linear / relu chains (one tree per polytope when the
    unsafe set is a union), else one domain at a time.
    `progress(stats)` receives the branch and bound's counts as it goes (in this process
    only). The budget counts from the call: imports and loading the model are in it.
    hand_off > 0: input-split branch and bound stops once that many domains are open, a
    "partial" Decision whose certificate is its tree so far (`prove_input_split`); the other
    routes return a "partial" Decision without one at once. sample=False: no random sampling
    attack on the whole box before input-split branch and bound (a hand-off's open domain)."""
    t0 = time.perf_counter()
    import torch

    from oracles.bab import prove_input_split, prove_relu_batched, prove_with_bab
    from oracles.bounds_torch import BatchChain

    torch.set_num_threads(1)
    claim = kernel_checker.parse_claim(claim_doc)
    chain, why = _chain(graph_path, claim)
    if chain is not None and chain.n_in <= INPUT_SPLIT_MAX_INPUTS and BatchChain.supports(chain):
        res = prove_input_split(graph_path, claim, budget_s - (time.perf_counter() - t0),
                                seed=seed, chain=chain, progress=progress, hand_off=hand_off,
                                sample=sample)
        if res.status == "partial":
            return Decision("partial", res.certificate, producer_s=time.perf_counter() - t0,
                            leaves=res.stats["leaves"], method="input-split")
        return _decision(res, time.perf_counter() - t0, "input-split")
    if hand_off:
        return Decision("partial")
    first = _whole(graph_path, claim, chain, why, t0, seed)
    if isinstance(first, Decision):
        return first
    spec, cert, lows = first
    left = budget_s - (time.perf_counter() - t0)
    if left <= 0:
        return Decision("timeout", producer_s=time.perf_counter() - t0)
    if BatchChain.supports(chain):
        union = claim.kind == "unsat" and len(claim.unsafe) > 1
        res = prove_relu_batched(graph_path, claim, left * JOINT_SHARE if union else left,
                                 seed=seed, chain=chain, fix_inter=True,
                                 kernel_cost=leaf_kernel_s(len(spec.c)), progress=progress)
        if union and res.status == "timeout":  # hard: one tree per polytope, the rest of the time
            d = by_polytope(graph_path, claim, t0 + budget_s, chain, (cert, lows), seed,
                            progress)
            d.producer_s, d.method = time.perf_counter() - t0, "relu-split, then by polytope"
            return d
        return _decision(res, time.perf_counter() - t0, "relu-split")
    res = prove_with_bab(graph_path, claim, left, method="alpha", seed=seed, progress=progress)
    return _decision(res, time.perf_counter() - t0, "bab")


def _chain(graph_path: str, claim: Claim) -> tuple:
    """(the claim node's chain for bound propagation, ""), or (None, why) for a graph with an
    op bound propagation lacks (attacks, then the kernel's interval replay alone)."""
    from oracles.bounds_torch import load_chain

    try:
        return load_chain(graph_path, claim.node), ""
    except ValueError as e:
        return None, str(e)


def _whole(graph_path: str, claim: Claim, chain, why: str, t0: float, seed: int):
    """The cheap stages on the whole claim: a PGD attack (sampling too where bound propagation
    cannot take the graph, then the kernel's interval replay alone), IBP, CROWN, alpha-CROWN.
    Returns the Decision of the first that decides, else (spec, the alpha-CROWN certificate, its
    float lower bounds)."""
    from oracles.bounds_torch import crown_certificate, ibp_bounds, spec_of
    from oracles.pgd import pgd_attack, sample_attack

    point = pgd_attack(graph_path, claim, steps=40, restarts=4, seed=seed)
    if point is None and chain is None:
        point = sample_attack(graph_path, claim, seed=seed)
    if point is not None:
        return Decision("sat", point=np.asarray(point, dtype=np.float64).reshape(-1),
                        producer_s=time.perf_counter() - t0, method="attack")
    if chain is None:
        return Decision("unsat", {"rule": "ibp"}, producer_s=time.perf_counter() - t0,
                        method="ibp", notes=[f"bound propagation unavailable ({why}): tried the "
                                             "kernel's interval replay alone"])
    spec = spec_of(claim, chain.n_out)
    if spec.holds(ibp_bounds(graph_path, claim), 1e-6):
        return Decision("unsat", {"rule": "ibp"}, producer_s=time.perf_counter() - t0,
                        method="ibp")
    for method in ("crown", "alpha"):
        cert, lows = crown_certificate(graph_path, claim, method, chain=chain)
        if spec.holds(lows):
            return Decision("unsat", cert, producer_s=time.perf_counter() - t0, method=method,
                            leaves=1)
    return spec, cert, lows


def leaf_kernel_s(rows: int) -> float:
    """The kernel's time per relu-split leaf without intermediate entries, reserved by the
    producer: on MNIST-FC 256x2 on this 2-core machine, 21 ms with 9 spec rows and 5.4 ms with
    one (prop_3 at eps 0.03 by polytope: 83 s for 15,402 leaves), with some margin; since
    a184140 about 4.5 ms with one (prop_1 at eps 0.03: 23 s for 5,054 leaves), since 51bf36a
    about 2.8 ms (14 s); kept as it was, as a margin."""
    return 0.0045 + 0.0022 * rows


# the share of the budget a union's relu-split branch and bound runs on the whole claim before
# it turns to one tree per polytope
JOINT_SHARE = 0.05


def by_polytope(graph_path: str, claim: Claim, deadline: float, chain, root: tuple,
                seed: int = 0, progress=None) -> Decision:
    """Relu-split branch and bound for each polytope of the unsafe union on its own (as
    alpha-beta-CROWN runs one per target label), by `deadline` (time.perf_counter()): a tree
    bounds one row instead of all, and splits only where that polytope needs them. The
    kernel's `polytope` split joins the trees. A polytope the alpha-CROWN certificate of the
    whole claim already excludes (`root`: that certificate and its lower bounds) takes it with
    its own rows' slopes. The others go in order of their margins there, worst first, where a
    counterexample is likeliest; stops at the first polytope not proved (its counterexample,
    timeout or unknown). A tree shares its splits with no other polytope, so on claims a joint
    tree proves in a few seconds this is slower (MNIST-FC prop_5 at eps 0.03: 168 leaves and
    about 5 s producing, against 73 leaves and 2.2 s jointly); on the hard ones it is faster
    (prop_1 at eps 0.03: about 58 s producing for its nine trees, while one joint tree was
    still open after 200 s)."""
    from oracles.bab import prove_relu_batched
    from oracles.bounds_torch import spec_of

    t0 = time.perf_counter()
    spec, (whole, lows) = spec_of(claim, chain.n_out), root
    children, leaves, reserved = {}, 0, 0.0
    for i, (a, b) in enumerate(spec.groups):
        if spec.row_ok(lows)[a:b].any():
            children[i] = _rows_of(whole, a, b)
            leaves += 1
    for i in np.argsort(spec.polytope_margins(lows), kind="stable").tolist():
        if i in children:
            continue
        poly = claim.unsafe[i]
        sub = dataclasses.replace(claim, unsafe=(poly,))
        left = deadline - time.perf_counter() - reserved
        if left <= 0:
            return Decision("timeout", producer_s=time.perf_counter() - t0, leaves=leaves)
        cost = leaf_kernel_s(len(poly.b))
        show = progress and (lambda st, i=i: progress(
            {**st, "strategy": f"polytope {i + 1} of {len(claim.unsafe)}"}))
        res = prove_relu_batched(graph_path, sub, left, seed=seed, chain=chain, fix_inter=True,
                                 kernel_cost=cost, progress=show)
        leaves += res.stats.get("leaves", 0)
        reserved += cost * res.stats.get("leaves", 0)
        if res.status != "proved":
            return _decision(res, time.perf_counter() - t0, "by polytope")
        children[i] = res.certificate
    return Decision("unsat", {"rule": "split", "split": {"kind": "polytope"},
                              "children": [children[i] for i in range(len(claim.unsafe))]},
                    producer_s=time.perf_counter() - t0,
                    method="by polytope", leaves=leaves)


def _rows_of(cert: dict, a: int, b: int) -> dict:
    """A crown certificate for the spec rows a..b-1 alone: per-row final slopes cut to those
    rows (shared slopes and intermediate entries as they are). It bounds those rows as `cert`
    does, up to the kernel's rounding (on the affine-block route the per-row rounding can
    differ in the last bits, about 1e-16); a cut the kernel refuses makes the answer unknown,
    never wrong. A certificate with per-row multipliers (`beta`) is not cut."""
    if "beta" in cert:
        raise ValueError("_rows_of: a certificate with beta multipliers")
    def cut(v):  # a relu's slopes: a list (shared) or per-row lists, as such or over a den
        if isinstance(v, dict):
            return {**v, "values": cut(v["values"])}
        return v[a:b] if v and isinstance(v[0], list) else v

    alpha = {k: cut(v) for k, v in cert.get("alpha", {}).items()}
    return {**cert, "alpha": alpha} if "alpha" in cert else dict(cert)


INPUT_SPLIT_MAX_INPUTS = 10  # batched input splitting up to this many inputs


def _decision(res, dt: float, method: str) -> Decision:
    """A Decision from a BabResult."""
    leaves = res.stats.get("leaves", 0)
    if res.status == "proved":
        return Decision("unsat", res.certificate, producer_s=dt, method=method, leaves=leaves)
    if res.status == "counterexample":
        return Decision("sat", point=np.asarray(res.point, dtype=np.float64).reshape(-1),
                        producer_s=dt, method=method, leaves=leaves)
    return Decision(res.status, producer_s=dt, leaves=leaves, method=method)


def _pieces(claim: Claim, jobs: int) -> list[tuple[int, fmpq, fmpq]]:
    """Split the widest input dimension into `jobs` pieces at dyadic cut points."""
    box = claim.input_set.as_box()
    dim = max(range(len(box.lo)), key=lambda i: box.hi[i] - box.lo[i])
    lo, hi = box.lo[dim], box.hi[dim]
    cuts = [lo]
    for k in range(1, jobs):
        c = lo + (hi - lo) * k / jobs
        cuts.append(fmpq((c * 2**40).floor(), 2**40))
    cuts.append(hi)
    return [(dim, a, b) for a, b in zip(cuts, cuts[1:]) if a < b]


def _produce_until(deadline: float, graph_path: str, claim_doc: dict, seed: int) -> Decision:
    """produce() in a worker with the budget left until `deadline` (time.time()); a part that
    starts after it (queued behind others) is a timeout without trying anything."""
    left = deadline - time.time()
    return produce(graph_path, claim_doc, left, seed) if left > 0 else Decision("timeout")


def _whole_here(graph_path: str, claim: Claim):
    """`_whole` in this process: a Decision, or (spec, its float lower bounds)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    first = _whole(graph_path, claim, *_chain(graph_path, claim), t0, 0)
    return first if isinstance(first, Decision) else (first[0], first[2])


def _parts(claim: Claim, jobs: int) -> tuple[list[Claim], dict]:
    """What --jobs spreads over processes, and the split that joins it: the polytopes of an
    unsafe union on a wide input (one relu-split tree each; halving one of many inputs helps
    little), else pieces of the widest input dimension."""
    box = claim.input_set.as_box()
    if claim.kind == "unsat" and len(claim.unsafe) > 1 and len(box.lo) > INPUT_SPLIT_MAX_INPUTS:
        return ([dataclasses.replace(claim, unsafe=(p,)) for p in claim.unsafe],
                {"kind": "polytope"})
    pieces, subclaims = _pieces(claim, jobs), []
    for dim, a, b in pieces:
        lo, hi = list(box.lo), list(box.hi)
        lo[dim], hi[dim] = a, b
        subclaims.append(dataclasses.replace(claim, input_set=Box(tuple(lo), tuple(hi))))
    return subclaims, {"kind": "input", "dim": pieces[0][0],
                       "pieces": [[str(a), str(b)] for _, a, b in pieces]}


HAND_OFF_PER_JOB = 1  # --jobs on a chain: open domains per process when the workers start
SLICE_S = 1.0  # --jobs on a chain: a worker's turn on its domains before it hands back the rest
JOIN_DEPTH = 150  # --jobs on a chain: deeper trees are checked again as one split (see below)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def decide_region(graph_path: str, claim: Claim, budget_s: float, jobs: int,
                  progress=None, graph: kernel_checker.Graph | None = None) -> Decision:
    """produce() on the claim, or with jobs > 1 in `jobs` processes: few-input linear / relu
    chains (given `graph`) by `_decide_grown`; otherwise parts (`_parts`) joined by a split,
    checked later. A counterexample of any part decides at once (the workers still running
    are stopped); otherwise the first part that is not unsat (timeout, unknown, a worker that
    failed) gives the answer once every part has had its chance at a counterexample. A worker
    that has not answered 30 s past the budget counts as a timeout."""
    if jobs <= 1:
        return produce(graph_path, claim.to_json(), budget_s, progress=progress)
    if _cuda():  # forked workers cannot use CUDA once this process has: one process, on it
        d = produce(graph_path, claim.to_json(), budget_s, progress=progress)
        d.notes.append(f"--jobs {jobs} not used: the producers run on CUDA, which forked "
                       "workers cannot share; one process")
        return d
    t0 = time.perf_counter()
    subclaims, split = _parts(claim, jobs)
    if split["kind"] == "input" and graph is not None:
        first = produce(graph_path, claim.to_json(), budget_s, progress=progress,
                        hand_off=jobs * HAND_OFF_PER_JOB)
        if first.status != "partial":
            return first
        if first.certificate is not None:  # an input-split forest to grow in the workers
            return _decide_grown(graph_path, claim, t0 + budget_s, jobs, graph, first,
                                 progress)
    deadline = time.time() + budget_s - (time.perf_counter() - t0)
    order = list(range(len(subclaims)))
    if split["kind"] == "polytope":  # the whole claim's cheap stages here first; the parts
        first = _whole_here(graph_path, claim)  # then go worst margin first, as by_polytope
        if isinstance(first, Decision):
            return first
        order = np.argsort(first[0].polytope_margins(first[1]), kind="stable").tolist()
    results, worst = {}, None
    with workers.Workers(jobs) as pool:
        jobs_of = {pool.submit(_produce_until, deadline, graph_path, subclaims[i].to_json(), i): i
                   for i in order}
        end = time.monotonic() + budget_s + 30
        while len(results) < len(jobs_of):
            done = pool.wait(max(0.0, end - time.monotonic()))
            if not done:
                worst = worst or Decision("timeout",
                                          notes=["a --jobs worker did not answer in time"])
                break
            for job in done:
                try:
                    r = job.result()
                except Exception as e:  # a worker that raised or died (out of memory): no answer
                    r = Decision("unknown", notes=[f"a --jobs worker failed: {e!r}"])
                results[jobs_of[job]] = r
                if r.status == "sat":
                    return r
                if r.status != "unsat" and worst is None:
                    worst = r
    out = Decision("unsat", producer_s=sum(r.producer_s for r in results.values()),
                   leaves=sum(max(r.leaves, 1) for r in results.values()),
                   method=f"{split['kind']} parts in {jobs} processes")
    if worst is not None:
        out.status, out.notes = worst.status, worst.notes
        return out
    out.certificate = {"rule": "split", "split": split,
                       "children": [results[i].certificate for i in range(len(subclaims))]}
    return out


def _on_box(claim: Claim, box: tuple) -> Claim:
    """The claim on the box (lo, hi) instead of its input set."""
    return dataclasses.replace(claim, input_set=Box(tuple(box[0]), tuple(box[1])))


def _join(claim: Claim, tree: dict, theorems: dict, certs: dict) -> tuple:
    """The kernel's `cases` up an input-split tree ({"boxes", "splits"}, from domain 0): each
    split domain's theorem from its children's, bottom-up without recursion; (the root's
    theorem, the nested `cases` certificate of that derivation). `certs` (the leaves') is
    consumed."""
    boxes, splits = tree["boxes"], tree["splits"]
    stack = [(0, False)]
    while stack:
        nid, done = stack.pop()
        if nid in theorems:
            continue
        kids = splits[nid][1]
        if not done:
            stack += [(nid, True)] + [(k, False) for k in kids]
            continue
        here = claim if nid == 0 else _on_box(claim, boxes[nid])
        theorems[nid] = inference.cases([theorems[k] for k in kids], here)
        certs[nid] = proof.by_rule("cases", premises=[
            proof.premise(_on_box(claim, boxes[k]), certs.pop(k)) for k in kids])
    return theorems[0], certs[0]


_HAND_BACK: list = [None]  # in a --jobs worker: the pool's event asking for open domains back


# workers run at this niceness, so that the kernel keeps up with them instead of finishing the
# leaves alone at the end (ACAS Xu, 72 instances of props 1-4 on nets 1_x and 2_x, --parallel 1
# --jobs 2: 14 slowest 43.8 s at 0, 40.8 s at 5, 41.4 s at 10, with one kernel process)
WORKER_NICE = 5


# the workers' alpha-CROWN steps and lookahead in float32 (`prove_input_split`'s search_dtype;
# what decides a domain or enters a certificate stays float64): with the kernel in its own
# processes the producers' time is the wall time. The 72 instances above with --jobs 2, one
# sitting: 14 slowest 41.9 s in float64, 35.6 s in float32 (the producers' CPU time 81.9 -> 68.5
# s, the kernel's 29.8 -> 29.6 s); without --jobs float64 stays (see prove_input_split)
GROW_SEARCH_DTYPE = "float32"
# and their alpha-CROWN moves the final rows' slopes only (`optimise(intermediate=False)`; the
# leaves claim CROWN's default-slope intermediate bounds): more leaves, each cheaper to make,
# which pays once the kernel has processes of its own (same sitting: 14 slowest 36.3 -> 30.0 s;
# producing 70.2 -> 43.5 s of CPU, checking 30.4 -> 38.3 s, 1_1 prop_3 447 -> 637 leaves)
GROW_ALPHA_INTERMEDIATE = False


def _worker_init(event, kernel_ends: list) -> None:
    for end in kernel_ends:  # the command's ends of the kernel processes' pipes: only it
        end.close()  # holds them, so that they close when it dies
    _HAND_BACK[0] = event
    os.nice(WORKER_NICE)


def _grow(deadline: float, graph_path: str, claim_doc: dict, roots: list, depths: list,
          slice_s: float, seed: int) -> Decision:
    """In a worker: input-split branch and bound from the domains `roots` (exact boxes) for
    about slice_s seconds, or until the parent sets the hand-back event (a worker is idle); a
    Decision "sat", "timeout", "unknown", or "proved" / "partial" with the forest grown
    (`prove_input_split`) as its certificate; its producer_s is this process's CPU time (the
    parent's kernel shares the cores, so the wall time would count waiting as producing)."""
    import torch

    from oracles.bab import prove_input_split

    torch.set_num_threads(1)
    left = deadline - time.time()
    if left <= 0:
        return Decision("timeout")
    claim = kernel_checker.parse_claim(claim_doc)
    t0, c0, event = time.perf_counter(), time.process_time(), _HAND_BACK[0]
    res = prove_input_split(graph_path, claim, left, seed=seed, chain=_chain(graph_path, claim)[0],
                            sample=False, search_dtype=getattr(torch, GROW_SEARCH_DTYPE),
                            alpha_intermediate=GROW_ALPHA_INTERMEDIATE,
                            roots=roots, depths=depths,
                            stop=lambda: time.perf_counter() - t0 >
                            slice_s or (event is not None and event.is_set()))
    if res.status in ("proved", "partial"):
        return Decision(res.status, res.certificate, producer_s=time.process_time() - c0,
                        leaves=res.stats["leaves"])
    return _decision(res, time.process_time() - c0, "input-split")


def _decide_grown(graph_path: str, claim: Claim, end: float, jobs: int,
                  graph: kernel_checker.Graph, first: Decision, progress=None) -> Decision:
    """--jobs on a few-input linear / relu chain: `first` holds the input-split forest grown
    here until jobs * HAND_OFF_PER_JOB domains were open. The open domains are shared out
    among the workers (`_grow`, SLICE_S seconds a turn; what is still open comes back and is
    shared out again), and `jobs` kernel processes (`kernel_checker.pool`, forked before the
    workers) derive each leaf's theorem as it comes in, while the workers go on. The splits
    are then joined by the kernel's `cases`: the Decision's `theorem`, with the nested `cases`
    certificate of that very derivation (end: the perf_counter time the budget runs out). A
    worker's timeout or unknown (a domain too thin to cut, max_depth reached), a failed worker
    or a leaf the kernel refuses ends the run at once (unlike the parts path, the other workers
    do not go on looking for a counterexample)."""
    tree = first.certificate
    leaves, splits, boxes = dict(tree["leaves"]), dict(tree["splits"]), dict(tree["boxes"])
    frontier, queue = list(tree["open"]), list(leaves)
    next_id = max(boxes) + 1
    depth = {0: 0}  # of the split domains and the open ones
    for nid, (_, kids) in sorted(splits.items()):  # (a parent's id is below its children's)
        depth.update((k, depth[nid] + 1) for k in kids)
    theorems, kernel_s, producer_s = {}, 0.0, first.producer_s
    deadline = time.time() + end - time.perf_counter()
    doc = claim.to_json()
    hand_back = multiprocessing.get_context("fork").Event()
    kernels = kernel_pool.Pool(kernel_checker.Context([graph]), jobs)  # before the workers
    pool = None
    running: dict = {}  # job -> the global ids of its roots
    fail = None
    try:
        pool = workers.Workers(jobs, _worker_init, (hand_back, kernels.conns))
        while (frontier or running or queue or kernels.pending()) and fail is None:
            if time.perf_counter() > end:  # (the kernel's queue too: no answer after the budget)
                fail = Decision("timeout")
                break
            if frontier and len(running) < jobs:
                hand_back.clear()
            while frontier and len(running) < jobs:
                take = -(-len(frontier) // (jobs - len(running)))
                chunk, frontier = frontier[:take], frontier[take:]
                running[pool.submit(_grow, deadline, graph_path, doc, [boxes[g] for g in chunk],
                                    [depth[g] for g in chunk], SLICE_S, 0)] = chunk
            tk, derived, done = time.process_time(), [], []
            try:  # the leaves go to the kernel processes, which derive them while the workers
                for g in queue:  # go on; a reply wakes this loop to send the next leaf at once
                    kernels.submit(g, _on_box(claim, boxes[g]), leaves[g])
                queue = []
                if kernels.pending():
                    derived = kernels.results(0.05)
            except kernel_checker.KernelError as e:  # a kernel process that died: no answer
                fail = fail or Decision("unknown", notes=[f"{e}"])
                break
            kernel_s += time.process_time() - tk
            if running and kernels.pending():
                done = pool.wait(0)
            elif running:
                done = pool.wait(max(0.0, end - time.perf_counter()) + 30)
                if not done:
                    fail = Decision("timeout", notes=["a --jobs worker did not answer in time"])
            for g, thm in derived:
                if isinstance(thm, kernel_checker.KernelError):
                    fail = fail or Decision("unknown", notes=[f"kernel refused a leaf: {thm}"])
                else:
                    theorems[g] = thm
            for f in done:
                roots = running.pop(f)
                try:
                    r = f.result()
                except Exception as e:  # a worker that raised or died (out of memory)
                    r = Decision("unknown", notes=[f"a --jobs worker failed: {e!r}"])
                producer_s += r.producer_s
                if r.status == "sat":
                    r.producer_s = producer_s
                    return r
                if r.status not in ("proved", "partial"):
                    fail = fail or r
                    continue
                got = r.certificate  # its ids: roots 0..k-1, then new ones
                ids = {i: roots[i] if i < len(roots) else next_id + i for i in got["boxes"]}
                next_id += max(got["boxes"], default=0) + 1
                for i, cert in got["leaves"].items():
                    leaves[ids[i]] = cert
                    queue.append(ids[i])
                for i, (split, kids) in sorted(got["splits"].items()):
                    splits[ids[i]] = (split, tuple(ids[k] for k in kids))
                    depth.update((ids[k], depth[ids[i]] + 1) for k in kids)
                for i, box in got["boxes"].items():
                    boxes[ids[i]] = box
                frontier += [ids[i] for i in got["open"]]
            if not frontier and running and len(running) < jobs and fail is None:
                hand_back.set()  # a worker is idle: the others hand back their open domains
            if progress is not None:
                progress({"strategy": f"input-split in {jobs} processes",
                          "domains": len(boxes), "leaves": len(leaves),
                          "derived": len(theorems)})
    finally:
        if pool is not None:
            pool.close()
        kernels.close()
    kernel_s += kernels.cpu_ns / 1e9
    out = Decision("unsat", producer_s=producer_s, leaves=len(leaves), kernel_s=kernel_s,
                   method=f"input-split in {jobs} processes")
    if fail is not None:
        out.status, out.notes = fail.status, fail.notes
        return out
    tk = time.process_time()
    try:
        if max(depth.values()) <= JOIN_DEPTH:
            out.theorem, out.certificate = _join(claim, {"boxes": boxes, "splits": splits},
                                                 theorems, leaves)
        else:  # nested `cases` this deep would pass Python's recursion limit when re-checked
            from oracles.bab import _tree

            out.certificate = _tree(leaves, splits)
            out.theorem = proof.check(claim, out.certificate, graph)
    except kernel_checker.KernelError as e:  # (a tree that does not cover the box)
        out.status, out.theorem, out.certificate = "unknown", None, None
        out.notes = [f"kernel refused the joined tree: {e}"]
    out.kernel_s += time.process_time() - tk
    return out


def _decimal(q: fmpq, digits: int = 40) -> tuple[str, bool]:
    """(decimal text, exact): the exact decimal of a rational whose denominator is 2^a 5^b
    (dyadic floats, VNN-LIB decimals and what affine maps and relus make of them); any other
    rational correctly rounded (half-even) to `digits` significant digits."""
    p, d = int(q.p), int(q.q)
    a, b, m = 0, 0, d
    while m % 2 == 0:
        m, a = m // 2, a + 1
    while m % 5 == 0:
        m, b = m // 5, b + 1
    if m != 1:
        ctx = decimal.Context(prec=digits, rounding=decimal.ROUND_HALF_EVEN)
        text = format(ctx.divide(decimal.Decimal(p), decimal.Decimal(d)), "f")
        return (text.rstrip("0").rstrip(".") if "." in text else text), False
    k = max(a, b)  # p / d = p 2^(k-a) 5^(k-b) / 10^k
    text = str(abs(p) * 2 ** (k - a) * 5 ** (k - b)).rjust(k + 1, "0")
    whole, frac = text[:len(text) - k], text[len(text) - k:].rstrip("0")
    return ("-" if p < 0 else "") + whole + ("." + frac if frac else ""), True


def _nearest_float32(q: fmpq) -> np.float32:
    """The float32 nearest to q (ties to even), by exact comparison of the candidates around
    float32(float64(q)) (which double rounding can leave one step off)."""
    x = Fraction(int(q.p), int(q.q))
    c = np.float32(float(x))
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    return min((f for f in cands if np.isfinite(f)), key=lambda f: (
        abs(Fraction(float(f)) - x), int(np.array(f, dtype=np.float32).view(np.uint32)) & 1))


def _inside(v: fmpq, lo: fmpq, hi: fmpq, strict_lo: bool, strict_hi: bool) -> bool:
    """lo <= v <= hi, with < where the property's bound was strict."""
    return (lo < v if strict_lo else lo <= v) and (v < hi if strict_hi else v <= hi)


def _as_written(claim: Claim, region, x: list, y_lo: list, y_hi: list) -> tuple[bool, bool]:
    """Whether x meets the region's input bounds, and whether every output in [y_lo, y_hi]
    lies in one unsafe polytope, as the property wrote them (strict comparisons strictly; the
    claim reads them as non-strict)."""
    box = claim.input_set.as_box()
    x_ok = all(_inside(v, a, b, s, t) for v, a, b, s, t in zip(
        x, box.lo, box.hi, region.strict_lo, region.strict_hi, strict=True))
    sups = [[sum((c * (h if c > 0 else a) for c, a, h in zip(row, y_lo, y_hi, strict=True)),
                 fmpq(0)) for row in p.a] for p in claim.unsafe]
    y_ok = any(all((sup < b) if strict else (sup <= b) for sup, b, strict in zip(
        row_sups, p.b, flags, strict=True)) for row_sups, p, flags in zip(
        sups, claim.unsafe, region.strict_rows, strict=True))
    return x_ok, y_ok


def _float32_input(x: tuple, box, region) -> np.ndarray | None:
    """Per coordinate the float32 nearest to x inside the region's input interval (one step
    inwards where the nearest falls outside or on a strict bound); None when a coordinate's
    interval holds no float32 (also beyond float32's range)."""
    out = []
    for v, lo, hi, s, t in zip(x, box.lo, box.hi, region.strict_lo, region.strict_hi,
                               strict=True):
        try:
            f = _nearest_float32(v)
            exact = fmpq(*float(f).as_integer_ratio())
            if exact < lo or (s and exact == lo):
                f = np.nextafter(f, np.float32(np.inf))
            elif exact > hi or (t and exact == hi):
                f = np.nextafter(f, np.float32(-np.inf))
            if not _inside(fmpq(*float(f).as_integer_ratio()), lo, hi, s, t):
                return None
        except (OverflowError, ValueError):  # (no finite float32 near v)
            return None
        out.append(f)
    return np.array(out, dtype=np.float32)


def _float32_verdict(claim: Claim, region, x32: np.ndarray, y32: np.ndarray | None) -> str:
    """Whether the float32 input and output meet the region's comparisons as written (strict
    ones strictly), decided exactly."""
    if y32 is None:
        return "not checked (an op outside its set, or a parameter that is no float32 number)"
    if not np.all(np.isfinite(y32)):
        return "not decided (the float32 execution overflowed: an output is NaN or infinite)"
    xs = [fmpq(*float(v).as_integer_ratio()) for v in x32]
    ys = [fmpq(*float(v).as_integer_ratio()) for v in np.asarray(y32).reshape(-1)]
    x_ok, y_ok = _as_written(claim, region, xs, ys, ys)
    if not x_ok:
        return "NOT a counterexample (the input leaves the input box)"
    return "also a counterexample" if y_ok else "NOT a counterexample (outputs)"


def _dyadic_inside(point: tuple, box: Box, bits: int = 64) -> tuple:
    """The point with each coordinate that is no finite decimal (a bound like 1/3) moved to a
    multiple of 2^-bits next to it inside the box, so that the point checked is the one written."""
    out = []
    for v, lo, hi in zip(point, box.lo, box.hi):
        q = int(v.q)
        if q & (q - 1):  # not a power of two
            scaled = v * (1 << bits)
            down, up = fmpq(scaled.floor(), 1 << bits), fmpq(scaled.ceil(), 1 << bits)
            v = down if down >= lo else up if up <= hi else v
        out.append(v)
    return tuple(out)


def _output_enclosure(graph, claim: Claim, point: tuple):
    """The kernel's exact enclosure (a point where every op is exact) of the claim's node at x."""
    return kernel_checker.semantics.evaluate(graph, kernel_checker.rules.point_interval(
        point, graph.the_input("verify", "input").shape), upto=claim.node)[claim.node]


def _strictly_violates(graph, claim: Claim, point: tuple, region) -> bool:
    """For a property with strict comparisons (the claim, built from `region`, reads them as
    non-strict): whether the point and its exact output enclosure meet the region's
    comparisons as written, strict ones strictly (an input bound, then every row of one unsafe
    polytope)."""
    iv = _output_enclosure(graph, claim, point)
    lo, hi = [fmpq(a, iv.den) for a in iv.lo], [fmpq(b, iv.den) for b in iv.hi]
    return all(_as_written(claim, region, list(point), lo, hi))


def write_cex(path: str, x: tuple, y: list) -> bool:
    """VNN-COMP format: ((X_0 v) ... (Y_0 v) ...); whether every value is written exactly."""
    xs, ys = [_decimal(v) for v in x], [_decimal(v) for v in y]
    lines = [f"(X_{i} {t})" for i, (t, _) in enumerate(xs)]
    lines += [f"(Y_{j} {t})" for j, (t, _) in enumerate(ys)]
    with open(path, "w") as f:
        f.write("(" + "\n ".join(lines) + ")\n")
    return all(e for _, e in xs + ys)


class _DeadlineError(Exception):
    """The budget ran out during the kernel's check (`_until`)."""


@contextlib.contextmanager
def _until(seconds: float):
    """Raise _DeadlineError in this thread after `seconds` (a real-time timer; in the main thread
    only, elsewhere no limit): the kernel's check of a whole certificate must not answer after
    --timeout when the producer's estimate of its time was short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if seconds <= 0:
        raise _DeadlineError

    def ring(signum, frame):
        raise _DeadlineError

    before = signal.signal(signal.SIGALRM, ring)
    try:  # (nested: an alarm ringing in the inner finally still restores the handler)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, before)


def verify(model: str, prop_path: str, timeout_s: float = 60.0, bundle: str | None = None,
           cex: str | None = None, jobs: int = 1, out=sys.stdout, err=sys.stderr) -> dict:
    """Run the whole job; print the result word first, then a summary; return the figures.
    The imported model goes beside the bundle (BUNDLE.model/, which the bundle's paths name),
    else to a temporary folder; a folder made here is removed at the end unless a bundle was
    written."""
    own = None if bundle else tempfile.mkdtemp(prefix="tl-verify-")
    workdir = os.path.splitext(bundle)[0] + ".model" if bundle else own
    if bundle and not os.path.exists(workdir):  # (made here: removed unless a bundle uses it)
        own = workdir
    try:
        return _verify(model, prop_path, timeout_s, bundle, cex, jobs, out, err, workdir)
    finally:
        if own is not None and not (bundle and os.path.isfile(bundle)):
            shutil.rmtree(own, ignore_errors=True)


def _verify(model: str, prop_path: str, timeout_s: float, bundle: str | None, cex: str | None,
            jobs: int, out, err, workdir: str) -> dict:
    from rich.console import Console

    t0 = time.perf_counter()
    console = Console(file=err)
    for stale in (bundle, cex):  # (a file of an earlier run must not stand beside this answer)
        if stale and os.path.isfile(stale):
            os.remove(stale)
    try:
        prop = read_vnnlib(prop_path)
        graph_path = load_model(model, workdir)
        graph = kernel_checker.load_graph(graph_path)
        sizes = (numel(graph.the_input("verify", "model").shape),
                 numel(graph.by_id[graph.outputs[0]].shape))
        if len(graph.outputs) != 1 or sizes != (prop.n_inputs, prop.n_outputs):
            raise ValueError(f"the property declares {prop.n_inputs} inputs X and "
                             f"{prop.n_outputs} outputs Y; the model has {sizes[0]} input "
                             f"values and {len(graph.outputs)} output(s), the first of "
                             f"{sizes[1]} values (one output, sizes equal, expected)")
        need = kernel_checker.semantics._ancestors(graph, graph.outputs[0])  # (with the output)
        not_evaluated = [n for n in graph.nodes if n.id in need and not OPS[n.op].evaluated]
        if not_evaluated:  # (nothing the kernel could check: no unsat, no sat)
            n = not_evaluated[0]
            raise ValueError(f"node {n.id!r} (op {n.op}) is not evaluated by the kernel's exact "
                             "semantics, so no answer about this model can be checked; "
                             f"evaluated ops: {sorted(o for o, s in OPS.items() if s.evaluated)}")
    except (VnnlibError, kernel_checker.KernelError, ValueError, OSError) as e:
        print("unknown", file=out)
        print(f"error: {e}", file=out)
        return {"result": "unknown", "error": str(e)}
    setup_s = time.perf_counter() - t0
    claims = [region_claim(graph, r) for r in prop.regions]
    decisions, kernel_s, result = [], 0.0, "unsat"
    with console.status("deciding", spinner="dots") as status:
        for k, claim in enumerate(claims):
            left = timeout_s - (time.perf_counter() - t0)
            if left <= 0:
                result = "timeout"
                break
            console.log(f"region {k + 1}/{len(claims)}: producing") if len(claims) > 1 else None
            where = f"region {k + 1}/{len(claims)}, " if len(claims) > 1 else ""

            def show(stats, where=where):
                derived = (f" ({stats['derived']} derived by the kernel)" if "derived" in stats
                           else "")
                status.update(f"{where}branch and bound ({stats.get('strategy', '')}): "
                              f"{stats['domains']} domains, {stats['leaves']} leaves{derived}, "
                              f"{time.perf_counter() - t0:.0f} s of {timeout_s:g} s")
            d = decide_region(graph_path, claim, left, jobs, show, graph)
            decisions.append(d)
            kernel_s += d.kernel_s
            if d.status == "sat":
                tk = time.perf_counter()
                exact = dsl_claims.clamp_into(d.point, claim.input_set.as_box())
                # a point a --cex file can hold exactly first, else the producer's own
                for point in dict.fromkeys((_dyadic_inside(exact, claim.input_set.as_box()),
                                            exact)):
                    cex_claim = dsl_claims.counterexample(claim, point)
                    try:
                        proof.check(cex_claim, proof.counterexample_cert(), graph)
                        d.status, refusal = "sat", None
                        break
                    except kernel_checker.KernelError as e:
                        d.status, refusal = "unknown", e
                if refusal is not None:
                    d.notes.append(f"kernel refused the counterexample: {refusal}")
                if d.status == "sat" and prop.has_strict and not _strictly_violates(
                        graph, claim, point, prop.regions[k]):
                    d.notes.append("the counterexample lies on the boundary of a strict "
                                   "comparison (read as non-strict), as far as its exact "
                                   "enclosure tells: it may not break the property as written")
                    d.status = "unknown"
                kernel_s += time.perf_counter() - tk
                if d.status == "sat":
                    result = "sat"
                    break
            if d.status != "unsat":
                result = d.status if result == "unsat" else result
    theorem = None
    leaves = sum(d.leaves for d in decisions)
    if result == "unsat":
        tk = time.perf_counter()
        if len(claims) == 1:
            final, cert = claims[0], decisions[0].certificate
        else:
            hull = Box(tuple(min(c.input_set.lo[i] for c in claims) for i in range(prop.n_inputs)),
                       tuple(max(c.input_set.hi[i] for c in claims) for i in range(prop.n_inputs)))
            final = Claim("all", graph.sha256, hull, "", parts=tuple(claims))
            cert = proof.by_rule("conjoin", premises=[proof.premise(c, d.certificate)
                                                      for c, d in zip(claims, decisions)])
        try:
            with console.status(f"kernel checking the certificate ({leaves} leaves)",
                                spinner="dots"):
                if all(d.theorem is not None for d in decisions):  # derived piece by piece
                    theorem = decisions[0].theorem if len(claims) == 1 else \
                        inference.conjoin([d.theorem for d in decisions], final)
                    if theorem.claim != final:
                        raise kernel_checker.KernelError("verify", "claim", "the theorem "
                                                         "derived is not the claim's")
                else:
                    with _until(timeout_s - (time.perf_counter() - t0)):
                        theorem = proof.check(final, cert, graph)
        except kernel_checker.KernelError as e:
            result = "unknown"
            decisions[-1].notes.append(f"kernel refused the certificate: {e}")
        except _DeadlineError:  # (also after check returned: no bundle beside `timeout`)
            result, theorem = "timeout", None
            decisions[-1].notes.append(f"the kernel's check of the certificate ({leaves} leaves) "
                                       f"did not end within the {timeout_s:g} s budget")
        kernel_s += time.perf_counter() - tk
    producer_s = sum(d.producer_s for d in decisions)
    if theorem is not None and bundle:  # files first: a reader that stops early loses nothing
        proof.write_bundle(bundle, final, cert, graph_path, graph,
                           {"tool": "tl verify", "model": os.path.abspath(model),
                            "property": os.path.abspath(prop_path)})
    if result == "sat":
        x = cex_claim.point
        y_iv = _output_enclosure(graph, claim, x)
        exact_point = all(a == b for a, b in zip(y_iv.lo, y_iv.hi))
        y = [fmpq(a + b, 2 * y_iv.den) for a, b in zip(y_iv.lo, y_iv.hi)]  # exact or midpoints
        radius = max(fmpq(b - a, 2 * y_iv.den) for a, b in zip(y_iv.lo, y_iv.hi))
        cex_exact = write_cex(cex, x, y) if cex else True
    print(result, file=out)
    total = time.perf_counter() - t0
    methods = ", ".join(d.method for d in decisions if d.method)
    print(f"time {total:.2f} s: setup {setup_s:.2f} s, producing {producer_s:.2f} s, "
          f"kernel checking {kernel_s:.2f} s; regions {len(claims)}, leaves {leaves}, "
          f"methods {methods or '-'}", file=out)
    if theorem is not None:
        print(f"kernel: {theorem.claim.kind} by {theorem.rule}, level {theorem.level.label}, "
              f"assumptions {len(theorem.assumptions)}", file=out)
        if bundle:
            print(f"bundle {bundle} (re-check: tl check {bundle})", file=out)
    if result == "sat":
        k = int(radius.q).bit_length() - int(radius.p).bit_length() - 1  # 2^k p < q
        kind = "exact" if exact_point else f"enclosed, radius < 2^-{k}"
        print(f"kernel: counterexample checked exactly (outputs {kind})"
              + ("; strict comparisons read as non-strict" if prop.has_strict else ""), file=out)
        from oracles.float32_reference import forward_float32

        region = next(r for c, r in zip(claims, prop.regions) if c is claim)
        try:  # (a report outside the kernel: its failure must not end the run after `sat`)
            x32 = _float32_input(x, claim.input_set.as_box(), region)
            y32 = forward_float32(graph_path, x32) if x32 is not None else None
            f32 = _float32_verdict(claim, region, x32, y32) if x32 is not None else \
                "no float32 input inside the box"
        except Exception as e:  # noqa: BLE001
            f32 = f"not checked ({type(e).__name__}: {e})"
        print("float32 reference execution (the nearest float32 input inside the box, "
              "left-to-right sums, no FMA): " + f32, file=out)
        if cex:
            how = "every value written exactly" if cex_exact else \
                "values that are no finite decimal rounded to 40 significant digits"
            mids = "" if exact_point else "; outputs: the midpoints of the kernel's enclosures"
            print(f"counterexample written to {cex} ({how}{mids})", file=out)
    for d in decisions:
        for note in d.notes:
            print(note, file=out)
    return {"result": result, "total_s": total, "setup_s": setup_s, "producer_s": producer_s,
            "kernel_s": kernel_s, "regions": len(claims), "leaves": leaves, "methods": methods,
            "bundle_bytes": os.path.getsize(bundle) if bundle and theorem is not None else 0}
