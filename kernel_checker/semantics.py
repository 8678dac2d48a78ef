"""Exact real semantics of the op table, on interval tensors.

Every op maps an enclosure of its inputs to an enclosure of its output; a point is the interval
whose lo is its hi, so exact evaluation at a point and interval bound propagation (IBP; Gowal et
al. 2018) are one code path. All of it is exact rational arithmetic: the only place an output of a
point is not a point is batchnorm, whose 1/sqrt(var + eps) is irrational and is enclosed by
integer square roots to 2^-PREC relative width.
"""

from dataclasses import dataclass

from flint import fmpq, fmpz, fmpz_mat

from kernel_checker.enclosure import GRAPH_FUNCS, unary_interval
from kernel_checker.errors import refuse
from kernel_checker.exact import common_denominator
from kernel_checker.graph import Graph, Node
from kernel_checker.ops import OPS
from kernel_checker.tensor import Tensor, lcm, numel, rescale

SQRT_PRECISION_BITS = 96


@dataclass(frozen=True)
class Interval:
    """Element i lies in [lo[i] / den, hi[i] / den]."""

    # lo and hi are never changed after construction (every op builds new lists): crown._step
    # reuses a node's interval for equal inputs, kept from an earlier call, and relies on that.

    shape: tuple[int, ...]
    lo: list
    hi: list
    den: int

    @property
    def is_point(self) -> bool:
        return self.lo is self.hi

    def bounds(self, i: int) -> tuple[fmpq, fmpq]:
        return fmpq(self.lo[i], self.den), fmpq(self.hi[i], self.den)


def point(t: Tensor) -> Interval:
    return Interval(t.shape, t.nums, t.nums, t.den)


def _make(shape, lo, hi, den, was_point) -> Interval:
    return Interval(tuple(shape), lo, lo if was_point else hi, den)


def _align(a: Interval, b: Interval) -> tuple[Interval, Interval]:
    if a.den == b.den:
        return a, b
    d = lcm(a.den, b.den)
    return (_make(a.shape, rescale(a.lo, a.den, d), rescale(a.hi, a.den, d), d, a.is_point),
            _make(b.shape, rescale(b.lo, b.den, d), rescale(b.hi, b.den, d), d, b.is_point))


def strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


def broadcast_index(src: tuple, out: tuple) -> list[int]:
    """For each element of `out` (row-major), the index of the `src` element it reads."""
    if src == out:
        return list(range(numel(out)))
    pad = (1,) * (len(out) - len(src)) + tuple(src)
    st = strides(pad)
    idx = [0]
    for d_out, d_src, s in zip(out, pad, st):
        step = s if d_src != 1 else 0
        idx = [base + j * step for base in idx for j in range(d_out)]
    return idx


def _broadcast(a: Interval, shape) -> Interval:
    if a.shape == tuple(shape):
        return a
    idx = broadcast_index(a.shape, tuple(shape))
    lo = [a.lo[i] for i in idx]
    return _make(shape, lo, lo if a.is_point else [a.hi[i] for i in idx], a.den, a.is_point)


def _gather(a: Interval, idx: list[int], shape) -> Interval:
    lo = [a.lo[i] for i in idx]
    return _make(shape, lo, lo if a.is_point else [a.hi[i] for i in idx], a.den, a.is_point)


def add(a: Interval, b: Interval, shape) -> Interval:
    a, b = _align(_broadcast(a, shape), _broadcast(b, shape))
    lo = [x + y for x, y in zip(a.lo, b.lo)]
    if a.is_point and b.is_point:
        return _make(shape, lo, lo, a.den, True)
    return _make(shape, lo, [x + y for x, y in zip(a.hi, b.hi)], a.den, False)


def neg(a: Interval) -> Interval:
    hi = [-x for x in a.lo]
    return _make(a.shape, hi if a.is_point else [-x for x in a.hi], hi, a.den, a.is_point)


