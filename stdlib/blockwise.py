"""`prove_blockwise`: cut a graph at given nodes, prove output bounds of each block over the
previous block's proven box, and compose the blocks with the kernel's `compose` rule, so a large
network is verified block by block. Untrusted: it only builds certificates; the kernel checks."""

import hashlib
import json
import os

from flint import fmpq

import kernel_checker
from kernel_checker import crown
from kernel_checker.claims import Box, Claim
from kernel_checker.rules import box_interval
from kernel_checker.tensor import numel
from tl_dsl import proof

ROUND_BITS = 24


def _round_out(lo: fmpq, hi: fmpq) -> tuple[fmpq, fmpq]:
    """Outward rounding to multiples of 2^-ROUND_BITS (keeps later denominators small)."""
    s = 1 << ROUND_BITS
    return fmpq((lo * s).floor(), s), fmpq((hi * s).ceil(), s)


def _write(doc: dict, nodes: list, outputs: list, stem: str, kind: str) -> str:
    """Write a sub-graph named by its content's hash (`stem.kind-HASH.json`): another split of
    the same graph writes other files, so bundles of an earlier split stay checkable."""
    sub = {"format": "tl.graph.v1", "nodes": nodes, "outputs": outputs}
    if doc.get("weights"):
        sub["weights"] = doc["weights"]
    text = json.dumps(sub, indent=1)
    path = f"{stem}.{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    with open(path, "w") as f:
        f.write(text)
    return path


def split_graph(graph_path: str, cuts: list[str]) -> tuple[list[str], list[str]]:
    """Write block graphs and prefix graphs beside the graph (sharing its weights file).
    Returns (block paths, prefix paths); the last prefix is the original graph."""
    if isinstance(cuts, str) or not all(isinstance(c, str) for c in cuts):
        raise ValueError(f"cuts: expected a list of node ids, found {cuts!r}")
    if len(set(cuts)) != len(cuts):
        raise ValueError(f"cuts: a node is cut twice in {cuts!r}")
    with open(graph_path) as f:
        doc = json.load(f)
    nodes = doc["nodes"]
    index = {n["id"]: i for i, n in enumerate(nodes)}
    for c in cuts:
        if c not in index:
            raise ValueError(f"cut point {c!r} is not a node of {graph_path}")
    bounds = [index[c] for c in cuts]
    if bounds != sorted(bounds):
        raise ValueError("cut points must follow the graph's node order")
    stem = os.path.splitext(graph_path)[0]
    blocks, prefixes = [], []
    start = 0
    for k, end in enumerate(bounds + [len(nodes) - 1]):
        seg = nodes[start:end + 1]
        if k > 0:
            cut = nodes[start - 1]
            allowed = {cut["id"]} | {n["id"] for n in seg}
            for n in seg:
                if any(i not in allowed for i in n["inputs"]):
                    raise ValueError(f"node {n['id']!r} reads across cut {cut['id']!r}")
            seg = [{"id": cut["id"], "op": "input", "inputs": [], "shape": cut["shape"],
                    "attrs": {}}] + seg
        out = [nodes[end]["id"]] if k < len(bounds) else doc["outputs"]
        blocks.append(_write(doc, seg, out, stem, f"block{k}"))
        if k < len(bounds):
            prefixes.append(_write(doc, nodes[:end + 1], [nodes[end]["id"]], stem,
                                   f"prefix{k}"))
        start = end + 1
    prefixes.append(graph_path)
    return blocks, prefixes


def _bounds_claim(graph: kernel_checker.Graph, input_set, node: str) -> tuple[Claim, dict]:
    """Bounds on `node` computed with the kernel's own CROWN arithmetic (as a producer), rounded
    outward, with a crown certificate for them."""
    chain = crown.ancestors(graph, node, "crown")
    dom = crown.Domain(box_interval(input_set.as_box(), graph.the_input("b", "b").shape))
    values = crown.forward(graph, chain, dom, {})
    n = numel(graph.by_id[node].shape)
    tmp = Claim("bounds", graph.sha256, input_set, node, lo=(fmpq(0),) * n, hi=(fmpq(0),) * n)
    lows = crown.backward_lower_bounds(graph, chain, values, dom, crown.spec_rows(tmp, n), {},
                                       "crown", "certificate")
    lo, hi = zip(*(_round_out(lows[i], -lows[n + i]) for i in range(n)))
    return Claim("bounds", graph.sha256, input_set, node, lo=lo, hi=hi), {"rule": "crown"}


def prove_blockwise(graph_path: str, cuts: list[str], input_set):
    """Bounds of the graph's output over `input_set`, by blocks. Returns (theorem, claim,
    certificate, premise graphs as (path, graph) pairs) ready for `proof.write_bundle`."""
    blocks, prefixes = split_graph(graph_path, cuts)
    loaded = {p: kernel_checker.load_graph(p) for p in blocks + prefixes}
    g0 = loaded[blocks[0]]
    claim, cert = _bounds_claim(g0, input_set, g0.outputs[0])
    for k in range(1, len(blocks)):
        gb, gh = loaded[blocks[k]], loaded[prefixes[k]]
        box = Box(claim.lo, claim.hi)
        b_claim, b_cert = _bounds_claim(gb, box, gb.outputs[0])
        h_claim = Claim("bounds", gh.sha256, input_set, gb.outputs[0], lo=b_claim.lo,
                        hi=b_claim.hi)
        cert = proof.by_rule("compose", first=proof.premise(claim, cert),
                             second=proof.premise(b_claim, b_cert))
        claim = h_claim
    graphs = list(loaded.values())
    target = loaded[graph_path]
    theorem = proof.check(claim, cert, target, *[g for g in graphs if g is not target])
    extra = [(p, g) for p, g in loaded.items() if p != graph_path]
    return theorem, claim, cert, extra
