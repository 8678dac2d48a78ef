"""Check claims with the kernel and write/re-check proof bundles (`tl.bundle.v1`)."""

import json
import os
import subprocess
import sys

import kernel_checker
from kernel_checker import Claim, Context, Theorem


def ibp() -> dict:
    """Certificate: the kernel computes interval bounds itself."""
    return {"rule": "ibp"}


def counterexample_cert() -> dict:
    """Certificate: the point is in the claim; the kernel evaluates it exactly."""
    return {"rule": "counterexample"}


def assume(name: str, **evidence: str) -> dict:
    """Certificate: an explicit named assumption (a registered name) with its provenance."""
    return {"rule": "assume", "name": name, "evidence": {k: str(v) for k, v in evidence.items()}}


def premise(claim: Claim, certificate: dict) -> dict:
    """A premise of a derivation: a claim and the certificate that proves it."""
    return {"claim": claim.to_json(), "certificate": certificate}


def by_rule(rule: str, **premises) -> dict:
    """Certificate of an inference rule, e.g. by_rule("weaken", premise=premise(c, cert)),
    by_rule("cases", premises=[...]), by_rule("compose", first=..., second=...)."""
    return {"rule": rule, **premises}


def check(claim: Claim, certificate: dict, graph: kernel_checker.Graph,
          *more_graphs: kernel_checker.Graph) -> Theorem:
    """Derive a theorem in this process (raises KernelError if the kernel refuses)."""
    return kernel_checker.derive(Context([graph, *more_graphs]), claim, certificate)


def write_bundle(path: str, claim: Claim, certificate: dict, graph_path: str,
                 graph: kernel_checker.Graph, producer: dict | None = None,
                 premise_graphs: list[tuple[str, kernel_checker.Graph]] = ()) -> str:
    """Write a bundle whose paths are relative to its own folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)

    def ref(p, g):
        return {"path": os.path.relpath(os.path.abspath(p), folder), "sha256": g.sha256}

    artifacts = {"graph": ref(graph_path, graph),
                 "weights": ({"sha256": graph.weights_sha256} if graph.weights_sha256 else None),
                 "spec": {"sha256": claim.spec_sha256()}}
    if premise_graphs:
        artifacts["premise_graphs"] = [ref(p, g) for p, g in premise_graphs]
    doc = {"format": "tl.bundle.v1", "claim": claim.to_json(), "certificate": certificate,
           "artifacts": artifacts, "producer": producer or {"tool": "tl-verify"}}
    with open(path, "w") as f:  # dumps: C's one-shot encoder (json.dump streams in Python,
        f.write(json.dumps(doc, separators=(",", ":")))  # 2.6 s against 0.18 s for 15 MB)
    return path


def recheck_in_fresh_process(bundle_path: str, timeout_s: float = 600) -> tuple[bool, str]:
    """Re-derive a bundle with the kernel alone in a new Python process: (held, its output);
    not held, with the reason, when it does not end within timeout_s."""
    try:
        proc = subprocess.run([sys.executable, "-m", "kernel_checker", bundle_path],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"the re-check did not end within {timeout_s:g} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
