"""Rule `agreement` (DESIGN.md, "Agreement(G, x, y, runtime)"): the values y a runtime returned for
node `node` of G at the input x lie inside the kernel's enclosure of every binary32 evaluation of
G at x.

The enclosure is built node by node from x, in exact rationals. An evaluation may sum in any
order (a GPU's or a BLAS's), with or without fused multiply-adds, in IEEE 754 binary32 with round
to nearest and gradual underflow. A linear (or conv2d) node's y_j = sum_i W_ji v_i + b_j of k
products (k = in_channels / groups x kernel height x width for conv2d) then
differs from its exact value on the binary32 input v the evaluation read by at most
    gamma_{k+1} (sum_i |W_ji| |v_i| + |b_j|) + k 2^-149,   gamma_n = n u / (1 - n u), u = 2^-24
(Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sections 2.1 and 3.1: each of
the k + 1 terms meets at most k + 1 roundings on its way to the sum, whatever the order; a
product that underflows errs by at most 2^-150 more). v lies in the input's enclosure [lo, hi]
(by induction), so y_j lies in the exact hull of W [lo, hi] + b widened by that bound taken with
|v_i| <= max(|lo_i|, |hi_i|). An add rounds once: fl(a + b) = (a + b)(1 + d), |d| <= u; an
average pool sums a window and divides (`_avgpool`). relu, maxpool2d, flatten and reshape are
exact. x, the weights and the biases must be binary32 values (a runtime
reading rounded copies computes another function), and every sum stays below half the largest
binary32 in magnitude, so nothing overflows. Then the check is exact: lo_j <= y_j <= hi_j.
"""

from flint import fmpq

from kernel_checker import semantics
from kernel_checker.claims import Claim
from kernel_checker.errors import refuse
from kernel_checker.exact import approx_text, common_denominator
from kernel_checker.graph import Graph, Node
from kernel_checker.semantics import Interval
from kernel_checker.tensor import Tensor, numel

RULE = "agreement"
F32_OPS = ("input", "linear", "conv2d", "relu", "add", "maxpool2d", "avgpool2d", "flatten",
           "reshape")
U = fmpq(1, 1 << 24)
ETA = fmpq(1, 1 << 149)
HALF_MAX = fmpq(((1 << 24) - 1) << 103)  # half the largest binary32, (2^24 - 1) 2^104


def is_binary32(num: int, den: int) -> bool:
    """num / den (den > 0) is a finite binary32 value: m 2^s with m < 2^24, s >= -149, below
    2^128."""
    if num == 0:
        return True
    v = fmpq(num, den)
    num, den = abs(int(v.p)), int(v.q)
    if den & (den - 1):  # not dyadic
        return False
    tz = (num & -num).bit_length() - 1
    m, s = num >> tz, tz - (den.bit_length() - 1)
    return m < 1 << 24 and s >= -149 and m.bit_length() + s <= 128


def _binary32_params(graph: Graph, node: Node) -> None:
    for key in ("weight", "bias"):
        name = node.attrs.get(key)
        if name is None or graph._cache.get(("binary32", key, node.id)):  # (never "": graph.py)
            continue
        t = graph.param(name)
        bad = next((i for i, v in enumerate(t.nums) if not is_binary32(v, t.den)), None)
        if bad is not None:
            raise refuse(RULE, f"graph.{node.id}.{key}[{bad}]", f"expected binary32 values (a "
                         f"runtime computes with them), found {t.value(bad)}")
        graph._cache[("binary32", key, node.id)] = True


def _gamma(n: int, node: Node) -> fmpq:
    """gamma_n = n u / (1 - n u), for n u <= 1/2."""
    if n * U > fmpq(1, 2):
        raise refuse(RULE, f"graph.{node.id}", f"sums of {n} terms: too long for the binary32 "
                     "error bound used here (n u <= 1/2)")
    return n * U / (1 - n * U)


def _widen(y: Interval, err: list) -> Interval:
    """y's i-th interval widened by err[i] (rationals) on both sides."""
    lo, hi = [], []
    for i, e in enumerate(err):
        a, b = y.bounds(i)
        lo.append(a - e)
        hi.append(b + e)
    return _from_bounds(y.shape, lo, hi)


def _from_bounds(shape: tuple, lo: list, hi: list) -> Interval:
    nums, den = common_denominator(lo + hi)
    return Interval(shape, [int(v) for v in nums[:len(lo)]], [int(v) for v in nums[len(lo):]],
                    int(den))


def _magnitudes(x: Interval) -> list:
    """max(|lo_i|, |hi_i|) numerators over x.den."""
    return [max(abs(a), abs(b)) for a, b in zip(x.lo, x.hi, strict=True)]


