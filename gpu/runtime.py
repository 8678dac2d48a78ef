"""Running a checked graph in binary32: on a CUDA device through PyCUDA kernels
(`gpu/kernels/*.cu`, named op by op in `gpu/NATIVE_SOURCES`) or on the CPU through numpy, both
from one plan of the graph. Untrusted (a runtime boundary): what a run returns is checked by the
kernel's `agreement` rule, which holds each audited output to its enclosure of every binary32
evaluation of the graph; the CUDA interval forward (directed rounding) is tested against the
kernel's exact interval semantics, not trusted.

The graph is loaded by the kernel (`kernel_checker.load_graph`: well-formed, weights bound by
sha256) before anything runs. Without pycuda or a device, `CudaRunner` raises `NoDeviceError`
saying which; nothing falls back to the CPU unasked.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

import kernel_checker
from kernel_checker.float32 import is_binary32
from kernel_checker.semantics import _ancestors
from kernel_checker.tensor import numel

HERE = os.path.dirname(os.path.abspath(__file__))
SUPPORTED = ("input", "linear", "conv2d", "relu", "add", "maxpool2d", "avgpool2d", "flatten",
             "reshape")
BLOCK = 256  # threads of an elementwise kernel's block
TILE = 16  # forward.cu's tile
CHUNK_BYTES = 2 << 30  # device memory for one chunk of rows' values (a batch runs in chunks)


class NoDeviceError(RuntimeError):
    """No CUDA device can be used (pycuda missing, no driver, no device)."""


class UnsupportedGraphError(ValueError):
    """The graph has an op (or a shape) the runtimes do not run; names the node and the op."""


def native_sources() -> dict:
    """gpu/NATIVE_SOURCES: op -> {"source", "float32", "interval"} (kernel names in the source)."""
    with open(os.path.join(HERE, "NATIVE_SOURCES")) as f:
        return json.load(f)["ops"]


def sources_sha256() -> str:
    """sha256 over NATIVE_SOURCES and every source it names, in name order."""
    h = hashlib.sha256()
    names = ["NATIVE_SOURCES"] + sorted({v["source"] for v in native_sources().values()
                                         if v["source"]})
    for name in names:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


@dataclass
class Step:
    op: str
    id: str
    inputs: tuple
    weight: np.ndarray | None = None  # linear: m x k; conv2d: O x C/groups x KH x KW; binary32
    bias: np.ndarray | None = None
    geometry: tuple = ()  # conv2d: (C, H, W), (O, OH, OW), stride, padding, dilation, groups;
    # pooling: (C, H, W), (C, OH, OW), kernel, stride, padding, dilation, count_include_pad
    width: int = 0  # values a row


@dataclass
class Plan:
    steps: list
    input_id: str
    output_id: str
    n_in: int
    n_out: int
    graph_sha256: str


def _binary32_array(graph: kernel_checker.Graph, node, key: str) -> np.ndarray:
    t = graph.param(node.attrs[key])
    bad = next((i for i, v in enumerate(t.nums) if not is_binary32(v, t.den)), None)
    if bad is not None:
        raise UnsupportedGraphError(f"node {node.id!r}: {key}[{bad}] = {t.value(bad)} is not a "
                                    "binary32 value (the runtimes compute in binary32)")
    return np.array([v / t.den for v in t.nums], dtype=np.float64).astype(
        np.float32).reshape(t.shape)


def plan(graph: kernel_checker.Graph, output: str | None = None) -> Plan:
    """The steps that compute `output` (default: the graph's first output), in graph order."""
    inp = graph.the_input("run", "graph")
    out = output or graph.outputs[0]
    if out not in graph.by_id:
        raise UnsupportedGraphError(f"no node {out!r} in the graph")
    needed, steps = _ancestors(graph, out), []
    for node in graph.nodes:
        if node.id not in needed:
            continue
        if node.op not in SUPPORTED:
            raise UnsupportedGraphError(f"node {node.id!r}: op {node.op!r} is not run here "
                                        f"(supported: {', '.join(SUPPORTED)})")
        step = Step(node.op, node.id, node.inputs, width=numel(node.shape))
        if node.op == "linear":
            src = graph.by_id[node.inputs[0]].shape
            if len(src) != 1:
                raise UnsupportedGraphError(f"node {node.id!r}: linear on an input of shape "
                                            f"{list(src)}; only vectors are run here")
            step.weight = _binary32_array(graph, node, "weight")
            if node.attrs.get("bias") is not None:
                step.bias = _binary32_array(graph, node, "bias")
        elif node.op == "conv2d":
            a = node.attrs
            step.weight = _binary32_array(graph, node, "weight")
            if a.get("bias") is not None:
                step.bias = _binary32_array(graph, node, "bias")
            step.geometry = (graph.by_id[node.inputs[0]].shape, node.shape, tuple(a["stride"]),
                             tuple(a["padding"]), tuple(a["dilation"]), a["groups"])
        elif node.op in ("maxpool2d", "avgpool2d"):
            a = node.attrs
            step.geometry = (graph.by_id[node.inputs[0]].shape, node.shape, tuple(a["kernel"]),
                             tuple(a["stride"]), tuple(a["padding"]),
                             tuple(a.get("dilation", (1, 1))), bool(a.get("count_include_pad")))
        elif node.op == "add":
            a, b = (graph.by_id[i].shape for i in node.inputs)
            if a != b:
                raise UnsupportedGraphError(f"node {node.id!r}: add of shapes {list(a)} and "
                                            f"{list(b)}; only two computed tensors of one shape")
        steps.append(step)
    return Plan(steps, inp.id, out, numel(inp.shape), numel(graph.by_id[out].shape),
                graph.sha256)


def _batch(x: np.ndarray, n_in: int) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"expected float32 inputs (what the runtimes compute in), found {x.dtype}")
    x = x.reshape(1, -1) if x.size == n_in else x.reshape(len(x), -1)  # (one input, any shape)
    if x.shape[1] != n_in:
        raise ValueError(f"expected {n_in} numbers per input, found {x.shape[1]}")
    return np.ascontiguousarray(x)


