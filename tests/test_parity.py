"""Exact parity: the kernel's exact evaluation of an exported/imported graph agrees with PyTorch
(float64 and float32) and onnxruntime (float32) within a rigorous a-priori error bound, on random
inputs; tampered graphs (a transposed weight, a wrong bias, a wrong padding convention) do not.

The bound (forward error analysis, Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., sec. 3.1 and 3.5): with unit roundoff u (2^-53 for float64, 2^-24 for float32) and
gamma_n = n u / (1 - n u), a computed dot product of length n satisfies
|fl(x.y) - x.y| <= gamma_n |x|.|y| for ANY summation order, with or without FMA. We propagate
per element an absolute bound E on |computed - exact| node by node, with the kernel's exact values
x as reference and X = |x| + E bounding the computed values' magnitudes:

  linear/conv:   E' = |W| E + gamma_{k+1} (|W| X + |b|)          (k-term dot product, + bias)
  matmul:        E' = E_a |b| + X_a E_b + gamma_k X_a X_b
  add/sub:       E' = E_a + E_b + u (|y| + E_a + E_b)
  mul:           E' = E_a X_b + |a| E_b + u X_a X_b
  const:         E  = u |c|                                       (the framework may round c)
  relu/abs/neg, reshape/flatten/transpose/concat: E passes through (1-Lipschitz, exact moves)
  maxpool:       E' = max over the window of E                    (max is 1-Lipschitz in sup)
  avgpool:       E' = avg(E) + gamma_{kk+2} avg(X)                (sum, then one division)
  sum/mean:      E' = sum(E) + gamma_{k+1} sum(X)   (mean divides both by k)
  batchnorm:     E' = s E + 16 u (s X + s |mean| + |beta|), s = |gamma| / sqrt(var + eps): torch
                 and onnxruntime compute y = x * alpha + beta' with alpha = gamma / sqrt(var + eps)
                 and beta' = beta - mean * alpha, at most 8 rounded operations per element.

The bound itself is computed in float64 on non-negative quantities; each node's bound is inflated
by (1 + 2^-30), which dominates the relative rounding error (1 - u)^-m of any m < 2^22 float
operations in it. Comparisons with the kernel's values are exact (fmpq).
"""

from __future__ import annotations

import glob
import json
import os
from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from safetensors.numpy import load_file
from safetensors.numpy import save as save_safetensors

import kernel_checker
from kernel_checker.errors import KernelError
from kernel_checker.rules import point_interval
from kernel_checker.semantics import evaluate

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

from oracles.torch_export import capture, export_module, lower_exported  # noqa: E402

U64, U32 = 2.0**-53, 2.0**-24
INFLATE = 1 + 2.0**-30
VNN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                   "benchmarks", "vnncomp2021")


def gamma(n: int, u: float) -> float:
    assert n * u < 0.5
    return n * u / (1 - n * u)


def to_fmpq(v: float) -> fmpq:
    f = Fraction(float(v))
    return fmpq(f.numerator, f.denominator)


def exact_values(graph, x: np.ndarray, upto: str | None = None) -> dict:
    """The kernel's enclosures of every node at the exact point x (float32 or float64 array)."""
    inp = graph.the_input("test", "input")
    pt = point_interval(tuple(to_fmpq(v) for v in x.reshape(-1)), inp.shape)
    return evaluate(graph, pt, upto)


def magnitude(iv) -> np.ndarray:
    """max(|lo|, |hi|) per element, as float64 (rounded to nearest; covered by INFLATE)."""
    vals = [float(fmpq(max(abs(int(a)), abs(int(b))), iv.den)) for a, b in zip(iv.lo, iv.hi)]
    return np.array(vals, dtype=np.float64).reshape(iv.shape)


def _weights(graph, name: str) -> np.ndarray:
    t = graph.param(name)
    return np.array([float(fmpq(n, t.den)) for n in t.nums]).reshape(t.shape)


