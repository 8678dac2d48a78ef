"""Build `tl.graph.v1` graphs in Python, functional or sequential style, and save them as
graph.json + weights.safetensors (bound by sha256). Untrusted: the kernel re-checks everything
when the graph is loaded."""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save as save_safetensors

import kernel_checker


@dataclass(frozen=True)
class Ref:
    """A node of a graph under construction."""

    id: str
    shape: tuple[int, ...]


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class GraphBuilder:
    """Functional style: `x = g.input([784]); h = g.relu(g.linear(x, W, b)); g.output(h)`."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.params: dict[str, np.ndarray] = {}
        self.outputs: list[str] = []
        self._count = 0

    def _fresh(self, op: str) -> str:
        self._count += 1
        return f"{op}{self._count}"

    def _param(self, name: str, value) -> str:
        """Floats (16, 32, 64 bits) are stored as they are; integers as float32, or float64
        when float32 cannot hold them exactly; anything else (decimal strings, fractions,
        complex numbers) is refused, never rounded."""
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind in "iub":
            ints = arr.astype(object)
            arr = next((f for f in (arr.astype(np.float32), arr.astype(np.float64))
                        if (f.astype(object) == ints).all()), None)
            if arr is None:
                raise ValueError(f"parameter {name}: integers beyond float64's exact range")
        elif arr.dtype not in (np.float32, np.float64, np.float16):
            raise ValueError(f"parameter {name}: expected an array of real floats or integers, "
                             f"found dtype {arr.dtype} (values are stored in binary exactly "
                             "as given: convert them yourself, e.g. to np.float32)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"parameter {name}: NaN or Inf values")
        self.params[name] = arr
        return name

    def _add(self, op: str, inputs: list[Ref], shape, attrs=None, name=None) -> Ref:
        nid = name or self._fresh(op)
        self.nodes.append({"id": nid, "op": op, "inputs": [r.id for r in inputs],
                           "shape": [int(d) for d in shape], "attrs": attrs or {}})
        return Ref(nid, tuple(int(d) for d in shape))

    def input(self, shape, name: str = "x") -> Ref:
        return self._add("input", [], shape, name=name)

    def const(self, value, name: str | None = None) -> Ref:
        nid = name or self._fresh("const")
        arr = np.asarray(value)  # (as linear's weights: a list of Python floats is float64)
        self._param(f"{nid}.value", arr)
        return self._add("const", [], arr.shape, {"value": f"{nid}.value"}, name=nid)

    def linear(self, x: Ref, weight, bias=None, name: str | None = None) -> Ref:
        nid = name or self._fresh("linear")
        w = np.asarray(weight)
        attrs = {"weight": self._param(f"{nid}.weight", w)}
        if bias is not None:
            attrs["bias"] = self._param(f"{nid}.bias", np.asarray(bias))
        return self._add("linear", [x], x.shape[:-1] + (w.shape[0],), attrs, name=nid)

    def conv2d(self, x: Ref, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
               groups: int = 1, name: str | None = None) -> Ref:
        nid = name or self._fresh("conv")
        w = np.asarray(weight)
        attrs = {"weight": self._param(f"{nid}.weight", w), "stride": list(stride),
                 "padding": list(padding), "dilation": list(dilation), "groups": groups}
        if bias is not None:
            attrs["bias"] = self._param(f"{nid}.bias", np.asarray(bias))
        _, h, wd = x.shape
        shape = (w.shape[0], _conv_out(h, w.shape[2], stride[0], padding[0], dilation[0]),
                 _conv_out(wd, w.shape[3], stride[1], padding[1], dilation[1]))
        return self._add("conv2d", [x], shape, attrs, name=nid)

    def _pool(self, op, x, kernel, stride, padding, extra, dilation=(1, 1)):
        stride = stride or kernel
        c, h, w = x.shape
        shape = (c, _conv_out(h, kernel[0], stride[0], padding[0], dilation[0]),
                 _conv_out(w, kernel[1], stride[1], padding[1], dilation[1]))
        attrs = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding), **extra}
        if tuple(dilation) != (1, 1):
            attrs["dilation"] = list(dilation)
        return self._add(op, [x], shape, attrs)

    def maxpool2d(self, x: Ref, kernel, stride=None, padding=(0, 0), dilation=(1, 1)) -> Ref:
        return self._pool("maxpool2d", x, kernel, stride, padding, {}, dilation)

    def avgpool2d(self, x: Ref, kernel, stride=None, padding=(0, 0), count_include_pad=True) -> Ref:
        return self._pool("avgpool2d", x, kernel, stride, padding,
                          {"count_include_pad": count_include_pad})

    def batchnorm(self, x: Ref, weight, bias, running_mean, running_var, eps="1e-5",
                  name: str | None = None) -> Ref:
        nid = name or self._fresh("bn")
        attrs = {k: self._param(f"{nid}.{k}", np.asarray(v)) for k, v in
                 (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                  ("running_var", running_var))}
        attrs["eps"] = str(eps)
        return self._add("batchnorm", [x], x.shape, attrs, name=nid)

    def relu(self, x: Ref) -> Ref:
        return self._add("relu", [x], x.shape)

    def neg(self, x: Ref) -> Ref:
        return self._add("neg", [x], x.shape)

    def abs(self, x: Ref) -> Ref:
        return self._add("abs", [x], x.shape)

    def tanh(self, x: Ref) -> Ref:
        return self._add("tanh", [x], x.shape)

    def sigmoid(self, x: Ref) -> Ref:
        return self._add("sigmoid", [x], x.shape)

    def exp(self, x: Ref) -> Ref:
        return self._add("exp", [x], x.shape)

    def log(self, x: Ref) -> Ref:
        return self._add("log", [x], x.shape)

    def sin(self, x: Ref) -> Ref:
        return self._add("sin", [x], x.shape)

    def cos(self, x: Ref) -> Ref:
        return self._add("cos", [x], x.shape)

    def _binary(self, op, a: Ref, b: Ref) -> Ref:
        return self._add(op, [a, b], np.broadcast_shapes(a.shape, b.shape))

    def add(self, a: Ref, b: Ref) -> Ref:
        return self._binary("add", a, b)

    def sub(self, a: Ref, b: Ref) -> Ref:
        return self._binary("sub", a, b)

    def mul(self, a: Ref, b: Ref) -> Ref:
        return self._binary("mul", a, b)

    def matmul(self, a: Ref, b: Ref) -> Ref:
        return self._add("matmul", [a, b], a.shape[:-1] + b.shape[1:])

    def flatten(self, x: Ref, start_dim: int = 0) -> Ref:
        return self._add("flatten", [x], x.shape[:start_dim] + (int(np.prod(x.shape[start_dim:])),),
                         {"start_dim": start_dim})

    def reshape(self, x: Ref, shape) -> Ref:
        shape = list(np.empty(x.shape, dtype=np.int8).reshape(shape).shape)
        return self._add("reshape", [x], shape, {"shape": shape})

    def transpose(self, x: Ref, perm) -> Ref:
        return self._add("transpose", [x], tuple(x.shape[p] for p in perm), {"perm": list(perm)})

    def concat(self, parts: list[Ref], axis: int) -> Ref:
        ax = axis % len(parts[0].shape)
        shape = list(parts[0].shape)
        shape[ax] = sum(p.shape[ax] for p in parts)
        return self._add("concat", parts, shape, {"axis": ax})

    def _reduce(self, op, x, axes, keepdims):
        axes_n = sorted(a % len(x.shape) for a in axes) if axes is not None else list(
            range(len(x.shape)))
        shape = tuple(1 if i in axes_n else d for i, d in enumerate(x.shape)) if keepdims else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes_n)
        attrs = {"keepdims": keepdims}
        if axes is not None:
            attrs["axes"] = list(axes)
        return self._add(op, [x], shape, attrs)

    def sum(self, x: Ref, axes=None, keepdims=False) -> Ref:
        return self._reduce("sum", x, axes, keepdims)

    def mean(self, x: Ref, axes=None, keepdims=False) -> Ref:
        return self._reduce("mean", x, axes, keepdims)

    def output(self, *refs: Ref) -> None:
        self.outputs.extend(r.id for r in refs)

    def save(self, folder: str, weights_name: str = "weights.safetensors") -> str:
        """Write graph.json and the weights file; return the graph file's path."""
        if not self.nodes:
            raise ValueError("the graph has no nodes: add an input and at least one op first")
        os.makedirs(folder, exist_ok=True)
        doc = {"format": "tl.graph.v1", "nodes": self.nodes,
               "outputs": self.outputs or [self.nodes[-1]["id"]]}
        if self.params:
            data = save_safetensors(self.params)
            with open(os.path.join(folder, weights_name), "wb") as f:
                f.write(data)
            doc["weights"] = {"path": weights_name, "sha256": hashlib.sha256(data).hexdigest()}
        path = os.path.join(folder, "graph.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        return path


class Sequential:
    """Sequential style: `Sequential([Linear(W1, b1), ReLU(), Linear(W2, b2)]).save(dir, [784])`."""

    def __init__(self, layers: list):
        self.layers = layers

    def build(self, input_shape) -> GraphBuilder:
        g = GraphBuilder()
        x = g.input(tuple(input_shape))
        for layer in self.layers:
            x = layer(g, x)
        g.output(x)
        return g

    def save(self, folder: str, input_shape) -> str:
        return self.build(input_shape).save(folder)


def Linear(weight, bias=None):  # noqa: N802 - layer constructors read like classes
    return lambda g, x: g.linear(x, weight, bias)


def ReLU():  # noqa: N802
    return lambda g, x: g.relu(x)


def Conv2d(weight, bias=None, **kw):  # noqa: N802
    return lambda g, x: g.conv2d(x, weight, bias, **kw)


def Flatten():  # noqa: N802
    return lambda g, x: g.flatten(x)


def MaxPool2d(kernel, stride=None):  # noqa: N802
    return lambda g, x: g.maxpool2d(x, kernel, stride)


def AvgPool2d(kernel, stride=None):  # noqa: N802
    return lambda g, x: g.avgpool2d(x, kernel, stride)


def load(path: str) -> kernel_checker.Graph:
    """Load and check a saved graph with the kernel."""
    return kernel_checker.load_graph(path)
