"""PyTorch -> `tl.graph.v1`: torch.export capture, lowered through one exact ATen table.

`export_module(module, example_inputs, out_dir)` captures the module with `torch.export.export`,
takes the user inputs and the parameters, buffers and constants from the exported program's
graph signature (never "the first placeholder"), and lowers every call through `ATEN_OPS`, a
table keyed by the full op name (`aten.relu.default`, `aten.flatten.using_ints`, ...). A name
that is not a key fails closed, naming the node, the op and the supported set: no prefix or
substring matching (log_softmax is not log, sinh is not sin, expand is not exp). Conv and pool
read every argument and refuse what the IR cannot express (transposed or asymmetric padding,
ceil_mode that changes the shape, divisor_override, ...).

The writer (`IRWriter`, shared with the ONNX importer) strips the batch dimension: the IR has
none, so a source tensor [1, *s] is the IR tensor [*s] ("batched"). Ops that touch dimension 0
run on the full source shape instead and the result is reshaped back; reshapes are exact, so the
graph computes the same real function. Outputs [1, *s] become [*s]. Constants are kept exact:
`x / 3` becomes `x * (1/3)` with the rational 1/3 written inline ("1/3"), and folding of
constant subexpressions uses exact rationals; float tensors keep their dtype in the safetensors
file (bfloat16 graph parameters are widened to float32, which is exact).

Writes DIR/graph.json, DIR/weights.safetensors and DIR/manifest.json (tl.weights_manifest.v1).
Untrusted producer: the kernel re-checks the graph (`tl graph`); that the graph computes what
the module does is not checked per export (tests/test_torch_export.py compares the ATen table
with `module.double()`), and the registered assumption `producer.pytorch.export_agreement` is
not emitted by this module.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from oracles.state_dict import raw_from_numpy, write_weights

GRAPH_NAME = "graph.json"


class ExportError(ValueError):
    """A fail-closed refusal: which source node, which op, why (and what is supported)."""

    def __init__(self, node: str, op: str, message: str, supported=None):
        text = f"node {node!r} (op {op}): {message}"
        if supported is not None:
            text += f"; supported: {', '.join(sorted(supported))}"
        super().__init__(text)
        self.node, self.op, self.message = node, op, message


# ----------------------------------------------------------------------------- exact constants

@dataclass(frozen=True, eq=False)
class Const:
    """A constant tensor: float/int numpy array, or an object array of Fractions. `name` is a
    weights-store name holding exactly `value`; `transposed_name` one holding `value.T`."""

    value: np.ndarray
    name: str | None = None
    transposed_name: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


_FRACTION = np.frompyfunc(Fraction, 1, 1)


def exact(value: np.ndarray) -> np.ndarray:
    """Any numeric array as an object array of Fractions, exactly."""
    if value.dtype == object:
        return value
    if value.dtype.kind == "f" or str(value.dtype) == "bfloat16":
        value = value.astype(np.float64)
    elif value.dtype.kind not in "iub":
        raise ValueError(f"dtype {value.dtype} is not numeric")
    return np.asarray(_FRACTION(value.astype(object)), dtype=object).reshape(value.shape)


def narrow(values: np.ndarray, dtypes: list) -> np.ndarray:
    """Exact Fractions as the narrowest of `dtypes` (ints, then the widest float among them,
    then float64) that holds every value exactly; else the Fractions themselves."""
    flat = list(values.reshape(-1))
    if any(d.kind in "iu" for d in dtypes) and all(v.denominator == 1 for v in flat):
        if all(-(2**63) <= v < 2**63 for v in flat):
            return np.array([int(v) for v in flat], dtype=np.int64).reshape(values.shape)
    floats = [d for d in dtypes if d.kind == "f"]
    for dtype in ([max(floats, key=lambda d: d.itemsize)] if floats else []) + [np.float64]:
        with np.errstate(over="ignore"):
            arr = np.array([float(v) for v in flat], dtype=dtype)
        if np.isfinite(arr).all() and all(Fraction(float(x)) == v for x, v in zip(arr, flat)):
            return arr.reshape(values.shape)
    return values


def fold(op: str, a: Const, b: Const) -> Const:
    """A binary op on two constants, exactly (div is true division)."""
    x, y = exact(a.value), exact(b.value)
    if op == "div" and any(v == 0 for v in y.reshape(-1)):
        raise ZeroDivisionError("division by a constant with a zero entry")
    result = np.asarray({"add": np.add, "sub": np.subtract, "mul": np.multiply,
                         "div": np.divide}[op](x, y), dtype=object)
    return Const(narrow(result, [a.value.dtype, b.value.dtype]))


def float_text(value: float) -> str:
    """The exact binary64 value of a Python float as a kernel number ("f64:<bits>")."""
    return "f64:" + struct.pack(">d", float(value)).hex()


def _rational_text(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


# ----------------------------------------------------------------------------- the IR writer

@dataclass(frozen=True)
class Act:
    """A tensor computed from the inputs: IR node `id`; `shape` is the source (full) shape; when
    `batched`, the IR tensor is shape[1:] and shape[0] == 1."""

    id: str
    shape: tuple[int, ...]
    batched: bool

    @property
    def ir(self) -> tuple[int, ...]:
        return self.shape[1:] if self.batched else self.shape


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


@dataclass
class ExportResult:
    graph_path: str
    weights_path: str
    manifest_path: str
    graph: object  # kernel_checker.Graph when checked, else None
    inputs: list
    outputs: list


class IRWriter:
    """Builds a tl.graph.v1 document from source-framework ops (see the module docstring)."""

    def __init__(self, batch: bool = True):
        self.batch = batch
        self.nodes: list[dict] = []
        self.params: dict[str, np.ndarray] = {}
        self.outputs: list[str] = []
        self._ids: set[str] = set()

    # -- nodes and parameters
    def _fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", hint) or "v"
        if not re.match(r"[A-Za-z_]", base):
            base = "n_" + base
        nid, k = base, 1
        while nid in self._ids:
            k += 1
            nid = f"{base}_{k}"
        self._ids.add(nid)
        return nid

    def emit(self, op: str, inputs: list[str], shape, attrs: dict | None = None,
             hint: str | None = None, batched: bool = False) -> Act:
        shape = tuple(int(d) for d in shape)
        nid = self._fresh(hint or op)
        ir = shape[1:] if batched else shape
        self.nodes.append({"id": nid, "op": op, "inputs": list(inputs), "shape": list(ir),
                           "attrs": attrs or {}})
        return Act(nid, shape, batched)

    def param(self, name: str, value: np.ndarray) -> str:
        """Store a float parameter under `name` (a fresh variant if taken by another value)."""
        value = np.asarray(value)
        if value.dtype == object:
            value = narrow(value, [np.dtype(np.float64)])
            if value.dtype == object:
                raise ValueError(f"parameter {name}: values are not exact binary64 floats")
        if value.dtype.kind != "f" and str(value.dtype) != "bfloat16":
            value = narrow(exact(value), [np.dtype(np.float64)])
        base, k = name, 1
        while name in self.params:
            old = self.params[name]
            if old.dtype == value.dtype and old.shape == value.shape and np.array_equal(old, value):
                return name
            k += 1
            name = f"{base}~{k}"
        self.params[name] = np.asarray(value, order="C")
        return name

    def const(self, c: Const, hint: str = "const", drop_batch: bool = False) -> str:
        """A const node for `c` (its leading 1 dropped when `drop_batch`); returns its id."""
        value, name = c.value, c.name
        if drop_batch:
            value, name = value.reshape(value.shape[1:]), None
        nid = self._fresh(hint)
        if value.dtype == object or value.dtype.kind in "iub":
            vals = exact(value)
            attr = {"shape": list(value.shape), "values": [_rational_text(v)
                                                           for v in vals.reshape(-1)]}
        else:
            attr = self.param(name or f"{nid}.value", value)
        self.nodes.append({"id": nid, "op": "const", "inputs": [], "shape": list(value.shape),
                           "attrs": {"value": attr}})
        return nid

    # -- batch handling
    def input(self, name: str, shape) -> Act:
        shape = tuple(int(d) for d in shape)
        if self.batch and (not shape or shape[0] != 1):
            raise ExportError(name, "input", f"expected a leading batch dimension of size 1, "
                              f"found shape {list(shape)} (the IR has no batch dimension)")
        return self.emit("input", [], shape, hint=name, batched=self.batch)

    def full(self, a: Act) -> Act:
        if not a.batched:
            return a
        return self.emit("reshape", [a.id], a.shape, {"shape": list(a.shape)},
                         hint=f"{a.id}/full")

    def settle(self, a: Act) -> Act:
        """A full-shape value with a leading 1 back in batched form (when batching)."""
        if a.batched or not self.batch or not a.shape or a.shape[0] != 1:
            return a
        return self.emit("reshape", [a.id], a.shape, {"shape": list(a.shape[1:])},
                         hint=f"{a.id}/batched", batched=True)

    def need_batched(self, a: Act, node: str, op: str, rank: int | None = None) -> Act:
        a = self.settle(a)
        if not a.batched or (rank is not None and len(a.shape) != rank):
            raise ExportError(node, op, f"expected a batched input [1, C, ...]"
                              f"{f' of rank {rank}' if rank else ''}, found {list(a.shape)}")
        return a

    # -- ops
    def reshape_to(self, a: Act, shape, hint: str = "reshape") -> Act:
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) != int(np.prod(a.shape)):
            raise ValueError(f"cannot reshape {list(a.shape)} to {list(shape)}")
        batched = self.batch and bool(shape) and shape[0] == 1
        target = shape[1:] if batched else shape
        if target == a.ir:
            return Act(a.id, shape, batched)
        if len(target) == 1:
            return self.emit("flatten", [a.id], shape, {"start_dim": 0}, hint, batched)
        return self.emit("reshape", [a.id], shape, {"shape": list(target)}, hint, batched)

    def unary(self, op: str, a: Act, attrs: dict | None = None, hint: str | None = None) -> Act:
        return self.emit(op, [a.id], a.shape, attrs, hint or op, a.batched)

    def binary(self, op: str, a, b, hint: str | None = None):
        """add/sub/mul/div of Acts and Consts (numpy broadcasting); div only by a constant,
        as multiplication by its exact reciprocal."""
        if isinstance(a, Const) and isinstance(b, Const):
            return fold(op, a, b)
        if op == "div":
            if not isinstance(b, Const):
                raise ValueError("division by a computed tensor is not in the IR")
            b = fold("div", Const(np.array(1.0)), b)
            op = "mul"
        out = tuple(np.broadcast_shapes(a.shape, b.shape))
        for x, y in ((a, b), (b, a)):
            if isinstance(y, Const) and isinstance(x, Act) and out == x.shape:
                flat = exact(y.value).reshape(-1)
                if (op == "add" or (op == "sub" and y is b)) and all(v == 0 for v in flat):
                    return x
                if op == "mul" and all(v == 1 for v in flat):
                    return x
        acts = [x for x in (a, b) if isinstance(x, Act)]
        consts = [x for x in (a, b) if isinstance(x, Const)]
        batched = (self.batch and out and out[0] == 1
                   and all(x.batched and len(x.shape) == len(out) for x in acts)
                   and all(len(c.shape) < len(out) or c.shape[0] == 1 for c in consts))
        ids = []
        for x in (a, b):
            if isinstance(x, Const):
                ids.append(self.const(x, f"{hint or op}.c", batched and x.value.ndim == len(out)))
            else:
                ids.append(x.id if batched else self.full(x).id)
        r = self.emit(op, ids, out, hint=hint or op, batched=batched)
        return r if batched else self.settle(r)

    def linear(self, a: Act, weight: Const, bias: Const | None, hint: str = "linear") -> Act:
        w = weight.value
        if w.ndim != 2 or not a.shape or a.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input {list(a.shape)} and weight {list(w.shape)} differ")
        n = w.shape[0]
        if bias is not None:
            bv, bname = bias.value, bias.name
            if bv.shape != (n,):  # [1, .., 1, N] or a scalar: the same bias for every row
                if bv.ndim > len(a.shape) or any(d != 1 for d in bv.shape[:-1]) or (
                        bv.ndim and bv.shape[-1] not in (1, n)):
                    raise ValueError(f"linear: bias {list(bv.shape)} does not broadcast to [{n}]")
                bv, bname = np.ascontiguousarray(np.broadcast_to(bv.reshape(-1), (n,))), None
            if bv.dtype == object and narrow(bv, [np.dtype(np.float64)]).dtype == object:
                raise ValueError("linear: the bias is not exact in binary64")
        attrs = {"weight": self.param(weight.name or f"{hint}.weight", w)}
        if bias is not None:
            attrs["bias"] = self.param(bname or f"{hint}.bias", bv)
        if a.batched and len(a.shape) == 1:
            a = self.full(a)
        return self.emit("linear", [a.id], a.shape[:-1] + (w.shape[0],), attrs, hint, a.batched)

    def fuse_bias(self, a: Act, c: Const) -> Act | None:
        """`a + c` as the bias of the linear node `a`, when `a` is the last node emitted, has no
        bias yet and `c` is constant along every axis but the last; else None. The caller
        guarantees that nothing else reads `a`."""
        node = self.nodes[-1] if self.nodes else None
        if node is None or node["id"] != a.id or node["op"] != "linear" or "bias" in node[
                "attrs"] or a.id in self.outputs:
            return None
        value = c.value
        if a.batched and value.ndim == len(a.shape):
            value = value.reshape(value.shape[1:])
        n = a.shape[-1]
        if value.ndim > len(a.ir) or any(d != 1 for d in value.shape[:-1]) or (
                value.ndim and value.shape[-1] not in (1, n)) or value.dtype.kind != "f":
            return None
        bias = np.ascontiguousarray(np.broadcast_to(value.reshape(-1), (n,)))
        name = c.name if c.name and value.shape == (n,) else f"{a.id}.bias"
        node["attrs"]["bias"] = self.param(name, bias)
        return a

    def matmul(self, a: Act, b, hint: str = "matmul") -> Act:
        if isinstance(b, Const):
            if b.value.ndim == 2:
                name = b.transposed_name or (f"{b.name}.T" if b.name else None)
                return self.linear(a, Const(b.value.T, name), None, hint)
            if b.value.ndim == 1 and len(a.shape) >= 2:
                a = self.settle(a)
                cid = self.const(b, f"{hint}.c")
                return self.emit("matmul", [a.id, cid], a.shape[:-1], hint=hint,
                                 batched=a.batched)
            raise ValueError(f"matmul by a constant of shape {list(b.shape)} is not supported")
        a, b = self.settle(a), self.settle(b)
        out = np.matmul(np.broadcast_to(np.zeros(1), a.shape),
                        np.broadcast_to(np.zeros(1), b.shape)).shape
        if len(b.shape) <= 2 and a.batched and len(a.shape) >= 2:
            return self.emit("matmul", [a.id, self.full(b).id], out, hint=hint, batched=True)
        if len(b.shape) == 3 and b.batched and a.batched and len(a.shape) >= 3:
            return self.emit("matmul", [a.id, b.id], out, hint=hint, batched=True)
        raise ValueError(f"matmul of {list(a.shape)} by {list(b.shape)}: the IR's matmul takes "
                         "[..., n, k] times [k, m] or [k] (no batch dimensions on the right)")

    def conv2d(self, a: Act, weight: Const, bias: Const | None, stride, padding, dilation,
               groups: int, hint: str = "conv2d") -> Act:
        a = self.need_batched(a, hint, "conv2d", 4)
        w = weight.value
        _, c, h, wd = a.shape
        if w.ndim != 4 or w.shape[1] * groups != c:
            raise ValueError(f"weight {list(w.shape)} and groups {groups} do not fit {c} "
                             "input channels")
        attrs = {"weight": self.param(weight.name or f"{hint}.weight", w),
                 "stride": list(stride), "padding": list(padding), "dilation": list(dilation),
                 "groups": int(groups)}
        if bias is not None:
            attrs["bias"] = self.param(bias.name or f"{hint}.bias", bias.value.reshape(-1))
        out = (1, w.shape[0], _out_size(h, w.shape[2], stride[0], padding[0], dilation[0]),
               _out_size(wd, w.shape[3], stride[1], padding[1], dilation[1]))
        return self.emit("conv2d", [a.id], out, attrs, hint, True)

    def pool(self, op: str, a: Act, kernel, stride, padding, dilation=(1, 1),
             count_include_pad: bool | None = None, hint: str | None = None) -> Act:
        a = self.need_batched(a, hint or op, op, 4)
        _, c, h, w = a.shape
        attrs = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding),
                 "dilation": list(dilation)}
        if count_include_pad is not None:
            attrs["count_include_pad"] = bool(count_include_pad)
        out = (1, c, _out_size(h, kernel[0], stride[0], padding[0], dilation[0]),
               _out_size(w, kernel[1], stride[1], padding[1], dilation[1]))
        return self.emit(op, [a.id], out, attrs, hint or op, True)

    def batchnorm(self, a: Act, weight: Const, bias: Const, mean: Const, var: Const,
                  eps: float, hint: str = "batchnorm") -> Act:
        a = self.need_batched(a, hint, "batchnorm")
        if len(a.shape) < 2:
            raise ValueError(f"batchnorm needs [1, C, ...], found {list(a.shape)}")
        attrs = {key: self.param(c.name or f"{hint}.{key}", c.value.reshape(-1))
                 for key, c in (("weight", weight), ("bias", bias), ("running_mean", mean),
                                ("running_var", var))}
        attrs["eps"] = float_text(eps)
        return self.emit("batchnorm", [a.id], a.shape, attrs, hint, True)

    def transpose(self, a: Act, perm, hint: str = "transpose") -> Act:
        perm = [int(p) % len(a.shape) for p in perm]
        out = tuple(a.shape[p] for p in perm)
        if perm == list(range(len(perm))):
            return a
        if a.batched and perm[0] == 0:
            return self.emit("transpose", [a.id], out, {"perm": [p - 1 for p in perm[1:]]},
                             hint, True)
        r = self.emit("transpose", [self.full(a).id], out, {"perm": perm}, hint)
        return self.settle(r)

    def concat(self, parts: list, axis: int, hint: str = "concat") -> Act:
        rank = len(parts[0].shape)
        axis = axis % rank
        out = list(parts[0].shape)
        out[axis] = sum(p.shape[axis] for p in parts)
        batched = (self.batch and axis != 0 and out[0] == 1
                   and all(p.batched if isinstance(p, Act) else True for p in parts))
        ids = []
        for p in parts:
            if isinstance(p, Const):
                ids.append(self.const(p, f"{hint}.c", drop_batch=batched))
            else:
                ids.append(p.id if batched else self.full(p).id)
        r = self.emit("concat", ids, out, {"axis": axis - 1 if batched else axis}, hint, batched)
        return r if batched else self.settle(r)

    def softmax(self, a: Act, axis: int, hint: str = "softmax") -> Act:
        axis = axis % len(a.shape)
        if a.batched and axis != 0:
            return self.emit("softmax", [a.id], a.shape, {"axis": axis - 1}, hint, True)
        return self.settle(self.emit("softmax", [self.full(a).id], a.shape, {"axis": axis}, hint))

    def reduce(self, op: str, a: Act, axes, keepdims: bool, hint: str | None = None) -> Act:
        rank = len(a.shape)
        axes = sorted({int(x) % rank for x in axes}) if axes else list(range(rank))
        out = tuple(1 if i in axes else d for i, d in enumerate(a.shape)) if keepdims else \
            tuple(d for i, d in enumerate(a.shape) if i not in axes)
        if a.batched and 0 not in axes:
            return self.emit(op, [a.id], out, {"axes": [x - 1 for x in axes],
                                              "keepdims": keepdims}, hint or op, True)
        r = self.emit(op, [self.full(a).id], out, {"axes": axes, "keepdims": keepdims},
                      hint or op)
        return self.settle(r)

    def output(self, a) -> str:
        if isinstance(a, Const):
            nid = self.const(a, "output")
        else:
            nid = self.settle(a).id
        self.outputs.append(nid)
        return nid

    # -- writing
    def save(self, folder: str, metadata: dict | None = None, check: bool = True,
             inputs: list | None = None) -> ExportResult:
        """Write graph.json, weights.safetensors and manifest.json; with `check`, load the
        graph back with the kernel (well-formedness, shapes, weights binding)."""
        os.makedirs(folder, exist_ok=True)
        doc = {"format": "tl.graph.v1", "nodes": self.nodes, "outputs": self.outputs}
        weights_path = manifest_path = None
        if self.params:
            raws = {name: raw_from_numpy(name, arr) for name, arr in self.params.items()}
            written = write_weights(raws, folder, source=metadata)
            doc["weights"] = {"path": os.path.basename(written.weights_path),
                              "sha256": written.sha256}
            weights_path, manifest_path = written.weights_path, written.manifest_path
        if metadata:
            doc["metadata"] = metadata
        path = os.path.join(folder, GRAPH_NAME)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        graph = None
        if check:
            import kernel_checker
            from kernel_checker.contracts import check_state_dict

            graph = kernel_checker.load_graph(path)
            if weights_path:
                with open(weights_path, "rb") as f:
                    check_state_dict(written.manifest, f.read())
        return ExportResult(path, weights_path, manifest_path, graph, inputs or [],
                            list(self.outputs))


# ----------------------------------------------------------------------------- torch lowering

def op_name(target) -> str:
    """The full name an FX call target is looked up by: `aten.relu.default`, `_operator.getitem`."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', repr(target))}"