def error_bounds(graph, vals: dict, u: float) -> dict:
    """Per node, an upper bound on |framework value - exact value| (see the module docstring)."""
    mag = {nid: magnitude(iv) for nid, iv in vals.items()}
    err = {}
    for node in graph.nodes:
        if node.id not in vals:
            continue
        op, a = node.op, node.attrs
        ins = [err[i] for i in node.inputs]
        xs = [mag[i] + e for i, e in zip(node.inputs, ins)]
        shape = node.shape
        if op == "input":
            e = np.zeros(shape)
        elif op == "const":
            e = u * mag[node.id]
        elif op in ("relu", "abs", "neg"):
            e = ins[0]
        elif op in ("flatten", "reshape"):
            e = ins[0].reshape(shape)
        elif op == "transpose":
            e = np.transpose(ins[0], a["perm"])
        elif op == "concat":
            e = np.concatenate(ins, axis=a["axis"])
        elif op in ("add", "sub"):
            e = ins[0] + ins[1]
            e = e + u * (mag[node.id] + e)
        elif op == "mul":
            e = ins[0] * xs[1] + mag[node.inputs[0]] * ins[1] + u * xs[0] * xs[1]
        elif op == "linear":
            w = np.abs(_weights(graph, a["weight"]))
            b = np.abs(_weights(graph, a["bias"])) if a["bias"] else 0.0
            e = ins[0] @ w.T + gamma(w.shape[1] + 1, u) * (xs[0] @ w.T + b)
        elif op == "matmul":
            k = node_shape_k(graph, node)
            mb = mag[node.inputs[1]]
            e = ins[0] @ mb + xs[0] @ ins[1] + gamma(k, u) * (xs[0] @ xs[1])
        elif op == "conv2d":
            w = torch.from_numpy(np.abs(_weights(graph, a["weight"])))
            kw = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                      groups=a["groups"])

            def conv(t, w=w, kw=kw):
                return F.conv2d(torch.from_numpy(t)[None], w, **kw)[0].numpy()

            b = np.abs(_weights(graph, a["bias"]))[:, None, None] if a["bias"] else 0.0
            k = w.shape[1] * w.shape[2] * w.shape[3]
            e = conv(ins[0]) + gamma(k + 1, u) * (conv(xs[0]) + b)
        elif op == "maxpool2d":
            e = F.max_pool2d(torch.from_numpy(ins[0])[None], a["kernel"], a["stride"],
                             a["padding"], a["dilation"])[0].numpy()
        elif op == "avgpool2d":
            def avg(t, a=a):
                return F.avg_pool2d(torch.from_numpy(t)[None], a["kernel"], a["stride"],
                                    a["padding"], count_include_pad=a["count_include_pad"]
                                    )[0].numpy()
            kk = a["kernel"][0] * a["kernel"][1]
            e = avg(ins[0]) + gamma(kk + 2, u) * avg(xs[0])
        elif op == "batchnorm":
            g, beta = _weights(graph, a["weight"]), _weights(graph, a["bias"])
            mean, var = _weights(graph, a["running_mean"]), _weights(graph, a["running_var"])
            s = np.abs(g) / np.sqrt(var + float(a["eps"].p) / float(a["eps"].q)) * (1 + 1e-12)
            bshape = (-1,) + (1,) * (len(shape) - 1)
            s, mean, beta = s.reshape(bshape), np.abs(mean).reshape(bshape), np.abs(
                beta).reshape(bshape)
            e = s * ins[0] + 16 * u * (s * xs[0] + s * mean + beta)
        elif op in ("sum", "mean"):
            axes = tuple(a["axes"])
            k = int(np.prod([vals[node.inputs[0]].shape[i] for i in axes]))
            div = k if op == "mean" else 1
            e = (ins[0].sum(axis=axes, keepdims=a["keepdims"]) + gamma(k + 1, u)
                 * xs[0].sum(axis=axes, keepdims=a["keepdims"])) / div
        else:
            raise AssertionError(f"no error rule for {op}")
        err[node.id] = np.broadcast_to(np.asarray(e, dtype=np.float64), shape) * INFLATE
    return err


def node_shape_k(graph, node) -> int:
    return graph.by_id[node.inputs[1]].shape[0]


