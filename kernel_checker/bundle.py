"""Proof bundles `tl.bundle.v1`: a claim, the certificate that proves it, and content hashes that
bind the graph file, its weights file and the claim (spec). Plain JSON, so another implementation
can check it from the written format alone:

{"format": "tl.bundle.v1", "claim": {...}, "certificate": {"rule": ...},
 "artifacts": {"graph": {"path", "sha256"}, "weights": {"sha256"} | null, "spec": {"sha256"},
               "premise_graphs": [{"path", "sha256"}, ...] (optional: graphs that premises of a
               derivation mention, e.g. the blocks of a composition)},
 "producer": {...untrusted metadata...}}

Paths are relative to the bundle's folder.
"""

import os
import platform
import sys

import flint

from kernel_checker.claims import parse_claim
from kernel_checker.errors import read_bytes, refuse
from kernel_checker.exact import load_json
from kernel_checker.graph import load_graph
from kernel_checker.rules import Context, derive
from kernel_checker.theorem import Theorem

KERNEL_VERSION = "0.1.0"
RULE = "bundle"


def _sha_field(doc: object, path: str) -> str:
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str):
        raise refuse(RULE, path, "expected an object with a sha256")
    return doc["sha256"]


def check_bundle(path: str) -> tuple[Theorem, dict]:
    """Re-derive the bundle's theorem from its files; a KernelError names rule and field."""
    doc = load_json(read_bytes(path, RULE, path, "bundle"), RULE, path)
    if not isinstance(doc, dict):
        raise refuse(RULE, "<bundle>", "expected a JSON object")
    if doc.get("format") != "tl.bundle.v1":
        raise refuse(RULE, "format", f"expected 'tl.bundle.v1', found {doc.get('format')!r}")
    extra = set(doc) - {"format", "claim", "certificate", "artifacts", "producer"}
    missing = {"claim", "certificate", "artifacts"} - set(doc)
    if extra or missing:
        raise refuse(RULE, "<bundle>", f"unexpected keys {sorted(extra)}, missing "
                     f"{sorted(missing)}")
    arts = doc["artifacts"]
    if not isinstance(arts, dict):
        raise refuse(RULE, "artifacts", "expected an object")
    gdoc = arts.get("graph")
    if not isinstance(gdoc, dict) or not isinstance(gdoc.get("path"), str):
        raise refuse(RULE, "artifacts.graph", "expected {\"path\": ..., \"sha256\": ...}")
    graph_sha = _sha_field(gdoc, "artifacts.graph")
    graph = load_graph(os.path.join(os.path.dirname(os.path.abspath(path)), gdoc["path"]))
    if graph.sha256 != graph_sha:
        raise refuse(RULE, "artifacts.graph.sha256", f"sha256 mismatch: expected {graph_sha}, "
                     f"found {graph.sha256}")
    wdoc = arts.get("weights")
    if (wdoc is None) != (graph.weights_sha256 is None):
        raise refuse(RULE, "artifacts.weights", "the bundle and the graph disagree on whether "
                     "there is a weights file")
    if wdoc is not None and _sha_field(wdoc, "artifacts.weights") != graph.weights_sha256:
        raise refuse(RULE, "artifacts.weights.sha256", f"sha256 mismatch: expected "
                     f"{wdoc['sha256']}, the graph binds {graph.weights_sha256}")
    claim = parse_claim(doc["claim"], "claim")
    if claim.graph != graph.sha256:  # (what the audit names is what the theorem is about)
        raise refuse(RULE, "claim.graph", f"expected the claim to be about artifacts.graph "
                     f"({graph.sha256}), found {claim.graph}")
    spec_sha = _sha_field(arts.get("spec"), "artifacts.spec")
    if claim.spec_sha256() != spec_sha:
        raise refuse(RULE, "artifacts.spec.sha256", f"sha256 mismatch: expected {spec_sha}, found "
                     f"{claim.spec_sha256()}")
    producer = doc.get("producer", {})
    if not isinstance(producer, dict):
        raise refuse(RULE, "producer", "expected an object")
    graphs = [graph]
    extra = arts.get("premise_graphs", [])
    if not isinstance(extra, list):
        raise refuse(RULE, "artifacts.premise_graphs", "expected a list")
    for i, g in enumerate(extra):
        p = f"artifacts.premise_graphs[{i}]"
        if not isinstance(g, dict) or not isinstance(g.get("path"), str):
            raise refuse(RULE, p, "expected {\"path\": ..., \"sha256\": ...}")
        loaded = load_graph(os.path.join(os.path.dirname(os.path.abspath(path)), g["path"]))
        if loaded.sha256 != _sha_field(g, p):
            raise refuse(RULE, f"{p}.sha256", f"sha256 mismatch: expected {g['sha256']}, found "
                         f"{loaded.sha256}")
        graphs.append(loaded)
    theorem = derive(Context(graphs), claim, doc["certificate"], "certificate")
    return theorem, doc


def trusted_base() -> dict:
    """What a theorem's truth rests on beyond its listed assumptions."""
    return {"kernel_version": KERNEL_VERSION, "python_flint_version": flint.__version__,
            "python": platform.python_version(), "python_implementation": sys.implementation.name}