class CpuRunner:
    """numpy binary32 forward (matrix products by numpy's BLAS: any order, any fusing)."""

    name = "cpu"

    def __init__(self, p: Plan):
        self.plan = p

    def provenance(self) -> dict:
        import platform

        return {"runtime": "cpu", "numpy": np.__version__, "machine": platform.machine(),
                "processor": _cpu_model() or platform.processor() or "unknown"}

    def forward(self, x: np.ndarray) -> np.ndarray:
        vals = {self.plan.input_id: _batch(x, self.plan.n_in)}
        for s in self.plan.steps[1:]:
            a = vals[s.inputs[0]]
            if s.op == "linear":
                y = a @ s.weight.T
                vals[s.id] = y + s.bias if s.bias is not None else y
            elif s.op == "conv2d":
                vals[s.id] = _conv_cpu(a, s)
            elif s.op in ("maxpool2d", "avgpool2d"):
                vals[s.id] = _pool_cpu(a, s)
            elif s.op == "relu":
                vals[s.id] = np.where(a > 0, a, np.where(np.isnan(a), a, np.float32(0)))
            elif s.op == "add":
                vals[s.id] = a + vals[s.inputs[1]]
            else:  # flatten, reshape: the same row-major numbers
                vals[s.id] = a
        return vals[self.plan.output_id]


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), None)
    except OSError:
        return None


def _windows(x: np.ndarray, shape: tuple, out: tuple, kernel: tuple, stride: tuple,
             padding: tuple, dilation: tuple, fill: float) -> np.ndarray:
    """rows x C x KH x KW x OH x OW: each output's window, `fill` outside the input."""
    (c, h, w), (oh, ow), (kh, kw) = shape, out[-2:], kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x.reshape(len(x), c, h, w), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=fill)
    cols = np.empty((len(x), c, kh, kw, oh, ow), np.float32)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            y1, x1 = y0 + sh * (oh - 1) + 1, x0 + sw * (ow - 1) + 1
            cols[:, :, ky, kx] = xp[:, :, y0:y1:sh, x0:x1:sw]
    return cols