def check_agreement(graph, x: np.ndarray, y: np.ndarray, u: float, out: str | None = None):
    """Assert the framework output y (for input x) is within the bound of the exact value."""
    out = out or graph.outputs[0]
    vals = exact_values(graph, x, out)
    err = error_bounds(graph, vals, u)[out].reshape(-1)
    iv = vals[out]
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    assert y.size == len(iv.lo), f"output size {y.size}, graph {len(iv.lo)}"
    for i, (lo, hi) in enumerate(zip(iv.lo, iv.hi)):
        yi, ei = to_fmpq(y[i]), to_fmpq(err[i])
        assert fmpq(lo, iv.den) - ei <= yi <= fmpq(hi, iv.den) + ei, (
            f"{out}[{i}]: framework {y[i]!r} outside exact {float(fmpq(lo, iv.den))!r} "
            f"+- bound {err[i]:.3g}")
    return max(float(e) for e in err)


def torch_parity(module, shape, folder, seed=0, inputs=3, decompose=False):
    """Export `module`, then compare torch float64 and float32 with the kernel on random
    inputs. Returns the graph."""
    torch.manual_seed(seed)
    module = module.eval()
    if decompose:
        ep = capture(module, (torch.randn(shape),)).run_decompositions()
        writer, names = lower_exported(ep)
        graph = writer.save(folder, check=True, inputs=names).graph
    else:
        graph = export_module(module, torch.randn(shape), folder).graph
    rng = np.random.default_rng(seed)
    for _ in range(inputs):
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            y64 = module.double()(torch.from_numpy(x).double()).numpy()
            y32 = module.float()(torch.from_numpy(x)).numpy()
        check_agreement(graph, x[0], y64, U64)
        check_agreement(graph, x[0], y32, U32)
    return graph


# ----------------------------------------------------------------------------- ATen ops

class Lambda(nn.Module):
    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            setattr(self, k, nn.Parameter(v) if v.is_floating_point() else v)

    def forward(self, x):
        return self.fn(self, x)


def _p(*shape):
    return torch.randn(*shape) * 0.5


def _conv_bn():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), bn)