def mul(a: Interval, b: Interval, shape) -> Interval:
    a, b = _broadcast(a, shape), _broadcast(b, shape)
    den = a.den * b.den
    if a.is_point and b.is_point:
        p = [x * y for x, y in zip(a.lo, b.lo)]
        return _make(shape, p, p, den, True)
    lo, hi = [], []
    for al, ah, bl, bh in zip(a.lo, a.hi, b.lo, b.hi):
        c = (al * bl, al * bh, ah * bl, ah * bh)
        lo.append(min(c))
        hi.append(max(c))
    return _make(shape, lo, hi, den, False)


def relu(a: Interval) -> Interval:
    lo = [x if x > 0 else 0 for x in a.lo]
    return _make(a.shape, lo, lo if a.is_point else [x if x > 0 else 0 for x in a.hi], a.den,
                 a.is_point)


def absolute(a: Interval) -> Interval:
    if a.is_point:
        v = [abs(x) for x in a.lo]
        return _make(a.shape, v, v, a.den, True)
    lo, hi = [], []
    for x, y in zip(a.lo, a.hi):
        if x >= 0:
            lo.append(x), hi.append(y)
        elif y <= 0:
            lo.append(-y), hi.append(-x)
        else:
            lo.append(0), hi.append(max(-x, y))
    return _make(a.shape, lo, hi, a.den, False)


def affine_columns(w: fmpz_mat, w_abs: fmpz_mat, w_den: int, rows: int, k: int, n: int,
                   lo: list, hi: list, den: int, is_point: bool,
                   shift: fmpz_mat | None = None) -> tuple[list, list, int]:
    """W (rows x k, over w_den) times a k x n interval matrix (row-major lo/hi over den), plus
    `shift` (rows x n numerators over the result's den, 2 den w_den; not for a point).

    Centre-radius form: W*mid +- |W|*rad is the exact interval hull of W*x over the box, and
    costs two integer matrix products (one for a point)."""
    if is_point:
        y = [int(v) for v in (w * fmpz_mat(k, n, lo)).entries()]
        return y, y, den * w_den
    mid = fmpz_mat(k, n, [x + y for x, y in zip(lo, hi)])
    rad = fmpz_mat(k, n, [y - x for x, y in zip(lo, hi)])
    ym = w * mid if shift is None else w * mid + shift
    yr = w_abs * rad
    return ([int(v) for v in (ym - yr).entries()], [int(v) for v in (ym + yr).entries()],
            2 * den * w_den)


def _weight_matrix(graph: Graph, name: str, rows: int, cols: int, absolute: bool = True):
    """(W, |W| or None when not `absolute` and not made before: points need no |W|, W's den)."""
    key, t = ("matrix", name, rows, cols), graph.param(name)
    if key not in graph._cache:
        graph._cache[key] = [fmpz_mat(rows, cols, t.nums), None, t.den]
    hit = graph._cache[key]
    if absolute and hit[1] is None:
        hit[1] = fmpz_mat(rows, cols, [abs(v) for v in t.nums])
    return tuple(hit)


def _transpose_2d(vals: list, rows: int, cols: int) -> list:
    # a vector is its own transpose, returned as the very list (an Interval's lists are never
    # changed after construction)
    if rows == 1 or cols == 1:
        return vals
    return [vals[r * cols + c] for c in range(cols) for r in range(rows)]


def _add_bias(y: Interval, graph: Graph, name: str | None, channel_first: bool) -> Interval:
    if name is None:
        return y
    b = graph.param(name)
    shape = (b.shape[0],) + (1,) * (len(y.shape) - 1) if channel_first else b.shape
    return add(y, point(Tensor(shape, b.nums, b.den)), y.shape)


