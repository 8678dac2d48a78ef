"""Enclosures of exp, log, sqrt, tanh, sigmoid, sin, cos by the kernel itself, and the judgment
Enclosure(expr, var boxes, interval), checked here or assumed as `oracle.arb.enclosure`.

Fixed point: an integer V at precision w stands for V / 2^w. A series returns (S, E) with its
true sum in [S - E, S + E] / 2^w. Each term comes from the previous one by floor operations (each
off by < 1 ulp) and |ratio| <= 1/2, so a term's accumulated error stays below 5 ulps; a series
stops at a term of magnitude <= 1 ulp, after which the remainder is below 6 ulps. The E returned
(4-6 per term plus a constant) covers both. ln 2 = 2 atanh(1/3) and pi/2 = 8 atan(1/5) -
2 atan(1/239) (Machin) are computed the same way. Monotone functions are evaluated at the
endpoints; sin and cos also take +-1 at every k pi/2 that may lie in the interval.
"""

import hashlib
import json
from dataclasses import dataclass
from itertools import product

from flint import fmpq, fmpz

from kernel_checker.errors import KernelError, refuse
from kernel_checker.exact import decode_ball, decode_rational, encode_rational
from kernel_checker.theorem import Assumption, Level, _derive

RULE = "enclosure"
FUNCS = ("exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos")
GRAPH_FUNCS = ("tanh", "sigmoid", "exp", "log", "sin", "cos")  # graph ops (ops.py)
ORACLE_ONLY = ("atan", "erf")  # the kernel bounds these only coarsely (sign, |f| < 2)
MAX_EXP_ARG = 1 << 14  # exp(x) for |x| beyond this is refused (resource limit)
MAX_TRIG_ARG = 1 << 20  # sin/cos argument reduction budget
MAX_BITS = 4096  # the kernel's precision budget when checking a claimed ball
MAX_NODES = 20000  # expression size budget
MAX_PIECES = 64  # bisections of the variable boxes when deciding an Enclosure
GUARD = 24
GRAPH_BITS = 64  # precision of graph-op enclosures (interval replay)
RELAX_BITS = 32  # dyadic grid of crown relaxation lines
_CACHE: dict = {}


class _BudgetError(KernelError):
    """A resource limit: the kernel cannot decide within its budget (not a false claim)."""


def _fix(x: fmpq, w: int) -> int:
    """floor(x * 2^w)."""
    return (int(x.p) << w) // int(x.q) if w >= 0 else int(x.p) // (int(x.q) << -w)


def _q(v: int, w: int) -> fmpq:
    return fmpq(v << -w) if w < 0 else fmpq(v, 1 << w)


def _out(lo: fmpq, hi: fmpq, w: int) -> tuple[fmpq, fmpq]:
    """Outward rounding to the 2^-w grid."""
    return _q(_fix(lo, w), w), _q(-_fix(-hi, w), w)


def _atan_series(z: int, w: int, sign: int) -> tuple[int, int]:
    """atanh (sign 1) or atan (sign -1) of z / 2^w, |z| <= 2^w / 3: sum sign^n z^(2n+1)/(2n+1)."""
    z2 = sign * ((z * z) >> w)
    t = s = z
    n = 0
    while abs(t) > 1:
        n += 1
        t = (t * z2) >> w
        s += t // (2 * n + 1)
    return s, 4 * n + 8


def _taylor(t: int, x: int, n: int, step: int, w: int) -> tuple[int, int]:
    """sum of t_k, t_(k+1) = t_k x / ((n+1) .. (n+step)), n += step: exp (t = 1, x = y, step 1,
    |y| <= 2^w / 2) and sin, cos (t = r or 1, x = -r^2, step 2, |r| <= 2^w * 4/5)."""
    s, k = t, 0
    while abs(t) > 1:
        t = ((t * x) >> w) // ((n + 1) * (n + 2) if step == 2 else n + 1)
        n, k, s = n + step, k + 1, s + t
    return s, 6 * k + 10