def _conv_cpu(x: np.ndarray, s: Step) -> np.ndarray:
    """conv2d in binary32 by columns and matrix products (numpy's BLAS), rows flat."""
    shape, (o, oh, ow), stride, padding, dilation, g = s.geometry
    _, cg, kh, kw = s.weight.shape
    rows = len(x)
    cols = _windows(x, shape, (oh, ow), (kh, kw), stride, padding, dilation, 0.0)
    og, out = o // g, np.empty((rows, o, oh * ow), np.float32)
    for gi in range(g):
        part = cols[:, gi * cg:(gi + 1) * cg].reshape(rows, cg * kh * kw, oh * ow)
        out[:, gi * og:(gi + 1) * og] = np.matmul(
            s.weight[gi * og:(gi + 1) * og].reshape(og, cg * kh * kw), part)
    if s.bias is not None:
        out += s.bias[None, :, None]
    return out.reshape(rows, -1)


def _pool_cpu(x: np.ndarray, s: Step) -> np.ndarray:
    """max (NaN kept) or average (a sum, then one division by the count) of each window."""
    shape, out, kernel, stride, padding, dilation, include_pad = s.geometry
    rows = len(x)
    if s.op == "maxpool2d":
        cols = _windows(x, shape, out, kernel, stride, padding, dilation, -np.inf)
        return cols.max(axis=(2, 3)).reshape(rows, -1)  # (numpy's max keeps NaN)
    cols = _windows(x, shape, out, kernel, stride, padding, dilation, 0.0)
    if include_pad:
        count = np.float32(kernel[0] * kernel[1])
    else:
        ones = np.ones((1, int(np.prod(shape))), np.float32)
        count = _windows(ones, shape, out, kernel, stride, padding, dilation, 0.0).sum(
            axis=(2, 3))
    return (cols.sum(axis=(2, 3), dtype=np.float32) / count).astype(np.float32).reshape(rows, -1)


