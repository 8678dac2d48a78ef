"""Audits of a run: the kernel checks sampled (or all) outputs against its enclosure of every
binary32 evaluation (rule `agreement`) and the agreements are joined into one theorem whose only
assumption is runtime.<cuda|cpu>.outputs (that the values are what the runtime returned), with
the runtime's provenance. Untrusted: it only builds the claims; the kernel decides."""

import numpy as np

import kernel_checker
from kernel_checker import Box, Claim
from tl_dsl import proof
from tl_dsl.claims import to_vector


def _exact(values: np.ndarray, what: str) -> tuple:
    values = np.asarray(values)
    if values.dtype != np.float32:  # (a cast would round other values silently)
        raise ValueError(f"expected binary32 {what}s (float32), found {values.dtype}")
    flat = values.reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] is {flat[bad[0]]}: not a number the kernel can check")
    return to_vector(flat, what)


def agreement(graph: kernel_checker.Graph, node: str, x: np.ndarray, y: np.ndarray,
              runtime: str) -> Claim:
    """The claim that y, the runtime's output at node for the input x, agrees with the graph."""
    pt = _exact(x, "input")
    return Claim(kind="agreement", graph=graph.sha256, semantics="float32",
                 input_set=Box(pt, pt), node=node, point=pt, values=_exact(y, "output"),
                 runtime=runtime)


def audit_rows(graph: kernel_checker.Graph, node: str, x: np.ndarray, y: np.ndarray,
               rows: list, runtime: str, provenance: dict) -> tuple:
    """Check the rows' agreements with the kernel and join them: (claim, certificate, theorem).
    Raises KernelError naming the first row the kernel refuses (its field path says which)."""
    parts, premises = [], []
    prov = {"runtime": runtime, **{k: str(v) for k, v in provenance.items()}}
    cert = {"rule": "agreement", "provenance": prov}
    for r in rows:
        c = agreement(graph, node, x[r], y[r], runtime)
        parts.append(c)
        premises.append(proof.premise(c, cert))
    lo = tuple(min(c.point[i] for c in parts) for i in range(len(parts[0].point)))
    hi = tuple(max(c.point[i] for c in parts) for i in range(len(parts[0].point)))
    claim = Claim(kind="all", graph=graph.sha256, semantics="float32", input_set=Box(lo, hi),
                  node=node, parts=tuple(parts),
                  name=f"{runtime} run agrees with binary32 on {len(rows)} input(s)")
    certificate = proof.by_rule("conjoin", premises=premises)
    return claim, certificate, proof.check(claim, certificate, graph)
