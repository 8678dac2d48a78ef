"""`prove_robust`: the escalating tactic. Attack first (a checked counterexample ends it), then
the kernel's own interval replay, then CROWN, alpha-CROWN and branch and bound from the torch
producer; every step's certificate is checked by the kernel, and the first that holds wins.
Untrusted: the tactic only proposes; `Outcome.theorem` is always a kernel theorem."""

import time
from dataclasses import dataclass, field

import numpy as np

from kernel_checker import Claim, Graph, KernelError, Theorem
from kernel_checker.errors import read_bytes
from kernel_checker.rules import Context
from kernel_checker.tensor import sha256_hex
from stdlib.robustness import robust
from tl_dsl import claims, proof

METHODS = ("attack", "ibp", "crown", "alpha", "bab")


@dataclass
class Outcome:
    status: str  # certified | counterexample | unknown
    method: str | None = None  # which step decided it
    claim: Claim | None = None  # what the theorem states (robustness or its counterexample)
    certificate: dict | None = None
    theorem: Theorem | None = None
    producer_s: float = 0.0
    kernel_s: float = 0.0
    proved_by: dict = field(default_factory=dict)  # method tried -> kernel accepted?
    leaves: int = 0
    notes: list = field(default_factory=list)  # e.g. a producer that cannot take the graph


class _Clock:
    def __init__(self, outcome: Outcome):
        self.o = outcome

    def produce(self, fn, *a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self.o.producer_s += time.perf_counter() - t

    def check(self, claim: Claim, cert: dict, graph: Graph) -> Theorem | None:
        t = time.perf_counter()
        try:
            return proof.check(claim, cert, graph)
        except KernelError:
            return None
        finally:
            self.o.kernel_s += time.perf_counter() - t


def _attack(graph_path: str, claim: Claim, seed: int):
    from oracles.pgd import pgd_attack

    return pgd_attack(graph_path, claim, steps=30, restarts=3, seed=seed)


def prove_robust(graph: Graph, graph_path: str, x0, eps, label: int, clamp=(0, 1),
                 methods=METHODS, bab_timeout_s: float = 5.0, chain=None, seed: int = 0
                 ) -> Outcome:
    """Escalate through `methods` until the kernel accepts a certificate or a counterexample.
    A claim that cannot hold a theorem (x0 of another length, eps < 0, an empty box) raises the
    kernel's KernelError at once, as an unknown method name raises ValueError: neither is
    `unknown`, which says the methods ran and decided nothing."""
    bad = [m for m in methods if m not in METHODS]
    if bad or isinstance(methods, str):
        raise ValueError(f"methods: expected names among {list(METHODS)}, found "
                         f"{bad or methods!r}")
    claim = robust(graph, x0, eps, label, clamp=clamp)
    Context([graph]).graph_for(claim, "claim")  # well-formed, shaped and exact, or KernelError
    try:  # (the producers read graph_path: another graph gave tracebacks or a silent unknown)
        on_disk = sha256_hex(read_bytes(graph_path, "prove_robust", "graph_path", "graph"))
    except KernelError as err:
        raise ValueError(f"graph_path: {err.message}") from None
    if on_disk != graph.sha256:
        raise ValueError(f"graph_path: {graph_path} is not the graph given (sha256 {on_disk[:12]}"
                         f", the graph's {graph.sha256[:12]})")
    out = Outcome("unknown", claim=claim)
    clock = _Clock(out)
    if "attack" in methods:
        centre = claims.clamp_into(x0, claim.input_set.as_box())
        cands = [centre]
        point = clock.produce(_attack, graph_path, claim, seed)
        if point is not None:
            cands.append(claims.clamp_into(point, claim.input_set.as_box()))
        for cand in cands:
            cex = claims.counterexample(claim, cand)
            thm = clock.check(cex, proof.counterexample_cert(), graph)
            if thm is not None:
                out.status, out.method, out.claim = "counterexample", "attack", cex
                out.theorem = thm
                out.certificate = proof.counterexample_cert()
                return out
    for method in ("ibp", "crown", "alpha", "bab"):
        if method not in methods:
            continue
        try:
            cert = _propose(method, graph, graph_path, claim, chain, bab_timeout_s, clock, out)
        except ValueError as e:  # a producer that cannot take this graph (tanh for CROWN, ...)
            out.proved_by[method] = False
            out.notes.append(f"{method}: {e}")
            continue
        if out.status == "counterexample":
            return out
        if cert is None:
            continue
        thm = clock.check(claim, cert, graph)
        out.proved_by[method] = thm is not None
        if thm is not None:
            out.status, out.method, out.theorem, out.certificate = "certified", method, thm, cert
            break
    return out


def _propose(method: str, graph: Graph, graph_path: str, claim: Claim, chain, bab_timeout_s,
             clock: "_Clock", out: Outcome) -> dict | None:
    """A certificate from `method`'s producer, or None (then nothing to check); a kernel-checked
    counterexample from branch and bound goes into `out` (status counterexample)."""
    if method == "ibp":
        return proof.ibp()
    if method in ("crown", "alpha"):
        from oracles.bounds_torch import crown_certificate

        kw = {"chain": chain} if chain is not None else {}
        return clock.produce(crown_certificate, graph_path, claim, method, **kw)[0]
    from oracles.bab import prove_with_bab

    res = clock.produce(prove_with_bab, graph_path, claim, bab_timeout_s, method="alpha")
    if res.status == "counterexample" and res.point is not None:
        cex = claims.counterexample(claim, claims.clamp_into(
            np.asarray(res.point).reshape(-1), claim.input_set.as_box()))
        thm = clock.check(cex, proof.counterexample_cert(), graph)
        if thm is not None:
            out.status, out.method, out.claim, out.theorem = "counterexample", "bab", cex, thm
            out.certificate = proof.counterexample_cert()
            return None
    if res.status != "proved":
        return None
    out.leaves = res.stats.get("leaves", 0) if hasattr(res, "stats") else 0
    return res.certificate