def cuda_status() -> tuple[bool, str]:
    """(usable, the device's name or why not)."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        return False, f"pycuda is not installed ({e}); install it where a CUDA driver is"
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return False, "the CUDA driver sees no device"
        return True, cuda.Device(0).name()
    except Exception as e:  # noqa: BLE001 (pycuda raises its own LogicError/RuntimeError)
        return False, f"CUDA cannot start: {e}"


class CudaRunner:
    """The plan on CUDA device 0: binary32 forward and directed-rounding interval forward."""

    name = "cuda"

    def __init__(self, p: Plan):
        ok, why = cuda_status()
        if not ok:
            raise NoDeviceError(f"no CUDA device: {why}")
        import pycuda.driver as cuda
        from pycuda import gpuarray
        from pycuda.compiler import SourceModule

        self.cuda, self.gpuarray, self.plan = cuda, gpuarray, p
        self.device = cuda.Device(0)
        # the device's primary context (torch's too), current only inside our calls
        self.context = self.device.retain_primary_context()
        self.context.push()
        try:
            srcs = native_sources()
            modules, self.fn = {}, {}
            for op, entry in srcs.items():
                if not entry["source"]:
                    continue
                if entry["source"] not in modules:
                    with open(os.path.join(HERE, entry["source"])) as f:
                        modules[entry["source"]] = SourceModule(f.read(), no_extern_c=True)
                for kind in ("float32", "interval"):
                    self.fn[(op, kind)] = modules[entry["source"]].get_function(entry[kind])
            self.w = {s.id: (gpuarray.to_gpu(np.ascontiguousarray(s.weight)),
                             gpuarray.to_gpu(s.bias if s.bias is not None else
                                             np.zeros(1, np.float32)))
                      for s in p.steps if s.op in ("linear", "conv2d")}
        finally:
            self.context.pop()

    def close(self) -> None:
        """Free the weights (in their context) and let the context go."""
        if self.context is not None:
            self.context.push()
            try:
                for w, b in self.w.values():
                    w.gpudata.free()
                    b.gpudata.free()
                self.w = {}
            finally:
                self.context.pop()
                self.context.detach()
                self.context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def provenance(self) -> dict:
        import pycuda

        major, minor = self.device.compute_capability()
        return {"runtime": "cuda", "device": self.device.name(),
                "compute_capability": f"{major}.{minor}",
                "driver": str(self.cuda.get_driver_version()),
                "pycuda": pycuda.VERSION_TEXT, "sources_sha256": sources_sha256()}

    def _linear(self, kind, s, args, rows):
        m, k = s.weight.shape
        w, b = self.w[s.id]
        outs = [self.gpuarray.empty((rows, m), np.float32) for _ in args]
        grid = ((rows + TILE - 1) // TILE, (m + TILE - 1) // TILE)  # (y is < 2^16)
        self.fn[("linear", kind)](*args, w, b, *outs, np.int32(rows), np.int32(k), np.int32(m),
                                  np.int32(s.bias is not None), block=(TILE, TILE, 1), grid=grid)
        return outs

    def _conv(self, kind, s, args, rows):
        (c, h, w), (o, oh, ow), (sh, sw), (ph, pw), (dh, dw), g = s.geometry
        _, _, kh, kw = s.weight.shape
        wt, b = self.w[s.id]
        outs = [self.gpuarray.empty((rows, o * oh * ow), np.float32) for _ in args]
        n = rows * o * oh * ow
        dims = [np.int32(v) for v in (rows, c, h, w, o, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                                      g, s.bias is not None)]
        self.fn[("conv2d", kind)](*args, wt, b, *outs, *dims, block=(BLOCK, 1, 1),
                                  grid=((n + BLOCK - 1) // BLOCK, 1))
        return outs

    def _pool(self, kind, s, args, rows):
        (c, h, w), (_, oh, ow), (kh, kw), (sh, sw), (ph, pw), (dh, dw), inc = s.geometry
        outs = [self.gpuarray.empty((rows, c * oh * ow), np.float32) for _ in args]
        n = rows * c * oh * ow
        dims = [np.int32(v) for v in (rows, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, inc)]
        self.fn[(s.op, kind)](*args, *outs, *dims, block=(BLOCK, 1, 1),
                              grid=((n + BLOCK - 1) // BLOCK, 1))
        return outs

    def _elementwise(self, op, kind, args):
        n = args[0].size
        outs = [self.gpuarray.empty_like(args[0]) for _ in range(1 if kind == "float32" else 2)]
        self.fn[(op, kind)](*args, *outs, np.uintp(n), block=(BLOCK, 1, 1),
                            grid=((n + BLOCK - 1) // BLOCK, 1))
        return outs

    def _run(self, kind: str, inputs: list) -> list:
        """The rows in chunks whose activations fit CHUNK_BYTES, results joined on the host."""
        live = 4 * len(inputs) * sum(s.width for s in self.plan.steps)  # bytes a row, all kept
        rows = max(1, CHUNK_BYTES // live)
        self.context.push()
        try:
            parts = [self._steps(kind, [a[i:i + rows] for a in inputs])
                     for i in range(0, len(inputs[0]), rows)]
        finally:
            self.context.pop()
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _steps(self, kind: str, inputs: list) -> list:
        rows = inputs[0].shape[0]
        vals = {self.plan.input_id: [self.gpuarray.to_gpu(a) for a in inputs]}
        for s in self.plan.steps[1:]:
            a = vals[s.inputs[0]]
            if s.op == "linear":
                vals[s.id] = self._linear(kind, s, a, rows)
            elif s.op == "conv2d":
                vals[s.id] = self._conv(kind, s, a, rows)
            elif s.op in ("maxpool2d", "avgpool2d"):
                vals[s.id] = self._pool(kind, s, a, rows)
            elif s.op == "relu":
                vals[s.id] = self._elementwise("relu", kind, a)
            elif s.op == "add":
                c = vals[s.inputs[1]]
                args = a + c if kind == "float32" else [a[0], a[1], c[0], c[1]]
                vals[s.id] = self._elementwise("add", kind, args)
            else:
                vals[s.id] = a
        return [v.get() for v in vals[self.plan.output_id]]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._run("float32", [_batch(x, self.plan.n_in)])[0]

    def interval(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [lo, hi] (rows) to boxes holding every real output on them (directed
        rounding; under runtime.cuda.ieee_binary32, and tested against the kernel's)."""
        lo, hi = _batch(lo, self.plan.n_in), _batch(hi, self.plan.n_in)
        if lo.shape != hi.shape or np.any(~(lo <= hi)):
            raise ValueError("expected boxes with lo <= hi, no NaN")
        out = self._run("interval", [lo, hi])
        return out[0], out[1]


def runner(graph: kernel_checker.Graph, device: str, output: str | None = None):
    """A CpuRunner or CudaRunner for the graph's plan."""
    p = plan(graph, output)
    if device == "cpu":
        return CpuRunner(p)
    if device == "cuda":
        return CudaRunner(p)
    raise ValueError(f"expected device 'cpu' or 'cuda', found {device!r}")
