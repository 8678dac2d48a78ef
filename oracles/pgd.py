"""PGD counterexample search in torch (untrusted producer): projected signed-gradient ascent on
the violation of a claim, inside the claim's input box. A returned point is only a float
candidate; the kernel evaluates it exactly (move it into the box with `tl_dsl.claims.clamp_into`
and check a `counterexample` claim)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.numpy import load_file

from oracles.bounds_torch import Spec, pick_device, spec_of, to_float


class TorchGraph:
    """Float evaluation of a `tl.graph.v1` DAG in torch (batched, differentiable)."""

    def __init__(self, graph_path: str, device=None, dtype=torch.float64):
        self.device = pick_device(device)
        self.dtype = dtype
        with open(graph_path) as f:
            self.doc = json.load(f)
        raw = {}
        if self.doc.get("weights"):
            wpath = os.path.join(os.path.dirname(os.path.abspath(graph_path)),
                                 self.doc["weights"]["path"])
            raw = load_file(wpath)
        self.params = {k: self._t(v) for k, v in raw.items()}
        self.nodes = self.doc["nodes"]
        inputs = [n for n in self.nodes if n["op"] == "input"]
        if len(inputs) != 1:
            raise ValueError(f"expected exactly one input node, found {len(inputs)}")
        self.input = inputs[0]
        self.input_shape = tuple(self.input["shape"])
        self.outputs = self.doc["outputs"]

    def _t(self, arr) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arr, dtype=np.float64), dtype=self.dtype,
                               device=self.device)

    def _param(self, attr) -> torch.Tensor:
        if isinstance(attr, str):
            return self.params[attr]
        if isinstance(attr, dict) and "values" in attr:
            return self._t([to_float(v) for v in attr["values"]]).reshape(attr["shape"])
        raise ValueError("inline base64 constants are not supported by the torch forward")

    def forward(self, x: torch.Tensor, node: str | None = None) -> torch.Tensor:
        """x: [B, *input shape] (or [B, n_in]) -> [B, *node shape]."""
        x = x.reshape((x.shape[0],) + self.input_shape)
        target = node or self.outputs[0]
        vals = {}
        for nd in self.nodes:
            args = [vals[i] for i in nd.get("inputs", [])]
            vals[nd["id"]] = x if nd["op"] == "input" else self._apply(nd, args, x.shape[0])
            if nd["id"] == target:
                return vals[target]
        raise ValueError(f"no node {target!r}")

    def _apply(self, nd, args, batch):  # noqa: C901 - one branch per op
        op, a = nd["op"], nd.get("attrs") or {}
        if op == "const":
            return self._param(a["value"])[None]
        if op == "linear":
            y = args[0] @ self.params[a["weight"]].T
            return y + self.params[a["bias"]] if a.get("bias") else y
        if op == "relu":
            return torch.relu(args[0])
        unary = {"neg": torch.neg, "abs": torch.abs, "tanh": torch.tanh,
                 "sigmoid": torch.sigmoid, "exp": torch.exp, "log": torch.log, "sin": torch.sin,
                 "cos": torch.cos}
        if op in unary:
            return unary[op](args[0])
        if op in ("add", "sub", "mul"):
            return {"add": torch.add, "sub": torch.sub, "mul": torch.mul}[op](*args)
        if op == "matmul":
            return args[0] @ args[1]
        if op in ("flatten", "reshape"):
            return args[0].reshape((batch,) + tuple(nd["shape"]))
        if op == "transpose":
            return args[0].permute([0] + [p + 1 for p in a["perm"]])
        if op == "concat":
            return torch.cat(args, dim=a["axis"] % len(nd["shape"]) + 1)
        if op in ("sum", "mean"):
            rank = args[0].dim() - 1
            axes = list(range(1, rank + 1)) if a.get("axes") is None else [
                ax % rank + 1 for ax in a["axes"]]
            f = torch.sum if op == "sum" else torch.mean
            return f(args[0], dim=axes, keepdim=bool(a.get("keepdims", False)))
        if op == "softmax":
            return torch.softmax(args[0], dim=a.get("axis", -1) % len(nd["shape"]) + 1)
        if op == "batchnorm":
            p = {k: self.params[a[k]] for k in ("weight", "bias", "running_mean", "running_var")}
            shape = (1, -1) + (1,) * (args[0].dim() - 2)
            scale = p["weight"] / torch.sqrt(p["running_var"] + to_float(a["eps"]))
            return (args[0] - p["running_mean"].reshape(shape)) * scale.reshape(shape) + \
                p["bias"].reshape(shape)
        if op == "conv2d":
            y = F.conv2d(args[0], self.params[a["weight"]], None, a.get("stride", [1, 1]),
                         a.get("padding", [0, 0]), a.get("dilation", [1, 1]), a.get("groups", 1))
            return y + self.params[a["bias"]].reshape(1, -1, 1, 1) if a.get("bias") else y
        if op == "maxpool2d":
            return F.max_pool2d(args[0], a["kernel"], a.get("stride") or a["kernel"],
                                a.get("padding", [0, 0]), a.get("dilation", [1, 1]))
        if op == "avgpool2d":
            return F.avg_pool2d(args[0], a["kernel"], a.get("stride") or a["kernel"],
                                a.get("padding", [0, 0]),
                                count_include_pad=a.get("count_include_pad", True))
        raise ValueError(f"node {nd['id']!r}: op {op!r} is not supported by the torch forward")


_GRAPHS: dict = {}


def load_torch_graph(graph_path: str, device=None, dtype=torch.float64) -> TorchGraph:
    path = os.path.abspath(graph_path)
    key = (path, os.path.getmtime(path), str(pick_device(device)), dtype)
    if key not in _GRAPHS:
        if len(_GRAPHS) > 16:
            _GRAPHS.clear()
        _GRAPHS[key] = TorchGraph(path, device, dtype)
    return _GRAPHS[key]


def _slack(y: torch.Tensor, c: torch.Tensor, thr: torch.Tensor, spec, target: torch.Tensor | None):
    """Per sample, how far inside the violation region y is (>= 0 inside for unsat, > 0 for the
    other kinds). For unsat with `target` [B] polytope indices: that polytope's slack."""
    v = y.reshape(y.shape[0], -1) @ c.T  # [B, m]
    gaps = thr[None, :] - v  # unsat: b - A y (>= 0 on every row: inside); else: violation
    if spec.kind != "unsat":
        return gaps.amax(dim=1)
    per_poly = torch.stack([gaps[:, a:b].amin(dim=1) for a, b in spec.groups], dim=1)
    if target is None:
        return per_poly.amax(dim=1)
    return per_poly.gather(1, target[:, None])[:, 0]