def linear(x: Interval, node: Node, graph: Graph) -> Interval:
    wt = graph.param(node.attrs["weight"])
    m, k = wt.shape
    n = numel(x.shape[:-1])
    w, w_abs, w_den = _weight_matrix(graph, node.attrs["weight"], m, k, not x.is_point)
    last = graph._cache.get(("linear", node.id)) if n == 1 and not x.is_point else None
    if last is not None and last[0].den == x.den and last[0].shape == x.shape:
        y = _linear_update(*last, x, wt, w_den)
        if y is not None:
            graph._cache[("linear", node.id)] = (x, y)
            return y
    lo_t = _transpose_2d(x.lo, n, k)
    hi_t = lo_t if x.is_point else _transpose_2d(x.hi, n, k)
    b, shift = node.attrs["bias"], None
    bt = None if b is None else graph.param(b)
    if bt is not None and n == 1 and not x.is_point and not 2 * x.den * w_den % bt.den:
        g = 2 * x.den * w_den // bt.den  # a vector's bias joins the products' numerators
        b, shift = None, fmpz_mat(m, 1, [v * g for v in bt.nums])
    lo, hi, den = affine_columns(w, w_abs, w_den, m, k, n, lo_t, hi_t, x.den, x.is_point, shift)
    y = _make(node.shape, _transpose_2d(lo, m, n), None if x.is_point
              else _transpose_2d(hi, m, n), den, x.is_point)
    y = _add_bias(y, graph, b, channel_first=False)
    if n == 1 and not x.is_point:
        graph._cache[("linear", node.id)] = (x, y)
    return y


def _linear_update(x0: Interval, y0: Interval, x: Interval, wt: Tensor, w_den: int):
    """linear's y for a vector x that differs from x0 (same den) in a few entries, from its y0:
    numerators f (W mid -+ |W| rad) + the bias's are linear in mid = lo + hi, rad = hi - lo, so
    y = y0 plus f times the changed columns' share (the very numerators linear computes); None
    when too many entries differ for that to be faster."""
    k = len(x.lo)
    diff = [j for j in range(k) if x.lo[j] != x0.lo[j] or x.hi[j] != x0.hi[j]]
    if len(diff) * 64 > k:
        return None
    f = y0.den // (2 * x.den * w_den)
    lo, hi = list(y0.lo), list(y0.hi)
    for j in diff:
        dm = f * (x.lo[j] + x.hi[j] - x0.lo[j] - x0.hi[j])
        dr = f * (x.hi[j] - x.lo[j] - x0.hi[j] + x0.lo[j])
        for i, c in enumerate(wt.nums[j::k]):
            a, r = c * dm, abs(c) * dr
            lo[i] += a - r
            hi[i] += a + r
    return Interval(y0.shape, lo, hi, y0.den)


def matmul(a: Interval, b: Interval, node: Node) -> Interval:
    """[..., n, k] or [k] times [k, m] or [k]; exact via integer products when one side is a
    point, else by interval products of every pair."""
    k = b.shape[0]
    mcols = b.shape[1] if len(b.shape) == 2 else 1
    rows = numel(a.shape) // k
    if b.is_point:  # y^T = B^T A^T: B^T is the matrix, rows of A are columns
        bt = _transpose_2d(b.lo, k, mcols)
        w = fmpz_mat(mcols, k, bt)
        w_abs = fmpz_mat(mcols, k, [abs(v) for v in bt])
        lo_t = _transpose_2d(a.lo, rows, k)
        hi_t = lo_t if a.is_point else _transpose_2d(a.hi, rows, k)
        lo, hi, den = affine_columns(w, w_abs, b.den, mcols, k, rows, lo_t, hi_t, a.den,
                                     a.is_point)
        return _make(node.shape, _transpose_2d(lo, mcols, rows),
                     None if a.is_point else _transpose_2d(hi, mcols, rows), den, a.is_point)
    if a.is_point and rows >= 1:
        w = fmpz_mat(rows, k, a.lo)
        w_abs = fmpz_mat(rows, k, [abs(v) for v in a.lo])
        lo, hi, den = affine_columns(w, w_abs, a.den, rows, k, mcols, b.lo, b.hi, b.den, False)
        return _make(node.shape, lo, hi, den, False)
    lo, hi = [], []
    for r in range(rows):
        for c in range(mcols):
            s_lo = s_hi = 0
            for j in range(k):
                al, ah = a.lo[r * k + j], a.hi[r * k + j]
                bl, bh = b.lo[j * mcols + c], b.hi[j * mcols + c]
                p = (al * bl, al * bh, ah * bl, ah * bh)
                s_lo += min(p)
                s_hi += max(p)
            lo.append(s_lo)
            hi.append(s_hi)
    return _make(node.shape, lo, hi, a.den * b.den, False)


