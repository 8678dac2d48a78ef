"""Audits of a run: the kernel checks sampled (or all) outputs against its enclosure of every
binary32 evaluation (rule `agreement`) and the agreements are joined into one theorem whose only
assumption is runtime.<cuda|cpu>.outputs (that the values are what the runtime returned), with
the runtime's provenance. Untrusted: it only builds the claims; the kernel decides."""

from fractions import Fraction

import numpy as np
from flint import fmpq

import kernel_checker
from kernel_checker import Box, Claim
from tl_dsl import proof


def _exact(values: np.ndarray, what: str) -> tuple:
    values = np.asarray(values)
    if values.dtype != np.float32:  # (a cast would round other values silently)
        raise ValueError(f"expected binary32 {what}s (float32), found {values.dtype}")
    out = []
    for i, v in enumerate(values.reshape(-1)):
        if not np.isfinite(v):
            raise ValueError(f"{what}[{i}] is {v}: not a number the kernel can check")
        p, q = Fraction(float(v)).as_integer_ratio()
        out.append(fmpq(p, q))
    return tuple(out)


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
