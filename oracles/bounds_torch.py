"""IBP, CROWN and alpha-CROWN in torch (untrusted producer) and `crown` certificates for the
kernel (docs/crown_certificate.md). Everything here is float arithmetic; soundness comes from the
kernel's exact replay. To make that replay succeed, every intermediate bound sent is rounded
outward to a multiple of 2^-20 after a safety margin, alphas are multiples of 2^-16, beta
multipliers (beta-CROWN, on a domain's relu split constraints) are rounded down to multiples of
2^-16, and the float computation uses exactly those rounded values (and the kernel's rounded upper
lines), so the float final bound tracks the kernel's exact one closely.

The claim node's ancestors form a DAG with one input node and ops in `SUPPORTED_OPS` (a chain of
single-input nodes is the common case); relaxations as in the kernel (docs/crown_certificate.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.numpy import load_file

SUPPORTED_OPS = ("linear", "conv2d", "relu", "flatten", "reshape", "avgpool2d", "batchnorm",
                 "maxpool2d", "add")
BOUND_BITS = 20  # intermediate bounds: multiples of 2^-20
ALPHA_BITS = 16  # lower slopes: multiples of 2^-16
UPPER_BITS = 16  # the kernel's default upper lines: multiples of 2^-16, rounded up
MARGIN_REL = 1e-7  # safety margin before rounding: MARGIN_REL * (1 + |v|) + MARGIN_SCALE * scale
MARGIN_SCALE = 1e-11
DECIDE_TOL = 1e-8  # a float row bound counts as proving only with this relative slack

_POOL_DEFAULTS = {"stride": None, "padding": [0, 0], "dilation": [1, 1], "count_include_pad": True}


def pick_device(device=None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_float(value) -> float:
    """An exact rational (fmpq, Fraction, int, float, decimal string) to the nearest float."""
    if isinstance(value, str):
        return float(Fraction(value))
    return float(value)


_TEXT_CACHE: dict = {}


def _texts(bits: int) -> list[str]:
    """"k/2^bits" for k = 0 .. 2^bits (unreduced; the kernel reads any "p/q")."""
    if bits not in _TEXT_CACHE:
        den = 1 << bits
        _TEXT_CACHE[bits] = ["0"] + [f"{k}/{den}" for k in range(1, den)] + ["1"]
    return _TEXT_CACHE[bits]


def encode_dyadic(values: torch.Tensor, bits: int) -> list[str]:
    """Floats that are multiples of 2^-bits (or integers, when large) as exact "k/2^bits" text
    (any other float exactly as its binary value)."""
    den = 1 << bits
    arr = values.detach().reshape(-1).cpu().numpy().astype(np.float64)
    scaled = arr * den
    small = np.abs(scaled) < 2.0 ** 53
    ks = np.where(small, np.rint(np.where(small, scaled, 0)), 0).astype(np.int64)
    exact = small & (ks == scaled)
    if bits <= 16 and exact.all() and (ks >= 0).all() and (ks <= den).all():
        table = _texts(bits)
        return [table[k] for k in ks.tolist()]
    out = []
    for v, k, ok in zip(arr.tolist(), ks.tolist(), exact.tolist()):
        if ok:
            out.append(str(k) if k == 0 or den == 1 else f"{k}/{den}")
        else:  # not a multiple (or huge): exact binary value
            f = Fraction(v)
            out.append(str(f.numerator) if f.denominator == 1 else
                       f"{f.numerator}/{f.denominator}")
    return out


def _multiples(values: torch.Tensor, bits: int) -> torch.Tensor | None:
    """values times 2^bits (float64) when every one is then an integer below 2^53 in magnitude
    (exact in float64 and in an int64), else None."""
    scaled = values.detach().cpu().double() * (1 << bits)
    return scaled if bool(((scaled.abs() < 2.0 ** 53) & (scaled == scaled.round())).all()) \
        else None


def encode_bounds(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[list, list, dict]:
    """An `intermediate` entry's lo and hi: integers over {"den": 2^bits} when every value is
    such a multiple (`_multiples`; the kernel reads them with no text to parse), else
    `encode_dyadic`'s texts (and no den)."""
    scaled = _multiples(torch.cat([lo.reshape(-1), hi.reshape(-1)]), bits)
    if scaled is None:
        return encode_dyadic(lo, bits), encode_dyadic(hi, bits), {}
    ints = scaled.long().tolist()
    return ints[:lo.numel()], ints[lo.numel():], {"den": 1 << bits}


def encode_slopes(values: torch.Tensor, bits: int) -> dict | list:
    """Lower slopes (one vector, or per-row vectors as a matrix) as {"den": 2^bits, "values":
    integers} when each is a multiple of 2^-bits in [0, 1] (no text for the kernel to parse),
    else as `encode_dyadic`'s texts."""
    scaled = _multiples(values, bits)
    if scaled is not None and bool(((scaled >= 0) & (scaled <= 1 << bits)).all()):
        return {"den": 1 << bits, "values": scaled.long().tolist()}
    return encode_dyadic(values, bits) if values.dim() == 1 else [
        encode_dyadic(row, bits) for row in values]


def round_down(v: torch.Tensor, scale: torch.Tensor | float = 0.0) -> torch.Tensor:
    """v minus the safety margin, rounded down to a multiple of 2^-BOUND_BITS. The margin grows
    with the float type's epsilon (float32 computations get a wider one)."""
    eps = torch.finfo(v.dtype).eps
    rel, sc = max(MARGIN_REL, 1e3 * eps), max(MARGIN_SCALE, 1e2 * eps)
    m = rel * (1 + v.abs()) + sc * scale
    return torch.floor((v - m) * 2.0 ** BOUND_BITS) / 2.0 ** BOUND_BITS


def round_up(v: torch.Tensor, scale: torch.Tensor | float = 0.0) -> torch.Tensor:
    return -round_down(-v, scale)