def _window_indices(shape, out_shape, kernel, stride, padding, dilation):
    """For each output (c, oh, ow) of a 2-D window op, the flat input indices (None = padding)."""
    c_n, h, w = shape
    _, oh_n, ow_n = out_shape
    wins = []
    for c in range(c_n):
        for oh in range(oh_n):
            for ow in range(ow_n):
                idx = []
                for i in range(kernel[0]):
                    ih = oh * stride[0] - padding[0] + i * dilation[0]
                    for j in range(kernel[1]):
                        iw = ow * stride[1] - padding[1] + j * dilation[1]
                        idx.append((c * h + ih) * w + iw if 0 <= ih < h and 0 <= iw < w else None)
                wins.append(idx)
    return wins


def conv2d(x: Interval, node: Node, graph: Graph) -> Interval:
    """Per group: im2col columns times the weight matrix (exact integer products)."""
    a = node.attrs
    wt = graph.param(a["weight"])
    o, cg, kh, kw = wt.shape
    g = a["groups"]
    c, h, wd = x.shape
    _, oh, ow = node.shape
    og = o // g
    kk = cg * kh * kw
    n = oh * ow
    geo = ("conv_windows", x.shape, node.shape, tuple(a["stride"]), tuple(a["padding"]),
           tuple(a["dilation"]), kh, kw)
    if geo not in graph._cache:
        graph._cache[geo] = _window_indices((c, h, wd), (c, oh, ow), (kh, kw), a["stride"],
                                            a["padding"], a["dilation"])
    wins = graph._cache[geo]
    w_all, w_abs_all, w_den = _weight_matrix(graph, a["weight"], o, kk, not x.is_point)
    lo_out, hi_out = [], []
    den = None
    for gi in range(g):
        if g == 1:
            w, w_abs = w_all, w_abs_all
        else:
            rows = [int(v) for v in w_all.entries()[gi * og * kk:(gi + 1) * og * kk]]
            w = fmpz_mat(og, kk, rows)
            w_abs = None if x.is_point else fmpz_mat(og, kk, [abs(v) for v in rows])
        cols_lo, cols_hi = [], []
        for ci in range(gi * cg, (gi + 1) * cg):
            base = ci * n
            for t in range(kh * kw):
                row_lo = [0] * n
                row_hi = [0] * n if not x.is_point else row_lo
                for p in range(n):
                    src = wins[base + p][t]
                    if src is not None:
                        row_lo[p] = x.lo[src]
                        if not x.is_point:
                            row_hi[p] = x.hi[src]
                cols_lo.extend(row_lo)
                cols_hi.extend(row_hi)
        lo, hi, den = affine_columns(w, w_abs, w_den, og, kk, n, cols_lo,
                                     cols_lo if x.is_point else cols_hi, x.den, x.is_point)
        lo_out.extend(lo)
        hi_out.extend(hi)
    y = _make(node.shape, lo_out, hi_out, den, x.is_point)
    return _add_bias(y, graph, a["bias"], channel_first=True)


def maxpool2d(x: Interval, node: Node) -> Interval:
    a = node.attrs
    wins = _window_indices(x.shape, node.shape, a["kernel"], a["stride"], a["padding"],
                           a["dilation"])
    if any(all(i is None for i in win) for win in wins):
        raise refuse("semantics", f"node {node.id!r}", "a maxpool2d window lies entirely in the "
                     "padding (its maximum is undefined)")
    lo = [max(x.lo[i] for i in win if i is not None) for win in wins]
    hi = lo if x.is_point else [max(x.hi[i] for i in win if i is not None) for win in wins]
    return _make(node.shape, lo, hi, x.den, x.is_point)


