"""A slow, obviously-correct reference evaluator for `tl.graph.v1` in `fractions.Fraction`.

It shares no code with the kernel: tensors are flat row-major lists of Fractions with a shape
tuple, every op is written as the textbook loop over output indices, and weights are read from
the builder's NumPy arrays (NumPy is used only for reading them: `Fraction(float(v))` is exact for
float16/float32/float64). Batchnorm is not covered (1/sqrt is irrational); tests compare it
against NumPy float64 with a tolerance instead.

    values = evaluate(doc, weights, x)   # doc: graph.json dict, weights: {name: ndarray}
    shape, flat = values[node_id]

The evaluator is generic in its number type: given `Interval`s for the input it computes the
textbook interval extension of every op (each weight times an interval, interval sums, interval
products, monotone relu/max, |.|), i.e. interval bound propagation done the slow way.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

EVALUATED = ("input", "const", "linear", "matmul", "conv2d", "add", "sub", "mul", "neg", "relu",
             "abs", "flatten", "reshape", "transpose", "concat", "maxpool2d", "avgpool2d", "sum",
             "mean")


class Interval:
    """A closed interval [lo, hi] of Fractions with the textbook interval operations."""

    def __init__(self, lo, hi=None):
        self.lo = Fraction(lo)
        self.hi = Fraction(lo if hi is None else hi)
        assert self.lo <= self.hi

    @staticmethod
    def of(v) -> Interval:
        return v if isinstance(v, Interval) else Interval(v)

    def __add__(self, other):
        o = Interval.of(other)
        return Interval(self.lo + o.lo, self.hi + o.hi)

    __radd__ = __add__

    def __neg__(self):
        return Interval(-self.hi, -self.lo)

    def __sub__(self, other):
        return self + -Interval.of(other)

    def __rsub__(self, other):
        return Interval.of(other) + -self

    def __mul__(self, other):
        o = Interval.of(other)
        p = (self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi)
        return Interval(min(p), max(p))

    __rmul__ = __mul__

    def __truediv__(self, n):
        assert n > 0
        return Interval(self.lo / n, self.hi / n)

    def __abs__(self):
        if self.lo >= 0:
            return Interval(self.lo, self.hi)
        if self.hi <= 0:
            return Interval(-self.hi, -self.lo)
        return Interval(0, max(-self.lo, self.hi))

    def __eq__(self, other):
        o = Interval.of(other)
        return (self.lo, self.hi) == (o.lo, o.hi)

    def __hash__(self):
        return hash((self.lo, self.hi))

    def __repr__(self):
        return f"[{self.lo}, {self.hi}]"


def vmax(values):
    """max of Fractions, or the interval maximum [max lo, max hi] of Intervals."""
    values = list(values)
    if any(isinstance(v, Interval) for v in values):
        ivs = [Interval.of(v) for v in values]
        return Interval(max(v.lo for v in ivs), max(v.hi for v in ivs))
    return max(values)


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def ravel(index, shape) -> int:
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * d + i
    return flat


def indices(shape):
    """All multi-indices of `shape` in row-major order."""
    return itertools.product(*(range(d) for d in shape))


def exact_array(arr) -> tuple[tuple[int, ...], list[Fraction]]:
    """A NumPy array (float or int) as (shape, flat exact Fractions)."""
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        flat = [Fraction(float(v)) for v in a.reshape(-1)]
    else:
        flat = [Fraction(int(v)) for v in a.reshape(-1)]
    return tuple(int(d) for d in a.shape), flat


def frac(value) -> Fraction:
    """A python-flint fmpq/fmpz (or int) as a Fraction, via its numerator and denominator."""
    if hasattr(value, "q"):
        return Fraction(int(value.p), int(value.q))
    return Fraction(int(value))


def broadcast_shape(a, b) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        assert x == y or x == 1 or y == 1, (a, b)
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def read_broadcast(shape, flat, out_index):
    """The element of (shape, flat) that numpy broadcasting maps to `out_index`."""
    off = len(out_index) - len(shape)
    idx = tuple(0 if shape[k] == 1 else out_index[off + k] for k in range(len(shape)))
    return flat[ravel(idx, shape)]


def _window_positions(o, stride, pad, dil, k):
    return [o * stride - pad + t * dil for t in range(k)]


def conv2d(x, w, b, stride, padding, dilation, groups):
    (c, h, wd), xs = x
    (o, cg, kh, kw), ws = w
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    out = []
    for oc, i, j in indices((o, oh, ow)):
        g = oc // og
        acc = Fraction(0) if b is None else b[1][oc]
        for ci in range(cg):
            cin = g * cg + ci
            for p in range(kh):
                ih = i * stride[0] - padding[0] + p * dilation[0]
                for q in range(kw):
                    iw = j * stride[1] - padding[1] + q * dilation[1]
                    if 0 <= ih < h and 0 <= iw < wd:
                        acc += ws[ravel((oc, ci, p, q), (o, cg, kh, kw))] * xs[
                            ravel((cin, ih, iw), (c, h, wd))]
        out.append(acc)
    return (o, oh, ow), out


def pool2d(x, kernel, stride, padding, dilation, mode, count_include_pad=True):
    (c, h, wd), xs = x
    stride = stride or kernel
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    out = []
    for ch, i, j in indices((c, oh, ow)):
        vals = []
        for ih in _window_positions(i, stride[0], padding[0], dilation[0], kernel[0]):
            for iw in _window_positions(j, stride[1], padding[1], dilation[1], kernel[1]):
                if 0 <= ih < h and 0 <= iw < wd:
                    vals.append(xs[ravel((ch, ih, iw), (c, h, wd))])
        if mode == "max":
            out.append(vmax(vals))
        else:
            count = kernel[0] * kernel[1] if count_include_pad else len(vals)
            out.append(sum(vals, Fraction(0)) / count)
    return (c, oh, ow), out


def matmul(a, b):
    (sa, fa), (sb, fb) = a, b
    k = sb[0]
    m = sb[1] if len(sb) == 2 else None
    rows = numel(sa) // k
    out = []
    for r in range(rows):
        for col in range(m if m is not None else 1):
            acc = Fraction(0)
            for j in range(k):
                bj = fb[j * m + col] if m is not None else fb[j]
                acc += fa[r * k + j] * bj
            out.append(acc)
    shape = tuple(sa[:-1]) + ((m,) if m is not None else ())
    return shape, out


def reduce(x, axes, keepdims, divide):
    shape, flat = x
    rank = len(shape)
    axes = sorted(a % rank for a in axes) if axes is not None else list(range(rank))
    kept = [d for i, d in enumerate(shape) if i not in axes]
    acc: dict[tuple, Fraction] = {}
    for idx in indices(shape):
        key = tuple(v for i, v in enumerate(idx) if i not in axes)
        acc[key] = acc.get(key, Fraction(0)) + flat[ravel(idx, shape)]
    count = numel([shape[i] for i in axes])
    out = [acc[key] / count if divide else acc[key] for key in indices(kept)]
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(shape)) if keepdims else tuple(
        kept)
    return out_shape, out


def evaluate(doc: dict, weights: dict, x, upto: str | None = None) -> dict:
    """Evaluate every node of the graph document at the input point `x` (flat, exact)."""
    params = {name: exact_array(arr) for name, arr in weights.items()}
    vals: dict[str, tuple[tuple[int, ...], list[Fraction]]] = {}
    for nd in doc["nodes"]:
        op, attrs = nd["op"], nd.get("attrs", {})
        args = [vals[s] for s in nd["inputs"]]
        if op == "input":
            shape = tuple(nd["shape"])
            flat = [v if isinstance(v, Interval) else Fraction(v) for v in x]
            assert len(flat) == numel(shape)
            res = (shape, flat)
        elif op == "const":
            v = attrs["value"]
            if isinstance(v, str):
                res = params[v]
            else:
                res = (tuple(v["shape"]), [Fraction(t) for t in v["values"]])
        elif op == "linear":
            (sx, fx), = args
            sw, fw = params[attrs["weight"]]
            bias = params[attrs["bias"]][1] if attrs.get("bias") else None
            o, k = sw
            out = []
            for r in range(numel(sx[:-1])):
                for i in range(o):
                    acc = bias[i] if bias is not None else Fraction(0)
                    for j in range(k):
                        acc += fw[i * k + j] * fx[r * k + j]
                    out.append(acc)
            res = (tuple(sx[:-1]) + (o,), out)
        elif op == "matmul":
            res = matmul(args[0], args[1])
        elif op == "conv2d":
            bias = params[attrs["bias"]] if attrs.get("bias") else None
            res = conv2d(args[0], params[attrs["weight"]], bias, attrs.get("stride", [1, 1]),
                         attrs.get("padding", [0, 0]), attrs.get("dilation", [1, 1]),
                         attrs.get("groups", 1))
        elif op in ("add", "sub", "mul"):
            (sa, fa), (sb, fb) = args
            shape = broadcast_shape(sa, sb)
            out = []
            for idx in indices(shape):
                u, v = read_broadcast(sa, fa, idx), read_broadcast(sb, fb, idx)
                out.append(u + v if op == "add" else u - v if op == "sub" else u * v)
            res = (shape, out)
        elif op in ("neg", "relu", "abs"):
            (s, f), = args
            fn = {"neg": lambda t: -t, "relu": lambda t: vmax([t, Fraction(0)]), "abs": abs}[op]
            res = (s, [fn(t) for t in f])
        elif op == "flatten":
            (s, f), = args
            sd = attrs.get("start_dim", 0)
            res = (tuple(s[:sd]) + (numel(s[sd:]),), list(f))
        elif op == "reshape":
            (s, f), = args
            target = list(attrs["shape"])
            if -1 in target:
                target[target.index(-1)] = numel(s) // numel([t for t in target if t != -1])
            res = (tuple(target), list(f))
        elif op == "transpose":
            (s, f), = args
            perm = attrs["perm"]
            out_shape = tuple(s[p] for p in perm)
            out = []
            for idx in indices(out_shape):
                src = [0] * len(s)
                for k, p in enumerate(perm):
                    src[p] = idx[k]
                out.append(f[ravel(src, s)])
            res = (out_shape, out)
        elif op == "concat":
            rank = len(args[0][0])
            ax = attrs["axis"] % rank
            out_shape = list(args[0][0])
            out_shape[ax] = sum(s[ax] for s, _ in args)
            out = []
            for idx in indices(out_shape):
                pos = idx[ax]
                for s, f in args:
                    if pos < s[ax]:
                        src = list(idx)
                        src[ax] = pos
                        out.append(f[ravel(src, s)])
                        break
                    pos -= s[ax]
            res = (tuple(out_shape), out)
        elif op in ("maxpool2d", "avgpool2d"):
            res = pool2d(args[0], attrs["kernel"], attrs.get("stride"),
                         attrs.get("padding", [0, 0]), attrs.get("dilation", [1, 1]),
                         "max" if op == "maxpool2d" else "avg",
                         attrs.get("count_include_pad", True))
        elif op in ("sum", "mean"):
            res = reduce(args[0], attrs.get("axes"), attrs.get("keepdims", False), op == "mean")
        else:
            raise NotImplementedError(f"reference evaluator does not cover op {op!r}")
        vals[nd["id"]] = res
        if nd["id"] == upto:
            break
    return vals