def _ceil_to(v: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.ceil(v * 2.0 ** bits) / 2.0 ** bits


# --------------------------------------------------------------------------------------------
# The graph of the claim node's ancestors as torch layers


@dataclass
class _PoolRelax:
    """maxpool2d relaxation on the input bounds [l, u] (docs/crown_certificate.md): per output
    window, `star` is the input cell with the largest lower bound (first in window order on
    ties); y >= x_star, and y <= x_star where the window is `exact` (l_star >= every other
    cell's u), else y <= `up_const` = max u over the window (0 where exact)."""

    star: torch.Tensor  # [n_out] long
    exact: torch.Tensor  # [n_out] float 0/1
    up_const: torch.Tensor  # [n_out]


class _Layer:
    """One node: an affine map (linear, conv2d, avgpool2d, batchnorm, flatten, reshape), a relu,
    a maxpool2d or an add. `src` holds the positions of its inputs (0: the graph input, k: the
    output of layers[k - 1]). Tensors are batched: forward maps [B, *in_shape] -> [B, *out_shape];
    `bwd` maps coefficient rows [m, *out_shape] -> [m, *in_shape] (the transpose of the linear
    part of an affine map)."""

    def __init__(self, node: dict, in_shape: tuple, params: dict, device, dtype,
                 src: list | None = None):
        self.id = node["id"]
        self.op = node["op"]
        self.src = list(src) if src is not None else []
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(node["shape"])
        self.n_in = math.prod(self.in_shape)
        self.n_out = math.prod(self.out_shape)
        a = node.get("attrs") or {}
        self.bias = None
        self.bias_shaped = None  # the bias broadcast against [B, *out_shape]
        self.weight = None

        def param(name):
            return torch.as_tensor(np.asarray(params[name], dtype=np.float64), dtype=dtype,
                                   device=device)

        if self.op == "linear":
            if len(self.in_shape) != 1:
                raise ValueError(f"node {self.id!r}: linear on a non-vector input "
                                 f"{list(self.in_shape)} is not supported in crown (flatten first)")
            self.weight = param(a["weight"])
            self.weight_abs = self.weight.abs()
            if a.get("bias"):
                self.bias = param(a["bias"])
                self.bias_shaped = self.bias
        elif self.op == "conv2d":
            self.weight = param(a["weight"])
            self.weight_abs = self.weight.abs()
            if a.get("bias"):
                self.bias = param(a["bias"])
                self.bias_shaped = self.bias.reshape(-1, 1, 1)
            self.stride = tuple(a.get("stride") or (1, 1))
            self.padding = tuple(a.get("padding") or (0, 0))
            self.dilation = tuple(a.get("dilation") or (1, 1))
            self.groups = int(a.get("groups") or 1)
            self._set_output_padding(self.weight.shape[2:], self.dilation)
        elif self.op == "avgpool2d":
            attrs = dict(_POOL_DEFAULTS, **{k: v for k, v in a.items() if v is not None})
            kernel = tuple(attrs["kernel"])
            self.stride = tuple(attrs["stride"] or kernel)
            self.padding = tuple(attrs["padding"])
            if tuple(attrs["dilation"]) != (1, 1):
                raise ValueError(f"node {self.id!r}: avgpool2d with dilation "
                                 f"{attrs['dilation']} is not supported in crown")
            self.dilation = (1, 1)
            c = self.in_shape[0]
            self.groups = c
            self.weight = torch.ones((c, 1) + kernel, dtype=dtype, device=device)
            self.weight_abs = self.weight
            self._set_output_padding(kernel, (1, 1))
            if attrs["count_include_pad"]:
                self.divisor = float(kernel[0] * kernel[1])
            else:
                ones = torch.ones((1, 1) + self.in_shape[1:], dtype=dtype, device=device)
                k1 = torch.ones((1, 1) + kernel, dtype=dtype, device=device)
                self.divisor = F.conv2d(ones, k1, None, self.stride, self.padding)[0]
        elif self.op == "batchnorm":
            # eval mode: y = k_c (x - mean_c) + beta_c, k_c = gamma_c / sqrt(var_c + eps), channel
            # c = first dimension: a diagonal affine map
            eps = float(Fraction(str(a["eps"])))
            gamma, beta = (np.asarray(params[a[n]], dtype=np.float64) for n in ("weight", "bias"))
            mean, var = (np.asarray(params[a[n]], dtype=np.float64)
                         for n in ("running_mean", "running_var"))
            k = gamma / np.sqrt(var + eps)
            view = (-1,) + (1,) * (len(self.out_shape) - 1)
            self.scale = torch.as_tensor(k, dtype=dtype, device=device).reshape(view)
            self.scale_abs = self.scale.abs()
            self.bias = torch.as_tensor(beta - k * mean, dtype=dtype, device=device)
            self.bias_shaped = self.bias.reshape(view)
        elif self.op == "maxpool2d":
            attrs = dict(_POOL_DEFAULTS, **{k: v for k, v in a.items() if v is not None})
            self.kernel = tuple(attrs["kernel"])
            self.stride = tuple(attrs["stride"] or self.kernel)
            self.padding = tuple(attrs["padding"])
            self.dilation = tuple(attrs["dilation"])
            self.win = self._windows(device, dtype)
        elif self.op not in ("relu", "flatten", "reshape", "add"):
            raise AssertionError(self.op)
        # A . f(0), per bias: the bias as a full output tensor
        self.bias_full = None
        if self.bias_shaped is not None:
            self.bias_full = self.bias_shaped.expand(self.out_shape).reshape(-1)

    def _set_output_padding(self, kernel, dilation):
        op = []
        for i in range(2):
            size = self.in_shape[1 + i]
            base = (self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i] + \
                dilation[i] * (kernel[i] - 1) + 1
            op.append(size - base)
        self.output_padding = tuple(op)

    def _windows(self, device, dtype) -> torch.Tensor:
        """[n_out, kh * kw]: the flat input cells of each maxpool window, in row-major window
        order; padding cells are n_in (a cell with bounds -inf)."""
        c = self.in_shape[0]
        cells = torch.arange(self.n_in, dtype=torch.float64, device=device)
        cells = cells.reshape((1,) + self.in_shape)
        ph, pw = self.padding
        cells = F.pad(cells, (pw, pw, ph, ph), value=-1.0)
        cols = F.unfold(cells, self.kernel, dilation=self.dilation, stride=self.stride)
        k = self.kernel[0] * self.kernel[1]
        win = cols.reshape(c, k, -1).permute(0, 2, 1).reshape(-1, k)
        if win.shape[0] != self.n_out:
            raise ValueError(f"node {self.id!r}: maxpool2d windows give {win.shape[0]} outputs, "
                             f"the node's shape {list(self.out_shape)} has {self.n_out}")
        return torch.where(win < 0, self.n_in, win).long()

    @property
    def is_affine(self) -> bool:
        return self.op not in ("relu", "maxpool2d")

    def lin(self, x: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """The linear part (no bias), or with |W| when `absolute` (for interval radii)."""
        b = x.shape[0]
        if self.op == "linear":
            return x @ (self.weight_abs if absolute else self.weight).T
        if self.op in ("flatten", "reshape"):
            return x.reshape((b,) + self.out_shape)
        if self.op == "batchnorm":
            return x * (self.scale_abs if absolute else self.scale)
        w = self.weight_abs if absolute else self.weight
        y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        if self.op == "avgpool2d":
            y = y / self.divisor
        return y

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        """`other`: the second input of an add."""
        if self.op == "relu":
            return torch.relu(x)
        if self.op == "add":
            return x + other
        if self.op == "maxpool2d":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)
        y = self.lin(x)
        if self.bias_shaped is not None:
            y = y + self.bias_shaped
        return y

    def ibp(self, lo: torch.Tensor, hi: torch.Tensor,
            other: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat bounds [n_in] -> flat bounds [n_out]; `other`: the second input's, for add."""
        if self.op == "relu":
            return lo.clamp(min=0), hi.clamp(min=0)
        if self.op in ("flatten", "reshape"):
            return lo, hi
        if self.op == "add":
            return lo + other[0], hi + other[1]
        if self.op == "maxpool2d":
            shape = (1,) + self.in_shape
            return (self.forward(lo.reshape(shape)).reshape(-1),
                    self.forward(hi.reshape(shape)).reshape(-1))
        shape = (1,) + self.in_shape
        mid = ((lo + hi) / 2).reshape(shape)
        rad = ((hi - lo) / 2).reshape(shape)
        c = self.forward(mid).reshape(-1)
        r = self.lin(rad, absolute=True).reshape(-1)
        return c - r, c + r

    def pool_relax(self, lo: torch.Tensor, hi: torch.Tensor) -> _PoolRelax:
        """The maxpool relaxation on input bounds [n_in] (differentiable in `up_const`)."""
        pad = lo.new_full((1,), -torch.inf)
        wl = torch.cat([lo, pad])[self.win]
        wu = torch.cat([hi, pad])[self.win]
        with torch.no_grad():
            j = wl.argmax(dim=1, keepdim=True)  # the first largest lower bound
            star = self.win.gather(1, j)[:, 0]
            others = wu.scatter(1, j, -torch.inf).amax(dim=1)
            exact = wl.gather(1, j)[:, 0] >= others
        up = torch.where(exact, torch.zeros_like(lo[:1]), wu.amax(dim=1))
        return _PoolRelax(star, exact.to(lo.dtype), up)

    def loose_cells(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """[n_in] bool: the cells of the windows whose relaxation on [lo, hi] is not exact."""
        r = self.pool_relax(lo, hi)
        mask = torch.zeros(self.n_in + 1, dtype=torch.bool, device=lo.device)
        mask[self.win[r.exact == 0].reshape(-1)] = True
        return mask[:-1]

    def bwd(self, a: torch.Tensor) -> torch.Tensor:
        """[m, *out] -> [m, *in]: rows times the linear part."""
        m = a.shape[0]
        if self.op == "linear":
            return a @ self.weight
        if self.op in ("flatten", "reshape"):
            return a.reshape((m,) + self.in_shape)
        a = a.reshape((m,) + self.out_shape)
        if self.op == "batchnorm":
            return a * self.scale
        if self.op == "avgpool2d":
            a = a / self.divisor
        return F.conv_transpose2d(a, self.weight, None, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def bias_dot(self, a: torch.Tensor) -> torch.Tensor | None:
        """[m, *out] -> [m]: rows dotted with the bias (None without bias)."""
        if self.bias_full is None:
            return None
        return a.reshape(a.shape[0], -1) @ self.bias_full


class TorchChain:
    """The graph of `node`'s ancestors (default: the graph's first output), one input node, as
    torch layers in the graph file's node order (topological). A chain is the case where every
    layer reads the one before it. Positions: 0 = the input, k = the output of layers[k - 1]."""

    def __init__(self, graph_path: str, node: str | None = None, device=None,
                 dtype=torch.float64):
        self.device = pick_device(device)
        self.dtype = dtype
        with open(graph_path) as f:
            doc = json.load(f)
        params = {}
        if doc.get("weights"):
            wpath = os.path.join(os.path.dirname(os.path.abspath(graph_path)),
                                 doc["weights"]["path"])
            params = load_file(wpath)
        by_id = {n["id"]: n for n in doc["nodes"]}
        order = {n["id"]: i for i, n in enumerate(doc["nodes"])}
        target = node or doc["outputs"][0]
        if target not in by_id:
            raise ValueError(f"no node {target!r} in the graph")
        seen, todo = set(), [target]
        while todo:
            nid = todo.pop()
            if nid in seen:
                continue
            seen.add(nid)
            nd = by_id[nid]
            want = 0 if nd["op"] == "input" else 2 if nd["op"] == "add" else 1
            if nd["op"] != "input" and nd["op"] not in SUPPORTED_OPS:
                raise ValueError(f"op {nd['op']!r} at node {nid!r} is not supported by crown; "
                                 f"supported: {list(SUPPORTED_OPS)}")
            ins = nd.get("inputs") or []
            if len(ins) != want:
                raise ValueError(f"node {nid!r} ({nd['op']}): expected {want} inputs, found "
                                 f"{len(ins)}")
            for s in ins:
                if s not in by_id:
                    raise ValueError(f"node {nid!r}: no input node {s!r} in the graph")
                if order[s] >= order[nid]:
                    raise ValueError(f"node {nid!r}: input {s!r} comes later in the node list "
                                     f"(nodes must be in topological order)")
                todo.append(s)
        nodes = sorted((by_id[i] for i in seen), key=lambda nd: order[nd["id"]])
        inputs = [nd["id"] for nd in nodes if nd["op"] == "input"]
        if len(inputs) != 1:
            raise ValueError(f"crown needs exactly one input node among the ancestors of "
                             f"{target!r}, found {inputs}")
        inp = nodes[0]
        self.input_id = inp["id"]
        self.input_shape = tuple(inp["shape"])
        self.n_in = math.prod(self.input_shape)
        self.node = target
        self.ids = [nd["id"] for nd in nodes]
        self.pos = {nid: k for k, nid in enumerate(self.ids)}
        shapes = [tuple(nd["shape"]) for nd in nodes]
        shapes[0] = self.input_shape
        self.layers: list[_Layer] = []
        for nd in nodes[1:]:
            src = [self.pos[s] for s in nd["inputs"]]
            if nd["op"] == "add" and shapes[src[0]] != shapes[src[1]]:
                raise ValueError(f"node {nd['id']!r}: add of shapes {list(shapes[src[0]])} and "
                                 f"{list(shapes[src[1]])} (broadcasting) is not supported by "
                                 f"crown")
            layer = _Layer(nd, shapes[src[0]], params, self.device, dtype, src)
            self.layers.append(layer)
        self.out_shape = shapes[-1]
        self.n_out = math.prod(self.out_shape)
        self.is_chain = all(layer.src == [k] for k, layer in enumerate(self.layers))
        self.relus = [k for k, layer in enumerate(self.layers) if layer.op == "relu"]
        # per position: its ancestors' positions; relu layers among them (the relus an
        # intermediate bound there may name in `alpha`); layers reading it
        anc: list[set] = [set()]
        for layer in self.layers:
            anc.append(set().union(*(anc[s] | {s} for s in layer.src)))
        self.relu_ancestors = [[k for k in self.relus if k + 1 in a] for a in anc]
        # CROWN cannot beat IBP at a position reached through one map; flatten, reshape and
        # batchnorm (diagonal) keep IBP exact and do not count
        self.single_map = [sum(1 for p in a | {q} if p and self.layers[p - 1].op not in
                               ("flatten", "reshape", "batchnorm")) <= 1
                           for q, a in enumerate(anc)]
        self.readers: list[list[int]] = [[] for _ in self.ids]
        for k, layer in enumerate(self.layers):
            for s in set(layer.src):
                self.readers[s].append(k)

    def tensor(self, values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=self.dtype,
                               device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *input shape] (or [B, n_in]) -> [B, *out shape]."""
        x = x.reshape((x.shape[0],) + self.input_shape)
        if self.is_chain:
            for layer in self.layers:
                x = layer.forward(x)
            return x
        vals = [x]
        for layer in self.layers:
            vals.append(layer.forward(*(vals[s] for s in layer.src)))
        return vals[-1]

    def ibp(self, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Plain interval bounds of every position (flat), input first."""
        out = [(lo.reshape(-1), hi.reshape(-1))]
        for layer in self.layers:
            other = out[layer.src[1]] if layer.op == "add" else None
            out.append(layer.ibp(*out[layer.src[0]], other))
        return out


_CACHE: dict = {}


def load_chain(graph_path: str, node: str | None = None, device=None,
               dtype=torch.float64) -> TorchChain:
    """A TorchChain, cached by (file, mtime, node, device, dtype)."""
    path = os.path.abspath(graph_path)
    dev = pick_device(device)
    key = (path, os.path.getmtime(path), node, str(dev), dtype)
    if key not in _CACHE:
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = TorchChain(path, node, dev, dtype)
    return _CACHE[key]


# --------------------------------------------------------------------------------------------
# Specs from claims


@dataclass
class Spec:
    """Spec rows C (lower bounds of C.y decide the claim) and how they decide it."""

    kind: str  # bounds | linear_bound | unsat
    c: np.ndarray  # [m, n_out]
    thr: np.ndarray  # [m]: row i holds when lower_i >= thr_i (unsat: > thr_i)
    groups: list  # unsat: row ranges (start, stop) per polytope

    def row_ok(self, lower: np.ndarray, tol: float = DECIDE_TOL) -> np.ndarray:
        slack = lower - self.thr - tol * (1 + np.abs(self.thr))
        return slack > 0 if self.kind == "unsat" else slack >= 0

    def holds(self, lower: np.ndarray, tol: float = DECIDE_TOL) -> bool:
        ok = self.row_ok(lower, tol)
        if self.kind == "unsat":
            return all(ok[a:b].any() for a, b in self.groups)
        return bool(ok.all())

    def margin(self, lower: np.ndarray) -> float:
        """How far the bounds are from proving the claim (> 0: proved); +inf when vacuous."""
        if self.kind == "unsat":
            return min(self.polytope_margins(lower))
        return float((lower - self.thr).min())

    def polytope_margins(self, lower: np.ndarray) -> list[float]:
        """unsat: each polytope's best row's lower bound minus its threshold (> 0: excluded)."""
        gap = np.asarray(lower) - self.thr
        return [float(gap[a:b].max()) for a, b in self.groups]

    def open_rows(self, lower: np.ndarray, tol: float = DECIDE_TOL) -> np.ndarray:
        """Rows still to improve: failing rows; for unsat, the best row of each open polytope."""
        ok = self.row_ok(lower, tol)
        if self.kind != "unsat":
            return np.nonzero(~ok)[0]
        rows = []
        for a, b in self.groups:
            if not ok[a:b].any():
                rows.append(a + int(np.argmax(lower[a:b] - self.thr[a:b])))
        return np.array(rows, dtype=int)

    def violated(self, y: np.ndarray) -> np.ndarray:
        """Per float output y [B, n_out]: slack >= 0 (unsat) or > 0 means the point breaks the
        claim; returns that slack (max over polytopes / rows)."""
        v = y.reshape(y.shape[0], -1) @ self.c.T  # [B, m]
        if self.kind == "unsat":
            best = np.full(y.shape[0], -np.inf)
            for a, b in self.groups:
                best = np.maximum(best, (self.thr[a:b] - v[:, a:b]).min(axis=1))
            return best
        return (self.thr[None, :] - v).max(axis=1)

    def is_violation(self, slack: np.ndarray) -> np.ndarray:
        return slack >= 0 if self.kind == "unsat" else slack > 0


def spec_of(claim, n_out: int) -> Spec:
    """The spec rows of a kernel Claim, in the certificate's order."""
    if claim.kind == "linear_bound":
        c = np.array([[to_float(v) for v in r] for r in claim.rows], dtype=np.float64)
        thr = np.array([to_float(v) for v in claim.rhs])
        return Spec("linear_bound", c.reshape(len(c), n_out), thr, [])
    if claim.kind == "bounds":
        eye = np.eye(n_out)
        thr = np.concatenate([[to_float(v) for v in claim.lo], [-to_float(v) for v in claim.hi]])
        return Spec("bounds", np.concatenate([eye, -eye]), thr, [])
    if claim.kind == "unsat":
        rows, thr, groups = [], [], []
        for poly in claim.unsafe:
            start = len(rows)
            rows.extend([[to_float(v) for v in r] for r in poly.a])
            thr.extend(to_float(v) for v in poly.b)
            groups.append((start, len(rows)))
        return Spec("unsat", np.array(rows, dtype=np.float64).reshape(len(rows), n_out),
                    np.array(thr), groups)
    raise ValueError(f"claims of kind {claim.kind!r} have no crown spec rows")


def claim_box(claim) -> tuple[list, list]:
    """The claim's input box as exact rationals (fmpq)."""
    box = claim.input_set.as_box()
    return list(box.lo), list(box.hi)


# --------------------------------------------------------------------------------------------
# Bound computation


@dataclass
class _Relax:
    """ReLU relaxation on [l, u] (flat): fixed part of the lower slope, unstable mask, upper
    line (the kernel's rounding unless differentiable), CROWN's default alpha."""

    lo: torch.Tensor
    hi: torch.Tensor
    active: torch.Tensor  # float 0/1
    unstable: torch.Tensor  # float 0/1
    up_slope: torch.Tensor
    up_int: torch.Tensor
    default_alpha: torch.Tensor


def _relax(lo: torch.Tensor, hi: torch.Tensor, exact: bool = True) -> _Relax:
    """exact: upper lines rounded up as the kernel does; else unrounded and differentiable."""
    with torch.no_grad():
        act = lo >= 0
        uns = (lo < 0) & (hi > 0)
        default = (act | (uns & (hi > -lo))).to(lo.dtype)
    denom = torch.where(uns, hi - lo, torch.ones_like(lo))
    s = torch.where(uns, hi / denom, torch.zeros_like(lo))
    if exact:
        s = _ceil_to(s, UPPER_BITS)
    t = torch.where(uns, -s * lo, torch.zeros_like(lo))
    if exact:
        t = _ceil_to(t, UPPER_BITS)
    slope = torch.where(act, torch.ones_like(lo), s)
    return _Relax(lo, hi, act.to(lo.dtype), uns.to(lo.dtype), slope, t, default)


@dataclass
class BoundsResult:
    """What one CROWN / alpha-CROWN run found on a domain."""

    lower: np.ndarray  # float lower bounds of the spec rows (+inf everywhere when vacuous)
    vacuous: bool  # some interval is empty: the domain holds no point
    entries: list  # certificate `intermediate` entries (JSON-ready)
    alpha: dict  # certificate `alpha` (JSON-ready)
    relax: dict = field(default_factory=dict)  # relu layer index -> _Relax used
    alpha_rows: dict = field(default_factory=dict)  # relu layer index -> [m, n] tensor used
    a_input: torch.Tensor | None = None  # [m, n_in] coefficients at the input
    scores: dict = field(default_factory=dict)  # relu layer index -> [m, n] relaxation gaps
    method: str = "crown"
    stage: str = "crown"  # crown | alpha (final slopes) | alpha+intermediate
    beta: list = field(default_factory=list)  # certificate `beta` (JSON-ready)
    beta_rows: dict = field(default_factory=dict)  # (position, index) -> [m] multipliers used

    def certificate(self) -> dict:
        cert = {"rule": "crown"}
        if self.entries:
            cert["intermediate"] = self.entries
        if self.alpha:
            cert["alpha"] = self.alpha
        if self.beta:
            cert["beta"] = self.beta
        return cert


def _backward(chain: TorchChain, a: torch.Tensor, end: int, relax: dict, alphas: dict | None,
              lo: torch.Tensor, hi: torch.Tensor, const: torch.Tensor | None = None,
              record: dict | None = None, pools: dict | None = None,
              betas: dict | None = None):
    """Lower bounds of the rows `a` [m, *shape of position `end`] over the domain: walk back
    through layers end-1 .. 0 with the relaxations, summing the coefficients of a position read
    by several layers; `alphas` {relu layer index: [m, n] or [n]} replaces CROWN's default lower
    slopes, `pools` {maxpool layer index: _PoolRelax}, `betas` {position: (indices [s], signs
    [s], multipliers [m, s])} adds -beta * sign on the constrained neurons when the walk reaches
    their node, as the kernel does (beta-CROWN). Returns (lower [m], a_input [m, n_in], scale
    [m]) where scale bounds the magnitude of the terms (for margins)."""
    m = a.shape[0]
    if const is None:
        const = torch.zeros(m, dtype=a.dtype, device=a.device)
    acc = {end: a}
    for k in range(end - 1, -1, -1):
        a = acc.pop(k + 1, None)
        if a is None:  # not an ancestor of `end`
            continue
        if betas and k + 1 in betas:
            idx, sign, vals = betas[k + 1]
            a = a.reshape(m, -1).index_add(1, idx, -vals * sign).reshape(a.shape)
        layer = chain.layers[k]
        if layer.op == "relu":
            r = relax[k]
            af = a.reshape(m, -1)
            apos, aneg = af.clamp(min=0), af.clamp(max=0)
            al = alphas.get(k) if alphas else None
            ga = r.default_alpha if al is None else al
            low = r.active + r.unstable * ga
            if record is not None:
                gap = apos * torch.maximum((1 - ga) * r.hi, -ga * r.lo) - aneg * r.up_int
                record[k] = (gap * r.unstable).detach()
            const = const + aneg @ r.up_int
            a = (apos * low + aneg * r.up_slope).reshape((m,) + layer.in_shape)
        elif layer.op == "maxpool2d":
            # lam >= 0: y >= x_star; lam < 0: y <= x_star (exact window) or <= max u
            r = pools[k]
            af = a.reshape(m, -1)
            aneg = af.clamp(max=0)
            const = const + aneg @ r.up_const
            to_star = af - aneg * (1 - r.exact)
            a = torch.zeros((m, layer.n_in), dtype=af.dtype, device=af.device) \
                .scatter_add(1, r.star.expand(m, -1), to_star).reshape((m,) + layer.in_shape)
        elif layer.op == "add":
            _accumulate(acc, layer.src[1], a)
        else:
            bd = layer.bias_dot(a)
            if bd is not None:
                const = const + bd
            a = layer.bwd(a)
        _accumulate(acc, layer.src[0], a)
    af = acc[0].reshape(m, -1)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    lower = af @ mid - af.abs() @ rad + const
    scale = af.abs() @ (mid.abs() + rad) + const.abs()
    return lower, af, scale


def _accumulate(acc: dict, pos: int, a: torch.Tensor) -> None:
    acc[pos] = acc[pos] + a.reshape(acc[pos].shape) if pos in acc else a


def _pointless(chain: TorchChain, pos: int) -> bool:
    """CROWN cannot beat IBP at node `pos`: a relu output, or one affine map from the input
    (besides diagonal ones). At a maxpool output it can, through an exact window's cell whose
    bounds are IBP's."""
    if pos == 0 or chain.layers[pos - 1].op == "relu":
        return True
    return chain.single_map[pos]


def _phase_masks(chain: TorchChain, phases: dict | None) -> dict:
    """{node position: (force_active bool [n], force_inactive bool [n])}."""
    out = {}
    for nid, signs in (phases or {}).items():
        if nid not in chain.pos:
            raise ValueError(f"phase constraint on {nid!r}, which is not an ancestor of the "
                             f"claim node")
        pos = chain.pos[nid]
        n = math.prod(chain.layers[pos - 1].out_shape) if pos else chain.n_in
        act = torch.zeros(n, dtype=torch.bool, device=chain.device)
        ina = torch.zeros(n, dtype=torch.bool, device=chain.device)
        for j, s in signs.items():
            if s in ("active", 1, "+", ">=0"):
                act[int(j)] = True
            elif s in ("inactive", -1, "-", "<=0"):
                ina[int(j)] = True
            else:
                raise ValueError(f"phase {s!r} for {nid}[{j}]: expected 'active' or 'inactive'")
        out[pos] = (act, ina)
    return out


def _apply_phase(lo, hi, masks):
    act, ina = masks
    return torch.where(act, lo.clamp(min=0), lo), torch.where(ina, hi.clamp(max=0), hi)


def _intermediate_rows(chain: TorchChain, pos: int, idx: torch.Tensor, relax: dict,
                       alphas: dict | None, lo, hi, pools: dict | None = None,
                       betas: dict | None = None):
    """CROWN lower bounds of rows e_j then -e_j (j in idx) of node `pos`: (lower [2n], scale);
    `betas` as in `_backward`."""
    layer = chain.layers[pos - 1]
    n = len(idx)
    if layer.op == "linear":  # rows e_j W are rows of W: skip the identity product
        w = layer.weight[idx]
        a = torch.cat([w, -w])
        const = None
        if layer.bias is not None:
            const = torch.cat([layer.bias[idx], -layer.bias[idx]])
        lower, _, scale = _backward(chain, a, layer.src[0], relax, alphas, lo, hi, const=const,
                                    pools=pools, betas=betas)
        return lower, scale
    size = math.prod(layer.out_shape)
    a = torch.zeros(2 * n, size, dtype=lo.dtype, device=lo.device)
    ar = torch.arange(n, device=lo.device)
    a[ar, idx] = 1
    a[ar + n, idx] = -1
    lower, _, scale = _backward(chain, a.reshape((2 * n,) + layer.out_shape), pos, relax, alphas,
                                lo, hi, pools=pools, betas=betas)
    return lower, scale


@dataclass
class _Pass:
    relax: dict  # relu layer index -> _Relax
    inter: list  # (pos, idx, lb_lo, lb_hi, alphas {k: [2n, n_k]} or None)
    vacuous: bool
    pools: dict = field(default_factory=dict)  # maxpool layer index -> _PoolRelax
    betas: dict = field(default_factory=dict)  # pos -> {constraint pos: [2n, s]} multipliers


def _bounds_pass(chain: TorchChain, lo, hi, masks: dict, tables: dict | None = None,
                 sets: dict | None = None, diff: bool = False, btables: dict | None = None,
                 cons: dict | None = None) -> _Pass:
    """Forward over the graph: IBP, and CROWN bounds of the unstable neurons of every relu input
    and of the cells of every maxpool input in windows whose relaxation is not exact (those only
    where tighter than IBP), rounded outward unless `diff`, intersected, with the phase
    constraints. `tables` {pos: {k: [2|S|, n_k]}} gives per-row lower slopes for the neurons
    S = sets[pos] (rows e_j then -e_j), `btables` {pos: {constraint pos: [2|S|, s]}} per-row
    multipliers for the split constraints `cons` (see `_split_constraints`); `diff`
    (differentiable, for optimisation) uses exactly the neurons S."""
    relax: dict = {}
    pools: dict = {}
    inter: list = []
    inter_betas: dict = {}
    bounds = [(lo, hi)]  # per position: its bounds (certified where CROWN bounds were sent)
    idx_none = torch.zeros(0, dtype=torch.long, device=lo.device)
    for pos, layer in enumerate(chain.layers, start=1):
        ins = bounds[layer.src[0]]
        if layer.op == "relu":
            relax[pos - 1] = _relax(*ins, exact=not diff)
        elif layer.op == "maxpool2d":
            pools[pos - 1] = layer.pool_relax(*ins)
        cur_lo, cur_hi = layer.ibp(*ins, bounds[layer.src[1]] if layer.op == "add" else None)
        readers = [chain.layers[k] for k in chain.readers[pos]]
        relu_in = any(r.op == "relu" for r in readers)
        pool_in = [r for r in readers if r.op == "maxpool2d"]
        at_pool = layer.op == "maxpool2d"
        if not relu_in and not pool_in:
            bounds.append((cur_lo, cur_hi))
            continue
        # CROWN on the neurons unstable before the phases (a phase that contradicts a CROWN
        # bound empties the domain), then the phases, as the kernel does
        if not _pointless(chain, pos):
            if diff:
                idx = sets.get(pos, idx_none)
            else:
                uns = (cur_lo < 0) & (cur_hi > 0) if relu_in else \
                    torch.zeros_like(cur_lo, dtype=torch.bool)
                want = uns
                for r in pool_in:
                    want = want | r.loose_cells(cur_lo, cur_hi)
                idx = torch.nonzero(want).reshape(-1)
            if len(idx):
                al = _table_rows(tables, sets, pos, idx, relax) if tables else None
                mult = _beta_table_rows(btables, sets, pos, idx) if btables else None
                lower, scale = _intermediate_rows(chain, pos, idx, relax, al, lo, hi, pools,
                                                  _signed(cons, mult) if mult else None)
                n = len(idx)
                if diff:
                    lb_lo, lb_hi = lower[:n], -lower[n:]
                else:
                    lb_lo, lb_hi = round_down(lower[:n], scale[:n]), round_up(-lower[n:], scale[n:])
                    if pool_in or at_pool:  # only neurons CROWN tightens, besides the
                        # unstable relu inputs (always sent, as for chains)
                        keep = (lb_lo > cur_lo[idx]) | (lb_hi < cur_hi[idx])
                        if not at_pool:
                            keep = keep | uns[idx]
                        if not bool(keep.all()):
                            idx, lb_lo, lb_hi = idx[keep], lb_lo[keep], lb_hi[keep]
                            both = torch.cat([keep, keep])
                            if al is not None:
                                al = {k: t[both] for k, t in al.items()}
                            if mult:
                                mult = {q: t[both] for q, t in mult.items()}
                if len(idx):
                    inter.append((pos, idx, lb_lo, lb_hi, al))
                    if mult:
                        inter_betas[pos] = mult
                    cur_lo = cur_lo.index_put((idx,), torch.maximum(cur_lo[idx], lb_lo))
                    cur_hi = cur_hi.index_put((idx,), torch.minimum(cur_hi[idx], lb_hi))
        if pos in masks:
            cur_lo, cur_hi = _apply_phase(cur_lo, cur_hi, masks[pos])
        if diff:
            bounds.append((cur_lo, torch.maximum(cur_hi, cur_lo)))
            continue
        gap = cur_lo - cur_hi
        if (gap > 0).any():
            tiny = gap <= 1e-9 * (1 + cur_lo.abs())
            if bool(((gap > 0) & ~tiny).any()):
                return _Pass(relax, inter, True, pools, inter_betas)
            cur_lo = torch.where(gap > 0, (cur_lo + cur_hi) / 2, cur_lo)
            cur_hi = torch.maximum(cur_hi, cur_lo)
        bounds.append((cur_lo, cur_hi))
    return _Pass(relax, inter, False, pools, inter_betas)


def _pick_rows(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
    """For rows e_j then -e_j (j in idx), the row of a table over the neurons s (same layout)
    holding each, -1 where j is not in s; None when idx is s."""
    if len(idx) == len(s) and bool((idx == s).all()):
        return None
    where = {j: i for i, j in enumerate(s.tolist())}
    rows = [where.get(j, -1) for j in idx.tolist()]
    n_s = len(s)
    return torch.tensor(rows + [r + n_s if r >= 0 else -1 for r in rows], device=idx.device)


def _table_rows(tables, sets, pos, idx, relax) -> dict | None:
    """Per-row slopes for the neurons idx of node pos from a table over sets[pos] (rows of
    neurons outside the set: CROWN's default)."""
    if pos not in tables:
        return None
    pick = _pick_rows(sets[pos], idx)
    if pick is None:
        return tables[pos]
    out = {}
    for k, t in tables[pos].items():
        fill = relax[k].default_alpha.expand(len(pick), -1)
        out[k] = torch.where((pick >= 0)[:, None], t[pick.clamp(min=0)], fill)
    return out


def _beta_table_rows(btables, sets, pos, idx) -> dict | None:
    """Per-row multipliers for the neurons idx of node pos from a table over sets[pos] (rows of
    neurons outside the set: 0)."""
    if pos not in btables:
        return None
    pick = _pick_rows(sets[pos], idx)
    if pick is None:
        return btables[pos]
    return {q: torch.where((pick >= 0)[:, None], t[pick.clamp(min=0)], torch.zeros_like(t[:1]))
            for q, t in btables[pos].items()}


def _entries(chain: TorchChain, p: _Pass, per_row: bool, cons: dict | None = None) -> list:
    """`intermediate` entries (JSON) of an exact pass: shared default slopes, or per-row ones
    and multipliers for the split constraints `cons`."""
    out = []
    for pos, idx, lb_lo, lb_hi, al in p.inter:
        los, his, den = encode_bounds(lb_lo, lb_hi, BOUND_BITS)
        entry = {"node": chain.ids[pos], "indices": idx.tolist(), **den, "lo": los, "hi": his}
        alpha = {}
        for k in chain.relu_ancestors[pos]:
            if per_row and al is not None and k in al:
                alpha[chain.layers[k].id] = encode_slopes(al[k], ALPHA_BITS)
            else:
                alpha[chain.layers[k].id] = encode_slopes(p.relax[k].default_alpha, 0)
        if alpha:
            entry["alpha"] = alpha
        if per_row and cons and pos in p.betas:
            beta, _ = _beta_entries(chain, cons, p.betas[pos])
            if beta:
                entry["beta"] = beta
        out.append(entry)
    return out


def compute_bounds(chain: TorchChain, lo, hi, spec_c, method: str = "crown",
                   phases: dict | None = None, iterations: int = 30, lr: float = 0.25,
                   stop=None, alpha_init: dict | None = None, want_scores: bool = False,
                   optimize_intermediate: bool = True, beta: bool = True,
                   beta_init: dict | None = None) -> BoundsResult:
    """CROWN (method "crown") or alpha-CROWN ("alpha") lower bounds of spec_c . y over the box
    [lo, hi] (flat floats) with relu phase constraints {pre-activation id: {index: phase}}.
    Intermediate bounds of the unstable neurons of every relu input are computed by CROWN,
    rounded outward and intersected with IBP. alpha-CROWN optimises per-row lower slopes of
    the final rows, then (optimize_intermediate) also those of the intermediate bounds jointly,
    keeping that only where it is no worse row by row or proves what the first could not.
    With `beta` (beta-CROWN), alpha-CROWN also optimises one multiplier >= 0 per final row and
    split constraint of the domain, jointly with the slopes; `beta_init` {(position, index): [m]}
    warm-starts them (a parent domain's `beta_rows`). The multipliers are rounded down to
    multiples of 2^-16 before the final float bound. `stop(lower ndarray) -> bool` ends the
    optimisation early (e.g. when the claim is proved)."""
    if method not in ("crown", "alpha"):
        raise ValueError(f"method must be 'crown' or 'alpha', found {method!r}")
    with torch.no_grad():
        lo = chain.tensor(lo).reshape(-1) if not torch.is_tensor(lo) else lo.reshape(-1)
        hi = chain.tensor(hi).reshape(-1) if not torch.is_tensor(hi) else hi.reshape(-1)
        c = chain.tensor(spec_c).reshape(-1, chain.n_out)
        m = c.shape[0]
        masks = _phase_masks(chain, phases)
        base = _bounds_pass(chain, lo, hi, masks)
        if base.vacuous or bool((lo > hi).any()):
            return BoundsResult(np.full(m, np.inf), True, _entries(chain, base, False), {},
                                base.relax, method=method)
        a0 = c.reshape((m,) + chain.out_shape)
        lower, a_in, _ = _backward(chain, a0, len(chain.layers), base.relax, None, lo, hi,
                                   pools=base.pools)
    cons = _split_constraints(chain, masks) if beta and method == "alpha" else {}
    chosen, alpha_rows, stage, betas = base, {}, "crown", {}
    if method == "alpha" and base.relax:
        beta0 = _beta_start(cons, m, beta_init, lo)
        lower_a, rows_a, a_in_a, betas_a = _optimise(chain, a0, base.relax, base.pools, lo, hi,
                                                     lower, iterations, lr, stop, alpha_init,
                                                     cons, beta0)
        lower, alpha_rows, a_in, stage, betas = lower_a, rows_a, a_in_a, "alpha", betas_a
        done = stop is not None and stop(lower.cpu().numpy())
        if optimize_intermediate and base.inter and not done:
            got = _optimise_joint(chain, a0, base, masks, lo, hi, iterations, lr, stop, rows_a,
                                  cons, betas_a)
            if got is not None and got[1] is None:
                return BoundsResult(np.full(m, np.inf), True,
                                    _entries(chain, got[0], True, cons), {}, got[0].relax,
                                    method=method, stage="alpha+intermediate")
            if got is not None:
                p, lower_b, rows_b, a_in_b, betas_b = got
                better = bool((lower_b >= lower - 1e-12).all()) or (
                    stop is not None and stop(lower_b.cpu().numpy()))
                if better:
                    chosen, lower, alpha_rows, a_in, betas = p, lower_b, rows_b, a_in_b, betas_b
                    stage = "alpha+intermediate"
    scores: dict = {}
    if want_scores:
        with torch.no_grad():
            _backward(chain, a0, len(chain.layers), chosen.relax, alpha_rows or None, lo, hi,
                      record=scores, pools=chosen.pools, betas=_signed(cons, betas))
    alpha_out = {chain.layers[k].id: encode_slopes(r.default_alpha, 0)
                 for k, r in chosen.relax.items()}
    for k, al in alpha_rows.items():
        alpha_out[chain.layers[k].id] = encode_slopes(al, ALPHA_BITS)
    entries = _entries(chain, chosen, stage == "alpha+intermediate", cons)
    beta_out, beta_rows = _beta_entries(chain, cons, betas)
    return BoundsResult(lower.detach().cpu().numpy().astype(np.float64), False, entries,
                        alpha_out, chosen.relax, alpha_rows, a_in.detach(), scores, method, stage,
                        beta_out, beta_rows)


def _round_alpha(v: torch.Tensor) -> torch.Tensor:
    scale = 2.0 ** ALPHA_BITS
    return (torch.round(v * scale) / scale).clamp(0, 1)


# beta-CROWN (Wang et al. 2021, "Beta-CROWN: Efficient Bound Propagation with Per-neuron Split
# Constraints"): a split constraint sign * z_j >= 0 of the domain enters the Lagrangian with a
# multiplier beta >= 0, so c.y >= c.y - beta * sign * z_j on the domain; any beta >= 0 is sound.

BETA_LR = 0.2  # the multipliers' Adam step, relative to the slopes' (they are unbounded above)


def _split_constraints(chain: TorchChain, masks: dict) -> dict:
    """{position: (indices [s], signs [s])}: the domain's relu split constraints sign * z_j >= 0
    (+1: z_j >= 0, -1: z_j <= 0) on nodes after the input."""
    out = {}
    for pos, (act, ina) in sorted(masks.items()):
        idx = torch.nonzero(act | ina).reshape(-1)
        if pos and len(idx):
            out[pos] = (idx, act[idx].to(chain.dtype) * 2 - 1)
    return out


def _beta_start(cons: dict, m: int, init: dict | None, like: torch.Tensor) -> dict:
    """Initial multipliers {position: [m, s]}: from `init` {(position, index): [m]} where given
    (a parent domain's), else 0."""
    out = {}
    for pos, (idx, _) in cons.items():
        v = torch.zeros((m, len(idx)), dtype=like.dtype, device=like.device)
        for t, j in enumerate(idx.tolist()):
            b = init.get((pos, j)) if init else None
            if b is not None and b.shape == (m,):
                v[:, t] = b
        out[pos] = v
    return out


def _signed(cons: dict, values: dict) -> dict | None:
    """The `betas` argument of `_backward`: {position: (indices, signs, multipliers [m, s])}."""
    return {pos: (*cons[pos], v) for pos, v in values.items()} or None


def _round_beta(v: torch.Tensor) -> torch.Tensor:
    """Down to a multiple of 2^-ALPHA_BITS, never below 0 (rounding changes tightness only)."""
    scale = 2.0 ** ALPHA_BITS
    return (torch.floor(v * scale) / scale).clamp(min=0)


def _beta_entries(chain: TorchChain, cons: dict, values: dict) -> tuple[list, dict]:
    """Certificate `beta` entries (JSON; constraints whose multipliers are all 0 left out) and
    the multipliers by (position, index), for warm starts."""
    entries, rows = [], {}
    for pos, v in values.items():
        for t, j in enumerate(cons[pos][0].tolist()):
            col = v[:, t]
            if bool((col > 0).any()):
                entries.append({"node": chain.ids[pos], "index": j,
                                "values": encode_dyadic(col, ALPHA_BITS)})
                rows[(pos, j)] = col
    return entries, rows


def _optimise(chain, a0, relax, pools, lo, hi, lower0, iterations, lr, stop, alpha_init,
              cons: dict | None = None, beta0: dict | None = None):
    """alpha-CROWN on the final rows: per-row lower slopes (and, given split constraints
    `cons`, per-row multipliers from `beta0` {position: [m, s]}) by projected Adam, best kept
    per row, slopes rounded to multiples of 2^-16 and multipliers down to them; rows where
    rounding lost against CROWN fall back to CROWN. Returns (lower, slopes, a_input,
    multipliers {position: [m, s]})."""
    m = a0.shape[0]
    n_layers = len(chain.layers)
    cons = cons or {}
    params = {}
    for k, r in relax.items():
        init = r.default_alpha.expand(m, -1)
        if alpha_init and k in alpha_init and alpha_init[k].shape == init.shape:
            init = alpha_init[k]
        params[k] = init.detach().clone().requires_grad_(True)
    bparams = {pos: v.detach().clone().requires_grad_(True) for pos, v in (beta0 or {}).items()}
    best = lower0.detach().clone()
    best_alpha = {k: r.default_alpha.expand(m, -1).clone() for k, r in relax.items()}
    best_beta = {pos: torch.zeros_like(v) for pos, v in bparams.items()}
    opt = _Adam(list(params.values()), lr)
    opt_b = _Adam(list(bparams.values()), lr * BETA_LR, upper=None)
    for _ in range(iterations):
        lower, _, _ = _backward(chain, a0, n_layers, relax, params, lo, hi, pools=pools,
                                betas=_signed(cons, bparams))
        with torch.no_grad():
            better = lower > best
            if better.any():
                best = torch.where(better, lower, best)
                for k, p in params.items():
                    best_alpha[k] = torch.where(better[:, None], p.detach(), best_alpha[k])
                for pos, v in bparams.items():
                    best_beta[pos] = torch.where(better[:, None], v.detach(), best_beta[pos])
            if stop is not None and stop(best.cpu().numpy()):
                break
        grads = torch.autograd.grad(-lower.sum(), opt.params + opt_b.params, allow_unused=True)
        opt.step(grads[:len(opt.params)])
        opt_b.step(grads[len(opt.params):])
    with torch.no_grad():
        rounded = {k: _round_alpha(v) for k, v in best_alpha.items()}
        rbeta = {pos: _round_beta(v) for pos, v in best_beta.items()}
        lower_r, a_in, _ = _backward(chain, a0, n_layers, relax, rounded, lo, hi, pools=pools,
                                     betas=_signed(cons, rbeta))
        worse = lower_r < lower0
        if worse.any():
            for k, r in relax.items():
                rounded[k] = torch.where(worse[:, None], r.default_alpha.expand(m, -1),
                                         rounded[k])
            for pos, v in rbeta.items():
                rbeta[pos] = torch.where(worse[:, None], torch.zeros_like(v), v)
            lower_r, a_in, _ = _backward(chain, a0, n_layers, relax, rounded, lo, hi,
                                         pools=pools, betas=_signed(cons, rbeta))
    return lower_r, rounded, a_in, rbeta


def _optimise_joint(chain, a0, base: _Pass, masks, lo, hi, iterations, lr, stop, final_init,
                    cons: dict | None = None, beta_init: dict | None = None):
    """alpha-CROWN with the intermediate bounds' slopes too (one lower slope per relu neuron per
    row of every intermediate bound and of the final spec), optimised jointly with multipliers
    for the split constraints `cons` below each intermediate node (from 0) and for the final
    rows (from `beta_init` {position: [m, s]}) for the sum of the final bounds; per row, the
    best slopes and multipliers seen are kept. Then an exact pass with those slopes
    (rounded), and the final slopes and multipliers re-optimised on its bounds. None if nothing
    to optimise."""
    sets = {pos: idx for pos, idx, *_ in base.inter}
    n_layers = len(chain.layers)
    cons = cons or {}
    tables, btables, best_inter = {}, {}, {}
    for pos, idx, *_ in base.inter:
        ks = chain.relu_ancestors[pos]
        if ks:
            tables[pos] = {k: base.relax[k].default_alpha.expand(2 * len(idx), -1).clone()
                           .requires_grad_(True) for k in ks}
            # multipliers for the split constraints on relu inputs below this node
            below = {chain.layers[k].src[0] for k in ks} & set(cons)
            btables[pos] = {q: torch.zeros((2 * len(idx), len(cons[q][0])), dtype=lo.dtype,
                                           device=lo.device).requires_grad_(True)
                            for q in sorted(below)}
            best_inter[pos] = (torch.full((2 * len(idx),), -np.inf, dtype=lo.dtype,
                                          device=lo.device),
                               {k: t.detach().clone() for k, t in tables[pos].items()},
                               {q: t.detach().clone() for q, t in btables[pos].items()})
    if not tables:
        return None
    btables = {pos: tab for pos, tab in btables.items() if tab}
    final = {k: v.detach().clone().requires_grad_(True) for k, v in final_init.items()}
    bparams = {pos: v.detach().clone().requires_grad_(True)
               for pos, v in (beta_init or {}).items()}
    params = [t for tab in tables.values() for t in tab.values()] + list(final.values())
    bvars = list(bparams.values()) + [t for tab in btables.values() for t in tab.values()]
    opt = _Adam(params, lr)
    opt_b = _Adam(bvars, lr * BETA_LR, upper=None)
    m = a0.shape[0]
    best = torch.full((m,), -np.inf, dtype=lo.dtype, device=lo.device)
    best_final = {k: v.detach().clone() for k, v in final.items()}
    best_beta = {pos: v.detach().clone() for pos, v in bparams.items()}
    for _ in range(max(1, (2 * iterations) // 3)):
        p = _bounds_pass(chain, lo, hi, masks, tables, sets, diff=True, btables=btables,
                         cons=cons)
        lower, _, _ = _backward(chain, a0, n_layers, p.relax, final, lo, hi, pools=p.pools,
                                betas=_signed(cons, bparams))
        with torch.no_grad():
            for pos, _, lb_lo, lb_hi, _ in p.inter:
                if pos not in best_inter:
                    continue
                vals = torch.cat([lb_lo, -lb_hi])
                prev, tab, btab = best_inter[pos]
                imp = vals > prev
                if imp.any():
                    best_inter[pos] = (torch.where(imp, vals, prev),
                                       {k: torch.where(imp[:, None], tables[pos][k].detach(),
                                                       tab[k]) for k in tab},
                                       {q: torch.where(imp[:, None], btables[pos][q].detach(),
                                                       btab[q]) for q in btab})
            better = lower > best
            if better.any():
                best = torch.where(better, lower, best)
                for k, v in final.items():
                    best_final[k] = torch.where(better[:, None], v.detach(), best_final[k])
                for pos, v in bparams.items():
                    best_beta[pos] = torch.where(better[:, None], v.detach(), best_beta[pos])
            if stop is not None and stop(lower.detach().cpu().numpy()):
                break
        grads = torch.autograd.grad(-lower.sum(), params + bvars, allow_unused=True)
        opt.step(grads[:len(params)])
        opt_b.step(grads[len(params):])
    with torch.no_grad():
        rounded = {pos: {k: _round_alpha(t) for k, t in tab.items()}
                   for pos, (_, tab, _) in best_inter.items()}
        rbt = {pos: {q: _round_beta(t) for q, t in btab.items()}
               for pos, (_, _, btab) in best_inter.items() if btab}
        p = _bounds_pass(chain, lo, hi, masks, rounded, sets, btables=rbt, cons=cons)
        if p.vacuous:  # the tighter bounds show the domain is empty
            return p, None, None, None, None
        lower0, _, _ = _backward(chain, a0, n_layers, p.relax, None, lo, hi, pools=p.pools)
    lower_b, rows_b, a_in_b, betas_b = _optimise(chain, a0, p.relax, p.pools, lo, hi, lower0,
                                                 max(3, iterations // 6), lr, stop, best_final,
                                                 cons, best_beta)
    return p, lower_b, rows_b, a_in_b, betas_b


# --------------------------------------------------------------------------------------------
# Certificates for claims


def domain_box(claim, domain: dict | None) -> tuple[list, list]:
    """The (exact or float) box of a domain: its lo/hi override, else the claim's box."""
    domain = domain or {}
    if domain.get("lo") is None or domain.get("hi") is None:
        lo, hi = claim_box(claim)
    if domain.get("lo") is not None:
        lo = list(np.asarray(domain["lo"], dtype=object).reshape(-1))
    if domain.get("hi") is not None:
        hi = list(np.asarray(domain["hi"], dtype=object).reshape(-1))
    return lo, hi


def bounds_for_claim(graph_path: str, claim, method: str = "crown", domain: dict | None = None,
                     device=None, dtype=torch.float64, iterations: int = 30, lr: float = 0.25,
                     early_stop: bool = True, alpha_init: dict | None = None,
                     want_scores: bool = False, chain: TorchChain | None = None,
                     tol: float = DECIDE_TOL, optimize_intermediate: bool = True,
                     beta: bool = True, beta_init: dict | None = None
                     ) -> tuple[BoundsResult, Spec]:
    """Run CROWN / alpha-CROWN (beta-CROWN on a domain with relu splits, unless `beta` is
    off) for a kernel Claim on a domain; see `crown_certificate`."""
    chain = chain or load_chain(graph_path, claim.node, device, dtype)
    spec = spec_of(claim, chain.n_out)
    lo, hi = domain_box(claim, domain)
    lo_f = [to_float(v) for v in lo]
    hi_f = [to_float(v) for v in hi]
    phases = (domain or {}).get("relu") or (domain or {}).get("phases")
    stop = (lambda lb: spec.holds(lb, tol)) if early_stop else None
    res = compute_bounds(chain, lo_f, hi_f, spec.c, method, phases, iterations, lr, stop,
                         alpha_init, want_scores, optimize_intermediate, beta, beta_init)
    return res, spec


def crown_certificate(graph_path: str, claim, method: str = "crown", domain: dict | None = None,
                      **kw) -> tuple[dict, np.ndarray]:
    """A `crown` certificate for a kernel Claim (bounds / linear_bound / unsat) and the float
    lower bounds of its spec rows (docs/crown_certificate.md order). `method`: "crown" or
    "alpha" (per-row optimised lower slopes). `domain` (branch and bound): {"lo": [...],
    "hi": [...]} overrides the input box; {"relu": {pre-activation id: {index: "active" |
    "inactive"}}} adds phase constraints, and alpha-CROWN then also optimises beta multipliers
    for them (certificate `beta`). Keyword options: device, dtype, iterations, lr, early_stop,
    alpha_init, chain, tol, optimize_intermediate, beta, beta_init. The bounds are floats: the
    caller decides (e.g. with `Spec.holds`), the kernel re-checks exactly."""
    res, _ = bounds_for_claim(graph_path, claim, method, domain, **kw)
    return res.certificate(), res.lower


def ibp_bounds(graph_path: str, claim, domain: dict | None = None, device=None,
               dtype=torch.float64) -> np.ndarray:
    """Float IBP lower bounds of the claim's spec rows (for comparison)."""
    chain = load_chain(graph_path, claim.node, device, dtype)
    spec = spec_of(claim, chain.n_out)
    lo, hi = domain_box(claim, domain)
    with torch.no_grad():
        ylo, yhi = chain.ibp(chain.tensor([to_float(v) for v in lo]),
                             chain.tensor([to_float(v) for v in hi]))[-1]
        c = chain.tensor(spec.c)
        out = c.clamp(min=0) @ ylo + c.clamp(max=0) @ yhi
    return out.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Batched bounds over many input boxes (chains of linear maps and relus)


@dataclass
class BatchBounds:
    """Bounds of a batch of input boxes [B, n_in] (see `BatchChain.bounds`)."""

    ibp: torch.Tensor  # [B, m] IBP lower bounds of the spec rows
    plain: torch.Tensor | None  # [B, m] CROWN with IBP-only intermediate bounds (None: skipped)
    lower: torch.Tensor  # [B, m] CROWN with CROWN intermediate bounds
    a_input: torch.Tensor  # [B, m, n_in] coefficients of `lower` at the input
    inter: list  # (pos, use [B, n] bool, lb_lo [B, n], lb_hi [B, n]) per certified node
    vacuous: torch.Tensor  # [B] bool: some interval is empty (no point in the box)
    relax: dict = field(default_factory=dict)  # relu layer index -> batched _Relax
    betas: dict = field(default_factory=dict)  # pos -> [B, m, n] final multipliers used
    # pos -> (lo, hi) [B, n] bool: the side's bound in `inter` is CROWN's with default slopes
    # (tighter there than with the alpha slopes; `bounds(dual=True)`)
    defaults: dict = field(default_factory=dict)

    def take(self, idx: torch.Tensor) -> BatchBounds:
        """The domains idx (for the CROWN fields the alpha optimisation starts from)."""
        return BatchBounds(
            None if self.ibp is None else self.ibp[idx],
            None if self.plain is None else self.plain[idx], self.lower[idx],
            self.a_input[idx], [(p, u[idx], a[idx], b[idx]) for p, u, a, b in self.inter],
            self.vacuous[idx],
            {k: _Relax(*(getattr(r, f)[idx] for f in ("lo", "hi", "active", "unstable",
                                                      "up_slope", "up_int", "default_alpha")))
             for k, r in self.relax.items()}, {},
            {pos: (a[idx], b[idx]) for pos, (a, b) in self.defaults.items()})


def _apply_signs(lo, hi, sign):
    """Phase constraints sign [B, n] (1: z >= 0, -1: z <= 0) on bounds [B, n]."""
    return (torch.where(sign > 0, lo.clamp(min=0), lo),
            torch.where(sign < 0, hi.clamp(max=0), hi))


def caster(dtype):
    """A function taking tensors, in nested dicts and tuples, to `dtype` (None stays None)."""
    def cast(v):
        if isinstance(v, torch.Tensor):
            return v if v.dtype == dtype or not v.is_floating_point() else v.to(dtype)
        if isinstance(v, dict):
            return {k: cast(t) for k, t in v.items()}
        if isinstance(v, tuple):
            return tuple(cast(t) for t in v)
        return v
    return cast


class _Adam:
    """Adam with the iterates projected to [0, upper] (no upper limit when None; a small local
    version: torch.optim's first use imports much of torch, about a second)."""

    def __init__(self, params: list, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 upper: float | None = 1.0):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.upper = upper
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with torch.no_grad():
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                if g is None:
                    continue
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)
                p.clamp_(0, self.upper)


class BatchChain:
    """A chain of linear maps and relus (flatten / reshape are no-ops on flat vectors) for
    IBP and CROWN over a batch of input boxes at once. Mirrors the kernel's `crown` replay:
    intermediate CROWN bounds (default slopes, the kernel's rounded upper lines), rounded
    outward, intersected with the interval replay, only for neurons IBP leaves unstable."""

    @staticmethod
    def supports(chain: TorchChain) -> bool:
        """Whether the chain is linear maps, relus, flatten and reshape only."""
        return all(layer.op in ("linear", "relu", "flatten", "reshape")
                   for layer in chain.layers)

    def __init__(self, chain: TorchChain):
        self.chain = chain
        self.steps: list = []
        for layer in chain.layers:
            if layer.op in ("flatten", "reshape"):
                self.steps.append(None)
            elif layer.op == "linear":
                b = layer.bias if layer.bias is not None else torch.zeros(
                    layer.n_out, dtype=chain.dtype, device=chain.device)
                self.steps.append(("lin", layer.weight, b, layer.weight_abs))
            elif layer.op == "relu":
                self.steps.append(("relu",))
            else:
                raise ValueError(f"batched bounds support linear / relu chains, found "
                                 f"{layer.op!r} at node {layer.id!r}")
        n = len(chain.layers)
        self.inter_pos = [p for p in range(1, n) if chain.layers[p].op == "relu"
                          and not _pointless(chain, p)]

    def _ibp_step(self, k, lo, hi):
        st = self.steps[k]
        if st is None:
            return lo, hi
        if st[0] == "relu":
            return lo.clamp(min=0), hi.clamp(min=0)
        _, w, b, wa = st
        if lo.shape[0] > 1 and lo.stride(0) == 0 and hi.stride(0) == 0:  # one box, expanded
            out = self._ibp_step(k, lo[:1], hi[:1])
            return tuple(t.expand(lo.shape[0], -1) for t in out)
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c = mid @ w.T + b
        r = rad @ wa.T
        return c - r, c + r

    def backward(self, a, top: int, relax: dict, lo, hi, const=None, alphas: dict | None = None,
                 betas: dict | None = None, record: dict | None = None):
        """Lower bounds of rows a ([m, n] shared or [B, m, n], over the output of layer `top`)
        walking back through layers top .. 0. `betas` {position: (sign [B, n], multipliers
        [B, m, n])} adds -beta * sign to the coefficients on that node's neurons (beta-CROWN on
        the split constraints sign * z >= 0; sign 0: no constraint), as the kernel does;
        `record` collects {relu layer k: [B, m, n] relaxation gaps} (split scores). Returns
        (lower [B, m], a_input [B, m, n_in], scale [B, m])."""
        batch = lo.shape[0]
        for k in range(top, -1, -1):
            if betas and k + 1 in betas:
                sign, vals = betas[k + 1]
                a = a - vals * sign[:, None, :]
            st = self.steps[k]
            if st is None:
                continue
            if st[0] == "lin":
                cb = a @ st[2]
                const = cb if const is None else const + cb
                a = a @ st[1]
                continue
            r = relax[k]
            if a.dim() == 2:
                a = a.expand(batch, -1, -1)
                if const is not None and const.dim() == 1:
                    const = const.expand(batch, -1)
            aneg = a.clamp(max=0)
            apos = a - aneg
            ci = torch.bmm(aneg, r.up_int[:, :, None])[:, :, 0]
            const = ci if const is None else const + ci
            if alphas is not None and k in alphas:
                al = alphas[k]
                al = al[:, None, :] if al.dim() == 2 else al
            else:
                al = r.default_alpha[:, None, :]
            low = r.active[:, None, :] + r.unstable[:, None, :] * al
            if record is not None:
                gap = apos * torch.maximum((1 - al) * r.hi[:, None, :], -al * r.lo[:, None, :]) \
                    - aneg * r.up_int[:, None, :]
                record[k] = (gap * r.unstable[:, None, :]).detach()
            a = apos * low + aneg * r.up_slope[:, None, :]
        if a.dim() == 2:
            a = a.expand(batch, -1, -1)
        mid, rad = ((lo + hi) / 2)[:, :, None], ((hi - lo) / 2)[:, :, None]
        aa = a.abs()
        if const is None:
            const = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
        elif const.dim() == 1:
            const = const.expand(batch, -1)
        lower = torch.bmm(a, mid)[:, :, 0] - torch.bmm(aa, rad)[:, :, 0] + const
        scale = torch.bmm(aa, mid.abs() + rad)[:, :, 0] + const.abs()
        return lower, a, scale

    def _inter_rows(self, k: int, uns, relax, lo, hi, alphas):
        """CROWN lower bounds of rows e_j then -e_j ([B, 2n]) of the output of layer k, for the
        neurons uns [B, n] (others: -inf, no bound), and the rows' scales."""
        st = self.steps[k]
        batch, m = uns.shape
        cnt = uns.sum(dim=1)
        kk = int(cnt.max())
        if kk > (3 * m) // 4:  # nearly all: every row, shared by the batch
            if st is not None and st[0] == "lin":
                w, b = st[1], st[2]
                a, const, top = torch.cat([w, -w]), torch.cat([b, -b]), k - 1
            else:
                eye = torch.eye(m, dtype=lo.dtype, device=lo.device)
                a, const, top = torch.cat([eye, -eye]), None, k
            low, _, scale = self.backward(a, top, relax, lo, hi, const, alphas)
            return low, scale
        order = torch.argsort(uns.to(torch.int8), dim=1, descending=True, stable=True)[:, :kk]
        valid = torch.arange(kk, device=lo.device)[None, :] < cnt[:, None]
        if alphas and any(t.dim() == 3 for t in alphas.values()):
            # per-row slopes over all rows e_j, -e_j: those of the rows bounded
            rows = torch.cat([order, order + m], dim=1)[:, :, None]
            alphas = {q: t.gather(1, rows.expand(-1, -1, t.shape[2])) if t.dim() == 3 else t
                      for q, t in alphas.items()}
        if st is not None and st[0] == "lin":
            w, b = st[1][order], st[2][order]  # [B, kk, n_in], [B, kk]
            a, const, top = torch.cat([w, -w], dim=1), torch.cat([b, -b], dim=1), k - 1
        else:
            eye = torch.eye(m, dtype=lo.dtype, device=lo.device)[order]
            a, const, top = torch.cat([eye, -eye], dim=1), None, k
        low, _, scale = self.backward(a, top, relax, lo, hi, const, alphas)
        neg = torch.full_like(low[:, :kk], -torch.inf)
        out_lo = torch.full((batch, m), -torch.inf, dtype=lo.dtype, device=lo.device)
        out_hi = out_lo.clone()
        out_lo = out_lo.scatter(1, order, torch.where(valid, low[:, :kk], neg))
        out_hi = out_hi.scatter(1, order, torch.where(valid, low[:, kk:], neg))
        sc = torch.zeros((batch, m), dtype=lo.dtype, device=lo.device)
        sc_lo = sc.scatter(1, order, scale[:, :kk])
        sc_hi = sc.scatter(1, order, scale[:, kk:])
        return torch.cat([out_lo, out_hi], dim=1), torch.cat([sc_lo, sc_hi], dim=1)

    def ibp_relax(self, lo, hi, phases: dict | None = None):
        """Plain interval replay with the phase constraints: (relaxations per relu layer,
        output bounds)."""
        relax = {}
        for k, st in enumerate(self.steps):
            if st is not None and st[0] == "relu":
                relax[k] = _relax(lo, hi)
            lo, hi = self._ibp_step(k, lo, hi)
            if phases and k + 1 in phases:
                lo, hi = _apply_signs(lo, hi, phases[k + 1])
        return relax, lo, hi

    def bounds(self, lo, hi, c, plain: bool = True, crown_inter: bool = True, select=None,
               alpha_inter: dict | None = None, alpha_final: dict | None = None,
               diff: bool = False, phases: dict | None = None,
               beta_final: dict | None = None, fixed: dict | None = None,
               hint: dict | None = None, dual: bool = False) -> BatchBounds:
        """IBP, CROWN with IBP intermediates (`plain`) and CROWN with CROWN intermediates of the
        rows c [m, n_out] over the boxes [lo, hi] ([B, n_in] each). alpha_inter {pos: {relu
        layer k: [B, n_k], shared by the node's rows, or [B, 2 n, n_k] per row: e_j for every
        neuron j of the node, then -e_j}} and alpha_final {k: [B, n_k] or
        [B, m, n_k]} replace CROWN's default lower slopes. `select(pos, ibp_lo, ibp_hi, lo, hi)
        -> [B, n] bool` limits the neurons whose CROWN bounds are used. diff: differentiable
        (no rounding, unrounded upper lines, every IBP-unstable neuron), for optimisation.
        phases {pos: [B, n] int8}: relu phase constraints on pre-activation node pos (1: z >= 0,
        -1: z <= 0, 0: none), applied as the kernel does (after the CROWN bounds, which are
        computed for the neurons unstable before them); a domain whose interval empties is
        `vacuous`. beta_final {pos: [B, m, n]}: multipliers of the final rows for the phase
        constraints on node pos (beta-CROWN; entries where the phase is 0 have no effect).
        fixed {pos: (lo, hi) [1 or B, n]}: bounds certified on a larger domain (a split node's
        `intermediate` entries, which the kernel hands down to the node's subtree): the interval
        replay is intersected with them and no CROWN bounds are computed there. hint {pos: (lo,
        hi) [B, n]}: valid bounds intersected before CROWN's, so fewer neurons are unstable (they
        are not certified: bounds computed with a hint rank choices and never go into a
        certificate). dual (with shared alpha_inter, not diff): each intermediate bound
        is the tighter of CROWN's with the alpha slopes and with the default ones (`defaults`
        says which; the kernel takes them as two entries on the node)."""
        n = len(self.steps)
        batch = lo.shape[0]
        ctx = torch.enable_grad() if diff else torch.no_grad()
        with ctx:
            plain_lower = ibp = None
            if not diff:
                p_relax, ylo, yhi = self.ibp_relax(lo, hi, phases)
                ibp = ylo @ c.clamp(min=0).T + yhi @ c.clamp(max=0).T
                if plain:
                    plain_lower = self.backward(c, n - 1, p_relax, lo, hi)[0]
            relax, inter, defaults = {}, [], {}
            vac = torch.zeros(batch, dtype=torch.bool, device=lo.device)
            cur_lo, cur_hi = lo, hi
            for k in range(n):
                if self.steps[k] is not None and self.steps[k][0] == "relu":
                    relax[k] = _relax(cur_lo, cur_hi, exact=not diff)
                cur_lo, cur_hi = self._ibp_step(k, cur_lo, cur_hi)
                pos = k + 1
                sign = phases.get(pos) if phases else None
                held = bool(fixed) and pos in fixed
                for known in (fixed if held else None, hint):  # bounds known valid here
                    if known and pos in known:
                        cur_lo = torch.maximum(cur_lo, known[pos][0])
                        cur_hi = torch.minimum(cur_hi, known[pos][1])
                uns = (cur_lo < 0) & (cur_hi > 0)
                if not crown_inter or pos not in self.inter_pos or held or not bool(uns.any()):
                    if sign is not None:
                        cur_lo, cur_hi = _apply_signs(cur_lo, cur_hi, sign)
                    if sign is not None or held:
                        vac |= (cur_lo > cur_hi).any(dim=1)
                        cur_hi = torch.maximum(cur_hi, cur_lo)
                    continue
                low, scale = self._inter_rows(k, uns, relax, lo, hi,
                                              alpha_inter.get(pos) if alpha_inter else None)
                m = cur_lo.shape[1]
                if diff:
                    cur_lo = torch.where(uns, torch.maximum(cur_lo, low[:, :m]), cur_lo)
                    cur_hi = torch.where(uns, torch.minimum(cur_hi, -low[:, m:]), cur_hi)
                    if sign is not None:
                        cur_lo, cur_hi = _apply_signs(cur_lo, cur_hi, sign)
                    cur_hi = torch.maximum(cur_hi, cur_lo)
                    continue
                lb_lo = round_down(low[:, :m], scale[:, :m])
                lb_hi = round_up(-low[:, m:], scale[:, m:])
                tab = alpha_inter.get(pos) if alpha_inter else None
                if dual and tab and all(t.dim() == 2 for t in tab.values()):
                    low, scale = self._inter_rows(k, uns, relax, lo, hi, None)
                    d_lo = round_down(low[:, :m], scale[:, :m])
                    d_hi = round_up(-low[:, m:], scale[:, m:])
                    defaults[pos] = (d_lo > lb_lo, d_hi < lb_hi)
                    lb_lo, lb_hi = torch.maximum(lb_lo, d_lo), torch.minimum(lb_hi, d_hi)
                use = uns & ((lb_lo > cur_lo) | (lb_hi < cur_hi))
                if select is not None:
                    use = use & select(pos, cur_lo, cur_hi, lb_lo, lb_hi)
                cur_lo = torch.where(use, torch.maximum(cur_lo, lb_lo), cur_lo)
                cur_hi = torch.where(use, torch.minimum(cur_hi, lb_hi), cur_hi)
                if sign is not None:
                    cur_lo, cur_hi = _apply_signs(cur_lo, cur_hi, sign)
                gap = cur_lo - cur_hi
                bad = gap > 0
                if bool(bad.any()):
                    tiny = gap <= 1e-9 * (1 + cur_lo.abs())
                    vac |= (bad & ~tiny).any(dim=1)
                    mid = (cur_lo + cur_hi) / 2
                    cur_lo = torch.where(bad, mid, cur_lo)
                    cur_hi = torch.where(bad, mid, cur_hi)
                inter.append((pos, use, lb_lo, lb_hi))
            lower, a_in, _ = self.backward(c, n - 1, relax, lo, hi, None, alpha_final,
                                           self.signed_betas(phases, beta_final))
        return BatchBounds(ibp, plain_lower, lower, a_in, inter, vac, relax, beta_final or {},
                           defaults)

    def width(self, pos: int) -> int:
        """The number of neurons of node `pos`."""
        return self.chain.layers[pos - 1].n_out if pos else self.chain.n_in

    def signed_betas(self, phases: dict | None, betas: dict | None) -> dict | None:
        """The `betas` argument of `backward` from phases {pos: [B, n]} and multipliers
        {pos: [B, m, n]}."""
        if not betas:
            return None
        return {pos: (phases[pos].to(v.dtype), v) for pos, v in betas.items()}

    def optimise(self, lo, hi, c, objective, margin, iterations: int = 20, lr: float = 0.25,
                 base: BatchBounds | None = None, phases: dict | None = None,
                 init_inter: dict | None = None, init_final: dict | None = None,
                 init_beta: dict | None = None, beta_lr: float = 0.05,
                 per_row_inter: bool = False, fixed: dict | None = None,
                 search: BatchChain | None = None, dual: bool = False,
                 intermediate: bool = True):
        """alpha-CROWN over a batch: lower slopes of the final rows (per row) and of every
        intermediate bound (one list per relu per intermediate node, shared by its rows; per-row
        lists cost the kernel much more for little gain) optimised by
        projected Adam for `objective(lower [B, m]) -> [B]` (maximised); per domain the
        slopes with the best `margin(lower) -> [B]` are kept, rounded to multiples of 2^-16,
        and replayed exactly. With phase constraints, `init_beta` {pos: [B, m, n]} adds
        multipliers of the final rows for them (beta-CROWN; step `beta_lr`, rounded down to
        multiples of 2^-16; the result's `betas`). per_row_inter: one intermediate slope list
        per row (tighter, dearer for the kernel). `init_inter` / `init_final` warm-start the
        slopes (layouts of the returned ones); `base` must be the bounds at the starting point.
        `fixed`: as in `bounds` (no intermediate slopes there). `search`: the same chain in
        another float type (float32) for the Adam steps, whose bounds only rank the steps'
        slopes; the start, the rounded slopes' replay and so every bound returned are this
        chain's. dual (shared intermediate slopes): the steps bound only the neurons `base`
        left unstable (its bounds intersected first, `bounds(hint=...)`), and the replay takes
        each intermediate bound from the default or the optimised slopes, whichever is tighter
        (`bounds(dual=True)`). intermediate=False: only the final rows' slopes move; the steps
        keep `base`'s intermediate bounds, and the result's are CROWN's default-slope ones
        (alpha_inter comes back empty), so a step costs one backward pass.
        Returns (BatchBounds, alpha_inter, alpha_final)."""
        batch = lo.shape[0]
        m = c.shape[0]
        if base is None:
            base = self.bounds(lo, hi, c, plain=False, phases=phases, alpha_inter=init_inter,
                               alpha_final=init_final, beta_final=init_beta, fixed=fixed)
        sb = search or self
        cast = caster(sb.chain.dtype)
        s_lo, s_hi, s_c, s_fixed = cast(lo), cast(hi), cast(c), cast(fixed)
        init_inter, init_final, init_beta = cast(init_inter), cast(init_final), cast(init_beta)
        relus = sorted(base.relax)
        pi, pf = {}, {}
        if not intermediate:  # the steps take base's intermediate bounds as given
            s_fixed = {**(s_fixed or {}), **{p: (cast(base.relax[p].lo), cast(base.relax[p].hi))
                                              for p in self.inter_pos if p in base.relax}}
            dual = False
        for pos in (p for p in self.inter_pos if intermediate and p not in (fixed or {})):
            tab = {}
            for k in relus:
                if k < pos:
                    start = (init_inter or {}).get(pos, {}).get(k)
                    if start is None:
                        start = cast(base.relax[k].default_alpha)
                        if per_row_inter:
                            start = start[:, None, :].expand(-1, 2 * self.width(pos), -1)
                    tab[k] = start.clone().requires_grad_(True)
            if tab:
                pi[pos] = tab
        for k in relus:
            start = (init_final or {}).get(k)
            if start is None:
                start = cast(base.relax[k].default_alpha)[:, None, :].expand(batch, m, -1)
            pf[k] = start.clone().requires_grad_(True)
        pb = {pos: v.clone().requires_grad_(True) for pos, v in (init_beta or {}).items()}
        params = [t for tab in pi.values() for t in tab.values()] + list(pf.values())
        best_m = margin(base.lower)
        hint = None
        if dual and not per_row_inter:  # the steps bound only the neurons `base` left unstable
            hint = {p: (cast(base.relax[p].lo), cast(base.relax[p].hi)) for p in self.inter_pos
                    if p in base.relax}
        best_i = {pos: {k: t.detach().clone() for k, t in tab.items()} for pos, tab in pi.items()}
        best_f = {k: t.detach().clone() for k, t in pf.items()}
        best_b = {pos: t.detach().clone() for pos, t in pb.items()}
        opt = _Adam(params, lr)
        opt_b = _Adam(list(pb.values()), beta_lr, upper=None)
        for _ in range(iterations):
            r = sb.bounds(s_lo, s_hi, s_c, plain=False, alpha_inter=pi, alpha_final=pf,
                          diff=True, phases=phases, beta_final=pb or None, fixed=s_fixed,
                          hint=hint)
            with torch.no_grad():
                mg = margin(r.lower)
                imp = mg > best_m
                if bool(imp.any()):
                    best_m = torch.where(imp, mg, best_m)
                    for pos, tab in pi.items():
                        for k, t in tab.items():
                            sh = (-1,) + (1,) * (t.dim() - 1)
                            best_i[pos][k] = torch.where(imp.reshape(sh), t.detach(),
                                                         best_i[pos][k])
                    for k, t in pf.items():
                        best_f[k] = torch.where(imp[:, None, None], t.detach(), best_f[k])
                    for pos, t in pb.items():
                        best_b[pos] = torch.where(imp[:, None, None], t.detach(), best_b[pos])
                if bool((best_m > 0).all()):
                    break
            grads = torch.autograd.grad(-(objective(r.lower) * (best_m <= 0)).sum(),
                                        params + list(pb.values()), allow_unused=True)
            opt.step(grads[:len(params)])
            opt_b.step(grads[len(params):])
        with torch.no_grad():
            back = caster(self.chain.dtype)
            ri = back({pos: {k: _round_alpha(t) for k, t in tab.items()}
                       for pos, tab in best_i.items()})
            rf = back({k: _round_alpha(t) for k, t in best_f.items()})
            rb = back({pos: _round_beta(t) for pos, t in best_b.items()})
            r = self.bounds(lo, hi, c, plain=False, alpha_inter=ri, alpha_final=rf,
                            phases=phases, beta_final=rb or None, fixed=fixed,
                            dual=hint is not None)
        return r, ri, rf