@dataclass
class _Ctx:
    writer: IRWriter
    node: object  # torch.fx.Node
    name: str  # op name

    def fail(self, message: str) -> ExportError:
        return ExportError(self.node.name, self.name, message)


def _args(node, env: dict) -> dict:
    """Every schema argument of an ATen call by name (positional, keyword or default), with FX
    nodes replaced by their lowered values."""
    import torch

    def value(v):
        if isinstance(v, torch.fx.Node):
            return env[v.name]
        if isinstance(v, list | tuple):
            return [value(x) for x in v]
        return v

    out = {}
    schema = node.target._schema
    for i, arg in enumerate(schema.arguments):
        if not arg.kwarg_only and i < len(node.args):
            out[arg.name] = value(node.args[i])
        elif arg.name in node.kwargs:
            out[arg.name] = value(node.kwargs[arg.name])
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            raise ExportError(node.name, str(node.target), f"argument {arg.name!r} missing")
    return out


def _pair(v, what: str) -> list[int]:
    v = [int(x) for x in (v if isinstance(v, list | tuple) else [v])]
    if len(v) == 1:
        v = v * 2
    if len(v) != 2:
        raise ValueError(f"{what}: expected 1 or 2 values, found {v}")
    return v


def _scalar(v) -> Const:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number, found {v!r}")
    return Const(np.array(v, dtype=np.int64 if isinstance(v, int) else np.float64))