ATEN_CASES = {
    "linear": (lambda: nn.Linear(6, 4), (1, 6)),
    "linear_no_bias": (lambda: nn.Linear(6, 4, bias=False), (1, 6)),
    "linear_3d": (lambda: nn.Linear(6, 4), (1, 3, 6)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), (1, 2, 7, 7)),
    "conv2d_dilated_grouped": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
                               (1, 4, 6, 6)),
    "conv2d_same": (lambda: nn.Conv2d(2, 3, 3, padding="same"), (1, 2, 5, 5)),
    "conv2d_valid_rect": (lambda: nn.Conv2d(2, 3, (3, 1), padding=(1, 0), stride=(1, 2)),
                          (1, 2, 5, 6)),
    "batchnorm": (_conv_bn, (1, 2, 4, 4)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 7, 7)),
    "maxpool_dilated": (lambda: nn.MaxPool2d(2, stride=1, dilation=2), (1, 2, 5, 5)),
    "maxpool_ceil_same_shape": (lambda: nn.MaxPool2d(2, ceil_mode=True), (1, 2, 6, 6)),
    "avgpool_include_pad": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 7, 7)),
    "avgpool_exclude_pad": (lambda: nn.AvgPool2d(3, stride=1, padding=1,
                                                 count_include_pad=False), (1, 2, 5, 5)),
    "adaptive_avgpool": (lambda: nn.AdaptiveAvgPool2d((2, 1)), (1, 2, 4, 6)),
    "relu_neg_abs": (lambda: Lambda(lambda m, x: torch.abs(-torch.relu(x) + x)), (1, 5)),
    "relu_inplace": (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)), (1, 4)),
    "scalar_arith": (lambda: Lambda(lambda m, x: (x * 0.1 + 2) / 3 - x / 0.25), (1, 5)),
    "tensor_arith": (lambda: Lambda(lambda m, x: (x - m.c) * m.s / m.d + x * x,
                                    c=_p(5), s=_p(1, 5), d=torch.rand(5) + 0.5), (1, 5)),
    "add_alpha": (lambda: Lambda(lambda m, x: torch.add(x, m.c, alpha=3)
                                 - torch.sub(x, x, alpha=2), c=_p(5)), (1, 5)),
    "flatten_view": (lambda: Lambda(lambda m, x: x.flatten(2).reshape(1, -1).view(2, 12)
                                    .unsqueeze(0).squeeze(0)), (1, 2, 3, 4)),
    "flatten_middle": (lambda: Lambda(lambda m, x: torch.flatten(x, 1, 2)), (1, 2, 3, 4)),
    "transpose_permute": (lambda: Lambda(lambda m, x: x.transpose(1, 2).permute(0, 2, 3, 1)
                                         .transpose(0, 1).contiguous()), (1, 2, 3, 4)),
    "cat": (lambda: Lambda(lambda m, x: torch.cat([x, m.c * 2, x * 2], dim=1),
                           c=_p(1, 3)), (1, 4)),
    "cat_dim0": (lambda: Lambda(lambda m, x: torch.cat([x, x], 0).sum(0, keepdim=True)),
                 (1, 4)),
    "sum_mean": (lambda: Lambda(lambda m, x: x.sum(dim=(2, 3)) + x.mean((2, 3), keepdim=True)
                                .sum((2, 3)) - x.mean(dim=1).sum(-1).sum(-1, keepdim=True)),
                 (1, 2, 3, 4)),
    "matmul_act_act": (lambda: Lambda(lambda m, x: x @ x.transpose(-1, -2)), (1, 3, 4)),
    "matmul_param": (lambda: Lambda(lambda m, x: x @ m.w + torch.matmul(x, m.v),
                                    w=_p(4, 4), v=_p(4)[:, None].expand(4, 4).contiguous()),
                     (1, 4)),
    "mm_t": (lambda: Lambda(lambda m, x: torch.mm(x, m.w.t()), w=_p(3, 4)), (1, 4)),
    "unflatten_squeeze_dims": (lambda: Lambda(lambda m, x: x.unflatten(-1, (2, 3)).unsqueeze(2)
                                              .squeeze((0, 2)) + torch.tensor([1.0, 2, 3])),
                               (1, 6)),
    "dropout_clone_detach": (lambda: nn.Sequential(nn.Dropout(0.5), nn.Identity(),
                                                   Lambda(lambda m, x: x.clone().detach())),
                             (1, 4)),
}


UNEVALUATED = ["tanh", "sigmoid", "exp", "log", "sin", "cos", "softmax"]
DECOMPOSED = ["linear", "linear_3d", "conv2d", "batchnorm", "maxpool", "flatten_view",
              "matmul_param", "mm_t", "cat", "unflatten_squeeze_dims"]


@pytest.mark.parametrize("case", sorted(ATEN_CASES))
def test_aten_op_parity_with_torch_float64_and_float32(case, tmp_path):
    make, shape = ATEN_CASES[case]
    torch.manual_seed(1)
    torch_parity(make(), shape, str(tmp_path))


@pytest.mark.parametrize("case", DECOMPOSED)
def test_core_aten_decomposition_parity(case, tmp_path):
    """run_decompositions() gives addmm/permute/convolution/_native_batch_norm_legit_no_training
    /max_pool2d_with_indices/getitem: the same table lowers them."""
    make, shape = ATEN_CASES[case]
    torch.manual_seed(1)
    torch_parity(make(), shape, str(tmp_path), decompose=True)


def test_every_aten_table_entry_is_exercised_by_a_parity_case():
    from oracles.torch_export import ATEN_OPS, op_name

    seen = set()
    for case, (make, shape) in ATEN_CASES.items():
        torch.manual_seed(1)
        ep = capture(make(), (torch.randn(shape),))
        programs = [ep, ep.run_decompositions()] if case in DECOMPOSED else [ep]
        for program in programs:
            seen |= {op_name(n.target) for n in program.graph.nodes if n.op == "call_function"}
    seen |= {f"aten.{op}.default" for op in UNEVALUATED if op != "softmax"}
    seen |= {"aten.softmax.int", "aten._softmax.default"}  # test_unevaluated_ops_..., decomposed
    assert set(ATEN_OPS) - seen == set()