def _consts(w: int) -> tuple[int, int, int, int]:
    """(L, EL, H, EH): |ln 2 - L/2^w| <= EL/2^w and |pi/2 - H/2^w| <= EH/2^w."""
    if _CACHE.get("w", 0) < w:
        q = w + 64
        one = 1 << q
        a, ea = _atan_series(one // 3, q, 1)  # argument floored: < 1 ulp, atanh' <= 9/8
        b, eb = _atan_series(one // 5, q, -1)
        c, ec = _atan_series(one // 239, q, -1)
        _CACHE.update(w=q, v=(2 * a, 2 * (ea + 2), 8 * b - 2 * c, 8 * (eb + 2) + 2 * (ec + 2)))
    s = _CACHE["w"] - w
    lv, le, hv, he = _CACHE["v"]
    return lv >> s, (le >> s) + 2, hv >> s, (he >> s) + 2


def _exp(x: fmpq, p: int) -> tuple[fmpq, fmpq]:
    """exp(x), relative error about 2^-p: x = k ln2 + r, |r| <= 7/20, exp' < 2 there."""
    if abs(x) > MAX_EXP_ARG:
        raise _BudgetError(RULE, "", f"exp argument beyond the budget |x| <= {MAX_EXP_ARG}")
    w = p + GUARD + 16
    lv, le, _, _ = _consts(w)
    xf = _fix(x, w)  # x in [xf, xf + 1] / 2^w
    k = (2 * xf + lv) // (2 * lv)
    s, e = _taylor(1 << w, xf - k * lv, 0, 1, w)
    e += 2 * (1 + abs(k) * le)
    return _q(s - e, w - k), _q(s + e, w - k)


def _point(func: str, x: fmpq, p: int) -> tuple[fmpq, fmpq]:
    """f(x) at a rational point: [lo, hi], absolute error about 2^-p (relative for exp, sqrt)."""
    if x == 0 and func in ("exp", "cos", "tanh", "sin", "sigmoid"):
        v = fmpq({"exp": 1, "cos": 1, "sigmoid": 1}.get(func, 0), 2 if func == "sigmoid" else 1)
        return v, v
    if func == "exp":
        return _exp(x, p)
    if func == "sqrt":
        num, den = int(x.p), int(x.q)
        rn, rd = fmpz(num).isqrt(), fmpz(den).isqrt()
        if rn * rn == num and rd * rd == den:
            return fmpq(rn, rd), fmpq(rn, rd)
        s = p + GUARD + max(0, (den.bit_length() - num.bit_length()) // 2 + 1)
        r = int(fmpz((num << (2 * s)) // den).isqrt())  # floor(sqrt(floor(z))) = floor(sqrt(z))
        return fmpq(r, 1 << s), fmpq(r + 1, 1 << s)
    if func == "log":
        if x == 1:
            return fmpq(0), fmpq(0)
        k = int(x.p).bit_length() - int(x.q).bit_length()
        m = x / _q(1, -k)
        k, m = (k + 1, m / 2) if m > fmpq(3, 2) else (k - 1, m * 2) if m < fmpq(3, 4) else (k, m)
        w = p + GUARD + abs(k).bit_length()
        s, e = _atan_series(_fix((m - 1) / (m + 1), w), w, 1)  # |z| <= 1/5, atanh' <= 25/24
        lv, le, _, _ = _consts(w)
        s, e = 2 * s + k * lv, 2 * (e + 2) + abs(k) * le
        return _q(s - e, w), _q(s + e, w)
    if func in ("sin", "cos"):
        if abs(x) >= MAX_TRIG_ARG:
            raise _BudgetError(RULE, "", f"{func} argument beyond the budget |x| < {MAX_TRIG_ARG}")
        w = p + GUARD + 22
        _, _, hv, he = _consts(w)
        xf = _fix(x, w)
        m = (2 * xf + hv) // (2 * hv)  # x = m pi/2 + r, |r| <= 79/100
        q = (m + (func == "cos")) % 4  # f(x) = [sin, cos, -sin, -cos][q](r)
        r = xf - m * hv
        s, e = _taylor(1 << w if q % 2 else r, -((r * r) >> w), q % 2 ^ 1, 2, w)
        s, e = (-s if q >= 2 else s), e + 1 + abs(m) * he
        return _q(s - e, w), _q(s + e, w)
    # tanh = (E - 1)/(E + 1), E = e^(2x); sigmoid = 1/(1 + E), E = e^(-x); ln 2 < 7/10
    sat = fmpq(7 * (p + 2), 20 if func == "tanh" else 10)
    if x >= sat:
        return 1 - _q(1, p), fmpq(1)
    if x <= -sat:
        return (fmpq(-1), _q(1, p) - 1) if func == "tanh" else (fmpq(0), _q(1, p))
    if func == "tanh":
        lo, hi = _exp(2 * x, p + 4)
        return _out((lo - 1) / (lo + 1), (hi - 1) / (hi + 1), p + GUARD)
    lo, hi = _exp(-x, p + 4)
    return _out(1 / (1 + hi), 1 / (1 + lo), p + GUARD)


def enclose_unary(func: str, lo: fmpq, hi: fmpq, bits: int) -> tuple[fmpq, fmpq]:
    """A dyadic interval containing f([lo, hi]); KernelError on a domain error or budget."""
    if func not in FUNCS + ORACLE_ONLY:
        raise refuse(RULE, "func", f"expected one of {list(FUNCS + ORACLE_ONLY)}, found "
                     f"{func!r}")
    if lo > hi:
        raise refuse(RULE, "", f"empty interval [{lo}, {hi}]")
    if (func == "log" and lo <= 0) or (func == "sqrt" and lo < 0):
        raise refuse(RULE, "", f"{func} is undefined (or not finite) on [{lo}, {hi}]")
    if func in ORACLE_ONLY:  # increasing, odd, |f| < 2 (atan) or 1 (erf): signs only
        top = 2 if func == "atan" else 1
        return (fmpq(-top) if lo < 0 else fmpq(0)), (fmpq(top) if hi > 0 else fmpq(0))
    a = _point(func, lo, bits)
    b = a if lo == hi else _point(func, hi, bits)
    if func not in ("sin", "cos"):
        return a[0], b[1]
    vlo, vhi = min(a[0], b[0]), max(a[1], b[1])
    if hi - lo > 7:  # wider than 2 pi: both extremes
        return fmpq(-1), fmpq(1)
    _, _, hv, he = _consts(bits + GUARD + 22)
    w = bits + GUARD + 22
    h_lo, h_hi = _q(hv - he, w), _q(hv + he, w)
    for m in range(int((lo * 226 / 355).floor()) - 2, int((hi * 226 / 355).floor()) + 3):
        c_lo, c_hi = (m * h_lo, m * h_hi) if m >= 0 else (m * h_hi, m * h_lo)
        if c_hi >= lo and c_lo <= hi:  # m pi/2 may lie in [lo, hi]: f there is +-1 or 0
            q = (m + (func == "cos")) % 4
            vhi, vlo = (fmpq(1) if q == 1 else vhi), (fmpq(-1) if q == 3 else vlo)
    return max(vlo, fmpq(-1)), min(vhi, fmpq(1))


def _log2(v: fmpq) -> int:
    return int(abs(v.p)).bit_length() - int(v.q).bit_length() if v != 0 else -MAX_BITS


def _decide(enclose, ball_lo: fmpq, ball_hi: fmpq) -> str:
    """'verified' when enclose(bits) lies in [ball_lo, ball_hi] for some bits within budget,
    'refuted' when it is disjoint from it, else 'unknown' (also when doubling the precision
    does not halve the excess: the looseness is not rounding)."""
    if ball_lo > ball_hi:
        raise refuse(RULE, "interval", f"empty interval [{ball_lo}, {ball_hi}]")
    mag = max(abs(ball_lo), abs(ball_hi), fmpq(1))
    bits = max(64, _log2(mag) - _log2(ball_hi - ball_lo) + 16) if ball_hi > ball_lo else 64
    excess = None
    while bits <= MAX_BITS:
        try:
            a, b = enclose(bits)
        except _BudgetError:
            return "unknown"
        if ball_lo <= a and b <= ball_hi:
            return "verified"
        if b < ball_lo or a > ball_hi:
            return "refuted"
        new = max(ball_lo - a, b - ball_hi)
        if ball_lo == ball_hi or (excess is not None and 2 * new > excess):
            return "unknown"
        excess, bits = new, 2 * bits
    return "unknown"


def check_ball_encloses(func: str, lo: fmpq, hi: fmpq, ball_lo: fmpq, ball_hi: fmpq) -> bool:
    """Whether the kernel verifies f([lo, hi]) inside [ball_lo, ball_hi] within its budget."""
    return _decide(lambda bits: enclose_unary(func, lo, hi, bits), ball_lo, ball_hi) == "verified"


# ------------------------------------------------------------------ expressions and the claim
_BIN, _UN = ("add", "sub", "mul", "div"), ("neg", "abs", "relu") + FUNCS + ORACLE_ONLY


def parse_expr(doc: object, names: set, path: str = "expr", count: list | None = None):
    """A JSON AST to a tuple tree (op, children...), ("var", name), ("const", q) or ("pow",
    child, n); variables must be boxed, sizes stay within the budget."""
    count = count or [0]
    count[0] += 1
    op = doc.get("op") if isinstance(doc, dict) else None
    keys = {"var": {"name"}, "const": {"value"}, "pow": {"base", "exp"}}.get(
        op, {"args"} if op in _BIN else {"arg"})
    if count[0] > MAX_NODES or path.count(".") > 200:
        raise refuse(RULE, path, f"expression beyond the budget ({MAX_NODES} nodes, depth 200)")
    if op not in ("var", "const", "pow", *_BIN, *_UN) or set(doc) != keys | {"op"}:
        raise refuse(RULE, path, f"expected an expression node with op and keys {sorted(keys)}, "
                     f"found {repr(doc)[:80]}")
    args = doc.get("args")
    if op == "var" and (not isinstance(doc["name"], str) or doc["name"] not in names):
        raise refuse(RULE, f"{path}.name", f"no box for variable {doc['name']!r}")
    if op == "pow" and (not isinstance(doc["exp"], int) or isinstance(doc["exp"], bool)
                        or abs(doc["exp"]) > 1024):
        raise refuse(RULE, f"{path}.exp", f"expected an integer |n| <= 1024, found {doc['exp']!r}")
    if op in _BIN and (not isinstance(args, list) or len(args) < 2 or (
            len(args) > 2 and op in ("sub", "div"))):
        raise refuse(RULE, f"{path}.args", "expected two arguments (add, mul: two or more)")
    if op in ("var", "const"):
        return op, doc["name"] if op == "var" else decode_rational(doc["value"],
                                                                    f"{path}.value", RULE)
    if op == "pow":
        return op, parse_expr(doc["base"], names, f"{path}.base", count), doc["exp"]
    if op in _BIN:
        return (op, *(parse_expr(x, names, f"{path}.args[{i}]", count)
                      for i, x in enumerate(args)))
    return op, parse_expr(doc["arg"], names, f"{path}.arg", count)


def expr_json(t: tuple) -> dict:
    op = t[0]
    if op in ("var", "const"):
        return {"op": op, "name": t[1]} if op == "var" else {"op": op, "value":
                                                             encode_rational(t[1])}
    if op == "pow":
        return {"op": op, "base": expr_json(t[1]), "exp": t[2]}
    return {"op": op, "args": [expr_json(x) for x in t[1:]]} if op in _BIN else {
        "op": op, "arg": expr_json(t[1])}


def _mul(a: tuple, b: tuple) -> tuple[fmpq, fmpq]:
    c = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(c), max(c)


def eval_expr(t: tuple, boxes: dict, bits: int, path: str = "expr") -> tuple[fmpq, fmpq]:
    """An interval containing every value of t over the boxes (refused where undefined)."""
    op = t[0]
    if op in ("var", "const"):
        return boxes[t[1]] if op == "var" else (t[1], t[1])
    r = eval_expr(t[1], boxes, bits, path)
    for u in t[2:] if op in _BIN else ():
        v = eval_expr(u, boxes, bits, path)
        if op == "div" and v[0] <= 0 <= v[1]:
            raise refuse(RULE, path, "division by an interval that may contain 0")
        r = ((r[0] + v[0], r[1] + v[1]) if op == "add" else (r[0] - v[1], r[1] - v[0])
             if op == "sub" else _mul(r, v) if op == "mul" else _mul(r, (1 / v[1], 1 / v[0])))
    if op == "neg":
        r = (-r[1], -r[0])
    elif op == "relu":
        r = (max(r[0], fmpq(0)), max(r[1], fmpq(0)))
    elif op == "abs":
        r = (min(abs(r[0]), abs(r[1])) if r[0] * r[1] > 0 else fmpq(0), max(-r[0], r[1]))
    elif op == "pow":
        n, has0 = t[2], r[0] <= 0 <= r[1]
        if n < 0 and has0:
            raise refuse(RULE, path, "negative power of an interval that may contain 0")
        ends = (r[0] ** n, r[1] ** n)
        r = (fmpq(0) if n and n % 2 == 0 and has0 else min(ends), max(ends))
    elif op not in _BIN:
        try:
            r = enclose_unary(op, r[0], r[1], bits)
        except KernelError as err:
            raise err.__class__(RULE, path, err.message) from None
    if max(int(r[0].q).bit_length(), int(r[1].q).bit_length()) > 2 * bits + 64:
        r = _out(r[0], r[1], bits + GUARD - _log2(max(abs(r[0]), abs(r[1]))))
    return r


@dataclass(frozen=True)
class Enclosure:
    """For all values of the variables in their boxes, expr is defined and lies in [lo, hi]."""

    expr: tuple
    boxes: tuple  # sorted (name, lo, hi)
    lo: fmpq
    hi: fmpq
    name: str | None = None
    kind = "enclosure"

    def to_json(self) -> dict:
        doc = {"kind": "enclosure", "expr": expr_json(self.expr),
               "vars": {n: [encode_rational(a), encode_rational(b)] for n, a, b in self.boxes},
               "interval": [encode_rational(self.lo), encode_rational(self.hi)]}
        return doc if self.name is None else dict(doc, name=self.name)

    def spec_sha256(self) -> str:
        return request_sha256(self.to_json())


def request_sha256(doc: dict) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces): claims and oracle requests."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def _pair(v: object, path: str) -> tuple[fmpq, fmpq]:
    if isinstance(v, dict):
        return decode_ball(v, path, RULE)
    if not isinstance(v, list) or len(v) != 2:
        raise refuse(RULE, path, "expected [lo, hi] or a ball {mid, rad, exp}")
    lo, hi = (decode_rational(x, f"{path}[{i}]", RULE) for i, x in enumerate(v))
    if lo > hi:
        raise refuse(RULE, path, f"expected lo <= hi, found [{lo}, {hi}]")
    return lo, hi


def parse_enclosure(doc: object, path: str = "claim") -> Enclosure:
    keys = set(doc) if isinstance(doc, dict) else set()
    if not {"kind", "expr", "vars", "interval"} <= keys <= {"kind", "expr", "vars", "interval",
                                                            "name"} or doc["kind"] != RULE:
        raise refuse(RULE, path, "expected {kind: enclosure, expr, vars, interval[, name]}")
    if not isinstance(doc["vars"], dict) or not isinstance(doc.get("name", ""), str):
        raise refuse(RULE, path, "expected vars as an object of boxes and name as a string")
    boxes = tuple(sorted((k, *_pair(v, f"{path}.vars.{k}")) for k, v in doc["vars"].items()))
    expr = parse_expr(doc["expr"], {b[0] for b in boxes}, f"{path}.expr")
    return Enclosure(expr, boxes, *_pair(doc["interval"], f"{path}.interval"), doc.get("name"))


def decide(claim: Enclosure, pieces: int = MAX_PIECES) -> str:
    """'verified', 'unknown' (beyond the budget, or oracle-only functions) or 'refuted'; an
    undecided box is bisected along its widest variable, up to `pieces` evaluations."""
    budget = [pieces]

    def go(boxes: dict) -> str:
        verdict = _decide(lambda bits: eval_expr(claim.expr, boxes, bits), claim.lo, claim.hi)
        name, (a, b) = max(boxes.items(), key=lambda kv: kv[1][1] - kv[1][0], default=("", (0, 0)))
        if verdict != "unknown" or a == b or budget[0] < 2:
            return verdict
        budget[0] -= 2
        halves = [go(dict(boxes, **{name: h})) for h in ((a, (a + b) / 2), ((a + b) / 2, b))]
        return min(halves, key=("refuted", "unknown", "verified").index)

    verdict = go({n: (a, b) for n, a, b in claim.boxes})
    if verdict != "unknown":
        return verdict
    # a bound within 2^-64 pieces of the true extremum stays undecided by bisection; at the
    # box's corners (up to MAX_CORNER_VARS variables) and centre the expression is a number
    # the kernel encloses tightly, so a claim too narrow there is refuted, not left to an oracle
    ends = [(a, b) for _, a, b in claim.boxes]  # (else the all-lo and all-hi corners)
    points = [*(product(*ends) if len(ends) <= MAX_CORNER_VARS else zip(*ends)),
              tuple((a + b) / 2 for a, b in ends)]
    for point in points:
        at = {n: (v, v) for (n, _, _), v in zip(claim.boxes, point)}
        if _decide(lambda bits, at=at: eval_expr(claim.expr, at, bits), claim.lo,
                   claim.hi) == "refuted":
            return "refuted"
    return verdict


MAX_CORNER_VARS = 6  # decide tries all corners of boxes of up to this many variables

PROVENANCE_KEYS = {"tool", "version", "prec_bits", "request_sha256"}


def check_enclosure(doc: object, path: str = "") -> "Theorem":  # noqa: F821
    """{claim, certificate}: certificate {"rule": "enclosure"} (the kernel checks it), with
    optional "oracle" provenance strings (tool, version, prec_bits, request_sha256, ...) used
    only when the kernel cannot decide within its budget. A refuted claim is always refused."""
    p = f"{path}." if path else ""
    if not isinstance(doc, dict) or set(doc) != {"claim", "certificate"}:
        raise refuse(RULE, path or "<document>", "expected {claim, certificate}")
    claim, cert = parse_enclosure(doc["claim"], f"{p}claim"), doc["certificate"]
    ev = cert.get("oracle") if isinstance(cert, dict) else None
    if not isinstance(cert, dict) or cert.get("rule") != RULE or set(cert) - {"rule", "oracle"} or (
            ev is not None and (not isinstance(ev, dict) or not PROVENANCE_KEYS <= set(ev) or
                                not all(isinstance(v, str) for v in ev.values()))):
        raise refuse(RULE, f"{p}certificate", "expected {rule: enclosure[, oracle: provenance "
                     f"strings with keys {sorted(PROVENANCE_KEYS)}]}}")
    verdict = decide(claim)
    if verdict == "refuted":
        raise refuse(RULE, f"{p}claim.interval", "the claimed interval misses the kernel's "
                     "enclosure of the expression on (a piece of) the box: the claim is false")
    if verdict == "verified":
        return _derive(claim, RULE)
    if ev is None:
        raise refuse(RULE, f"{p}claim", "not verified within the kernel's budget, and the "
                     "certificate carries no oracle evidence")
    a = Assumption("oracle.arb.enclosure", tuple(sorted(ev.items())), claim.spec_sha256())
    return _derive(claim, RULE, {a}, level=Level.REPLAY_CHECKED)


def check_oracle(request: object, response: object) -> "Theorem":  # noqa: F821
    """An Arb oracle answer to a unary or expr request: status ok and the echo (kind, func,
    prec_bits, the request's sha256), then check_enclosure of the ball with its provenance."""
    if not isinstance(request, dict) or request.get("kind") not in ("unary", "expr"):
        raise refuse(RULE, "request.kind", "expected a unary or expr request")
    response = response if isinstance(response, dict) else {"status": response}
    digest = request_sha256(request)
    for key, want in (("status", "ok"), ("kind", request["kind"]), ("func", request.get("func")),
                      ("prec_bits", request.get("prec_bits", response.get("prec_bits"))),
                      ("request_sha256", digest)):  # (prec_bits: provenance; the oracle's own
        # default when the request names none)
        if response.get(key) != want:
            raise refuse(RULE, f"response.{key}", f"expected {want!r} (the echo), found "
                         f"{response.get(key)!r}")
    _pair(response.get("ball"), "response.ball")
    unary = {"op": request.get("func"), "arg": {"op": "var", "name": "x"}}
    x = {"x": [request.get("lo"), request.get("hi", request.get("lo"))]}
    claim = {"kind": "enclosure", "interval": response["ball"], **(
        {"expr": unary, "vars": x} if request["kind"] == "unary" else
        {"expr": request.get("expr"), "vars": request.get("vars")})}
    ev = {"tool": "python-flint", "version": str(response.get("flint_version")),
          "prec_bits": str(request.get("prec_bits")), "request_sha256": digest}
    return check_enclosure({"claim": claim, "certificate": {"rule": RULE, "oracle": ev}})


# ------------------------------------------------------------------ graph ops (replay, crown)
def unary_interval(op: str, lo: list, hi: list, den: int, path: str,
                   bits: int = GRAPH_BITS) -> tuple[list, list, int]:
    """Element-wise f over [lo[i], hi[i]] / den, as numerators over 2^bits (interval replay)."""
    out_lo, out_hi = [], []
    for a, b in zip(lo, hi, strict=True):
        try:
            x, y = enclose_unary(op, fmpq(a, den), fmpq(b, den), bits)
        except KernelError as err:
            raise refuse("semantics", path, err.message) from None
        out_lo.append(_fix(x, bits))
        out_hi.append(-_fix(-y, bits))
    return out_lo, out_hi, 1 << bits


def _deriv(func: str, p: fmpq, q: fmpq, bits: int) -> tuple[fmpq, fmpq]:
    """An interval containing f' on [p, q]."""
    if func == "log":
        return 1 / q, 1 / p
    if func in ("exp", "sin", "cos"):
        lo, hi = enclose_unary({"sin": "cos", "cos": "sin"}.get(func, func), p, q, bits)
        return (-hi, -lo) if func == "cos" else (lo, hi)
    c, o = (fmpq(1), fmpq(0)) if func == "tanh" else (fmpq(1, 4), fmpq(1, 2))  # c - (f - o)^2
    lo, hi = (v - o for v in enclose_unary(func, p, q, bits))
    sq = _mul((lo, hi), (lo, hi))
    return c - sq[1], c - (sq[0] if lo * hi > 0 else 0)


def relax(func: str, lo: fmpq, hi: fmpq, bits: int = RELAX_BITS, pieces: int = 8) -> tuple:
    """(a, b_lo, a, b_hi) with a x + b_lo <= f(x) <= a x + b_hi on [lo, hi], on the 2^-bits
    grid; a ~ the secant slope. Mean value form on each of `pieces` equal pieces [p, q] with
    midpoint m: |f(x) - a x - (f(m) - a m)| <= max|f' - a| (q - p) / 2."""
    if func not in GRAPH_FUNCS:
        raise refuse(RULE, "func", f"no relaxation for {func!r}; expected one of {GRAPH_FUNCS}")
    fl, fh = enclose_unary(func, lo, lo, bits), enclose_unary(func, hi, hi, bits)
    a = _q(_fix((fh[0] + fh[1] - fl[0] - fl[1]) / (2 * (hi - lo)), bits), bits) if hi > lo else 0
    lows, highs = [], []
    for i in range(pieces if hi > lo else 1):
        p, q = lo + (hi - lo) * i / pieces, lo + (hi - lo) * (i + 1) / pieces
        fm, d = enclose_unary(func, (p + q) / 2, (p + q) / 2, bits), _deriv(func, p, q, bits)
        slack = max(abs(d[0] - a), abs(d[1] - a)) * (q - p) / 2
        lows.append(fm[0] - a * (p + q) / 2 - slack)
        highs.append(fm[1] - a * (p + q) / 2 + slack)
    b_lo, b_hi = _out(min(lows), max(highs), bits)
    return fmpq(a), b_lo, fmpq(a), b_hi


def backward_smooth(func: str, z_lo: list, z_hi: list, z_den: int, entries: list,
                    scale: fmpq, rows: int) -> tuple[list, fmpq, list]:
    """One CROWN step back through y = f(z) element-wise: coefficients (flat rows, times scale)
    on y to coefficients on z, lam.y >= lam'.z + extra with, per coefficient v, the lower line
    when v >= 0 and the upper line when v is negative. Returns (lam', new scale, extra per row,
    in units of the new scale)."""
    n = len(z_lo)
    lines = [[_fix(v, RELAX_BITS) for v in relax(func, fmpq(lo, z_den), fmpq(hi, z_den))]
             for lo, hi in zip(z_lo, z_hi, strict=True)]
    out, extra = [], []
    for r in range(rows):
        acc = 0
        for v, (al, bl, au, bu) in zip(entries[r * n:(r + 1) * n], lines, strict=True):
            out.append(v * (al if v >= 0 else au))
            acc += v * (bl if v >= 0 else bu)
        extra.append(acc)
    return out, scale / (1 << RELAX_BITS), extra
