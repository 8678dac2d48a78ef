"""Rules `crown` (backward linear bounds, Zhang et al. 2018 "CROWN"; slopes as in Xu et al. 2021
"alpha-CROWN") and `split` (branch and bound over input pieces and ReLU phases), replayed exactly.
Format: docs/crown_certificate.md.

Soundness in brief. The claim's node and its ancestors form a DAG over the graph's one input. For
a spec row c, walking the nodes backwards (reverse topological order) with lam = c on the claim
node, each node passes its coefficients to its inputs, summed where a node feeds several others:
through y = W x + b, const += lam.b and lam_x += lam W; through an add, lam goes to both inputs;
through batchnorm y = k (x - m) + b with k enclosed in [k_lo, k_hi], lam k_lo goes to x and the
rest is bounded by |lam| (k_hi - k_lo) max|x - m|. Through a relu with input z and certified
bounds [l, u], each lam_j >= 0 uses relu(z) >= alpha z (alpha in [0, 1]), lam_j < 0 uses
relu(z) <= s z + t (checked on [l, u]); stable neurons are exact. Through maxpool, lam_j >= 0 uses
y >= x_i (i: the window's largest lower bound), lam_j < 0 uses y <= max u (exact when x_i's lower
bound is above every other upper bound). In a leaf under relu splits sign * z_j >= 0, a
multiplier beta >= 0 adds -beta * sign to lam_z[j]: the objective drops by beta * sign * z_j >= 0
(beta-CROWN). Rounding keeps integers small: through a relu, the unstable columns' products
with slopes are rounded to integers (lam holding at least COEF_BITS bits), and after a
nonlinearity wide or very long coefficients are rounded to COEF_BITS bits; each time the error,
|lam - lam'| . max|z|, comes off the constant. At the input, min lam.x over the box is
lam.lo + (lam_i < 0) lam_i (hi_i - lo_i). So c.y >= that minimum + const on the whole domain.

On a chain of linear and relu nodes whose input is narrower than its layers (ACAS Xu) the same
bound is computed in another order, which costs less: each linear node's z is kept as exact
affine blocks, z = T x + B + sum_p P_p h_p[U_p], over the input, 1 and the outputs h_p of the
earlier relus' unstable neurons U_p (an active neuron passes z on and an inactive one passes 0,
both certified on the domain). A row c on z starts as c T, c B, c P_p; deepest first, each
relu's coefficients v on h_p[U_p] are relaxed as above and replaced by the blocks of the rows U_p
of z_p. With slopes shared by the rows this is exact, by integer matrix products:
v * slope = v alpha + min(v, 0) (s - alpha); with per-row slopes it rounds as above.
"""

from dataclasses import dataclass, field, replace

from flint import fmpq, fmpz, fmpz_mat

from kernel_checker import semantics
from kernel_checker.claims import Claim
from kernel_checker.enclosure import GRAPH_FUNCS, backward_smooth
from kernel_checker.errors import KernelError, refuse
from kernel_checker.exact import approx_text, common_denominator, decode_vector
from kernel_checker.graph import Graph, Node
from kernel_checker.semantics import Interval, _window_indices, batchnorm_channels, eval_node
from kernel_checker.tensor import lcm, numel

AFFINE_OPS = ("linear", "conv2d", "avgpool2d")
CROWN_OPS = (*AFFINE_OPS, "batchnorm", "add", "flatten", "reshape", "relu", "maxpool2d",
             *GRAPH_FUNCS)
UPPER_LINE_BITS = 16
COEF_BITS = 56  # coefficients are rounded to this many bits after each nonlinearity
_ZERO_Z, _ONE_Z = fmpz(0), fmpz(1)
_X, _ONE = ("x",), ("1",)  # the affine blocks' keys of the input and 1: never a node id (a str)


@dataclass
class Domain:
    """Where a leaf is checked: an input box, ReLU phase constraints (node -> index -> sign,
    sign -1 for z <= 0 and +1 for z >= 0) and bounds certified on a domain containing this one
    (a split's `intermediate` entries: node -> (lo, hi, den))."""

    box: Interval
    phases: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)


def ancestors(graph: Graph, target: str, rule: str) -> list[Node]:
    """`target` and its ancestors in graph (topological) order, the graph's input excluded;
    refuses ops outside CROWN_OPS."""
    key = ("ancestors", target, rule)
    if key in graph._cache:
        return graph._cache[key]
    if graph.by_id[target].op == "input":
        raise refuse(rule, "claim.node", f"{rule} needs at least one op between the input and the "
                     "claim's node; use ibp for claims about the input itself")
    inp = graph.the_input(rule, "claim").id
    need, stack = {target}, [target]
    while stack:
        for i in graph.by_id[stack.pop()].inputs:
            if i not in need:
                need.add(i)
                stack.append(i)
    nodes = [node for node in graph.nodes if node.id in need and node.id != inp]
    for node in nodes:
        where = f"node {node.id!r}"
        if node.op not in CROWN_OPS:
            raise refuse(rule, where, f"op {node.op!r} is not supported in {rule} replay; "
                         f"supported: {list(CROWN_OPS)}")
        if node.op == "linear" and len(node.shape) != 1:
            raise refuse(rule, where, "linear on a non-vector input is not supported in crown "
                         "replay; flatten first")
        if node.op == "add" and any(graph.by_id[i].shape != node.shape for i in node.inputs):
            raise refuse(rule, where, "add with broadcasting is not supported in crown replay")
    graph._cache[key] = nodes
    return nodes


def _clip(iv: Interval, lo: list, hi: list, den: int) -> Interval:
    d = lcm(iv.den, den)
    f1, f2 = d // iv.den, d // den
    new_lo = [max(a * f1, b * f2) for a, b in zip(iv.lo, lo, strict=True)]
    new_hi = [min(a * f1, b * f2) for a, b in zip(iv.hi, hi, strict=True)]
    return Interval(iv.shape, new_lo, new_hi, d)


def _apply_phases(iv: Interval, signs: dict) -> Interval:
    lo, hi = list(iv.lo), list(iv.hi)
    for j, sign in signs.items():
        if sign > 0:
            lo[j] = max(lo[j], 0)
        else:
            hi[j] = min(hi[j], 0)
    return Interval(iv.shape, lo, hi, iv.den)


def _step(graph: Graph, node: Node, values: dict, dom: Domain, certified: dict) -> bool:
    """One node's exact interval, intersected with its certified bounds and phases; False when
    it is empty (the domain holds no point)."""
    args = [values[i] for i in node.inputs]
    # equal inputs (by value) give the same interval: eval_node depends on nothing else
    last = graph._cache.get(("step", node.id))
    if last is not None and all(a is b or a == b for a, b in zip(last[0], args, strict=True)):
        x = last[1]
    else:
        x = eval_node(node, args, graph)
        graph._cache[("step", node.id)] = (args, x)
    # exact interval steps keep boxes nonempty: only clips and phases can empty one, so only
    # they are tested (an untested interval counts as nonempty: never fewer proof obligations)
    ok = True
    if node.id in certified:  # (leaves below one split share its bounds and often x)
        hit = graph._cache.get(("clip", node.id))
        if hit is None or hit[0] is not x or hit[1] is not certified[node.id]:
            c = _clip(x, *certified[node.id])
            hit = graph._cache[("clip", node.id)] = (x, certified[node.id], c, all(
                a <= b for a, b in zip(c.lo, c.hi, strict=True)))
        x, ok = hit[2], hit[3]
    if node.id in dom.phases:
        x = _apply_phases(x, dom.phases[node.id])
        ok = ok and all(x.lo[j] <= x.hi[j] for j in dom.phases[node.id])
    values[node.id] = x
    return ok


def forward(graph: Graph, nodes: list[Node], dom: Domain, certified: dict) -> dict | None:
    """Exact interval replay over `nodes` (from `ancestors`); None when the domain is empty."""
    values = {graph.the_input("crown", "claim").id: dom.box}
    return values if all(_step(graph, n, values, dom, certified) for n in nodes) else None