@pytest.mark.parametrize("op", UNEVALUATED)
def test_unevaluated_ops_export_with_shapes_and_the_kernel_refuses_to_evaluate(op, tmp_path):
    fn = {"softmax": lambda m, x: torch.softmax(x, -1), "log": lambda m, x: torch.log(x * x + 1)
          }.get(op, lambda m, x, op=op: getattr(torch, op)(x))
    module = nn.Sequential(nn.Linear(4, 3), Lambda(fn)).eval()
    ep = capture(module, (torch.randn(1, 4),))
    for i, program in enumerate([ep, ep.run_decompositions()]):
        writer, names = lower_exported(program)
        graph = writer.save(str(tmp_path / str(i)), inputs=names).graph
        assert [n.op for n in graph.nodes][-1] == op
        assert graph.by_id[graph.outputs[0]].shape == (3,)
        x = np.ones(4, dtype=np.float32)
        if op == "softmax":
            with pytest.raises(KernelError, match=f"op '{op}' is not yet supported"):
                exact_values(graph, x)
            continue
        # transcendental ops: the kernel's enclosure contains torch's float64 value (torch's
        # libm is within a few ulps; the enclosure is 2^-60 wide or better)
        iv = exact_values(graph, x)[graph.outputs[0]]
        want = module.double()(torch.from_numpy(x.astype(np.float64))[None])[0].detach().numpy()
        module.float()
        for i, v in enumerate(want):
            lo, hi = (float(fmpq(iv.lo[i], iv.den)), float(fmpq(iv.hi[i], iv.den)))
            slack = 1e-13 * (1 + abs(v))
            assert lo - slack <= v <= hi + slack, (op, i, lo, v, hi)
            assert hi - lo <= 1e-12 * (1 + abs(v))


# ----------------------------------------------------------------------------- whole models

class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=1, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.avg = nn.AvgPool2d(2, padding=1)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.out(torch.relu(self.fc2(h) + h) - x / 7)


def _with_stats(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("decompose", [False, True])
@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_whole_model_parity(name, decompose, tmp_path):
    torch.manual_seed(3)
    make, shape = {"mlp": (mlp, (1, 1, 8, 8)), "cnn": (lambda: _with_stats(CNN()), (1, 1, 8, 8)),
                   "residual": (Residual, (1, 8))}[name]
    torch_parity(make(), shape, str(tmp_path), seed=4, inputs=4, decompose=decompose)


# ----------------------------------------------------------------------------- tampering

def _retamper(folder: str, change) -> object:
    """Rewrite graph.json / weights.safetensors with `change(doc, params)`, re-bind the sha256."""
    import hashlib

    gpath = os.path.join(folder, "graph.json")
    with open(gpath) as f:
        doc = json.load(f)
    wpath = os.path.join(folder, "weights.safetensors")
    params = load_file(wpath) if doc.get("weights") else {}
    change(doc, params)
    if params:
        data = save_safetensors(params)
        with open(wpath, "wb") as f:
            f.write(data)
        doc["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    with open(gpath, "w") as f:
        json.dump(doc, f)
    return kernel_checker.load_graph(gpath)


def _reference(module, x):
    with torch.no_grad():
        return module.double()(torch.from_numpy(x).double()).numpy()


def test_transposed_weight_is_caught(tmp_path):
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    export_module(module, torch.randn(1, 6), str(tmp_path))
    graph = _retamper(str(tmp_path), lambda doc, p: p.update({"0.weight": np.ascontiguousarray(
        p["0.weight"].T)}))
    x = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)
    with pytest.raises(AssertionError, match="outside exact"):
        check_agreement(graph, x[0], _reference(module, x), U32)


def test_wrong_bias_is_caught_even_by_one_float32_ulp_under_float64(tmp_path):
    torch.manual_seed(6)
    module = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    export_module(module, torch.randn(1, 6), str(tmp_path))

    def nudge(doc, p):
        b = p["2.bias"].copy()
        b[1] = np.nextafter(b[1], np.float32(np.inf))
        p["2.bias"] = b

    graph = _retamper(str(tmp_path), nudge)
    x = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)
    with pytest.raises(AssertionError, match="outside exact"):
        check_agreement(graph, x[0], _reference(module, x), U64)