def _operand(v):
    return v if isinstance(v, Act | Const) else _scalar(v)


def _act(ctx: _Ctx, v, what: str = "input") -> Act:
    if not isinstance(v, Act):
        raise ctx.fail(f"{what} must be computed from the graph inputs, found a constant")
    return v


def _const(ctx: _Ctx, v, what: str) -> Const | None:
    if v is None or isinstance(v, Const):
        return v
    raise ctx.fail(f"{what} must be a parameter or constant, found a computed tensor")


def _unary(op: str) -> Callable:
    def lower(ctx: _Ctx, a: dict):
        return ctx.writer.unary(op, _act(ctx, a["self"]), hint=ctx.node.name)
    return lower


# ops of the table whose result may share storage with their input (an in-place op on it then
# changes that input too, which the exported graph's other readers of the input do not see)
_ALIASING = {"aten.view.default", "aten.reshape.default", "aten.flatten.using_ints",
             "aten.unflatten.int", "aten.squeeze.dim", "aten.squeeze.dims",
             "aten.unsqueeze.default", "aten.t.default", "aten.transpose.int",
             "aten.permute.default", "aten.detach.default", "aten.detach_.default",
             "aten.dropout.default", "aten.contiguous.default"}


def _inplace_unary(op: str) -> Callable:
    def lower(ctx: _Ctx, a: dict):
        src = ctx.node.args[0]
        if len(src.users) != 1:
            raise ctx.fail("in-place op on a tensor that is used elsewhere")
        if src.op != "call_function" or str(src.target) in _ALIASING:
            raise ctx.fail(f"in-place op on {'an input' if src.op != 'call_function' else 'a view'}"
                           f" ({src.name}): in torch it changes the tensor viewed too")
        return _unary(op)(ctx, a)
    return lower


