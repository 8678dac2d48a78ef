"""ONNX -> `tl.graph.v1` (the `onnx` package), through the same IR writer as the PyTorch export.

Supported (`ONNX_OPS`, keyed by op type in the default domain): Gemm (alpha, beta, transA,
transB), MatMul, Add, Sub, Mul, Div by constants, Relu, Conv, BatchNormalization, MaxPool,
AveragePool, Flatten, Reshape, Transpose, Concat, Sigmoid, Tanh, Softmax, Identity, Constant, and
for constant folding Shape, Gather, Unsqueeze, Squeeze and Cast. Anything else, an attribute
value the IR cannot express (asymmetric pads, ceil_mode that changes the shape, auto_pad with
odd padding, a second output that is used, ...) or an unknown attribute fails closed with the
node, the op and the supported set.

Shapes: the IR has no batch dimension. A graph input [1, *s] (or [N, *s] with a symbolic N) is
the IR input [*s]; ACAS Xu's [1, 1, 1, 5] becomes [1, 1, 5] and MNIST-FC's [1, 784, 1] becomes
[784, 1] (VNN-LIB's X_i index these row-major, so specs apply unchanged); Flatten then gives the
vector the first layer reads. Initializers go to the weights file under their ONNX names with
their dtype (a MatMul weight [K, N] is stored transposed as the linear weight [N, K]).
Constant subexpressions fold exactly (rationals); `x / c` is `x * (1/c)` with 1/c exact. Adding
or subtracting an all-zero constant, or multiplying by all ones, is dropped (exactly the
identity), so ACAS Xu's zero mean image leaves a plain linear/ReLU chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from oracles.torch_export import Act, Const, ExportError, ExportResult, IRWriter, exact, fold

_FLOAT_TYPES = (1, 10, 11, 16)  # float32, float16, float64, bfloat16


class _Node:
    """One ONNX node while it is lowered: name, op, attributes, and a refusal helper."""

    def __init__(self, proto, index: int, opset: int):
        from onnx import helper

        self.proto = proto
        self.name = proto.name or (proto.output[0] if proto.output else f"node{index}")
        self.op = proto.op_type
        self.opset = opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        self.uses: dict[str, int] = {}
        self.names: dict = {}  # ONNX value name -> what it lowered to, so far

    def fail(self, message: str) -> ExportError:
        return ExportError(self.name, self.op, message)

    def check_attrs(self, allowed: set) -> None:
        unknown = set(self.attrs) - allowed
        if unknown:
            raise self.fail(f"unsupported attributes {sorted(unknown)} (supported: "
                            f"{sorted(allowed)})")

    def get(self, key: str, default=None):
        value = self.attrs.get(key, default)
        return value.decode() if isinstance(value, bytes) else value


def _const(node: _Node, v, what: str) -> Const:
    if not isinstance(v, Const):
        raise node.fail(f"{what} must be an initializer or constant, found a computed tensor")
    return v


def _act(node: _Node, v, what: str = "input") -> Act:
    if not isinstance(v, Act):
        raise node.fail(f"{what} must be computed from the graph input, found a constant")
    return v


def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v.value).reshape(-1)]


def _pads2d(node: _Node, x: Act, kernel, strides, dilations) -> list[int]:
    """ONNX pads [h_begin, w_begin, h_end, w_end] (or auto_pad) as the IR's symmetric [ph, pw]."""
    auto = node.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise node.fail(f"expected 4 pads for a 2-D window, found {pads}")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise node.fail(f"pads {pads} (h_begin, w_begin, h_end, w_end) are asymmetric; the "
                            "IR pads symmetrically [ph, pw]")
        return pads[:2]
    if auto == "VALID":
        return [0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(2):
            size = x.shape[2 + i]
            total = max(0, (-(-size // strides[i]) - 1) * strides[i]
                        + (kernel[i] - 1) * dilations[i] + 1 - size)
            if total % 2:
                raise node.fail(f"auto_pad {auto} pads {total} in total along axis {i}: "
                                "asymmetric, the IR pads symmetrically")
            out.append(total // 2)
        return out
    raise node.fail(f"auto_pad {auto!r} is not supported")


def _gemm(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"alpha", "beta", "transA", "transB"})
    a = _act(node, ins[0], "A")
    b = _const(node, ins[1], "B")
    if len(a.shape) != 2:
        raise node.fail(f"expected A of rank 2, found shape {list(a.shape)}")
    if node.get("transA", 0):  # A^T: a transpose node (with a batch of 1 first, a reshape)
        a = w.transpose(a, [1, 0], f"{node.name}.transA")
    weight = b if node.get("transB", 0) else Const(
        b.value.T, b.transposed_name or (f"{b.name}.T" if b.name else None), b.name)
    alpha, beta = node.get("alpha", 1.0), node.get("beta", 1.0)
    c = _const(node, ins[2], "C") if len(ins) > 2 and ins[2] is not None else None
    if c is not None and beta != 1.0:  # exact; a rational bias stays an explicit add
        c = fold("mul", c, Const(np.array(beta, dtype=np.float32))) if beta else None
    alpha_c = Const(np.array(alpha, dtype=np.float32))
    if alpha != 1.0:
        scaled = fold("mul", weight, alpha_c)  # exact; kept only if it is a float tensor again
        if scaled.value.dtype.kind == "f":
            weight, alpha = scaled, 1.0
    if alpha == 1.0 and (c is None or c.value.dtype.kind == "f"):
        return w.linear(a, weight, c, node.name)
    y = w.linear(a, weight, None, node.name)
    if alpha != 1.0:
        y = w.binary("mul", y, alpha_c, f"{node.name}.alpha")
    return y if c is None else w.binary("add", y, c, f"{node.name}.bias")


def _matmul(w: IRWriter, node: _Node, ins: list):
    node.check_attrs(set())
    return w.matmul(_act(node, ins[0], "A"), ins[1], node.name)


def _binary(op: str) -> Callable:
    def lower(w: IRWriter, node: _Node, ins: list):
        node.check_attrs(set())
        a, b = ins
        if op == "div" and isinstance(a, Const) and isinstance(b, Const):
            if a.value.dtype.kind in "iu" and b.value.dtype.kind in "iu":
                q = fold("div", a, b)
                if q.value.dtype.kind not in "iu":
                    raise node.fail("integer division with a remainder")
                return q
        if op == "div" and not isinstance(b, Const):
            raise node.fail("division by a computed tensor is not in the IR (only by constants)")
        if op == "add":  # MatMul + Add -> one linear node with a bias, when this Add is the
            # linear's only reader under any name (Identity, a no-op Reshape or an Add of zeros
            # hand the same IR node on under another name: its other readers must not get the bias)
            for i, (x, c) in enumerate(((a, b), (b, a))):
                names = [n for n, v in node.names.items() if isinstance(v, Act) and v.id == x.id
                         ] if isinstance(x, Act) else []
                if names == [node.proto.input[i]] and isinstance(c, Const) and node.uses[
                        names[0]] == 1 and x.shape == np.broadcast_shapes(x.shape, c.shape):
                    fused = w.fuse_bias(x, c)
                    if fused is not None:
                        return fused
        return w.binary(op, a, b, node.name)
    return lower


def _unary(op: str) -> Callable:
    def lower(w: IRWriter, node: _Node, ins: list):
        node.check_attrs(set())
        return w.unary(op, _act(node, ins[0]), hint=node.name)
    return lower


def _window(node: _Node, x: Act, kernel) -> tuple[list, list, list]:
    strides = list(node.get("strides", [1, 1]))
    dilations = list(node.get("dilations", [1, 1]))
    if len(x.shape) != 4 or len(kernel) != 2:
        raise node.fail(f"only 2-D windows on [1, C, H, W] are supported, found {list(x.shape)}")
    return strides, _pads2d(node, x, kernel, strides, dilations), dilations


def _conv(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    x, weight = _act(node, ins[0]), _const(node, ins[1], "W")
    bias = _const(node, ins[2], "B") if len(ins) > 2 and ins[2] is not None else None
    kernel = list(node.get("kernel_shape", weight.shape[2:]))
    if weight.value.ndim != 4 or kernel != list(weight.shape[2:]):
        raise node.fail(f"kernel_shape {kernel} does not match the 2-D weight {weight.shape}")
    strides, pads, dilations = _window(node, x, kernel)
    return w.conv2d(x, weight, bias, strides, pads, dilations, int(node.get("group", 1)),
                    node.name)


def _pool(op: str) -> Callable:
    def lower(w: IRWriter, node: _Node, ins: list):
        allowed = {"auto_pad", "ceil_mode", "kernel_shape", "pads", "strides", "dilations"}
        node.check_attrs(allowed | ({"storage_order"} if op == "maxpool2d"
                                    else {"count_include_pad"}))
        if node.get("storage_order", 0):
            raise node.fail("storage_order=1 is not supported")
        if len(node.proto.output) > 1 and node.proto.output[1]:
            raise node.fail("the Indices output is not supported")
        x = _act(node, ins[0])
        kernel = list(node.get("kernel_shape"))
        strides, pads, dilations = _window(node, x, kernel)
        if op == "avgpool2d" and dilations != [1, 1]:
            raise node.fail(f"dilations {dilations} in average pooling are not in the IR")
        if node.get("ceil_mode", 0):
            for i in range(2):
                span = x.shape[2 + i] + 2 * pads[i] - dilations[i] * (kernel[i] - 1) - 1
                if span % strides[i]:
                    raise node.fail("ceil_mode=1 changes the output shape here; the IR pools "
                                    "with floor mode")
        extra = {"count_include_pad": bool(node.get("count_include_pad", 0))} \
            if op == "avgpool2d" else {"dilation": dilations}
        return w.pool(op, x, kernel, strides, pads, hint=node.name, **extra)
    return lower


def _batchnorm(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"epsilon", "momentum", "training_mode", "spatial"})
    if node.get("training_mode", 0) or node.get("spatial", 1) != 1:
        raise node.fail("only inference-mode, spatial batch normalization is supported")
    if any(o for o in node.proto.output[1:]):
        raise node.fail("the running-statistics outputs are not supported")
    x = _act(node, ins[0])
    scale, bias, mean, var = (_const(node, v, k) for v, k in
                              zip(ins[1:5], ("scale", "B", "input_mean", "input_var")))
    return w.batchnorm(x, scale, bias, mean, var, float(node.get("epsilon", 1e-5)), node.name)


def _flatten(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axis"})
    x = ins[0]
    axis = int(node.get("axis", 1))
    if not -len(x.shape) <= axis <= len(x.shape):
        raise node.fail(f"axis {axis} out of range for rank {len(x.shape)}")
    axis += len(x.shape) if axis < 0 else 0  # (ONNX: a negative axis counts from the rank)
    out = (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    if isinstance(x, Const):
        return Const(x.value.reshape(out))
    return w.reshape_to(x, out, node.name)


def _reshape(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"allowzero"})
    x, target = ins[0], _ints(_const(node, ins[1], "shape"))
    if node.get("allowzero", 0) and 0 in target:
        raise node.fail("allowzero=1 with a zero in the shape is not supported")
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    shape = np.empty(x.shape, dtype=np.int8).reshape(target).shape
    if isinstance(x, Const):
        return Const(x.value.reshape(shape))
    return w.reshape_to(x, shape, node.name)


def _transpose(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"perm"})
    x = ins[0]
    perm = list(node.get("perm", list(range(len(x.shape)))[::-1]))
    if isinstance(x, Const):
        back = x.transposed_name if perm == [1, 0] else None
        return Const(np.ascontiguousarray(np.transpose(x.value, perm)), back,
                     x.name if perm == [1, 0] else None)
    return w.transpose(x, perm, node.name)


def _concat(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axis"})
    axis = int(node.get("axis"))
    if all(isinstance(v, Const) for v in ins):
        return Const(np.concatenate([v.value for v in ins], axis=axis))
    return w.concat(list(ins), axis, node.name)


def _softmax(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axis"})
    x = _act(node, ins[0])
    rank = len(x.shape)
    axis = int(node.get("axis", -1 if node.opset >= 13 else 1)) % rank
    if node.opset < 13 and axis != rank - 1:
        raise node.fail(f"opset {node.opset} softmax over the flattened dimensions from axis "
                        f"{axis} of a rank-{rank} input is not supported (only the last axis)")
    return w.softmax(x, axis, node.name)


def _identity(w: IRWriter, node: _Node, ins: list):
    node.check_attrs(set())
    return ins[0]


def _constant(w: IRWriter, node: _Node, ins: list):
    from onnx import numpy_helper

    node.check_attrs({"value", "value_float", "value_floats", "value_int", "value_ints"})
    if "value" in node.attrs:
        return Const(numpy_helper.to_array(node.attrs["value"]))
    if len(node.attrs) != 1:
        raise node.fail("expected exactly one value attribute")
    key, value = next(iter(node.attrs.items()))
    return Const(np.array(value, dtype=np.float32 if "float" in key else np.int64))


def _shape(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"start", "end"})
    dims = list(ins[0].shape)[node.get("start", 0):node.get("end", None)]
    return Const(np.array(dims, dtype=np.int64))


def _gather(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axis"})
    data, idx = _const(node, ins[0], "data"), _const(node, ins[1], "indices")
    return Const(np.take(data.value, idx.value, axis=int(node.get("axis", 0))))


def _axes(node: _Node, ins: list) -> list[int]:
    if len(ins) > 1 and ins[1] is not None:
        return _ints(_const(node, ins[1], "axes"))
    return list(node.get("axes", []))


def _unsqueeze(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axes"})
    x, axes = ins[0], _axes(node, ins)
    rank = len(x.shape) + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    if isinstance(x, Const):
        return Const(x.value.reshape(shape))
    return w.reshape_to(x, shape, node.name)


def _squeeze(w: IRWriter, node: _Node, ins: list):
    node.check_attrs({"axes"})
    x, axes = ins[0], _axes(node, ins)
    rank = len(x.shape)
    axes = {a % rank for a in axes} if axes else {i for i, d in enumerate(x.shape) if d == 1}
    if any(x.shape[a] != 1 for a in axes):
        raise node.fail(f"cannot squeeze axes {sorted(axes)} of {list(x.shape)}")
    shape = [d for i, d in enumerate(x.shape) if i not in axes]
    if isinstance(x, Const):
        return Const(x.value.reshape(shape))
    return w.reshape_to(x, shape, node.name)


def _cast(w: IRWriter, node: _Node, ins: list):
    from onnx import helper

    node.check_attrs({"to", "saturate"})
    x = _const(node, ins[0], "input")
    dtype = helper.tensor_dtype_to_np_dtype(int(node.get("to")))
    out = x.value.astype(dtype)
    if not all(p == q for p, q in zip(exact(out).reshape(-1), exact(x.value).reshape(-1))):
        raise node.fail(f"casting to {dtype} changes a value (only exact casts fold)")
    return Const(out)


ONNX_OPS: dict[str, Callable] = {
    "Gemm": _gemm, "MatMul": _matmul, "Add": _binary("add"), "Sub": _binary("sub"),
    "Mul": _binary("mul"), "Div": _binary("div"), "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Conv": _conv,
    "BatchNormalization": _batchnorm, "MaxPool": _pool("maxpool2d"),
    "AveragePool": _pool("avgpool2d"), "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Concat": _concat, "Softmax": _softmax, "Identity": _identity,
    "Constant": _constant, "Shape": _shape, "Gather": _gather, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Cast": _cast,
}


def _input_shape(vi) -> tuple[int, ...]:
    t = vi.type.tensor_type
    if t.elem_type not in _FLOAT_TYPES:
        raise ExportError(vi.name, "input", f"element type {t.elem_type} is not a float type")
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)  # a symbolic batch dimension: exported for batch 1
        else:
            raise ExportError(vi.name, "input", f"dimension {i} is symbolic "
                              f"({d.dim_param!r}); only the batch dimension may be")
    return tuple(dims)


def lower_onnx(model, batch: bool = True) -> tuple[IRWriter, list[str]]:
    """An onnx ModelProto to an IRWriter (not yet saved) and the graph input names."""
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    bad = [(_Node(n, i, opset).name, n.op_type if n.domain in ("", "ai.onnx")
            else f"{n.domain}.{n.op_type}") for i, n in enumerate(graph.node)
           if n.domain not in ("", "ai.onnx") or n.op_type not in ONNX_OPS]
    if bad:
        more = f" (all unsupported: {bad})" if len(bad) > 1 else ""
        raise ExportError(bad[0][0], bad[0][1], f"no exact lowering for {bad[0][1]}{more}",
                          ONNX_OPS)
    writer = IRWriter(batch)
    env: dict = {init.name: Const(numpy_helper.to_array(init), init.name)
                 for init in graph.initializer}
    inputs = []
    for vi in graph.input:
        if vi.name in env:  # IR version < 4 lists initializers as inputs too
            continue
        env[vi.name] = writer.input(vi.name, _input_shape(vi))
        inputs.append(vi.name)
    uses: dict[str, int] = {}
    for name in [n for proto in graph.node for n in proto.input] + [o.name for o in graph.output]:
        uses[name] = uses.get(name, 0) + 1
    for i, proto in enumerate(graph.node):
        node = _Node(proto, i, opset)
        node.uses, node.names = uses, env
        missing = [name for name in proto.input if name and name not in env]
        if missing:
            raise node.fail(f"inputs {missing} are not defined before this node")
        ins = [env[name] if name else None for name in proto.input]
        try:
            result = ONNX_OPS[proto.op_type](writer, node, ins)
        except ExportError:
            raise
        except (ValueError, ZeroDivisionError, TypeError, IndexError) as err:
            raise node.fail(str(err)) from None
        env[proto.output[0]] = result
    for vi in graph.output:
        writer.output(env[vi.name])
    return writer, inputs


def import_onnx(model, out_dir: str, *, batch: bool = True, check: bool = True
                ) -> ExportResult:
    """Import an ONNX file (path) or ModelProto and write out_dir/graph.json +
    weights.safetensors + manifest.json; with `check`, load it back with the kernel."""
    import onnx

    source = os.path.abspath(model) if isinstance(model, str | os.PathLike) else "<ModelProto>"
    if isinstance(model, str | os.PathLike):
        try:
            model = onnx.load(os.fspath(model))
        except OSError:
            raise
        except Exception as e:  # (protobuf's DecodeError and the like: not an ONNX model)
            raise ValueError(f"{source}: not an ONNX model ({type(e).__name__}: {e})") from None
    writer, inputs = lower_onnx(model, batch)
    metadata = {"producer": "oracles/onnx_import.py", "onnx": onnx.__version__,
                "source": source, "producer_name": model.producer_name,
                "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import],
                "batch": "leading batch dimension 1 stripped" if batch else "none"}
    return writer.save(out_dir, metadata, check, inputs)