def test_wrong_padding_convention_is_caught(tmp_path):
    """count_include_pad: torch's default is True, ONNX AveragePool's is 0."""
    module = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1)).eval()
    export_module(module, torch.randn(1, 1, 4, 4), str(tmp_path))

    def flip(doc, p):
        for n in doc["nodes"]:
            if n["op"] == "avgpool2d":
                n["attrs"]["count_include_pad"] = not n["attrs"]["count_include_pad"]

    graph = _retamper(str(tmp_path), flip)
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32) + 3
    with pytest.raises(AssertionError, match="outside exact"):
        check_agreement(graph, x[0], _reference(module, x), U32)


def test_swapped_conv_padding_is_caught(tmp_path):
    module = nn.Sequential(nn.Conv2d(1, 2, 3, padding=(1, 2))).eval()
    export_module(module, torch.randn(1, 1, 5, 5), str(tmp_path))

    def swap(doc, p):
        for n in doc["nodes"]:
            if n["op"] == "conv2d":
                n["attrs"]["padding"] = n["attrs"]["padding"][::-1]

    with pytest.raises(KernelError, match="shape"):
        _retamper(str(tmp_path), swap)


# ----------------------------------------------------------------------------- ONNX networks

ACAS = sorted(glob.glob(os.path.join(VNN, "acasxu", "*.onnx")))
MNIST = sorted(glob.glob(os.path.join(VNN, "mnistfc", "*.onnx")))


def onnx_float64(model, x: np.ndarray) -> np.ndarray:
    """An independent float64 forward for the VNN-COMP op subset (not through the importer)."""
    import onnx
    from onnx import numpy_helper

    env = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in env]
    env[inputs[0]] = x.astype(np.float64)
    for n in model.graph.node:
        a = {at.name: onnx.helper.get_attribute_value(at) for at in n.attribute}
        v = [env[i] for i in n.input]
        if n.op_type == "Flatten":
            ax = a.get("axis", 1)
            r = v[0].reshape(int(np.prod(v[0].shape[:ax])), -1)
        elif n.op_type == "MatMul":
            r = v[0] @ v[1]
        elif n.op_type == "Gemm":
            b = v[1].T if a.get("transB", 0) else v[1]
            r = a.get("alpha", 1.0) * (v[0] @ b) + a.get("beta", 1.0) * v[2]
        elif n.op_type in ("Add", "Sub"):
            r = v[0] + v[1] if n.op_type == "Add" else v[0] - v[1]
        elif n.op_type == "Relu":
            r = np.maximum(v[0], 0)
        else:
            raise AssertionError(n.op_type)
        env[n.output[0]] = r
    return env[model.graph.output[0].name]


def ort_session(path_or_bytes):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("path", ACAS + MNIST, ids=os.path.basename)
def test_vnncomp_network_parity(path, tmp_path):
    onnx = pytest.importorskip("onnx")
    from oracles.onnx_import import import_onnx

    assert ACAS and MNIST, f"VNN-COMP networks not found under {VNN}"
    model = onnx.load(path)
    graph = import_onnx(model, str(tmp_path)).graph
    sess = ort_session(path)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(len(path))
    for _ in range(2):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        (y32,) = sess.run(None, {inp.name: x})
        check_agreement(graph, x[0], y32, U32)
        check_agreement(graph, x[0], onnx_float64(model, x), U64)


# ----------------------------------------------------------------------------- ONNX ops