def _binary(op: str) -> Callable:
    def lower(ctx: _Ctx, a: dict):
        x, y = _operand(a["self"]), _operand(a["other"])
        alpha = a.get("alpha", 1)
        if alpha != 1:
            y = ctx.writer.binary("mul", y, _scalar(alpha), hint=f"{ctx.node.name}.alpha")
        if a.get("rounding_mode") is not None:
            raise ctx.fail(f"rounding_mode {a['rounding_mode']!r} is not supported")
        return ctx.writer.binary(op, x, y, hint=ctx.node.name)
    return lower


def _identity(ctx: _Ctx, a: dict):
    if a.get("train"):
        raise ctx.fail("dropout in training mode; call module.eval() before exporting")
    return a.get("self", a.get("input"))


def _linear(ctx: _Ctx, a: dict):
    return ctx.writer.linear(_act(ctx, a["input"]), _const(ctx, a["weight"], "weight"),
                             _const(ctx, a["bias"], "bias"), ctx.node.name)


def _addmm(ctx: _Ctx, a: dict):
    w = _const(ctx, a["mat2"], "mat2")
    x, weight, bias = _act(ctx, a["mat1"], "mat1"), Const(w.value.T, w.transposed_name), a["self"]
    if a["alpha"] == 1 and a["beta"] == 1 and isinstance(bias, Const):
        try:
            return ctx.writer.linear(x, weight, bias, ctx.node.name)
        except ValueError:  # a bias that varies along rows: an explicit add below
            pass
    y = ctx.writer.linear(x, weight, None, ctx.node.name)
    if a["alpha"] != 1:
        y = ctx.writer.binary("mul", y, _scalar(a["alpha"]), f"{ctx.node.name}.alpha")
    bias = _operand(a["self"])
    if a["beta"] != 1:
        bias = ctx.writer.binary("mul", bias, _scalar(a["beta"]), f"{ctx.node.name}.beta")
    return ctx.writer.binary("add", y, bias, ctx.node.name)