def _affine(graph: Graph, node: Node, in_shape: tuple) -> tuple:
    """(W as fmpz_mat, W den, b as a column fmpz_mat or None, b den, bits of the largest column
    sum of |W|): out = W in + b, flat."""
    key = ("affine", node.id)
    if key in graph._cache:
        return graph._cache[key]
    a = node.attrs
    n_in, n_out = numel(in_shape), numel(node.shape)
    bias = graph.param(a["bias"]) if a.get("bias") is not None else None
    w_abs = None
    if node.op == "linear":  # the matrices interval replay uses
        w, w_abs, w_den = semantics._weight_matrix(graph, a["weight"], n_out, n_in)
        b_nums = bias.nums if bias else None
    elif node.op == "conv2d":
        wt = graph.param(a["weight"])
        o, cg, kh, kw = wt.shape
        g = a["groups"]
        _, oh, ow = node.shape
        n = oh * ow
        wins = _window_indices(in_shape, (in_shape[0], oh, ow), (kh, kw), a["stride"],
                               a["padding"], a["dilation"])
        dense = [0] * (n_out * n_in)
        og = o // g
        for oc in range(o):
            gi = oc // og
            for ci in range(cg):
                cin = gi * cg + ci
                for t in range(kh * kw):
                    wv = wt.nums[(oc * cg + ci) * kh * kw + t]
                    if wv:
                        for p in range(n):
                            src = wins[cin * n + p][t]
                            if src is not None:
                                dense[(oc * n + p) * n_in + src] += wv
        w, w_den = fmpz_mat(n_out, n_in, dense), wt.den
        b_nums = [bias.nums[oc] for oc in range(o) for _ in range(n)] if bias else None
    else:  # avgpool2d
        wins = _window_indices(in_shape, node.shape, a["kernel"], a["stride"], a["padding"],
                               a["dilation"])
        full = a["kernel"][0] * a["kernel"][1]
        counts = [full if a["count_include_pad"] else sum(1 for i in w if i is not None)
                  for w in wins]
        w_den = 1
        for c in set(counts):
            w_den = lcm(w_den, c)
        dense = [0] * (n_out * n_in)
        for r, (win, c) in enumerate(zip(wins, counts, strict=True)):
            for src in win:
                if src is not None:
                    dense[r * n_in + src] += w_den // c
        w = fmpz_mat(n_out, n_in, dense)
        b_nums = None
    b = fmpz_mat(n_out, 1, b_nums) if b_nums is not None else None
    if w_abs is None:
        w_abs = fmpz_mat(n_out, n_in, [abs(v) for v in w.entries()])
    # |lam W| <= max|lam| * max column sum of |W|
    top = max((fmpz_mat(1, n_out, [1] * n_out) * w_abs).entries(), default=0)
    graph._cache[key] = (w, w_den, b, bias.den if bias else 1, int(top).bit_length())
    graph._cache[("abs", node.id)] = w_abs
    return graph._cache[key]