def avgpool2d(x: Interval, node: Node) -> Interval:
    a = node.attrs
    wins = _window_indices(x.shape, node.shape, a["kernel"], a["stride"], a["padding"],
                           a["dilation"])
    full = a["kernel"][0] * a["kernel"][1]
    counts = [full if a["count_include_pad"] else sum(1 for i in w if i is not None) for w in wins]
    big = 1
    for cnt in set(counts):
        big = lcm(big, cnt)

    def pool(vals):
        return [sum(vals[i] for i in w if i is not None) * (big // cnt)
                for w, cnt in zip(wins, counts)]

    lo = pool(x.lo)
    return _make(node.shape, lo, lo if x.is_point else pool(x.hi), x.den * big, x.is_point)


def reduce_sum(x: Interval, node: Node, divide: bool) -> Interval:
    axes = node.attrs["axes"]
    out_full = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    st_out = strides(out_full)
    size = numel(out_full)
    target = []
    for flat in range(numel(x.shape)):
        rem, o = flat, 0
        for i, st_o in enumerate(st_out):
            sub = numel(x.shape[i + 1:])
            coord, rem = divmod(rem, sub)
            if i not in axes:
                o += coord * st_o
        target.append(o)

    def fold(vals):
        acc = [0] * size
        for t, v in zip(target, vals):
            acc[t] += v
        return acc

    lo = fold(x.lo)
    count = numel(tuple(x.shape[i] for i in axes)) if divide else 1
    return _make(node.shape, lo, lo if x.is_point else fold(x.hi), x.den * max(count, 1),
                 x.is_point)


def transpose(x: Interval, node: Node) -> Interval:
    perm = node.attrs["perm"]
    st = strides(x.shape)
    idx = [0]
    for p in perm:
        idx = [base + j * st[p] for base in idx for j in range(x.shape[p])]
    return _gather(x, idx, node.shape)


def concat(parts: list[Interval], node: Node) -> Interval:
    ax = node.attrs["axis"]
    den = 1
    for p in parts:
        den = lcm(den, p.den)
    outer = numel(parts[0].shape[:ax])
    all_point = all(p.is_point for p in parts)
    lo, hi = [], []
    chunks = []
    for p in parts:
        inner = numel(p.shape[ax:])
        plo, phi = rescale(p.lo, p.den, den), rescale(p.hi, p.den, den)
        chunks.append((inner, plo, phi))
    for o in range(outer):
        for inner, plo, phi in chunks:
            lo.extend(plo[o * inner:(o + 1) * inner])
            hi.extend(phi[o * inner:(o + 1) * inner])
    return _make(node.shape, lo, hi, den, all_point)


def inv_sqrt_enclosure(v: fmpq, prec: int = SQRT_PRECISION_BITS) -> tuple[fmpq, fmpq]:
    """Dyadic [lo, hi] with lo <= 1/sqrt(v) <= hi for rational v > 0, by integer square roots:
    floor(sqrt(z)) = isqrt(floor(z)) for real z >= 0."""
    shift = prec + max(0, (int(v.p).bit_length() - int(v.q).bit_length()) // 2 + 1)
    z_num, z_den = int(v.q) << (2 * shift), int(v.p)  # z = 4^shift / v
    r = fmpz(z_num // z_den).isqrt()
    exact = r * r * z_den == z_num
    return fmpq(r, 1 << shift), fmpq(r if exact else r + 1, 1 << shift)


def batchnorm_channels(node: Node, graph: Graph) -> list[tuple]:
    """Per channel (k_lo, k_hi, mean, beta) with k_lo <= gamma / sqrt(var + eps) <= k_hi, so
    that y = k (x - mean) + beta; cached per graph."""
    key = ("batchnorm", node.id)
    if key not in graph._cache:
        a = node.attrs
        gamma, beta = graph.param(a["weight"]), graph.param(a["bias"])
        mean, var = graph.param(a["running_mean"]), graph.param(a["running_var"])
        out = []
        for ch in range(gamma.shape[0]):
            v = var.value(ch) + a["eps"]
            if v <= 0:
                raise refuse("semantics", f"{node.id}.running_var[{ch}]",
                             f"running_var + eps must be positive, found {v}")
            s_lo, s_hi = inv_sqrt_enclosure(v)
            g = gamma.value(ch)
            k_lo, k_hi = (g * s_lo, g * s_hi) if g >= 0 else (g * s_hi, g * s_lo)
            out.append((k_lo, k_hi, mean.value(ch), beta.value(ch)))
        graph._cache[key] = out
    return graph._cache[key]


def batchnorm(x: Interval, node: Node, graph: Graph) -> Interval:
    """y = (x - mean) * gamma / sqrt(var + eps) + beta, channel = first dimension."""
    per = numel(x.shape) // x.shape[0] if x.shape[0] else 0
    lo, hi = [], []
    for ch, (k_lo, k_hi, m, b) in enumerate(batchnorm_channels(node, graph)):
        for i in range(ch * per, (ch + 1) * per):
            t_lo = fmpq(x.lo[i], x.den) - m
            t_hi = fmpq(x.hi[i], x.den) - m
            prods = (t_lo * k_lo, t_lo * k_hi, t_hi * k_lo, t_hi * k_hi)
            lo.append(min(prods) + b)
            hi.append(max(prods) + b)
    nums, den = common_denominator(lo + hi)
    return _make(node.shape, nums[:len(lo)], nums[len(lo):], den, False)


def eval_node(node: Node, args: list[Interval], graph: Graph) -> Interval:
    """One node's enclosure from its inputs' enclosures."""
    op = node.op
    if not OPS[op].evaluated:
        raise refuse("semantics", f"node {node.id!r}", f"op {op!r} is not yet supported by the "
                     f"kernel's exact semantics; evaluated ops: "
                     f"{sorted(o for o, s in OPS.items() if s.evaluated)}")
    if op == "const":
        return point(graph.param(node.attrs["value"]))
    if op == "add":
        return add(args[0], args[1], node.shape)
    if op == "sub":
        return add(args[0], neg(args[1]), node.shape)
    if op == "mul":
        return mul(args[0], args[1], node.shape)
    if op == "neg":
        return neg(args[0])
    if op == "relu":
        return relu(args[0])
    if op == "abs":
        return absolute(args[0])
    if op == "linear":
        return linear(args[0], node, graph)
    if op == "matmul":
        return matmul(args[0], args[1], node)
    if op == "conv2d":
        return conv2d(args[0], node, graph)
    if op == "maxpool2d":
        return maxpool2d(args[0], node)
    if op == "avgpool2d":
        return avgpool2d(args[0], node)
    if op in ("flatten", "reshape"):
        x = args[0]
        return _make(node.shape, x.lo, x.hi, x.den, x.is_point)
    if op == "transpose":
        return transpose(args[0], node)
    if op == "concat":
        return concat(args, node)
    if op == "batchnorm":
        return batchnorm(args[0], node, graph)
    if op in ("sum", "mean"):
        return reduce_sum(args[0], node, divide=op == "mean")
    if op in GRAPH_FUNCS:
        x = args[0]
        lo, hi, den = unary_interval(op, x.lo, x.hi, x.den, f"node {node.id!r}")
        return _make(node.shape, lo, hi, den, False)
    raise AssertionError(op)


def evaluate(graph: Graph, x: Interval, upto: str | None = None) -> dict[str, Interval]:
    """Enclosures of every node (up to `upto`) for the input enclosure `x`."""
    inp = graph.the_input("semantics", "input")
    if x.shape != inp.shape:
        raise refuse("semantics", "input", f"expected shape {list(inp.shape)}, found "
                     f"{list(x.shape)}")
    values: dict[str, Interval] = {}
    needed = _ancestors(graph, upto) if upto is not None else None
    for node in graph.nodes:
        if needed is not None and node.id not in needed:
            continue
        if node.op == "input":
            values[node.id] = x
        else:
            values[node.id] = eval_node(node, [values[s] for s in node.inputs], graph)
    return values


def _ancestors(graph: Graph, target: str) -> set[str]:
    need = {target}
    for node in reversed(graph.nodes):
        if node.id in need:
            need.update(node.inputs)
    return need
