"""Float32 execution of a graph in the reference order (untrusted; for reporting only): every
dot product summed left to right, one rounding per multiply and per add (no FMA), bias added
last, as a plain loop would. Supports the ops of fully connected and convolution-free networks
with float32 parameters (a linear node on [..., k] works row by row); other ops, and parameters
that are not float32 numbers (a Gemm's alpha folded into a float64 weight), report that the
check was not done."""

import json
import os

import numpy as np
from safetensors.numpy import load_file

SUPPORTED = ("input", "linear", "relu", "flatten", "reshape")


def forward_float32(graph_path: str, x: np.ndarray) -> np.ndarray | None:
    """The float32 output for one input, or None when the graph has an op outside SUPPORTED."""
    with open(graph_path) as f:
        doc = json.load(f)
    params = {}
    if doc.get("weights"):
        params = load_file(os.path.join(os.path.dirname(os.path.abspath(graph_path)),
                                        doc["weights"]["path"]))
    vals = {}
    for node in doc["nodes"]:
        op = node["op"]
        if op not in SUPPORTED:
            return None
        if op == "input":
            vals[node["id"]] = np.asarray(x, dtype=np.float32).reshape(node["shape"])
            continue
        v = vals[node["inputs"][0]]
        if op == "relu":
            vals[node["id"]] = np.maximum(v, np.float32(0))
        elif op in ("flatten", "reshape"):
            vals[node["id"]] = v.reshape(node["shape"])
        else:
            w, b = (_float32(params, node["attrs"].get(key)) for key in ("weight", "bias"))
            if w is None or (b is None and node["attrs"].get("bias")):
                return None
            rows = v.reshape(-1, w.shape[1])  # (the IR's linear acts on the last axis)
            acc = np.zeros((rows.shape[0], w.shape[0]), dtype=np.float32)
            for k in range(w.shape[1]):  # left to right; float32 vector ops round each step
                acc = acc + rows[:, k:k + 1] * w[:, k]
            if b is not None:
                acc = acc + b
            vals[node["id"]] = acc.reshape(node["shape"])
    return vals[doc["outputs"][0]].reshape(-1)


def _float32(params: dict, name) -> np.ndarray | None:
    """A parameter as float32 when every value is a float32 number, else None."""
    if not name:
        return None
    p = params[name]
    f = p.astype(np.float32)
    return f if p.dtype == np.float32 or np.array_equal(f.astype(p.dtype), p) else None