def _mm(ctx: _Ctx, a: dict):
    other = a.get("mat2", a.get("other"))
    return ctx.writer.matmul(_act(ctx, a["self"]), other, ctx.node.name)


def _transpose_like(ctx: _Ctx, a: dict):
    x = a["self"]
    rank = len(x.shape)
    if ctx.name == "aten.t.default":
        perm = list(range(rank))[::-1]
    elif ctx.name == "aten.permute.default":
        perm = [int(d) % rank for d in a["dims"]]
    else:
        perm = list(range(rank))
        i, j = int(a["dim0"]) % rank, int(a["dim1"]) % rank
        perm[i], perm[j] = perm[j], perm[i]
    if isinstance(x, Const):
        tname = x.name if perm == [1, 0] else None
        back = x.transposed_name if perm == [1, 0] else None
        return Const(np.ascontiguousarray(np.transpose(x.value, perm)), back, tname)
    return ctx.writer.transpose(x, perm, ctx.node.name)


def _conv(ctx: _Ctx, a: dict):
    x = _act(ctx, a["input"])
    w = _const(ctx, a["weight"], "weight")
    if len(x.shape) != 4 or w.value.ndim != 4:
        raise ctx.fail(f"only 2-D convolution on [1, C, H, W] is supported, found input "
                       f"{list(x.shape)}, weight {list(w.shape)}")
    if ctx.name == "aten.convolution.default":
        if a["transposed"]:
            raise ctx.fail("transposed convolution is not in the IR")
        if any(int(p) != 0 for p in a["output_padding"]):
            raise ctx.fail(f"output_padding {a['output_padding']} is not supported")
    stride, dilation = _pair(a["stride"], "stride"), _pair(a["dilation"], "dilation")
    padding = a["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            total = [dilation[i] * (w.shape[2 + i] - 1) for i in range(2)]
            if any(t % 2 for t in total) or stride != [1, 1]:
                raise ctx.fail(f"padding='same' here pads asymmetrically (total {total}, stride "
                               f"{stride}); the IR's conv2d padding is symmetric [ph, pw]")
            padding = [t // 2 for t in total]
        else:
            raise ctx.fail(f"padding {padding!r} is not supported")
    return ctx.writer.conv2d(x, w, _const(ctx, a["bias"], "bias"), stride, _pair(padding,
                             "padding"), dilation, int(a["groups"]), ctx.node.name)


def _pool_geometry(ctx: _Ctx, a: dict, x: Act):
    kernel = _pair(a["kernel_size"], "kernel_size")
    stride = _pair(a["stride"], "stride") if a["stride"] else kernel
    padding = _pair(a["padding"], "padding")
    dilation = _pair(a.get("dilation", 1), "dilation")
    if a["ceil_mode"]:
        for i in range(2):
            size = x.shape[2 + i]
            if _out_size(size, kernel[i], stride[i], padding[i], dilation[i], True) != \
                    _out_size(size, kernel[i], stride[i], padding[i], dilation[i]):
                raise ctx.fail("ceil_mode=True changes the output shape here; the IR pools "
                               "with floor mode")
    return kernel, stride, padding, dilation


def _maxpool(ctx: _Ctx, a: dict):
    x = _act(ctx, a["self"])
    kernel, stride, padding, dilation = _pool_geometry(ctx, a, x)
    y = ctx.writer.pool("maxpool2d", x, kernel, stride, padding, dilation, hint=ctx.node.name)
    return (y, None) if ctx.name == "aten.max_pool2d_with_indices.default" else y


def _avgpool(ctx: _Ctx, a: dict):
    x = _act(ctx, a["self"])
    if a["divisor_override"] is not None:
        raise ctx.fail("divisor_override is not supported")
    kernel, stride, padding, _ = _pool_geometry(ctx, a, x)
    return ctx.writer.pool("avgpool2d", x, kernel, stride, padding,
                           count_include_pad=bool(a["count_include_pad"]), hint=ctx.node.name)


def _adaptive_avgpool(ctx: _Ctx, a: dict):
    x = _act(ctx, a["self"])
    out = _pair(a["output_size"], "output_size")
    size = x.shape[2:]
    if len(size) != 2 or any(s % o for s, o in zip(size, out)):
        raise ctx.fail(f"adaptive pooling {list(size)} -> {out} needs uneven windows; only "
                       "exact divisions are supported")
    kernel = [s // o for s, o in zip(size, out)]
    return ctx.writer.pool("avgpool2d", x, kernel, kernel, [0, 0], count_include_pad=True,
                           hint=ctx.node.name)


def _batchnorm(ctx: _Ctx, a: dict):
    x = _act(ctx, a["input"])
    if a.get("training"):
        raise ctx.fail("batch norm in training mode; call module.eval() before exporting")
    mean, var = _const(ctx, a["running_mean"], "running_mean"), _const(ctx, a["running_var"],
                                                                        "running_var")
    if mean is None or var is None:
        raise ctx.fail("batch norm without running statistics is not supported")
    c = x.shape[1]
    weight = _const(ctx, a["weight"], "weight") or Const(np.ones(c, dtype=mean.value.dtype))
    bias = _const(ctx, a["bias"], "bias") or Const(np.zeros(c, dtype=mean.value.dtype))
    y = ctx.writer.batchnorm(x, weight, bias, mean, var, float(a["eps"]), ctx.node.name)
    return (y, None, None) if ctx.name.startswith("aten._native_batch_norm") else y


def _getitem(ctx: _Ctx, a: dict):
    seq, index = a["seq"], a["index"]
    if not isinstance(seq, tuple) or seq[index] is None:
        raise ctx.fail(f"output {index} of a multi-output op is not supported (only the "
                       "main result is)")
    return seq[index]


def _flatten(ctx: _Ctx, a: dict):
    x = _act(ctx, a["self"])
    rank = len(x.shape)
    start, end = int(a["start_dim"]) % max(rank, 1), int(a["end_dim"]) % max(rank, 1)
    out = x.shape[:start] + (int(np.prod(x.shape[start:end + 1])),) + x.shape[end + 1:]
    if x.batched and start >= 1 and end == rank - 1:
        return ctx.writer.emit("flatten", [x.id], out, {"start_dim": start - 1}, ctx.node.name,
                               True)
    return ctx.writer.reshape_to(x, out, ctx.node.name)


def _reshape(ctx: _Ctx, a: dict):
    x = a["self"]
    shape = tuple(int(d) for d in ctx.node.meta["val"].shape)
    if isinstance(x, Const):
        return Const(x.value.reshape(shape))
    return ctx.writer.reshape_to(x, shape, ctx.node.name)


def _cat(ctx: _Ctx, a: dict):
    parts = list(a["tensors"])
    if not any(isinstance(p, Act) for p in parts):
        return Const(np.concatenate([p.value for p in parts], axis=int(a["dim"])))
    return ctx.writer.concat(parts, int(a["dim"]), ctx.node.name)


def _softmax(ctx: _Ctx, a: dict):
    if a.get("dtype") is not None or a.get("half_to_float"):
        raise ctx.fail("softmax with a dtype change is not supported")
    return ctx.writer.softmax(_act(ctx, a["self"]), int(a["dim"]), ctx.node.name)


def _reduce(op: str) -> Callable:
    def lower(ctx: _Ctx, a: dict):
        if a.get("dtype") is not None:
            raise ctx.fail("reduction with a dtype change is not supported")
        dims = a.get("dim")
        return ctx.writer.reduce(op, _act(ctx, a["self"]), list(dims) if dims else None,
                                 bool(a.get("keepdim", False)), ctx.node.name)
    return lower


def _matmul(ctx: _Ctx, a: dict):
    x = a["self"]
    if not isinstance(x, Act):
        raise ctx.fail("matmul with a constant left operand is not supported")
    return ctx.writer.matmul(x, a["other"], ctx.node.name)


# The one table: full op name -> lowering. Nothing is matched by prefix or substring.
ATEN_OPS: dict[str, Callable] = {
    "aten.linear.default": _linear,
    "aten.addmm.default": _addmm,
    "aten.mm.default": _mm,
    "aten.matmul.default": _matmul,
    "aten.t.default": _transpose_like,
    "aten.permute.default": _transpose_like,
    "aten.transpose.int": _transpose_like,
    "aten.conv2d.default": _conv,
    "aten.conv2d.padding": _conv,
    "aten.convolution.default": _conv,
    "aten.batch_norm.default": _batchnorm,
    "aten._native_batch_norm_legit_no_training.default": _batchnorm,
    "aten.max_pool2d.default": _maxpool,
    "aten.max_pool2d_with_indices.default": _maxpool,
    "aten.avg_pool2d.default": _avgpool,
    "aten.adaptive_avg_pool2d.default": _adaptive_avgpool,
    "aten.relu.default": _unary("relu"),
    "aten.relu_.default": _inplace_unary("relu"),
    "aten.neg.default": _unary("neg"),
    "aten.abs.default": _unary("abs"),
    "aten.tanh.default": _unary("tanh"),
    "aten.sigmoid.default": _unary("sigmoid"),
    "aten.exp.default": _unary("exp"),
    "aten.log.default": _unary("log"),
    "aten.sin.default": _unary("sin"),
    "aten.cos.default": _unary("cos"),
    "aten.softmax.int": _softmax,
    "aten._softmax.default": _softmax,
    "aten.add.Tensor": _binary("add"),
    "aten.sub.Tensor": _binary("sub"),
    "aten.mul.Tensor": _binary("mul"),
    "aten.div.Tensor": _binary("div"),
    "aten.flatten.using_ints": _flatten,
    "aten.view.default": _reshape,
    "aten.reshape.default": _reshape,
    "aten.unflatten.int": _reshape,
    "aten.unsqueeze.default": _reshape,
    "aten.squeeze.dim": _reshape,
    "aten.squeeze.dims": _reshape,
    "aten.cat.default": _cat,
    "aten.sum.dim_IntList": _reduce("sum"),
    "aten.mean.dim": _reduce("mean"),
    "aten.contiguous.default": _identity,
    "aten.clone.default": _identity,
    "aten.detach.default": _identity,
    "aten.detach_.default": _identity,
    "aten.lift_fresh_copy.default": _identity,
    "aten.dropout.default": _identity,
    "_operator.getitem": _getitem,
}


def _to_numpy(tensor) -> np.ndarray:
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()  # exact: every bfloat16 is a float32
    return t.numpy().copy()


def capture(module, example_inputs: tuple):
    """torch.export capture of `module` in eval mode."""
    import torch

    module.eval()
    return torch.export.export(module, tuple(example_inputs))


def lower_exported(ep, batch: bool = True, strip_module_prefix: bool = False
                   ) -> tuple[IRWriter, list[str]]:
    """An ExportedProgram to an IRWriter (not yet saved) and the user input names."""
    from torch.export.graph_signature import InputKind, OutputKind

    graph = ep.graph
    unsupported = [(n.name, op_name(n.target)) for n in graph.nodes
                   if n.op == "call_function" and op_name(n.target) not in ATEN_OPS]
    if unsupported:
        node, op = unsupported[0]
        more = f" (all unsupported: {unsupported})" if len(unsupported) > 1 else ""
        raise ExportError(node, op, f"no exact lowering for {op}{more}", ATEN_OPS)
    for n in graph.nodes:
        if n.op not in ("placeholder", "call_function", "output"):
            raise ExportError(n.name, n.op, "only placeholders, ATen calls and the output are "
                              "supported")
    writer = IRWriter(batch)
    env: dict = {}
    inputs = []
    for spec in ep.graph_signature.input_specs:
        pname = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            node = next(n for n in graph.nodes if n.op == "placeholder" and n.name == pname)
            val = node.meta.get("val")
            if val is None or not hasattr(val, "shape") or not val.dtype.is_floating_point:
                raise ExportError(pname, "input", "user inputs must be floating-point tensors")
            env[pname] = writer.input(pname, tuple(int(d) for d in val.shape))
            inputs.append(pname)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            source = ep.state_dict if spec.target in ep.state_dict else ep.constants
            name = spec.target
            if strip_module_prefix and name.startswith("module."):
                name = name[len("module."):]
            env[pname] = Const(_to_numpy(source[spec.target]), name)
        else:
            raise ExportError(pname, str(spec.kind), "unsupported input kind")
    for spec in ep.graph_signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            raise ExportError(spec.arg.name, str(spec.kind), "the module mutates state (e.g. a "
                              "buffer or an input); export it in eval mode without mutation")
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        name = op_name(n.target)
        ctx = _Ctx(writer, n, name)
        try:
            args = ({"seq": env[n.args[0].name], "index": n.args[1]} if name ==
                    "_operator.getitem" else _args(n, env))
            result = ATEN_OPS[name](ctx, args)
        except ExportError:
            raise
        except (ValueError, ZeroDivisionError, TypeError, IndexError) as err:
            raise ExportError(n.name, name, str(err)) from None
        val = n.meta.get("val")
        if isinstance(result, Act) and val is not None and tuple(val.shape) != result.shape:
            raise ExportError(n.name, name, f"lowered shape {list(result.shape)} differs from "
                              f"the traced shape {list(val.shape)}")
        env[n.name] = result
    out_node = next(n for n in graph.nodes if n.op == "output")
    for arg in out_node.args[0]:
        value = env[arg.name]
        if isinstance(value, tuple):
            raise ExportError(arg.name, "output", "a tuple output is not supported")
        writer.output(value)
    return writer, inputs


def export_module(module, example_inputs, out_dir: str, *, batch: bool = True,
                  strip_module_prefix: bool = False, check: bool = True,
                  weights_from: dict | None = None) -> ExportResult:
    """Capture `module` on `example_inputs` (a tensor or a tuple of tensors, leading batch
    dimension 1), lower it and write out_dir/graph.json + weights.safetensors + manifest.json;
    `weights_from` (e.g. a checkpoint's path and sha256) goes into the graph's metadata."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    ep = capture(module, example_inputs)
    writer, inputs = lower_exported(ep, batch, strip_module_prefix)
    metadata = {"producer": "oracles/torch_export.py", "torch": torch.__version__,
                "module": type(module).__qualname__,
                "example_shapes": [list(t.shape) for t in example_inputs],
                "batch": "leading batch dimension 1 stripped" if batch else "none"}
    if weights_from is not None:
        metadata["weights_from"] = weights_from
    return writer.save(out_dir, metadata, check, inputs)