def _affine(x: Interval, node: Node, graph: Graph) -> Interval:
    """linear or conv2d: the exact hull, widened by the bound for its k-product sums. The sums
    of magnitudes sum_i |W_ji| max|v_i| are the radii of the node on [-max|v|, max|v|]."""
    _binary32_params(graph, node)
    ev = semantics.linear if node.op == "linear" else semantics.conv2d
    y = ev(x, node, graph)
    mags = _magnitudes(x)
    spread = ev(Interval(x.shape, [-v for v in mags], mags, x.den), node, graph)
    shape = graph.param(node.attrs["weight"]).shape
    k = shape[-1] if node.op == "linear" else shape[1] * shape[2] * shape[3]
    b = graph.param(node.attrs["bias"]) if node.attrs.get("bias") is not None else None
    per = numel(node.shape[1:]) if node.op == "conv2d" else 1  # outputs per bias entry
    g, err = _gamma(k + 1, node), []
    for i in range(len(y.lo)):
        j = i // per if node.op == "conv2d" else i % shape[0]
        total = fmpq(spread.hi[i] - spread.lo[i], 2 * spread.den) + (
            fmpq(abs(b.nums[j]), b.den) if b is not None else 0)
        if total > HALF_MAX:
            raise refuse(RULE, f"graph.{node.id}", f"sum_i |W_ji| |v_i| + |b_j| reaches "
                         f"{approx_text(total)} at output {i}: a binary32 evaluation may "
                         "overflow")
        err.append(g * total + k * ETA)
    return _widen(y, err)


def _avgpool(x: Interval, node: Node) -> Interval:
    """A window's sum of at most c = kernel area terms, divided by its count (or times its
    rounded reciprocal, or each term scaled first, as a depthwise conv): within gamma_{c+1} of
    the exact mean of magnitudes, plus c 2^-149 for quotients or products that underflow; the
    means of magnitudes are the node's radii on [-max|v|, max|v|], and a sum of magnitudes is
    at most c times that."""
    y = semantics.avgpool2d(x, node)
    mags = _magnitudes(x)
    spread = semantics.avgpool2d(Interval(x.shape, [-v for v in mags], mags, x.den), node)
    c = node.attrs["kernel"][0] * node.attrs["kernel"][1]
    g, err = _gamma(c + 1, node), []
    for i in range(len(y.lo)):
        mean = fmpq(spread.hi[i] - spread.lo[i], 2 * spread.den)
        if c * mean > HALF_MAX:
            raise refuse(RULE, f"graph.{node.id}", f"a window's sum of magnitudes reaches "
                         f"{approx_text(c * mean)} at output {i}: a binary32 evaluation may "
                         "overflow")
        err.append(g * mean + c * ETA)
    return _widen(y, err)


def _add(a: Interval, b: Interval, node: Node) -> Interval:
    y = semantics.add(a, b, node.shape)
    err = []
    for i in range(len(y.lo)):
        top = max(abs(v) for v in y.bounds(i))
        if top > HALF_MAX:
            raise refuse(RULE, f"graph.{node.id}", f"|a + b| reaches {approx_text(top)} at "
                         f"element {i}: a binary32 evaluation may overflow")
        err.append(U * top)
    return _widen(y, err)


def enclosure(graph: Graph, x: tuple, node: str, path: str = "claim") -> Interval:
    """The enclosure of every binary32 evaluation of `node` at the input point x (rationals);
    `path` names the claim in refusals."""
    inp = graph.the_input(RULE, path)
    for i, v in enumerate(x):
        if not is_binary32(int(v.p), int(v.q)):
            raise refuse(RULE, f"{path}.point[{i}]", f"expected a binary32 value (what the "
                         f"runtime reads), found {v}")
    needed = semantics._ancestors(graph, node)
    values: dict[str, Interval] = {}
    for n in graph.nodes:
        if n.id not in needed:
            continue
        if n.op not in F32_OPS:
            raise refuse(RULE, f"graph.{n.id}", f"op {n.op!r} of node {n.id!r} has no binary32 "
                         f"enclosure in the kernel (supported: {', '.join(F32_OPS)})")
        args = [values[s] for s in n.inputs]
        if n.op == "input":
            nums, den = common_denominator(list(x))
            values[n.id] = semantics.point(Tensor(inp.shape, [int(v) for v in nums], int(den)))
        elif n.op in ("linear", "conv2d"):
            values[n.id] = _affine(args[0], n, graph)
        elif n.op == "add":
            values[n.id] = _add(args[0], args[1], n)
        elif n.op == "avgpool2d":
            values[n.id] = _avgpool(args[0], n)
        else:  # relu, maxpool2d (a maximum of binary32 values is one of them), flatten, reshape
            values[n.id] = semantics.eval_node(n, args, graph)
    return values[node]


def check_agreement(graph: Graph, claim: Claim, path: str = "claim") -> None:
    """Refuse unless every claimed value lies in the enclosure of `claim.node` at claim.point."""
    y = enclosure(graph, claim.point, claim.node, path)
    for j, v in enumerate(claim.values):
        if not is_binary32(int(v.p), int(v.q)):
            raise refuse(RULE, f"{path}.values[{j}]", f"expected a binary32 value (what a "
                         f"runtime returns), found {v}")
        lo, hi = y.bounds(j)
        if not lo <= v <= hi:
            raise refuse(RULE, f"{path}.values[{j}]", f"{approx_text(v, 9)} is outside the "
                         f"enclosure [{approx_text(lo, 9)}, {approx_text(hi, 9)}] of every "
                         "binary32 evaluation")
