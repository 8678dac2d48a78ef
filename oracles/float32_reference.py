"""Float32 execution of a graph in the reference order (untrusted; for reporting only): every
dot product summed left to right, one rounding per multiply and per add (no FMA), bias added
last, as a plain loop would. Supports the ops of fully connected and convolution-free networks;
other ops report that the check was not done."""

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
            w = params[node["attrs"]["weight"]].astype(np.float32)
            acc = np.zeros(w.shape[0], dtype=np.float32)
            for k in range(w.shape[1]):  # left to right; float32 vector ops round each step
                acc = acc + w[:, k] * v[k]
            if node["attrs"].get("bias"):
                acc = acc + params[node["attrs"]["bias"]].astype(np.float32)
            vals[node["id"]] = acc
    return vals[doc["outputs"][0]].reshape(-1)