def _upper_lines(rule, path, relu_id, lo, hi, den, unstable, cert_upper) -> tuple:
    """Upper lines s z + t >= relu(z) on [l, u] for the unstable neurons, in order: (slope
    numerators and their denominator, intercept numerators and theirs); given and checked at
    both endpoints (relu is convex, so the endpoints suffice), or computed rounding outward."""
    if cert_upper is not None and not isinstance(cert_upper, dict):
        raise refuse(rule, f"{path}.upper", "expected an object keyed by relu node id")
    if cert_upper is None or relu_id not in cert_upper:
        # s = u / (u - l) rounded up (the line only rises on [l, u]), t = -s l rounded up
        scale = 1 << UPPER_LINE_BITS
        s_nums = [-((-hi[j] * scale) // (hi[j] - lo[j])) for j in unstable]
        return s_nums, scale, [-((v * lo[j]) // den) for v, j in zip(s_nums, unstable)], scale
    entry = cert_upper[relu_id]
    if not isinstance(entry, dict) or set(entry) != {"slope", "intercept"}:
        raise refuse(rule, f"{path}.upper.{relu_id}", "expected {slope, intercept}")
    n = len(lo)
    slopes = decode_vector(entry["slope"], f"{path}.upper.{relu_id}.slope", rule, n)
    ts = decode_vector(entry["intercept"], f"{path}.upper.{relu_id}.intercept", rule, n)
    for j in unstable:
        lj, uj, s, t = fmpq(lo[j], den), fmpq(hi[j], den), slopes[j], ts[j]
        if s * lj + t < 0 or s * uj + t < uj:
            raise refuse(rule, f"{path}.upper.{relu_id}.slope[{j}]", f"the line {s}*z + {t} "
                         f"dips below relu on [{approx_text(lj)}, {approx_text(uj)}]")
    return (*common_denominator([slopes[j] for j in unstable]),
            *common_denominator([ts[j] for j in unstable]))


def _alphas(rule, path, cert_alpha, relu_id, n, rows, lo, hi, den) -> tuple[list, int]:
    """Per-row lower slopes for one relu as integers over one denominator: (`rows` lists of n,
    the very same list for every row when shared; den). A relu's slopes are a list (shared)
    or a list of per-row lists, of rationals or, in {"den": d, "values": ...}, integers over d."""
    if cert_alpha is not None and not isinstance(cert_alpha, dict):
        raise refuse(rule, f"{path}.alpha", "expected an object keyed by relu node id")
    if cert_alpha is None or relu_id not in cert_alpha:
        return [[0 if -lo[j] >= hi[j] else 1 for j in range(n)]] * rows, 1
    value, p, d = cert_alpha[relu_id], f"{path}.alpha.{relu_id}", None
    if isinstance(value, dict):
        if set(value) != {"den", "values"}:
            raise refuse(rule, p, f"expected {{den, values}}, found keys {sorted(value)}")
        d, value, p = _den(value["den"], f"{p}.den", rule), value["values"], f"{p}.values"
    per_row = isinstance(value, list) and bool(value) and isinstance(value[0], list)
    if per_row and len(value) != rows:
        raise refuse(rule, p, f"expected {rows} per-row lists, found {len(value)}")
    table = list(value) if per_row else [value]
    for r, vec in enumerate(table):
        where = f"{p}[{r}]" if per_row else p
        if d is None:
            table[r] = vec = decode_vector(vec, where, rule, n)
        elif not isinstance(vec, list) or len(vec) != n:
            raise refuse(rule, where, f"expected {n} integers, found {repr(vec)[:60]}")
        if d is not None and set(map(type, vec)) == {int} and min(vec) >= 0 and max(vec) <= d:
            continue  # (the common case at C speed; else the first bad value is named)
        bad = next((j for j, v in enumerate(vec) if not (0 <= v <= 1 if d is None else
                                                         type(v) is int and 0 <= v <= d)), None)
        if bad is not None:
            raise refuse(rule, f"{where}[{bad}]", "expected a slope in [0, 1], found " + (
                f"{vec[bad]}" if d is None else f"{vec[bad]!r} over {d}"))
    if d is None:  # rationals: integers over their common denominator
        nums, d = common_denominator([a for vec in table for a in vec])
        table = [nums[r * n:(r + 1) * n] for r in range(len(table))]
    return (table if per_row else table * rows), d


def _plus(const: list, ints, factor: fmpq) -> list:
    """The rows' constants are kept as terms (integers per row: a list or a rows x 1 matrix,
    factor), summed at the end."""
    return [*const, (ints, factor)]


def _values(const: list, rows: int, raw: bool = False) -> list[fmpq] | tuple:
    """Each row's constant: sum of ints[r] * factor over the terms (ints None: 1 for every
    row), over the terms' common denominator (fmpz arithmetic throughout: converting to
    Python integers costs more than the sums); `raw`: (numerators, that den) instead."""
    den = _ONE_Z
    for _, f in const:
        q = f.q
        if q != 1 and den % q:
            den = den * q // den.gcd(q)
    every, sums = _ZERO_Z, None
    for ints, f in const:
        m = f.p * (den // f.q)
        if ints is None:
            every += m
        else:
            col = (ints if isinstance(ints, fmpz_mat) else fmpz_mat(rows, 1, ints)) * m
            sums = col if sums is None else sums + col
    nums = [every] * rows if sums is None else [every + v for v in sums.entries()]
    return (nums, den) if raw else [fmpq(v, den) for v in nums]


def _relu_back(node: Node, z: Interval, mat: fmpz_mat, bits: int, const: list, sc: fmpq,
               cert: dict, rule: str, path: str) -> tuple[list, fmpq, list, int]:
    """Coefficients on relu(z) to coefficients on z: (parts, scale, const, bits), the
    coefficients being the sum of left * right over parts (left: rows x k, right: k x n, a
    selection of z's neurons). Active neurons are kept by a selection product; only unstable
    columns are looked at entry by entry, their products with the slopes rounded to integers
    (the error, half a unit per entry times max|z_j|, comes off every row's constant)."""
    n, rows = len(z.lo), mat.nrows()
    if bits < COEF_BITS:  # enough bits that rounding to integers costs ~2^-COEF_BITS
        mat, sc, bits = mat * (1 << (COEF_BITS - bits)), sc / (1 << (COEF_BITS - bits)), COEF_BITS
    unstable = [j for j in range(n) if z.lo[j] < 0 < z.hi[j]]
    active = [j for j in range(n) if z.lo[j] >= 0]  # relu(z) = z
    s, t_nums, t_den, grow, lows, shared = _slopes(node.id, z, unstable, rows, cert, rule, path)
    if rows == 1:  # entries placed directly: for one row the selections cost more than they save
        v = mat.entries()
        cols, out = [v[j] for j in unstable], [0] * n
        for j in active:
            out[j] = v[j]
        for j, x in zip(unstable, _products(cols, 1, s, lows, shared)):
            out[j] = x
        parts = [(fmpz_mat(1, n, out), None)]
    else:
        keep = _pick(n, active)
        parts = [(mat * keep, keep.transpose())]  # inactive and unstable columns are 0 here
        if unstable:
            pick = _pick(n, unstable)
            cols = (mat * pick).entries()
            parts.append((fmpz_mat(rows, len(unstable), _products(cols, rows, s, lows, shared)),
                          pick.transpose()))
    if not unstable:  # (what cert gives for this relu is checked all the same)
        return parts, sc, const, bits
    extra = _intercepts(rows, len(unstable), cols, t_nums)[1]
    err = sc * sum(max(-z.lo[j], z.hi[j]) for j in unstable) / (2 * z.den)
    return parts, sc, _less(_plus(const, extra, sc / t_den), err), bits + grow


def _slopes(relu_id: str, z: Interval, unstable: list, rows: int, cert: dict, rule: str,
            path: str, memo: dict | None = None) -> tuple:
    """The unstable neurons' upper slopes (numerators, den), upper-line intercepts over t_den,
    t_den, bits the slopes may add, lower slopes ((one list per row, or one shared list), den)
    and whether they are shared. `memo` keeps the lines and default slopes, which depend on z
    alone, for the relus cert gives none for."""
    memo = {} if memo is None else memo
    given = [k for k in ("upper", "alpha") if cert.get(k) is not None and (
        not isinstance(cert[k], dict) or relu_id in cert[k])]  # (a malformed one is refused)
    ups = None if "upper" in given else memo.get(("upper", relu_id))
    if ups is None:
        s_nums, s_den, t_nums, t_den = _upper_lines(rule, path, relu_id, z.lo, z.hi, z.den,
                                                    unstable, cert.get("upper"))
        grow = max(0, int(-(-max(s_nums, default=0) // s_den)).bit_length() - 1)
        ups = ((s_nums, s_den), t_nums, t_den, grow)
        if "upper" not in given:  # (a certificate's own lines never replace the defaults)
            memo[("upper", relu_id)] = ups
    lows = None if "alpha" in given else memo.get(("alpha", relu_id))
    if lows is None:
        alphas, den = _alphas(rule, path, cert.get("alpha"), relu_id, len(z.lo), rows, z.lo,
                              z.hi, z.den)
        # (only the first and last rows are compared: every slope in [0, 1] is a valid lower
        # line, so a table read as shared is sound whatever its other rows hold)
        shared = alphas[0] is alphas[-1]
        lows = ([[alphas[r][j] for j in unstable] for r in (
            (0,) if shared else range(rows))], den), shared
        if "alpha" not in given:
            memo[("alpha", relu_id)] = lows
    return *ups, *lows


def _intercepts(rows: int, k: int, cols: list, t_nums: list) -> tuple[fmpz_mat, fmpz_mat]:
    """(min(a, 0), per row sum of min(v, 0) t: negative v take the intercepts t), `cols` being
    the entries of a (rows x k)."""
    neg = fmpz_mat(rows, k, [v if v < _ZERO_Z else _ZERO_Z for v in cols])
    return neg, neg * fmpz_mat(len(t_nums), 1, t_nums)


def _products(cols: list, rows: int, s: list, lows: list, shared: bool) -> list:
    """The unstable neurons' coefficients `cols` (rows x k, row-major, on relu(z)) times their
    slopes (upper `s`, lower `lows` from `_slopes`), rounded to integers."""
    (s_nums, sd), (table, ad) = s, lows
    ups = [(2 * v, sd, 2 * sd) for v in s_nums] * rows
    lows = [(2 * v, ad, 2 * ad) for row in table for v in row]
    # v >= 0 takes the lower line alpha z, v < 0 the upper line s z + t: v * slope (p/q)
    # rounded to the nearest integer, (2 v p + q) // 2q
    return [(v * a2 + aq) // aq2 if v > 0 else (v * s2 + sq) // sq2 for v, (a2, aq, aq2),
            (s2, sq, sq2) in zip(cols, lows * rows if shared else lows, ups)]


def _maxpool_back(node: Node, z: Interval, entries: list, rows: int, const: list,
                  sc: fmpq) -> tuple[list, fmpq, list]:
    """Coefficients on maxpool(z) to coefficients on z (relaxation in the module docstring)."""
    a = node.attrs
    wins = [[i for i in w if i is not None] for w in _window_indices(
        z.shape, node.shape, a["kernel"], a["stride"], a["padding"], a["dilation"])]
    n_in, n_out = len(z.lo), len(wins)
    pick, cap, exact = [], [], []
    for w in wins:
        j = max(w, key=lambda i: z.lo[i])  # the first of the largest lower bounds
        pick.append(j)
        cap.append(max(z.hi[i] for i in w))
        exact.append(all(z.lo[j] >= z.hi[i] for i in w if i != j))
    out, extra = [0] * (rows * n_in), []
    for r in range(rows):
        acc, base = 0, r * n_in
        for o, v in enumerate(entries[r * n_out:(r + 1) * n_out]):
            if v >= 0 or exact[o]:
                out[base + pick[o]] += v
            else:
                acc += v * cap[o]
        extra.append(acc)
    return out, sc, _plus(const, extra, sc / z.den)


def _batchnorm_back(graph: Graph, node: Node, z: Interval, entries: list, rows: int,
                    const: list, sc: fmpq) -> tuple[list, fmpq, list]:
    """y = k (x - m) + beta, k in [k_lo, k_hi]: v y >= v k_lo x + v (beta - k_lo m)
    - |v| (k_hi - k_lo) max|x - m|."""
    chans = batchnorm_channels(node, graph)
    n = len(z.lo)
    per = n // len(chans)
    k_nums, k_den = common_denominator([k_lo for k_lo, _, _, _ in chans])
    t_nums, t_den = common_denominator([b - k_lo * m for k_lo, _, m, b in chans])
    w = []
    for i in range(n):
        k_lo, k_hi, m, _ = chans[i // per]
        w.append((k_hi - k_lo) * max(abs(fmpq(z.lo[i], z.den) - m), abs(fmpq(z.hi[i], z.den) - m)))
    w_nums, w_den = common_denominator(w)
    mat = fmpz_mat(rows, n, entries)
    t_col = fmpz_mat(n, 1, [t_nums[i // per] for i in range(n)])
    const = _plus(const, (mat * t_col).entries(), sc / t_den)
    err = fmpz_mat(rows, n, [abs(v) for v in entries]) * fmpz_mat(n, 1, w_nums)
    const = _plus(const, [-v for v in err.entries()], sc / w_den)
    out = [v * k_nums[(i % n) // per] for i, v in enumerate(entries)]
    return out, sc / k_den, const


def _shift_for(top) -> int:
    """How far to shift integers of magnitude <= top to keep COEF_BITS bits."""
    return max(0, int(fmpz(top).bit_length()) - COEF_BITS)


def _round_err(sc: fmpq, sh: int, z: Interval) -> fmpq:
    """Rounding coefficients (times sc) on z to multiples of 2^sh (to nearest) changes lam.z by at
    most half a unit per entry times max|z_j|."""
    return sc * ((1 << sh) >> 1) * sum(max(-a, b) for a, b in zip(z.lo, z.hi)) / z.den


def _less(const: list, err: fmpq) -> list:
    return [*const, (None, -err)] if err else const


def _shrink(out, rows: int, sc: fmpq, const: list, z: Interval) -> tuple:
    """Coefficients on z (a matrix or flat list) rounded to COEF_BITS bits, the error taken off
    every row's constant: (matrix, scale, const, bits)."""
    if isinstance(out, fmpz_mat):
        out = out.entries()
    sh = _shift_for(max(max(out, default=0), -min(out, default=0)))
    half = (1 << sh) >> 1
    mat = fmpz_mat(rows, len(z.lo), [(v + half) >> sh for v in out] if sh else out)
    return mat, sc * (1 << sh), _less(const, _round_err(sc, sh, z)), COEF_BITS


# Every scale in these (matrix, scale) pairs is positive (1/den of weights and biases, common
# denominators, powers of 2), so the signs the relaxation and the box minimum read off a
# matrix's entries are the signs of the values.
def _sum(m1: fmpz_mat, s1: fmpq, b1: int, m2: fmpz_mat, s2: fmpq, b2: int) -> tuple:
    """m1 * s1 + m2 * s2 as (matrix, scale, bits)."""
    if s1 == s2:
        return m1 + m2, s1, max(b1, b2) + 1
    ratio = s1 / s2  # usually one scale is a multiple of the other (dyadic weights and slopes)
    if ratio.q == 1:
        common, f1, f2 = s2, ratio.p, _ONE_Z
    elif ratio.p == 1:
        common, f1, f2 = s1, _ONE_Z, ratio.q
    else:
        common = fmpq(s1.p.gcd(s2.p), lcm(int(s1.q), int(s2.q)))
        f1, f2 = (s1 / common).p, (s2 / common).p  # (integers: common divides both)
    return ((m1 if f1 == 1 else m1 * f1) + (m2 if f2 == 1 else m2 * f2), common,
            max(b1 + f1.bit_length(), b2 + f2.bit_length()) + 1)


def _total(parts: list) -> fmpz_mat:
    """The sum of left * right over the parts (right None: left alone)."""
    first = parts[0][0] if parts[0][1] is None else parts[0][0] * parts[0][1]
    return sum((left * right for left, right in parts[1:]), first)


def _give(lam: dict, nid: str, mat: fmpz_mat, sc: fmpq, bits: int) -> None:
    """Add coefficients (mat * sc, entries below 2^bits) on node nid to those already there."""
    lam[nid] = _sum(*lam[nid], mat, sc, bits) if nid in lam else (mat, sc, bits)


def _betas(cert: dict, dom: Domain, rows: int, rule: str, path: str) -> dict:
    """Split multipliers (beta-CROWN, Wang et al. 2021): node -> [(index, sign, values)], one
    value >= 0 per spec row, each for a split constraint sign * z[index] >= 0 of the domain."""
    value = cert.get("beta", [])
    if not isinstance(value, list):
        raise refuse(rule, f"{path}.beta", "expected a list of {node, index, values}")
    out: dict = {}
    for i, entry in enumerate(value):
        p = f"{path}.beta[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"node", "index", "values"}:
            raise refuse(rule, p, "expected {node, index, values}")
        nid, j = entry["node"], entry["index"]
        signs = dom.phases.get(nid, {}) if isinstance(nid, str) else {}
        if type(j) is not int or j not in signs:
            raise refuse(rule, p, f"no split constraint on {nid!r}[{j!r}] in this domain "
                         "(a beta multiplier belongs to a relu split above the leaf)")
        vals = decode_vector(entry["values"], f"{p}.values", rule, rows)
        for k, v in enumerate(vals):
            if v < 0:
                raise refuse(rule, f"{p}.values[{k}]", f"expected a multiplier >= 0, found {v}")
        out.setdefault(nid, []).append((j, signs[j], vals))
    return out


def _beta_term(terms: list, rows: int, n: int) -> tuple:
    """-sum beta * sign * e_index as (matrix, scale, bits): added to the coefficients on the
    constrained node, it subtracts beta * (sign * z) >= 0 from every row's objective."""
    nums, den = common_denominator([v for _, _, vals in terms for v in vals])
    mat = fmpz_mat(rows, n)
    for t, (j, sign, _) in enumerate(terms):
        for r in range(rows):
            mat[r, j] -= sign * nums[t * rows + r]
    return mat, fmpq(1, den), max(int(abs(v)).bit_length() for v in nums)


def _start(rows, n: int) -> tuple:
    """Spec rows as (matrix, scale, bits): rational rows over a common denominator, or an
    fmpz_mat of unit rows."""
    if isinstance(rows, fmpz_mat):
        return rows, fmpq(1), 1
    nums, den = common_denominator([fmpq(v) for r in rows for v in r])
    top = max(max(nums, default=0), -min(nums, default=0))
    return fmpz_mat(len(rows), n, nums), fmpq(1, den), int(top).bit_length()


_BOX: list = [None, None, None]  # the last box concretised over, its lo and widths as columns


def _concretise(mat: fmpz_mat, sc: fmpq, const: list, box: Interval, raw: bool = False):
    """Each row's minimum of mat * sc . x over the box, plus its constant (`_values`)."""
    return _values(_plus(const, _mins(mat, box), sc / box.den), mat.nrows(), raw)


def _mins(mat: fmpz_mat, box: Interval) -> fmpz_mat:
    """Each row's minimum of mat . x over the box, over box.den (a column)."""
    n_in = len(box.lo)
    if _BOX[0] is not box:  # relu-split leaves share their box
        _BOX[:] = box, fmpz_mat(n_in, 1, box.lo), fmpz_mat(n_in, 1, [
            b - a for a, b in zip(box.lo, box.hi, strict=True)])
    neg = fmpz_mat(mat.nrows(), n_in, [v if v < _ZERO_Z else _ZERO_Z for v in mat.entries()])
    return mat * _BOX[1] + neg * _BOX[2]


def _unshaped(graph: Graph, nid: str) -> str:
    """The node nid is (the same flat vector) behind flatten and reshape nodes."""
    while graph.by_id[nid].op in ("flatten", "reshape"):
        nid = graph.by_id[nid].inputs[0]
    return nid


def _flush(batch: list) -> None:
    """Conclude the leaves deferred to `batch` (mat, w, scale, const, box, claim): the rows of
    those with the same w and box stacked into one product, the very values each leaf alone
    would give (products of one row by a wide w cost several times more per row)."""
    groups: dict = {}
    for item in batch:
        groups.setdefault((id(item[1]), id(item[4])), []).append(item)
    for items in groups.values():
        w, box = items[0][1], items[0][4]
        stack = fmpz_mat(sum(m.nrows() for m, *_ in items), w.nrows(),
                         [v for m, *_ in items for v in m.entries()])
        mins, r = _mins(stack * w, box).entries(), 0
        for mat, _, sc, const, _, claim in items:
            k = mat.nrows()
            conclude(claim, _values(_plus(const, mins[r:r + k], sc / box.den), k), "crown")
            r += k
    batch.clear()


def backward_lower_bounds(graph: Graph, nodes: list[Node], values: dict, dom: Domain,
                          rows: list, cert: dict, rule: str, path: str,
                          defer: list | None = None) -> list[fmpq] | None:
    """Exact CROWN lower bounds of each spec row (over the last node) on the domain; `rows` is
    a list of rational rows or an fmpz_mat of unit rows. With `defer` (a list), a last step
    that is an affine node on the input is appended to it instead (for `_flush`): None."""
    rows = _start(rows, numel(nodes[-1].shape))
    n_rows = rows[0].nrows()
    lam = {nodes[-1].id: rows}
    const = [([0] * n_rows, fmpq(0))]
    betas = _betas(cert, dom, n_rows, rule, path)
    uses: dict = {}
    for node in nodes:
        for i in node.inputs:
            uses[i] = uses.get(i, 0) + 1
    inp = graph.the_input(rule, path).id
    for node in reversed(nodes):
        if node.id not in lam:  # not an ancestor of the last node
            continue
        if node.id in betas:
            _give(lam, node.id, *_beta_term(betas[node.id], n_rows, numel(node.shape)))
        mat, sc, bits = lam.pop(node.id)
        x_id = node.inputs[0]
        z = values[x_id]
        if node.op in ("flatten", "reshape", "add"):
            for i in node.inputs:
                _give(lam, i, mat, sc, bits)
            continue
        if node.op in AFFINE_OPS:
            w, w_den, b, b_den, w_bits = _affine(graph, node, z.shape)
            if b is not None:
                const = _plus(const, (mat * b).entries(), sc / b_den)
            if defer is not None and not lam and _unshaped(graph, x_id) == inp:  # the last step
                return defer.append((mat, w, sc / w_den, const, dom.box))
            _give(lam, x_id, mat * w, sc / w_den, bits + w_bits)
            continue
        if node.op == "relu":
            parts, sc, const, bits = _relu_back(node, z, mat, bits, const, sc, cert, rule,
                                                path)
            src = graph.by_id[x_id]
            # round when the coefficients outgrow COEF_BITS on a wide matrix or a single row
            # (fast products next) or outgrow 10 COEF_BITS on any: a speed choice, the error is
            # charged either way
            if bits > COEF_BITS and (n_rows * len(z.lo) >= 1 << 14 or n_rows == 1
                                     or bits > 10 * COEF_BITS):
                mat, sc, const, bits = _shrink(_total(parts), n_rows, sc, const, z)
            elif src.op in AFFINE_OPS and uses[x_id] == 1 and x_id not in betas and n_rows > 2:
                # z = W x + b feeds only this relu: (sum left right) W = sum left (right W), for
                # several rows (for one or two the selections' products cost more than they save)
                w, w_den, b, b_den, w_bits = _affine(graph, src, values[src.inputs[0]].shape)
                if b is not None:
                    const = _plus(const, _total([(lf, rt * b) for lf, rt in parts]).entries(),
                                  sc / b_den)
                _give(lam, src.inputs[0], _total([(lf, rt * w) for lf, rt in parts]),
                      sc / w_den, bits + w_bits)
                continue
            else:
                mat = _total(parts)
            _give(lam, x_id, mat, sc, bits)
            continue
        entries = mat.entries()
        if node.op == "maxpool2d":
            out, sc, const = _maxpool_back(node, z, entries, n_rows, const, sc)
        elif node.op == "batchnorm":
            out, sc, const = _batchnorm_back(graph, node, z, entries, n_rows, const, sc)
        else:
            out, sc, extra = backward_smooth(node.op, z.lo, z.hi, z.den, entries, sc, n_rows)
            const = _plus(const, extra, sc)
        mat, sc, const, bits = _shrink(out, n_rows, sc, const, z)
        _give(lam, x_id, mat, sc, bits)
    if inp not in lam:
        raise refuse(rule, path, f"node {nodes[-1].id!r} does not depend on the input")
    mat, sc, _ = lam[inp]
    # concretise over the input box: min lam.x = lam.lo + sum over lam_i < 0 of lam_i (hi - lo)
    return _concretise(mat, sc, const, dom.box)


def spec_rows(claim: Claim, n_out: int) -> list:
    """The rows whose lower bounds decide the claim (docs/crown_certificate.md)."""
    if claim.kind == "linear_bound":
        return [list(r) for r in claim.rows]
    if claim.kind == "bounds":
        eye = [[fmpq(1) if i == j else fmpq(0) for j in range(n_out)] for i in range(n_out)]
        return eye + [[-v for v in row] for row in eye]
    return [list(row) for poly in claim.unsafe for row in poly.a]


def conclude(claim: Claim, lows: list, rule: str) -> None:
    """The claim follows from the rows' lower bounds; else a KernelError naming the field."""
    if claim.kind == "linear_bound":
        for i, (m, d) in enumerate(zip(lows, claim.rhs, strict=True)):
            if m < d:
                raise refuse(rule, f"claim.rhs[{i}]", f"claimed bound {d} is above the kernel's "
                             f"lower bound {approx_text(m)}")
    elif claim.kind == "bounds":
        n = len(claim.lo)
        for i in range(n):
            if lows[i] < claim.lo[i]:
                raise refuse(rule, f"claim.lo[{i}]", f"claimed lower bound {claim.lo[i]} is "
                             f"above the kernel's bound {approx_text(lows[i])}")
            if -lows[n + i] > claim.hi[i]:
                raise refuse(rule, f"claim.hi[{i}]", f"claimed upper bound {claim.hi[i]} is "
                             f"below the kernel's bound {approx_text(-lows[n + i])}")
    elif claim.kind == "unsat":
        k = 0
        for p, poly in enumerate(claim.unsafe):
            gaps = [lows[k + i] - b for i, b in enumerate(poly.b)]
            k += len(poly.b)
            if max(gaps) <= 0:
                raise refuse(rule, f"claim.unsafe[{p}]", f"polytope {p} is not excluded: the "
                             f"best row has lower bound - b = {approx_text(max(gaps))} <= 0")
    else:
        raise refuse(rule, "claim.kind", f"rule {rule} cannot conclude a {claim.kind} claim")


def _keys(cert, rule, path, allowed):
    if not isinstance(cert, dict):
        raise refuse(rule, path, "expected a certificate object")
    extra = set(cert) - set(allowed) - {"rule"}
    if extra:
        raise refuse(rule, path, f"unexpected keys {sorted(extra)}")


def _relu_keys(graph: Graph, claim: Claim, cert: dict, path: str) -> None:
    """alpha and upper are keyed by relu node ids of the claim's ancestors (a key naming any
    other node would be read by nothing)."""
    relus = graph._cache.get(("relus", claim.node))
    if relus is None:
        relus = graph._cache[("relus", claim.node)] = {
            n.id for n in ancestors(graph, claim.node, "crown") if n.op == "relu"}
    for key in ("alpha", "upper"):
        extra = set(cert[key]) - relus if isinstance(cert.get(key), dict) else set()
        if extra:
            raise refuse("crown", f"{path}.{key}", f"expected relu node ids among "
                         f"{sorted(relus)}, found {sorted(extra)}")


def _chain(graph: Graph, nodes: list[Node]) -> dict | None:
    """For nodes [flatten | reshape]* linear (relu linear)*, each fed by the one before, the
    input no wider than any hidden linear (the blocks are hidden width x input width): each
    linear's relu ({linear id: relu id}, the last linear None); else None."""
    key = ("chain", nodes[-1].id)
    if key not in graph._cache:
        ops = [node.op for node in nodes]
        lead = next((i for i, op in enumerate(ops) if op not in ("flatten", "reshape")), 0)
        body = ops[lead:]
        ok = (all(node.inputs == (prev.id,) for prev, node in zip(nodes, nodes[1:])) and
              len(body) % 2 == 1 and all(op == ("linear", "relu")[i % 2] for i, op in
                                         enumerate(body)) and
              all(numel(graph.the_input("crown", "claim").shape) <= numel(n.shape)
                  for n in nodes[lead:-1] if n.op == "linear"))
        graph._cache[key] = {n.id: (nodes[i + 1].id if i + 1 < len(nodes) else None)
                             for i, n in enumerate(nodes) if n.op == "linear"} if ok else None
    return graph._cache[key]


def _paths(graph: Graph, node: Node, values: dict, state: dict) -> None:
    """z = node(x) as exact affine blocks over the box input x (_X), 1 (_ONE) and the outputs of
    the earlier relus' unstable neurons (keyed by the relu's input): active neurons pass z on,
    inactive ones pass 0 (both certified on the domain), unstable ones are the variables."""
    paths, unstable = state["paths"], state["unstable"]
    prev = state.get("last")
    w, w_den, b, b_den, _ = _affine(graph, node, graph.by_id[node.inputs[0]].shape)
    bias = (b if b is not None else fmpz_mat(numel(node.shape), 1), fmpq(1, b_den), 0)
    state["last"] = node.id
    if prev is None:
        paths[node.id] = {_X: (w, fmpq(1, w_den), 0), _ONE: bias}
        return
    z = values[prev]
    n = len(z.lo)
    act = bytes(1 if v >= 0 else 0 for v in z.lo)  # W D: W with inactive, unstable columns 0
    memo = graph._cache.setdefault("wd", {})  # (leaves often share a relu's active neurons)
    wd = memo.get((node.id, act))
    if wd is None:
        size = memo.get("entries", 0) + w.nrows() * n
        if size > MAX_WD_ENTRIES:
            memo.clear()
            size = w.nrows() * n
        memo["entries"] = size
        wd = memo[(node.id, act)] = w * _diag(act)
    blocks = {key: (wd * m, sc / w_den, 0) for key, (m, sc, _) in paths[prev].items()}
    blocks[_ONE] = _sum(*blocks[_ONE], *bias)
    unstable[prev] = [j for j in range(n) if z.lo[j] < 0 < z.hi[j]]
    if unstable[prev]:
        pick = _pick(n, unstable[prev])
        blocks[prev] = (w * pick, fmpq(1, w_den), 0)
        state["memo"][("abs", node.id)] = graph._cache[("abs", node.id)] * pick  # over w_den
    paths[node.id] = blocks


MAX_WD_ENTRIES = 1 << 21  # W D products kept for later leaves: their entries, all told


def _pick(n: int, cols: list) -> fmpz_mat:
    """The n x len(cols) matrix selecting cols."""
    pick = fmpz_mat(n, len(cols))
    for c, j in enumerate(cols):
        pick[j, c] = 1
    return pick


def _diag(values: list) -> fmpz_mat:
    out = fmpz_mat(len(values), len(values))
    for j, v in enumerate(values):
        out[j, j] = v
    return out


def _diags(memo: dict, p: str, lows: tuple, s: tuple) -> tuple:
    """diag(alpha), diag(s - alpha) over their common denominator (shared lower slopes alpha
    and upper slopes s, integers over a den each), kept in memo with the very slope tuples they
    came from (reused only for those same tuples)."""
    # (keyed by id(): the hit holds lows and s themselves, so no other object takes their ids)
    hit = memo.get(("diags", p, id(lows)))
    if hit is None or hit[0] is not lows or hit[1] is not s:
        den = lcm(lows[1], s[1])
        alpha = [v * (den // lows[1]) for v in lows[0][0]]
        hit = (lows, s, _diag(alpha), _diag([y * (den // s[1]) - x for x, y in zip(alpha, s[0])]),
               den)
        memo[("diags", p, id(lows))] = hit
    return hit[2:]


def chain_lower_bounds(state: dict, nid: str, values: dict, box: Interval, rows, cert: dict,
                       rule: str, path: str, raw: bool = False) -> list[fmpq] | tuple:
    """backward_lower_bounds on a chain (`_chain`), with the same relaxations, from the affine
    blocks of `_paths`: a row's coefficients on each relu's unstable outputs are relaxed
    (deepest first) and replaced by the blocks of that relu's input. Unit rows come with |R|
    (`_certify`): on the first relu, v = R W[:, U] and 2 min(v, 0) = v - |R| |W|[:, U]."""
    rows, absrows = rows if isinstance(rows, tuple) else (rows, None)
    mat, s0, _ = _start(rows, state["paths"][nid][_X][0].nrows())
    r = mat.nrows()
    acc = {key: (mat * m, s0 * sc, 0) for key, (m, sc, _) in state["paths"][nid].items()}
    const: list = []
    order = list(state["paths"])
    for i, p in enumerate(reversed(order[:order.index(nid)])):
        z, uns = values[p], state["unstable"][p]
        s, t_nums, t_den, _, lows, shared = _slopes(state["relu"][p], z, uns, r, cert, rule,
                                                    path, state["memo"])
        if p not in acc:  # no unstable neuron (what cert gives for its relu is checked above)
            continue
        a, sa, _ = acc.pop(p)
        k = len(uns)
        # (absrows: R's rows are unit rows +-e_j from _certify and s0 = 1, so at i == 0 acc[p]
        # is still R W[:, U] over w_den, and absrows * |W|[:, U] is |a|)
        if not i and absrows is not None and shared:  # a = R W[:, U]; doubled, as neg is
            neg, a, sa = a - absrows * state["memo"][("abs", nid)], a * 2, sa / 2
            extra = neg * fmpz_mat(k, 1, t_nums)
        else:
            cols = a.entries()
            if not shared:
                sh = COEF_BITS - int(fmpz(max(max(cols), -min(cols))).bit_length())
                if sh > 0:  # enough bits that rounding to integers costs ~2^-COEF_BITS
                    a, cols, sa = a * (1 << sh), [v << sh for v in cols], sa / (1 << sh)
            neg, extra = _intercepts(r, k, cols, t_nums)
        const = _plus(const, extra, sa / t_den)
        if shared:  # slopes per neuron: v slope = v alpha + min(v, 0) (s - alpha) exactly
            alpha, rise, den = _diags(state["memo"], p, lows, s)
            delta, sa = a * alpha + neg * rise, sa / den
        else:
            const = _less(const, sa * sum(max(-z.lo[j], z.hi[j]) for j in uns) / (2 * z.den))
            delta = fmpz_mat(r, k, _products(cols, r, s, lows, shared))
        sel = None if p in state["rows"] else _pick(len(z.lo), uns).transpose()
        if sel is not None and not i and state["relu"][nid] is None and r < k:  # the claim
            # node's rows alone pass this relu: spread over its outputs, they take its blocks
            left, blocks = delta * sel, state["paths"][p]
        else:
            if sel is not None:
                state["rows"][p] = {key: (sel * m, sc, 0) for key, (m, sc, _) in
                                    state["paths"][p].items()}
            left, blocks = delta, state["rows"][p]
        for key, (m, sc, _) in blocks.items():
            _give(acc, key, left * m, sa * sc, 0)
    one, s1, _ = acc.pop(_ONE)
    return _concretise(*acc.pop(_X)[:2], _plus(const, one, s1), box, raw)


def _route(graph: Graph, nodes: list[Node], cert: dict, entries: list) -> dict | None:
    """A chain without split multipliers, its entries on linear nodes, takes the affine-block
    route: its (empty) state. (Any beta but an empty list goes the general route, which reads
    it: a malformed one is refused there, not ignored.)"""
    if _chain(graph, nodes) is None or any(d.get("beta", []) != [] for d in (cert, *entries)) or (
            any(graph.by_id[e["node"]].op != "linear" for e in entries)):
        return None
    return {"paths": {}, "unstable": {}, "rows": {}, "memo": {}, "relu": _chain(graph, nodes)}


def lower_bounds(graph: Graph, nodes: list[Node], values: dict, dom: Domain, rows, cert: dict,
                 rule: str, path: str) -> list[fmpq]:
    """The lower bounds check_crown derives for rows over nodes[-1], given the bounds `values`."""
    state = _route(graph, nodes, cert, [])
    if state is None:
        return backward_lower_bounds(graph, nodes, values, dom, rows, cert, rule, path)
    for node in nodes:
        if node.op == "linear":
            _paths(graph, node, values, state)
    return chain_lower_bounds(state, nodes[-1].id, values, dom.box, rows, cert, rule, path)


def _certify(nodes: list[Node], entry: tuple, path: str, lower, values: dict) -> tuple:
    """Prove an entry's claimed bounds on nodes[-1] (None: not claimed) with lower(rows, cert,
    path): the node's interval intersected with them, (lo, hi, den)."""
    idx, lo, hi, den, cert = entry
    sides = [(k, 1, "lo", lo, "lower", "above") for k in range(len(idx)) if lo[k] is not None]
    sides += [(k, -1, "hi", hi, "upper", "below") for k in range(len(idx)) if hi[k] is not None]
    rows, absrows = (fmpz_mat(len(sides), numel(nodes[-1].shape)) for _ in range(2))
    for r, side in enumerate(sides):
        rows[r, idx[side[0]]], absrows[r, idx[side[0]]] = side[1], 1
    lows = lower((rows, absrows), cert, path)  # (numerators, den) on the chain route
    lows, q = lows if isinstance(lows, tuple) else (lows, 1)
    for low, (k, sign, key, given, name, where) in zip(lows, sides):
        if low * den < sign * given[k] * q:
            raise refuse("crown", f"{path}.{key}[{k}]", f"claimed {name} bound "
                         f"{fmpq(given[k], den)} of neuron {idx[k]} is {where} the kernel's "
                         f"bound {approx_text(sign * fmpq(low) / q)}")
    cur = values[nodes[-1].id]
    d = lcm(cur.den, den)
    f, g = d // cur.den, d // den
    full = [[v * f for v in cur.lo], [v * f for v in cur.hi]] if f != 1 else [
        list(cur.lo), list(cur.hi)]
    for k, sign, _, given, _, _ in sides:  # intersected with the proved sides
        j, v, side = idx[k], given[k] * g, full[sign < 0]
        side[j] = max(side[j], v) if sign > 0 else min(side[j], v)
    return full[0], full[1], d


def _sides(value, path: str, n: int) -> list:
    """An entry's lo or hi: n rationals, null standing for a side not claimed (None)."""
    vec = decode_vector([0 if v is None else v for v in value] if isinstance(value, list)
                        else value, path, "crown", n)
    return [None if v is None else q for v, q in zip(value, vec)]


def _bounds(entry: dict, path: str, n: int) -> tuple:
    """An entry's lo and hi as integers over one denominator, None for a side not claimed:
    JSON integers over its "den" when given, else rationals in any scalar encoding."""
    if "den" not in entry:
        lo, hi = (_sides(entry.get(key), f"{path}.{key}", n) for key in ("lo", "hi"))
        nums, den = common_denominator([v for v in lo + hi if v is not None])
        it = iter(nums)
        return [None if v is None else next(it) for v in lo], [
            None if v is None else next(it) for v in hi], den
    den = _den(entry["den"], f"{path}.den", "crown")
    for key in ("lo", "hi"):
        value = entry.get(key)
        if not isinstance(value, list) or len(value) != n or not set(map(type, value)) <= {
                int, type(None)}:
            raise refuse("crown", f"{path}.{key}", f"expected a list of {n} integers (over "
                         f"den) or nulls, found {repr(value)[:80]}")
    return entry["lo"], entry["hi"], den


def _den(den, path: str, rule: str) -> int:
    """A denominator given as a JSON integer: positive, below 2^4096."""
    if type(den) is not int or not 0 < den < 1 << 4096:
        raise refuse(rule, path, f"expected a positive integer below 2^4096, found {den!r}")
    return den


def _entries(graph: Graph, claim: Claim, inter, order: dict, path: str) -> dict:
    """The intermediate entries, validated: node id -> [(path, (indices, lo, hi, den,
    entry)), ...], lo and hi integers over den (`_bounds`)."""
    if not isinstance(inter, list):
        raise refuse("crown", f"{path}.intermediate", "expected a list")
    out, last = {}, -1
    for i, entry in enumerate(inter):
        p = f"{path}.intermediate[{i}]"
        _keys(entry, "crown", p, {"node", "indices", "den", "lo", "hi", "alpha", "upper", "beta"})
        _relu_keys(graph, claim, entry, p)
        nid = entry.get("node")
        if not isinstance(nid, str) or nid not in order or order[nid] < last or (
                nid == claim.node):
            raise refuse("crown", f"{p}.node", f"expected an ancestor of {claim.node!r} listed "
                         f"no earlier than the previous entry (graph order); found {nid!r}")
        last = order[nid]
        n = numel(graph.by_id[nid].shape)
        idx = entry.get("indices", list(range(n)))
        if (not isinstance(idx, list) or not idx or set(map(type, idx)) != {int} or min(idx) < 0
                or max(idx) >= n or len(set(idx)) != len(idx)):
            raise refuse("crown", f"{p}.indices", f"expected distinct neuron indices < {n} (at "
                         "least one)")
        lo, hi, den = _bounds(entry, p, len(idx))
        if any(a is None and b is None for a, b in zip(lo, hi)):
            raise refuse("crown", f"{p}.lo", "a neuron claims neither bound (null lo and hi)")
        out.setdefault(nid, []).append((p, (idx, lo, hi, den, entry)))
    return out


def check_crown(graph: Graph, claim: Claim, cert: dict, dom: Domain, path: str,
                batch: list | None = None) -> bool:
    """Check a crown certificate on a domain; False means the domain is empty (vacuous). With
    `batch`, the conclusion may be left there for `_flush`."""
    _keys(cert, "crown", path, {"intermediate", "alpha", "upper", "beta"})
    _relu_keys(graph, claim, cert, path)
    done = _replay(graph, claim, cert, dom, path)
    if done is not None:
        lower, nodes = done[1:]
        pending: list | None = [] if batch is not None else None
        lows = lower(len(nodes) - 1, spec_rows(claim, numel(nodes[-1].shape)), cert, path,
                     pending)
        if pending:
            batch.append((*pending[0], claim))
        else:
            conclude(claim, lows, "crown")
    return done is not None


def _replay(graph: Graph, claim: Claim, cert: dict, dom: Domain, path: str) -> tuple | None:
    """The interval replay over the claim's ancestors with cert's intermediate entries proved
    on dom: (the entries' nodes' bounds as Domain.bounds, lower(k, rows, cert, path) over
    nodes[k], nodes); None when dom is empty."""
    nodes = ancestors(graph, claim.node, "crown")
    order = {node.id: i for i, node in enumerate(nodes)}
    entries = _entries(graph, claim, cert.get("intermediate", []), order, path)
    values = {graph.the_input("crown", "claim").id: dom.box}
    certified = dict(dom.bounds)
    state = _route(graph, nodes, cert, [e[-1] for row in entries.values() for _, e in row])

    def lower(k: int, rows, cert: dict, path: str, defer=None) -> list[fmpq] | None:
        if state is not None:
            return chain_lower_bounds(state, nodes[k].id, values, dom.box, rows, cert, "crown",
                                      path, isinstance(rows, tuple))
        return backward_lower_bounds(graph, nodes[:k + 1], values, dom, rows[0] if isinstance(
            rows, tuple) else rows, cert, "crown", path, defer)

    for k, node in enumerate(nodes):  # one forward pass; each entry is proved where it sits
        # (a linear claim node's own interval is not needed: its bounds come from the rows;
        # other ops' replay also refuses what their back-substitution cannot take)
        needed = node.id != claim.node or node.op != "linear"
        if needed and not _step(graph, node, values, dom, certified):
            return None
        if state is not None and node.op == "linear":
            _paths(graph, node, values, state)
        for p, entry in entries.get(node.id, ()):
            x = Interval(values[node.id].shape, *_certify(
                nodes[:k + 1], entry, p, lambda *a, k=k: lower(k, *a), values))
            values[node.id], certified[node.id] = x, (x.lo, x.hi, x.den)
            if any(a > b for a, b in zip(x.lo, x.hi, strict=True)):
                return None
    return certified, lower, nodes


def check_ibp_on_domain(graph: Graph, claim: Claim, dom: Domain, path: str) -> bool:
    from kernel_checker.rules import check_output_box

    values = forward(graph, ancestors(graph, claim.node, "ibp"), dom, dom.bounds)
    if values is None:
        return False
    check_output_box(claim, values[claim.node], "ibp")
    return True


MAX_SPLIT_DEPTH = 400  # deeper trees are refused (Python's recursion limit is near 1000)
FLUSH_LEAVES = 8  # leaves concluded together (`_flush`): on MNIST-FC 8 did best of 1 to 256


def check_split(graph: Graph, claim: Claim, cert: dict, dom: Domain, path: str,
                stats: dict, depth: int = 0, batch: list | None = None) -> None:
    """Every child holds on its piece of the domain, and the pieces cover the domain. The crown
    leaves of a tree (of each polytope's tree) are concluded in batches (`_flush`) before it
    returns."""
    if batch is None:
        batch = []
        check_split(graph, claim, cert, dom, path, stats, depth, batch)
        return _flush(batch)
    if depth > MAX_SPLIT_DEPTH:
        raise refuse("split", path, f"split tree deeper than {MAX_SPLIT_DEPTH}")
    rule = cert.get("rule") if isinstance(cert, dict) else None
    if rule == "crown":
        stats["leaves"] += 1
        check_crown(graph, claim, cert, dom, path, batch)
        return _flush(batch) if len(batch) >= FLUSH_LEAVES else None
    if rule == "ibp":
        stats["leaves"] += 1
        _keys(cert, "ibp", path, set())
        check_ibp_on_domain(graph, claim, dom, path)
        return
    if rule != "split":
        raise refuse("split", f"{path}.rule", f"expected split, crown or ibp, found {rule!r}")
    _keys(cert, "split", path, {"split", "children", "intermediate"})
    spec, children = cert.get("split"), cert.get("children")
    if not isinstance(spec, dict) or not isinstance(children, list):
        raise refuse("split", path, "expected {split: {...}, children: [...]}")
    if "intermediate" in cert:  # bounds proved here hold on every piece below
        done = _replay(graph, claim, {"intermediate": cert["intermediate"]}, dom, path)
        if done is None:  # the domain is empty: every piece holds
            stats["leaves"] += 1
            return
        dom = Domain(dom.box, dom.phases, done[0])
    kind = spec.get("kind")
    if kind == "polytope":  # the unsafe set is a union: child i excludes polytope i alone
        k = len(claim.unsafe) if claim.kind == "unsat" else 0
        if k < 2 or set(spec) != {"kind"}:
            raise refuse("split", f"{path}.split", f"a polytope split takes an unsat claim of at "
                         f"least 2 polytopes and no other keys, found a {claim.kind} claim of {k} "
                         f"and keys {sorted(spec)}")
        if len(children) != k:
            raise refuse("split", f"{path}.children", f"expected one child per polytope ({k}), "
                         f"found {len(children)}")
        for i, poly in enumerate(claim.unsafe):
            try:
                check_split(graph, replace(claim, unsafe=(poly,)), children[i], dom,
                            f"{path}.children[{i}]", stats, depth + 1)
            except KernelError as e:  # the child's claim numbers its one polytope 0
                if e.path != "claim.unsafe[0]":
                    raise
                raise refuse(e.rule, f"claim.unsafe[{i}]", f"{path}.children[{i}]: " + e.message
                             .replace("polytope 0", f"polytope {i}", 1)) from None
        return
    if kind in ("input", "relu") and set(spec) != {"kind", *(
            ("dim", "pieces") if kind == "input" else ("node", "index"))}:
        raise refuse("split", f"{path}.split", f"unexpected or missing keys for a {kind} split: "
                     f"found {sorted(spec)}")
    if kind == "input":
        dim = spec.get("dim")
        n = len(dom.box.lo)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < n:
            raise refuse("split", f"{path}.split.dim", f"expected an input index < {n}, found "
                         f"{dim!r}")
        pieces = spec.get("pieces")
        if not isinstance(pieces, list) or len(pieces) < 2 or len(pieces) != len(children):
            raise refuse("split", f"{path}.split.pieces", f"expected one [lo, hi] per child "
                         f"(at least 2), found {pieces!r} for {len(children)} children")
        plo, phi = fmpq(dom.box.lo[dim], dom.box.den), fmpq(dom.box.hi[dim], dom.box.den)
        reach = plo
        for i, piece in enumerate(pieces):
            pp = f"{path}.split.pieces[{i}]"
            lo, hi = decode_vector(piece, pp, "split", 2)
            if not plo <= lo <= hi <= phi:
                raise refuse("split", pp, f"piece [{lo}, {hi}] is not inside the parent "
                             f"[{plo}, {phi}]")
            if lo > reach:
                raise refuse("split", pp, f"gap: the pieces leave ({reach}, {lo}) uncovered")
            reach = max(reach, hi)
            child_box = _with_dim(dom.box, dim, lo, hi)
            check_split(graph, claim, children[i], Domain(child_box, dom.phases, dom.bounds),
                        f"{path}.children[{i}]", stats, depth + 1, batch)
        if reach < phi:
            raise refuse("split", f"{path}.split.pieces", f"gap: the pieces leave ({reach}, "
                         f"{phi}] uncovered")
        return
    if kind == "relu":
        nid, j = spec.get("node"), spec.get("index")
        pre = {node.inputs[0] for node in ancestors(graph, claim.node, "split")
               if node.op == "relu"} - {graph.the_input("split", "claim").id}
        if not isinstance(nid, str) or nid not in pre:
            raise refuse("split", f"{path}.split.node", f"expected the input node of a relu "
                         f"(not the graph's input) among {sorted(pre)}, found {nid!r}")
        n = numel(graph.by_id[nid].shape)
        if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < n:
            raise refuse("split", f"{path}.split.index", f"expected a neuron index < {n}, found "
                         f"{j!r}")
        if len(children) != 2:
            raise refuse("split", f"{path}.children", f"a relu split has exactly 2 children "
                         f"(z <= 0, z >= 0), found {len(children)}")
        for i, sign in enumerate((-1, 1)):
            phases = {k: dict(v) for k, v in dom.phases.items()}
            phases.setdefault(nid, {})
            # the other phase already holds here: this child is the plane z_j = 0, which lies
            # in the domain the sibling is checked on (the same as this node's), so it is skipped
            if phases[nid].get(j, sign) != sign:
                stats["leaves"] += 1
                continue
            phases[nid][j] = sign
            check_split(graph, claim, children[i], Domain(dom.box, phases, dom.bounds),
                        f"{path}.children[{i}]", stats, depth + 1, batch)
        return
    raise refuse("split", f"{path}.split.kind", f"expected 'input', 'relu' or 'polytope', found "
                 f"{kind!r}")


def _with_dim(box: Interval, dim: int, lo: fmpq, hi: fmpq) -> Interval:
    d = lcm(box.den, lcm(int(lo.q), int(hi.q)))
    f = d // box.den
    new_lo = [v * f for v in box.lo]
    new_hi = [v * f for v in box.hi]
    new_lo[dim] = int(lo.p) * (d // int(lo.q))
    new_hi[dim] = int(hi.p) * (d // int(hi.q))
    return Interval(box.shape, new_lo, new_hi, d)
