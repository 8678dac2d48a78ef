"""Rules `crown` (backward linear bounds, Zhang et al. 2018 "CROWN"; slopes as in Xu et al. 2021
"alpha-CROWN") and `split` (branch and bound over input pieces and ReLU phases), replayed exactly.
Format: docs/crown_certificate.md.

Soundness in brief. On the chain x -> ... -> y, every affine node is y = W x + b exactly, every
relu has certified pre-activation bounds [l, u] on the current domain. For a spec row c, walking
back with lam = c: through an affine node, const += lam.b and lam = lam W; through a relu with
input z, each coefficient lam_j >= 0 uses relu(z) >= alpha z (alpha in [0,1]), lam_j < 0 uses
relu(z) <= s z + t (checked on [l, u]); stable neurons are exact. At the input, the minimum of
lam.x over the box is lam.mid - |lam|.rad. So c.y >= that minimum + const for all x in the domain.
"""

from dataclasses import dataclass, field

from flint import fmpq, fmpz_mat

from kernel_checker.claims import Claim
from kernel_checker.enclosure import GRAPH_FUNCS, backward_smooth
from kernel_checker.errors import refuse
from kernel_checker.exact import approx_text, decode_vector
from kernel_checker.graph import Graph, Node
from kernel_checker.semantics import Interval, _window_indices, eval_node
from kernel_checker.tensor import lcm, numel

CHAIN_OPS = ("linear", "conv2d", "relu", "flatten", "reshape", "avgpool2d", *GRAPH_FUNCS)
UPPER_LINE_BITS = 32


@dataclass
class Domain:
    """Where a leaf is checked: an input box and ReLU phase constraints (node -> index -> sign,
    sign -1 for z <= 0 and +1 for z >= 0)."""

    box: Interval
    phases: dict = field(default_factory=dict)


def chain_to(graph: Graph, target: str, rule: str) -> list[Node]:
    """The nodes from the input (exclusive) to `target`, refusing anything but a chain."""
    chain = []
    node = graph.by_id[target]
    if node.op == "input":
        raise refuse(rule, "claim.node", f"{rule} needs at least one op between the input and the "
                     "claim's node; use ibp for claims about the input itself")
    while node.op != "input":
        if node.op not in CHAIN_OPS or len(node.inputs) != 1:
            raise refuse(rule, f"node {node.id!r}", f"op {node.op!r} is not supported in {rule} "
                         f"replay (a chain of single-input nodes); supported: {list(CHAIN_OPS)}")
        if node.op == "linear" and len(node.shape) != 1:
            raise refuse(rule, f"node {node.id!r}", "linear on a non-vector input is not "
                         "supported in crown replay; flatten first")
        chain.append(node)
        node = graph.by_id[node.inputs[0]]
    return list(reversed(chain))


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


def forward(graph: Graph, chain: list[Node], dom: Domain, certified: dict) -> dict | None:
    """Exact interval replay along the chain, intersected with certified bounds and phases.
    None when some interval is empty (the domain holds no point)."""
    values = {}
    x = dom.box
    for node in chain:
        x = eval_node(node, [x], graph)
        if node.id in certified:
            x = _clip(x, *certified[node.id])
        if node.id in dom.phases:
            x = _apply_phases(x, dom.phases[node.id])
        if any(a > b for a, b in zip(x.lo, x.hi, strict=True)):
            return None
        values[node.id] = x
    return values


