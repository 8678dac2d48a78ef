"""Float64 forward evaluation of `tl.graph.v1` graphs in NumPy, for producers (attacks, search).
Untrusted and approximate by design: the kernel re-evaluates every point it is handed, exactly."""

import json
import os
from fractions import Fraction

import numpy as np
from safetensors.numpy import load_file


class NumpyGraph:
    """A graph document with its weights as float64 arrays; `forward(x)` runs a batch [B, *in]."""

    def __init__(self, graph_path: str):
        with open(graph_path) as f:
            self.doc = json.load(f)
        self.params = {}
        if self.doc.get("weights"):
            wpath = os.path.join(os.path.dirname(os.path.abspath(graph_path)),
                                 self.doc["weights"]["path"])
            self.params = {k: v.astype(np.float64) for k, v in load_file(wpath).items()}
        self.nodes = self.doc["nodes"]
        self.input = next(n for n in self.nodes if n["op"] == "input")
        self.outputs = self.doc["outputs"]

    def param(self, attr):
        if isinstance(attr, str):
            return self.params[attr]
        if "values" in attr:
            return np.array([float(Fraction(str(v))) for v in attr["values"]]
                            ).reshape(attr["shape"])
        raise ValueError("inline base64 constants are not supported by the numpy forward")

    def forward(self, x: np.ndarray, node: str | None = None) -> np.ndarray:
        """Batched evaluation: x has shape [B, *input shape]; returns [B, *node shape]."""
        vals = {}
        target = node or self.outputs[0]
        for nd in self.nodes:
            op, a = nd["op"], nd.get("attrs", {})
            args = [vals[i] for i in nd["inputs"]]
            vals[nd["id"]] = x if op == "input" else _apply(op, a, args, nd, self)
            if nd["id"] == target:
                break
        return vals[target]


def _windows(x, kernel, stride, padding, dilation, fill):
    b, c, h, w = x.shape
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    kh, kw = kernel
    oh = (h + 2 * ph - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.empty((b, c, kh * kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dilation[0], j * dilation[1]
            out[:, :, i * kw + j] = xp[:, :, hs:hs + stride[0] * (oh - 1) + 1:stride[0],
                                       ws:ws + stride[1] * (ow - 1) + 1:stride[1]]
    return out


def _apply(op, a, args, nd, g):
    if op == "const":
        return g.param(a["value"])[None]
    if op == "linear":
        y = args[0] @ g.params[a["weight"]].T
        return y + g.params[a["bias"]] if a.get("bias") else y
    if op == "relu":
        return np.maximum(args[0], 0)
    if op in ("add", "sub", "mul"):
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op](*args)
    if op == "neg":
        return -args[0]
    if op == "abs":
        return np.abs(args[0])
    if op == "matmul":
        return args[0] @ args[1]
    if op in ("flatten", "reshape"):
        return args[0].reshape((args[0].shape[0],) + tuple(nd["shape"]))
    if op == "transpose":
        return np.transpose(args[0], [0] + [p + 1 for p in a["perm"]])
    if op == "concat":
        return np.concatenate(args, axis=a["axis"] % len(nd["shape"]) + 1)
    if op in ("sum", "mean"):
        axes = tuple(range(1, args[0].ndim)) if a.get("axes") is None else tuple(
            ax % (args[0].ndim - 1) + 1 for ax in a["axes"])
        f = np.sum if op == "sum" else np.mean
        return f(args[0], axis=axes, keepdims=bool(a.get("keepdims", False)))
    if op == "batchnorm":
        p = {k: g.params[a[k]] for k in ("weight", "bias", "running_mean", "running_var")}
        shape = (1, -1) + (1,) * (args[0].ndim - 2)
        scale = p["weight"] / np.sqrt(p["running_var"] + float(a["eps"]))
        return (args[0] - p["running_mean"].reshape(shape)) * scale.reshape(shape) + \
            p["bias"].reshape(shape)
    if op == "conv2d":
        w = g.params[a["weight"]]
        groups = a.get("groups", 1)
        o, cg, kh, kw = w.shape
        cols = _windows(args[0], (kh, kw), a.get("stride", [1, 1]), a.get("padding", [0, 0]),
                        a.get("dilation", [1, 1]), 0.0)
        b, c, k, oh, ow = cols.shape
        og = o // groups
        outs = []
        for gi in range(groups):
            cg_cols = cols[:, gi * cg:(gi + 1) * cg].reshape(b, cg * k, oh * ow)
            outs.append(np.einsum("ok,bkp->bop", w[gi * og:(gi + 1) * og].reshape(og, -1), cg_cols))
        y = np.concatenate(outs, axis=1).reshape(b, o, oh, ow)
        return y + g.params[a["bias"]].reshape(1, -1, 1, 1) if a.get("bias") else y
    if op in ("maxpool2d", "avgpool2d"):
        kernel = a["kernel"]
        stride = a.get("stride") or kernel
        padding = a.get("padding", [0, 0])
        if op == "maxpool2d":
            return _windows(args[0], kernel, stride, padding, a.get("dilation", [1, 1]),
                            -np.inf).max(axis=2)
        s = _windows(args[0], kernel, stride, padding, [1, 1], 0.0).sum(axis=2)
        if a.get("count_include_pad", True):
            return s / (kernel[0] * kernel[1])
        ones = np.ones((1,) + args[0].shape[1:])
        return s / _windows(ones, kernel, stride, padding, [1, 1], 0.0).sum(axis=2)
    raise ValueError(f"node {nd['id']!r}: op {op!r} is not supported by the numpy forward")
