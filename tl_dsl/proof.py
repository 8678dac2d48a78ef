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


def check(claim: Claim, certificate: dict, graph: kernel_checker.Graph) -> Theorem:
    """Derive a theorem in this process (raises KernelError if the kernel refuses)."""
    return kernel_checker.derive(Context([graph]), claim, certificate)


def write_bundle(path: str, claim: Claim, certificate: dict, graph_path: str,
                 graph: kernel_checker.Graph, producer: dict | None = None) -> str:
    """Write a bundle whose paths are relative to its own folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    artifacts = {"graph": {"path": os.path.relpath(os.path.abspath(graph_path), folder),
                           "sha256": graph.sha256},
                 "weights": ({"sha256": graph.weights_sha256} if graph.weights_sha256 else None),
                 "spec": {"sha256": claim.spec_sha256()}}
    doc = {"format": "tl.bundle.v1", "claim": claim.to_json(), "certificate": certificate,
           "artifacts": artifacts, "producer": producer or {"tool": "tl-verify"}}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path


def recheck_in_fresh_process(bundle_path: str, timeout_s: float = 600) -> tuple[bool, str]:
    """Re-derive a bundle with the kernel alone in a new Python process."""
    proc = subprocess.run([sys.executable, "-m", "kernel_checker", bundle_path],
                          capture_output=True, text=True, timeout=timeout_s)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