def _affine(graph: Graph, node: Node, in_shape: tuple) -> tuple:
    """(W as fmpz_mat, W den, b nums, b den) with out = W in + b on flattened tensors."""
    key = ("affine", node.id)
    if key in graph._cache:
        return graph._cache[key]
    a = node.attrs
    n_in, n_out = numel(in_shape), numel(node.shape)
    if node.op == "linear":
        wt = graph.param(a["weight"])
        w = fmpz_mat(n_out, n_in, wt.nums)
        w_den = wt.den
        bias = graph.param(a["bias"]) if a["bias"] else None
        b_nums, b_den = (bias.nums, bias.den) if bias else ([0] * n_out, 1)
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
        bias = graph.param(a["bias"]) if a["bias"] else None
        b_nums = [bias.nums[oc] for oc in range(o) for _ in range(n)] if bias else [0] * n_out
        b_den = bias.den if bias else 1
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
        b_nums, b_den = [0] * n_out, 1
    graph._cache[key] = (w, w_den, b_nums, b_den)
    return graph._cache[key]


def _unit(n: int, j: int, sign: int) -> list:
    row = [0] * n
    row[j] = sign
    return row


def _rationals_common(values: list) -> tuple[list, int]:
    """Numbers (ints or fmpq) to integer numerators over their least common denominator."""
    den = 1
    for v in values:
        if not isinstance(v, int) and v.q != 1 and den % int(v.q):
            den = lcm(den, int(v.q))
    return [v * den if isinstance(v, int) else int(v.p) * (den // int(v.q)) for v in values], den


def _upper_lines(rule, path, relu_id, lo, hi, den, unstable, cert_upper):
    """Upper lines s z + t >= relu(z) on [l, u] for unstable neurons: given and checked at both
    endpoints (relu is convex, so the endpoints suffice), or computed with outward rounding."""
    s_all, t_all = {}, {}
    given = None
    if cert_upper is not None and not isinstance(cert_upper, dict):
        raise refuse(rule, f"{path}.upper", "expected an object keyed by relu node id")
    if cert_upper is not None and relu_id in cert_upper:
        entry = cert_upper[relu_id]
        if not isinstance(entry, dict) or set(entry) != {"slope", "intercept"}:
            raise refuse(rule, f"{path}.upper.{relu_id}", "expected {slope, intercept}")
        n = len(lo)
        given = (decode_vector(entry["slope"], f"{path}.upper.{relu_id}.slope", rule, n),
                 decode_vector(entry["intercept"], f"{path}.upper.{relu_id}.intercept", rule, n))
    scale = 1 << UPPER_LINE_BITS
    for j in unstable:
        lj, uj = fmpq(lo[j], den), fmpq(hi[j], den)
        if given is not None:
            s, t = given[0][j], given[1][j]
            if s * lj + t < 0 or s * uj + t < uj:
                raise refuse(rule, f"{path}.upper.{relu_id}.slope[{j}]", f"the line {s}*z + {t} "
                             f"dips below relu on [{approx_text(lj)}, {approx_text(uj)}]")
        else:
            s_exact = uj / (uj - lj)  # rounded up: the line only rises on [l, u]
            s = fmpq(-((-s_exact.p * scale) // s_exact.q), scale)
            t_exact = -s * lj
            t = fmpq(-((-t_exact.p * scale) // t_exact.q), scale)
        s_all[j], t_all[j] = s, t
    return s_all, t_all


def _alphas(rule, path, cert_alpha, relu_id, n, rows, lo, hi, den):
    """Per-row lower slopes for one relu: a list of n or a list of `rows` lists of n."""
    if cert_alpha is not None and not isinstance(cert_alpha, dict):
        raise refuse(rule, f"{path}.alpha", "expected an object keyed by relu node id")
    if cert_alpha is None or relu_id not in cert_alpha:
        default = [fmpq(0) if -lo[j] >= hi[j] else fmpq(1) for j in range(n)]
        return [default] * rows
    value = cert_alpha[relu_id]
    p = f"{path}.alpha.{relu_id}"
    per_row = isinstance(value, list) and bool(value) and isinstance(value[0], list)
    if per_row:
        if len(value) != rows:
            raise refuse(rule, p, f"expected {rows} per-row lists, found {len(value)}")
        table = [decode_vector(v, f"{p}[{r}]", rule, n) for r, v in enumerate(value)]
    else:
        table = [decode_vector(value, p, rule, n)] * rows
    for r, vec in enumerate(table[:rows if per_row else 1]):
        for j, a in enumerate(vec):
            if not 0 <= a <= 1:
                where = f"{p}[{r}][{j}]" if per_row else f"{p}[{j}]"
                raise refuse(rule, where, f"expected a slope in [0, 1], found {a}")
    return table


def backward_lower_bounds(graph: Graph, chain: list[Node], values: dict, dom: Domain,
                          rows: list, cert: dict, rule: str, path: str) -> list[fmpq]:
    """Exact CROWN lower bounds of each spec row (over the chain's last node) on the domain."""
    n_rows = len(rows)
    row_nums, row_den = _rationals_common([v for r in rows for v in r])
    width = numel(chain[-1].shape)
    lam = fmpz_mat(n_rows, width, row_nums)
    lam_den = row_den
    const = [fmpq(0)] * n_rows
    shapes = {node.id: node.shape for node in chain}
    for k in range(len(chain) - 1, -1, -1):
        node = chain[k]
        in_shape = chain[k - 1].shape if k > 0 else dom.box.shape
        if node.op in ("flatten", "reshape"):
            continue
        if node.op in ("linear", "conv2d", "avgpool2d"):
            w, w_den, b_nums, b_den = _affine(graph, node, in_shape)
            lb = lam * fmpz_mat(len(b_nums), 1, b_nums)
            scale = fmpq(1, lam_den * b_den)
            const = [c + int(v) * scale for c, v in zip(const, lb.entries(), strict=True)]
            lam = lam * w
            lam_den *= w_den
            continue
        # relu: its input is the previous chain node (or the input box)
        z_id = chain[k - 1].id if k > 0 else None
        z = values[z_id] if z_id else dom.box
        if node.op in GRAPH_FUNCS:
            lam, lam_den, const = backward_smooth(node.op, z.lo, z.hi, z.den, lam, lam_den, const)
            continue
        n = numel(shapes[node.id])
        unstable = [j for j in range(n) if z.lo[j] < 0 < z.hi[j]]
        active = [j for j in range(n) if z.lo[j] >= 0]
        s_map, t_map = _upper_lines(rule, path, node.id, z.lo, z.hi, z.den, unstable,
                                    cert.get("upper"))
        alphas = _alphas(rule, path, cert.get("alpha"), node.id, n, n_rows, z.lo, z.hi, z.den)
        dens = {int(s_map[j].q) for j in unstable}
        for r in range(n_rows) if alphas[0] is not alphas[-1] else (0,):
            dens.update(int(alphas[r][j].q) for j in unstable)
        e = 1
        for d in dens:
            e = lcm(e, d)
        t_nums, t_den = _rationals_common([t_map[j] for j in unstable]) if unstable else ([], 1)
        upper, t_vec = [0] * n, [0] * n
        for j in active:
            upper[j] = e
        for j, t in zip(unstable, t_nums, strict=True):
            upper[j] = int(s_map[j].p) * (e // int(s_map[j].q))
            t_vec[j] = t
        entries = lam.entries()
        if unstable:  # negative coefficients take the upper line's intercept into the constant
            neg = fmpz_mat(n_rows, n, [v if v < 0 else 0 for v in entries])
            extra = (neg * fmpz_mat(n, 1, t_vec)).entries()
            const = [c + fmpq(int(x), lam_den * t_den) if x else c
                     for c, x in zip(const, extra, strict=True)]
        lower_rows = []
        for r in range(n_rows) if alphas[0] is not alphas[-1] else (0,):
            low = list(upper)
            for j in unstable:
                a = alphas[r][j]
                low[j] = int(a.p) * (e // int(a.q))
            lower_rows.append(low)
        lower = (lower_rows * n_rows if len(lower_rows) == 1 else lower_rows)
        lower_flat = [x for row in lower for x in row]
        # coefficient v >= 0 takes the lower relaxation, v < 0 the upper one (scaled by e)
        out = [v * lo if v > 0 else v * up for v, lo, up in
               zip(entries, lower_flat, upper * n_rows, strict=True)]
        lam = fmpz_mat(n_rows, n, out)
        lam_den *= e
    # concretise over the input box: min lam.x = lam.mid - |lam|.rad (over 2 den)
    box = dom.box
    mid = fmpz_mat(len(box.lo), 1, [a + b for a, b in zip(box.lo, box.hi, strict=True)])
    rad = fmpz_mat(len(box.lo), 1, [b - a for a, b in zip(box.lo, box.hi, strict=True)])
    lam_abs = fmpz_mat(n_rows, len(box.lo), [abs(v) for v in lam.entries()])
    m, r = (lam * mid).entries(), (lam_abs * rad).entries()
    scale = 2 * lam_den * box.den
    return [c + fmpq(int(a) - int(b), scale) for c, a, b in zip(const, m, r, strict=True)]


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


def check_crown(graph: Graph, claim: Claim, cert: dict, dom: Domain, path: str) -> bool:
    """Check a crown certificate on a domain; False means the domain is empty (vacuous)."""
    _keys(cert, "crown", path, {"intermediate", "alpha", "upper"})
    chain = chain_to(graph, claim.node, "crown")
    certified: dict = {}
    inter = cert.get("intermediate", [])
    if not isinstance(inter, list):
        raise refuse("crown", f"{path}.intermediate", "expected a list")
    order = {node.id: i for i, node in enumerate(chain)}
    last = -1
    for i, entry in enumerate(inter):
        p = f"{path}.intermediate[{i}]"
        _keys(entry, "crown", p, {"node", "indices", "lo", "hi", "alpha", "upper"})
        nid = entry.get("node")
        if not isinstance(nid, str) or nid not in order or order[nid] <= last or (
                nid == claim.node):
            raise refuse("crown", f"{p}.node", f"expected a node of the chain before "
                         f"{claim.node!r}, after the previous entry; found {nid!r}")
        last = order[nid]
        n = numel(graph.by_id[nid].shape)
        idx = entry.get("indices", list(range(n)))
        if (not isinstance(idx, list) or not idx or len(set(idx)) != len(idx) or not all(
                isinstance(j, int) and not isinstance(j, bool) and 0 <= j < n for j in idx)):
            raise refuse("crown", f"{p}.indices", f"expected distinct neuron indices < {n} (at "
                         "least one)")
        lo = decode_vector(entry.get("lo"), f"{p}.lo", "crown", len(idx))
        hi = decode_vector(entry.get("hi"), f"{p}.hi", "crown", len(idx))
        sub_chain = chain[:order[nid] + 1]
        values = forward(graph, sub_chain, dom, certified)
        if values is None:
            return False
        rows = [_unit(n, j, 1) for j in idx] + [_unit(n, j, -1) for j in idx]
        lows = backward_lower_bounds(graph, sub_chain, values, dom, rows, entry, "crown", p)
        m = len(idx)
        for k, j in enumerate(idx):
            if lows[k] < lo[k]:
                raise refuse("crown", f"{p}.lo[{k}]", f"claimed lower bound {lo[k]} of neuron {j} "
                             f"is above the kernel's bound {approx_text(lows[k])}")
            if -lows[m + k] > hi[k]:
                raise refuse("crown", f"{p}.hi[{k}]", f"claimed upper bound {hi[k]} of neuron {j} "
                             f"is below the kernel's bound {approx_text(-lows[m + k])}")
        cur = values[nid]
        full_lo = [fmpq(v, cur.den) for v in cur.lo]
        full_hi = [fmpq(v, cur.den) for v in cur.hi]
        for k, j in enumerate(idx):
            full_lo[j], full_hi[j] = lo[k], hi[k]
        lo_nums, lo_den = _rationals_common(full_lo)
        hi_nums, hi_den = _rationals_common(full_hi)
        d = lcm(lo_den, hi_den)
        certified[nid] = ([v * (d // lo_den) for v in lo_nums],
                          [v * (d // hi_den) for v in hi_nums], d)
    values = forward(graph, chain, dom, certified)
    if values is None:
        return False
    n_out = numel(chain[-1].shape)
    lows = backward_lower_bounds(graph, chain, values, dom, spec_rows(claim, n_out), cert,
                                 "crown", path)
    conclude(claim, lows, "crown")
    return True


def check_ibp_on_domain(graph: Graph, claim: Claim, dom: Domain, path: str) -> bool:
    from kernel_checker.rules import check_output_box

    values = forward(graph, chain_to(graph, claim.node, "ibp"), dom, {})
    if values is None:
        return False
    check_output_box(claim, values[claim.node], "ibp")
    return True


MAX_SPLIT_DEPTH = 400  # deeper trees are refused (Python's recursion limit is near 1000)


def check_split(graph: Graph, claim: Claim, cert: dict, dom: Domain, path: str,
                stats: dict, depth: int = 0) -> None:
    """Every child holds on its piece of the domain, and the pieces cover the domain."""
    if depth > MAX_SPLIT_DEPTH:
        raise refuse("split", path, f"split tree deeper than {MAX_SPLIT_DEPTH}")
    rule = cert.get("rule") if isinstance(cert, dict) else None
    if rule == "crown":
        stats["leaves"] += 1
        check_crown(graph, claim, cert, dom, path)
        return
    if rule == "ibp":
        stats["leaves"] += 1
        _keys(cert, "ibp", path, set())
        check_ibp_on_domain(graph, claim, dom, path)
        return
    if rule != "split":
        raise refuse("split", f"{path}.rule", f"expected split, crown or ibp, found {rule!r}")
    _keys(cert, "split", path, {"split", "children"})
    spec, children = cert.get("split"), cert.get("children")
    if not isinstance(spec, dict) or not isinstance(children, list):
        raise refuse("split", path, "expected {split: {...}, children: [...]}")
    kind = spec.get("kind")
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
            check_split(graph, claim, children[i], Domain(child_box, dom.phases),
                        f"{path}.children[{i}]", stats, depth + 1)
        if reach < phi:
            raise refuse("split", f"{path}.split.pieces", f"gap: the pieces leave ({reach}, "
                         f"{phi}] uncovered")
        return
    if kind == "relu":
        nid, j = spec.get("node"), spec.get("index")
        chain = chain_to(graph, claim.node, "split")
        pre = {chain[i - 1].id for i, node in enumerate(chain) if node.op == "relu" and i > 0}
        if not isinstance(nid, str) or nid not in pre:
            raise refuse("split", f"{path}.split.node", f"expected the input node of a relu on "
                         f"the chain {sorted(pre)}, found {nid!r}")
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
            if phases[nid].get(j, sign) != sign:  # contradictory phases: empty piece
                stats["leaves"] += 1
                continue
            phases[nid][j] = sign
            check_split(graph, claim, children[i], Domain(dom.box, phases),
                        f"{path}.children[{i}]", stats, depth + 1)
        return
    raise refuse("split", f"{path}.split.kind", f"expected 'input' or 'relu', found {kind!r}")


def _with_dim(box: Interval, dim: int, lo: fmpq, hi: fmpq) -> Interval:
    d = lcm(box.den, lcm(int(lo.q), int(hi.q)))
    f = d // box.den
    new_lo = [v * f for v in box.lo]
    new_hi = [v * f for v in box.hi]
    new_lo[dim] = int(lo.p) * (d // int(lo.q))
    new_hi[dim] = int(hi.p) * (d // int(hi.q))
    return Interval(box.shape, new_lo, new_hi, d)