@dataclass
class _Attack:
    """What both attacks share: the float graph, the claim's spec as rows `c` and thresholds
    `thr`, and the box being searched as flat tensors."""

    net: TorchGraph
    node: str
    spec: Spec
    lo: torch.Tensor
    hi: torch.Tensor
    c: torch.Tensor
    thr: torch.Tensor

    @classmethod
    def of(cls, graph_path: str, claim, box: tuple | None, device, dtype) -> _Attack:
        """The attack on `claim` over its input box, or over `box` = (lo, hi) floats."""
        net = load_torch_graph(graph_path, device, dtype)
        out_shape = next(n["shape"] for n in net.nodes if n["id"] == claim.node)
        spec = spec_of(claim, int(np.prod(out_shape)))
        if box is None:
            b = claim.input_set.as_box()
            box = ([to_float(v) for v in b.lo], [to_float(v) for v in b.hi])
        lo, hi = (net._t(np.asarray(v, dtype=np.float64).reshape(-1)) for v in box)
        return cls(net, claim.node, spec, lo, hi, net._t(spec.c), net._t(spec.thr))

    def slack(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return _slack(self.net.forward(x, self.node), self.c, self.thr, self.spec, target)


def pgd_attack(graph_path: str, claim, steps: int = 50, restarts: int = 5, seed: int = 0,
               box: tuple | None = None, device=None, dtype=torch.float64,
               return_slack: bool = False, starts: int = 1):
    """A float input point (shaped like the graph's input) breaking `claim` in float arithmetic,
    or None. Unsat claims: a point whose output lies in some unsafe polytope (each restart attacks
    every polytope, one sample per polytope); bounds / linear_bound: a row violated. Signed
    gradient steps, projected to the claim's input box (or `box` = (lo, hi) floats); the first
    restart starts at the box centre, the others uniformly at random. `starts`: points per
    restart, run together as one batch (the first restart's others also at random)."""
    attack = _Attack.of(graph_path, claim, box, device, dtype)
    spec, lo, hi = attack.spec, attack.lo, attack.hi
    n_poly = len(spec.groups) if spec.kind == "unsat" else 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    width = hi - lo
    best_x, best_s = None, -np.inf
    for r in range(restarts):
        if r == 0:
            x = ((lo + hi) / 2).expand(n_poly, -1).clone()
            if starts > 1:
                u = torch.rand(((starts - 1) * n_poly, lo.numel()), generator=gen,
                               dtype=dtype).to(lo.device)
                x = torch.cat([x, lo + u * width])
        else:
            u = torch.rand((starts * n_poly, lo.numel()), generator=gen, dtype=dtype).to(lo.device)
            x = lo + u * width
        target = (torch.arange(n_poly, device=lo.device).repeat(starts)
                  if spec.kind == "unsat" else None)
        for t in range(steps + 1):
            x.requires_grad_(True)
            s = attack.slack(x, target)
            with torch.no_grad():
                i = int(torch.argmax(s))
                if float(s[i]) > best_s:
                    best_s, best_x = float(s[i]), x[i].detach().clone()
            if t == steps or (best_s > 0 and spec.is_violation(np.array([best_s]))[0]):
                break
            (grad,) = torch.autograd.grad(s.sum(), x)
            step = width * (2.0 / steps) * (1.0 - t / (steps + 1)) + 1e-12 * width
            with torch.no_grad():
                x = torch.maximum(torch.minimum(x + step * grad.sign(), hi), lo)
        if best_x is not None and spec.is_violation(np.array([best_s]))[0]:
            break
    found = best_x is not None and bool(spec.is_violation(np.array([best_s]))[0])
    point = best_x.cpu().numpy().reshape(attack.net.input_shape) if found else None
    return (point, best_s) if return_slack else point


def sample_attack(graph_path: str, claim, box: tuple | None = None, samples: int = 20000,
                  keep: int = 64, steps: int = 30, seed: int = 0, step_frac: float = 0.05,
                  device=None, dtype=torch.float64, on_face: float = 0.3):
    """A float input point breaking `claim`, or None: `samples` points of the box (the claim's,
    or `box` = (lo, hi) floats), uniform, except that in the second half each coordinate is put
    on the box's lower or upper face with probability `on_face`; then signed-gradient ascent
    from the `keep` best (step `step_frac` of the width, shrinking), projected to the box.
    Finds the narrow violation regions of few-input nets that ascent from a handful of starts
    misses, those on the box's faces too (ACAS Xu 1_9 prop_7: none among 10^6 uniform points,
    several among 20,000 of these)."""
    attack = _Attack.of(graph_path, claim, box, device, dtype)
    spec, lo, hi, shape = attack.spec, attack.lo, attack.hi, attack.net.input_shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    width = hi - lo
    u = torch.rand((samples, lo.numel()), generator=gen, dtype=dtype)
    face = torch.rand(u.shape, generator=gen, dtype=dtype) < on_face
    face[:samples // 2] = False
    side = (torch.rand(u.shape, generator=gen, dtype=dtype) < 0.5).to(dtype)
    u = torch.where(face, side, u).to(lo.device)
    x = torch.cat([((lo + hi) / 2)[None], lo + u * width])
    with torch.no_grad():
        s = attack.slack(x)
    hit = spec.is_violation(s.cpu().numpy())
    if hit.any():
        return x[int(np.argmax(hit))].cpu().numpy().reshape(shape)
    x = x[s.topk(min(keep, len(s))).indices].clone()
    for t in range(steps):
        x.requires_grad_(True)
        s = attack.slack(x)
        hit = spec.is_violation(s.detach().cpu().numpy())
        if hit.any():
            return x[int(np.argmax(hit))].detach().cpu().numpy().reshape(shape)
        (grad,) = torch.autograd.grad(s.sum(), x)
        with torch.no_grad():
            x = x + width * step_frac * (1 - t / steps) * grad.sign()
            x = torch.maximum(torch.minimum(x, hi), lo)
    with torch.no_grad():
        s = attack.slack(x)
    hit = spec.is_violation(s.cpu().numpy())
    return x[int(np.argmax(hit))].cpu().numpy().reshape(shape) if hit.any() else None