def _onnx_model(nodes, in_shape, out_shape, inits=(), opset=13, dtype=1):
    from onnx import helper

    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("X", dtype, list(in_shape))],
        [helper.make_tensor_value_info("Y", dtype, list(out_shape) if out_shape else None)],
        [numpy_helper_from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def numpy_helper_from_array(value, name):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def _r(*shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * 0.5).astype(dtype)


def _n(op, ins, out="Y", **attrs):
    from onnx import helper

    return helper.make_node(op, ins, [out], name=f"{op}_{out}", **attrs)


ONNX_CASES = {
    "gemm_transB": ([_n("Gemm", ["X", "W", "B"], transB=1)], (1, 6), (1, 4),
                    [("W", _r(4, 6)), ("B", _r(4))]),
    "gemm_transA": ([_n("Gemm", ["X", "W", "B"], transA=1, transB=1)], (1, 6), (6, 4),
                    [("W", _r(4, 1)), ("B", _r(4))]),
    "gemm_transA_relu_gemm": ([_n("Relu", ["X"], "R"), _n("Gemm", ["R", "W"], "H", transA=1),
                               _n("Gemm", ["H", "V"], transA=1)], (1, 3), (2, 3),
                              [("W", _r(1, 2)), ("V", _r(3, 3))]),
    "gemm_alpha_beta": ([_n("Gemm", ["X", "W", "B"], alpha=0.1, beta=3.0)], (1, 6), (1, 4),
                        [("W", _r(6, 4)), ("B", _r(1, 4))]),
    "gemm_float64_alpha": ([_n("Gemm", ["X", "W", "B"], alpha=0.1, beta=0.5, transB=1)],
                           (1, 6), (1, 4), [("W", _r(4, 6, dtype=np.float64) / 3),
                                            ("B", _r(4, dtype=np.float64))]),
    "matmul_add": ([_n("MatMul", ["X", "W"], "H"), _n("Add", ["H", "B"])], (1, 6), (1, 3),
                   [("W", _r(6, 3)), ("B", _r(3))]),
    "matmul_act_act": ([_n("Transpose", ["X"], "T", perm=[0, 2, 1]), _n("MatMul", ["X", "T"])],
                       (1, 3, 4), (1, 3, 3), []),
    "sub_mul_div": ([_n("Sub", ["X", "C"], "A"), _n("Mul", ["A", "S"], "M"),
                     _n("Div", ["M", "D"], "Q"), _n("Sub", ["K", "Q"])], (1, 5), (1, 5),
                    [("C", _r(5)), ("S", _r(1, 5)), ("D", np.float32([3])),
                     ("K", _r(5, seed=3))]),
    "add_act_act_relu": ([_n("Relu", ["X"], "R"), _n("Add", ["R", "X"])], (1, 2, 3), (1, 2, 3),
                         []),
    "conv_pads_group": ([_n("Conv", ["X", "W", "B"], pads=[1, 2, 1, 2], strides=[2, 1],
                            dilations=[1, 2], group=2)], (1, 4, 6, 6), None,
                        [("W", _r(6, 2, 3, 3)), ("B", _r(6))]),
    "conv_same_upper": ([_n("Conv", ["X", "W"], auto_pad="SAME_UPPER")], (1, 2, 5, 5), None,
                        [("W", _r(3, 2, 3, 3))]),
    "batchnorm": ([_n("BatchNormalization", ["X", "G", "B", "M", "V"], epsilon=1e-3)],
                  (1, 3, 2, 2), (1, 3, 2, 2), [("G", _r(3)), ("B", _r(3)), ("M", _r(3)),
                                               ("V", np.float32([0.5, 1.5, 2.0]))]),
    "maxpool": ([_n("MaxPool", ["X"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                (1, 2, 7, 7), None, []),
    "avgpool_exclude": ([_n("AveragePool", ["X"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                        (1, 2, 4, 4), None, []),
    "avgpool_include": ([_n("AveragePool", ["X"], kernel_shape=[2, 2], strides=[2, 2],
                            pads=[1, 1, 1, 1], count_include_pad=1)], (1, 2, 4, 4), None, []),
    "flatten_reshape_transpose": ([_n("Flatten", ["X"], "F", axis=1),
                                   _n("Reshape", ["F", "S"], "R"),
                                   _n("Transpose", ["R"], "T", perm=[0, 2, 1]),
                                   _n("Identity", ["T"])], (1, 2, 3, 4), (1, 4, 6),
                                  [("S", np.int64([0, 6, -1]))]),
    "concat_constant": ([_n("Constant", [], "K", value=numpy_helper_from_array(_r(1, 2), "k")),
                         _n("Concat", ["X", "K", "X"], axis=1)], (1, 3), (1, 8), []),
    "shape_gather_flatten": ([_n("Shape", ["X"], "s"),
                              _n("Gather", ["s", "i0"], "b", axis=0),
                              _n("Unsqueeze", ["b", "ax"], "bu"),
                              _n("Concat", ["bu", "m1"], "shp", axis=0),
                              _n("Reshape", ["X", "shp"])], (1, 2, 3), (1, 6),
                             [("i0", np.int64(0)), ("ax", np.int64([0])),
                              ("m1", np.int64([-1]))]),
    "cast_constant": ([_n("Cast", ["C"], "D", to=11), _n("Cast", ["D"], "E", to=1),
                       _n("Mul", ["X", "E"])], (1, 3), (1, 3), [("C", _r(3))]),
    "squeeze_unsqueeze": ([_n("Unsqueeze", ["X", "ax"], "U"), _n("Squeeze", ["U", "ax"])],
                          (1, 3), (1, 3), [("ax", np.int64([2]))]),
}


def onnx_parity(model, in_shape, folder, dtype=np.float32):
    from oracles.onnx_import import import_onnx

    graph = import_onnx(model, folder).graph
    sess = ort_session(model.SerializeToString())
    rng = np.random.default_rng(7)
    for _ in range(2):
        x = rng.standard_normal(in_shape).astype(dtype)
        (y,) = sess.run(None, {"X": x})
        check_agreement(graph, x[0], y, U32 if dtype == np.float32 else U64)
    return graph


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_op_parity_with_onnxruntime(case, tmp_path):
    pytest.importorskip("onnx")
    nodes, in_shape, out_shape, inits = ONNX_CASES[case]
    dtype = np.float64 if "float64" in case else np.float32
    model = _onnx_model(nodes, in_shape, out_shape, inits, dtype=11 if dtype == np.float64
                        else 1)
    onnx_parity(model, in_shape, str(tmp_path), dtype)


def test_every_onnx_op_is_exercised_by_a_parity_case():
    from oracles.onnx_import import ONNX_OPS

    seen = {n.op_type for nodes, *_ in ONNX_CASES.values() for n in nodes}
    assert set(ONNX_OPS) - seen == {"Sigmoid", "Tanh", "Softmax"}  # shapes only, below


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Softmax"])
def test_onnx_unevaluated_ops_import_with_shapes(op, tmp_path):
    pytest.importorskip("onnx")
    from oracles.onnx_import import import_onnx

    model = _onnx_model([_n("MatMul", ["X", "W"], "H"), _n(op, ["H"])], (1, 4), (1, 3),
                        [("W", _r(4, 3))])
    graph = import_onnx(model, str(tmp_path)).graph
    out = graph.by_id[graph.outputs[0]]
    assert out.op == op.lower() and out.shape == (3,)
    x = _r(1, 4)
    (y,) = ort_session(model.SerializeToString()).run(None, {"X": x})
    assert y.shape == (1, 3)
    if op == "Softmax":
        with pytest.raises(KernelError, match="not yet supported"):
            exact_values(graph, x.reshape(-1))
        return
    iv = exact_values(graph, x.reshape(-1))[graph.outputs[0]]  # contains onnxruntime's float32
    for i, v in enumerate(y.reshape(-1).astype(np.float64)):
        lo, hi = float(fmpq(iv.lo[i], iv.den)), float(fmpq(iv.hi[i], iv.den))
        assert lo - 1e-6 * (1 + abs(v)) <= v <= hi + 1e-6 * (1 + abs(v))
