"""The Arb oracle (untrusted): enclosures by python-flint's `arb`, and its JSON protocol.

Requests (one JSON object; numbers are exact: integers, "p/q", decimal text, "f32:..." bits;
a Python float is refused unless `allow_float=True`, and then read as its exact binary64 value):

* ``{"kind": "unary", "func": F, "lo": X, "hi": X, "prec_bits": 128, "digits": D}`` with F in
  exp, log, sqrt, tanh, sigmoid, sin, cos, atan, erf (``hi`` defaults to ``lo``);
* ``{"kind": "expr", "expr": AST, "vars": {"x": [lo, hi], ...}, "prec_bits": ...}`` with the
  kernel's expression AST (kernel_checker/enclosure.py): var, const, add, sub, mul, div, neg,
  abs, relu, pow (integer), and the unary functions;
* ``{"kind": "mlp", "layers": [{"weight": [[...]], "bias": [...], "activation": A}], "input":
  {"lo": [...], "hi": [...]}, "prec_bits": ...}`` with A in identity, relu and the unary
  functions.

Responses: ``{"status": "ok", "kind", "func" (unary only), "prec_bits", "digits",
"flint_version", "request_sha256", "ball"}`` (``"balls"`` for mlp), each ball
``{"mid", "rad", "exp"}`` (decimal integer strings) meaning [(mid-rad) 10^exp, (mid+rad) 10^exp];
or ``{"status": "error", "reason": ...}``. A non-finite result (NaN, infinity, a domain error,
an exponent beyond the exchange format) is an error, never a ball: python-flint encodes a NaN
ball as 0 +- 0, so every result is checked with ``is_finite`` before it is encoded.

The mid/rad/exp encoding is exact and outward: the ball's exact endpoints (for monotone
functions, f(lo)'s lower end and f(hi)'s upper end) become a decimal ball whose larger part has
`digits` significant digits; rad is rounded up after adding the mid's rounding error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import flint
from flint import arb, ctx, fmpq, fmpz

from kernel_checker.enclosure import request_sha256
from kernel_checker.errors import KernelError
from kernel_checker.exact import (
    MAX_DECIMAL_EXPONENT,
    MAX_INTEGER_DIGITS,
    decode_rational,
    encode_rational,
    load_json,
)

UNARY = ("exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos", "atan", "erf")
MONOTONE = ("exp", "log", "sqrt", "tanh", "sigmoid", "atan", "erf")
ACTIVATIONS = ("identity", "relu", *UNARY)
PREC_RANGE = (8, 1 << 15)
MAX_DIGITS = 3900
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OracleError(Exception):
    """A request the oracle cannot answer with a finite ball; `reason` goes in the document."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def default_digits(prec_bits: int) -> int:
    """Decimal digits that carry prec_bits binary digits, plus 3 (log10 2 < 0.30103)."""
    return prec_bits * 30103 // 100000 + 3


def exact_input(value: Any, path: str, allow_float: bool = False) -> fmpq:
    """A request number to an exact rational (never through binary64 unless allowed)."""
    if isinstance(value, float):
        if not allow_float:
            raise OracleError(f"{path}: a binary64 float was given ({value!r}); pass exact text "
                              "(\"0.1\", \"1/10\", \"f32:3dcccccd\") or allow_float=True")
        if value != value or value in (float("inf"), float("-inf")):
            raise OracleError(f"{path}: non-finite float {value!r}")
        return fmpq(*value.as_integer_ratio())
    try:
        return decode_rational(value, path, "arb-oracle")
    except KernelError as err:
        raise OracleError(str(err)) from None


def _ball_of(lo: fmpq, hi: fmpq) -> arb:
    return arb(lo) if lo == hi else arb(lo).union(arb(hi))


def _finite(x: arb, what: str) -> arb:
    if not x.is_finite():
        raise OracleError(f"non-finite result for {what} (NaN or infinite ball)")
    return x


def _raw_unary(func: str, x: arb) -> arb:
    if func == "sigmoid":
        return 1 / (1 + (-x).exp())
    return getattr(x, func)()


def apply_unary(func: str, x: arb) -> arb:
    """f on a ball (NaN where f is undefined somewhere on it). Increasing functions are taken
    at the ball's ends (Arb's exp of a wide ball is a ball around exp(mid) that can reach
    below 0, and sigmoid of it would be NaN)."""
    if func in MONOTONE and x.rel_accuracy_bits() < 32:
        return _raw_unary(func, x.lower()).union(_raw_unary(func, x.upper()))
    return _raw_unary(func, x)


def unary_enclosure(func: str, lo: fmpq, hi: fmpq) -> tuple[fmpq, fmpq]:
    """Exact rational bounds [L, U] containing f([lo, hi]), at the current precision."""
    if func not in UNARY:
        raise OracleError(f"unknown function {func!r}; expected one of {list(UNARY)}")
    if lo > hi:
        raise OracleError(f"empty interval: lo = {lo} > hi = {hi}")
    if func == "log" and lo <= 0:
        raise OracleError(f"log is not finite on [{lo}, {hi}]: the interval reaches 0 or below")
    if func == "sqrt" and lo < 0:
        raise OracleError(f"sqrt is undefined on [{lo}, {hi}]: the interval reaches below 0")
    if func in MONOTONE:  # increasing: f(lo)'s lower end and f(hi)'s upper end
        a = _finite(apply_unary(func, arb(lo)), f"{func}({lo})")
        b = a if lo == hi else _finite(apply_unary(func, arb(hi)), f"{func}({hi})")
        return bounds(a)[0], bounds(b)[1]
    return bounds(_finite(apply_unary(func, _ball_of(lo, hi)), f"{func}([{lo}, {hi}])"))


def _pow10(k: int) -> fmpq:
    return fmpq(fmpz(10) ** k) if k >= 0 else fmpq(1, fmpz(10) ** -k)


def _floor_log10(q: fmpq) -> int:
    k = len(str(abs(q.p))) - len(str(q.q))
    while _pow10(k) > q:
        k -= 1
    while _pow10(k + 1) <= q:
        k += 1
    return k


MAX_BINARY_EXPONENT = 4 * MAX_DECIMAL_EXPONENT  # (> log2(10) times the exchange format's)


def _exact(x: arb, radius: bool = False) -> fmpq:
    """x (an exact arb number) as a rational; a radius below 2^-MAX_BINARY_EXPONENT is
    rounded up to it (erf(213) is 1 within 2^-65736)."""
    m, e = x.man_exp()
    top = int(e) + int(m).bit_length()  # |x| < 2^top
    if radius and top < -MAX_BINARY_EXPONENT:
        return fmpq(1, 2**MAX_BINARY_EXPONENT)
    if abs(int(e)) > MAX_BINARY_EXPONENT:  # (2^e as a rational would not fit in memory)
        raise OracleError(f"overflow: a ball's binary exponent ({e}) puts the result beyond "
                          f"the exchange format's range (decimal exponents up to "
                          f"{MAX_DECIMAL_EXPONENT})")
    return fmpq(m) * (fmpq(2) ** int(e))


def bounds(x: arb) -> tuple[fmpq, fmpq]:
    """The exact endpoints mid -+ rad of a finite arb ball (rad rounded up when tiny)."""
    mid, rad = _exact(_finite(x, "the result").mid()), _exact(x.rad(), radius=True)
    return mid - rad, mid + rad


def encode_interval(lo: fmpq, hi: fmpq, digits: int) -> dict:
    """The exact outward {"mid","rad","exp"} of [lo, hi]: the larger of |mid| and rad gets
    `digits` significant digits, mid is rounded to nearest, rad up (plus mid's error)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    if mid == 0 and rad == 0:
        return {"mid": "0", "rad": "0", "exp": "0"}
    e = _floor_log10(max(abs(mid), rad)) - digits + 1
    scale = _pow10(e)
    m = (mid / scale + fmpq(1, 2)).floor()
    r = ((rad + abs(mid - m * scale)) / scale).ceil()
    if abs(e) > MAX_DECIMAL_EXPONENT or len(str(max(abs(m), r))) > MAX_INTEGER_DIGITS:
        raise OracleError(f"overflow: the result's decimal exponent {e} is beyond the exchange "
                          f"format's limit {MAX_DECIMAL_EXPONENT}")
    return {"mid": str(m), "rad": str(r), "exp": str(e)}


def encode_ball(x: arb, digits: int) -> dict:
    """The exact outward {"mid","rad","exp"} of a finite arb ball."""
    return encode_interval(*bounds(x), digits)


def decode_ball_fmpq(ball: dict) -> tuple[fmpq, fmpq]:
    m, r, e = (int(ball[k]) for k in ("mid", "rad", "exp"))
    return fmpq(m - r) * _pow10(e), fmpq(m + r) * _pow10(e)


MAX_POW = 1024  # |n| of an integer power, as the kernel's expression AST allows


def eval_expr(doc: Any, boxes: dict, path: str = "expr", allow_float: bool = False) -> arb:
    """Ball arithmetic over the kernel's expression AST."""
    if not isinstance(doc, dict) or not isinstance(doc.get("op"), str):
        raise OracleError(f"{path}: expected an expression node with an op")
    op = doc["op"]
    if op == "var":
        if doc.get("name") not in boxes:
            raise OracleError(f"{path}: no box for variable {doc.get('name')!r}")
        return boxes[doc["name"]]
    if op == "const":
        return arb(exact_input(doc.get("value"), f"{path}.value", allow_float))
    if op in ("add", "sub", "mul", "div"):
        args = doc.get("args")
        if not isinstance(args, list) or len(args) < 2:
            raise OracleError(f"{path}.args: expected at least two arguments")
        vals = [eval_expr(a, boxes, f"{path}.args[{i}]", allow_float) for i, a in
                enumerate(args)]
        acc = vals[0]
        for v in vals[1:]:
            if op == "div" and v.contains(0):
                raise OracleError(f"{path}: division by a ball that contains 0")
            acc = {"add": acc + v, "sub": acc - v, "mul": acc * v, "div": acc / v}[op]
        return _finite(acc, path)
    if op == "pow":
        n = doc.get("exp")
        if not isinstance(n, int) or isinstance(n, bool) or abs(n) > MAX_POW:
            raise OracleError(f"{path}.exp: expected an integer exponent |n| <= {MAX_POW}, "
                              f"found {n!r}")
        base = eval_expr(doc.get("base"), boxes, f"{path}.base", allow_float)
        if n < 0 and base.contains(0):
            raise OracleError(f"{path}: negative power of a ball that contains 0")
        return _finite(base ** n, path)
    x = eval_expr(doc.get("arg"), boxes, f"{path}.arg", allow_float)
    if op == "neg":
        return -x
    if op == "abs":
        return arb(x.abs_lower()).union(arb(x.abs_upper()))
    if op == "relu":
        return _activation("relu", x)
    if op not in UNARY:
        raise OracleError(f"{path}: unknown op {op!r}")
    if op == "log" and not x > 0:
        raise OracleError(f"{path}: log is not finite: its argument may reach 0 or below")
    if op == "sqrt" and not x >= 0:
        raise OracleError(f"{path}: sqrt is undefined: its argument may reach below 0")
    return _finite(apply_unary(op, x), path)


def _activation(name: str, x: arb) -> arb:
    if name == "identity":
        return x
    if name == "relu":
        return arb(0).max(x.lower()).union(arb(0).max(x.upper()))
    return apply_unary(name, x)


def _vector(value: Any, path: str, allow_float: bool) -> list[fmpq]:
    if not isinstance(value, list):
        raise OracleError(f"{path}: expected a list of numbers")
    return [exact_input(v, f"{path}[{i}]", allow_float) for i, v in enumerate(value)]


def eval_mlp(request: dict, allow_float: bool = False) -> list[arb]:
    inp = request.get("input")
    if not isinstance(inp, dict):
        raise OracleError("input: expected {lo: [...], hi: [...]}")
    lo, hi = _vector(inp.get("lo"), "input.lo", allow_float), _vector(inp.get("hi"), "input.hi",
                                                                       allow_float)
    if len(lo) != len(hi) or any(a > b for a, b in zip(lo, hi)):
        raise OracleError("input: expected lo <= hi of equal lengths")
    x = [_ball_of(a, b) for a, b in zip(lo, hi)]
    layers = request.get("layers")
    if not isinstance(layers, list) or not layers:
        raise OracleError("layers: expected a non-empty list")
    for k, layer in enumerate(layers):
        p = f"layers[{k}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("weight"), list):
            raise OracleError(f"{p}: expected {{weight, bias, activation}}")
        w = [_vector(row, f"{p}.weight[{i}]", allow_float) for i, row in
             enumerate(layer["weight"])]
        b = _vector(layer.get("bias", ["0"] * len(w)), f"{p}.bias", allow_float)
        act = layer.get("activation", "identity")
        if act not in ACTIVATIONS or len(b) != len(w) or any(len(r) != len(x) for r in w):
            raise OracleError(f"{p}: expected {len(x)} columns, one bias per row and an "
                              f"activation in {list(ACTIVATIONS)}")
        out = []
        for i, row in enumerate(w):
            z = arb(b[i])
            for c, xi in zip(row, x):
                if c:
                    z += arb(c) * xi
            out.append(_finite(_activation(act, z), f"{p} neuron {i}"))
        x = out
    return x


def _precision(request: dict) -> tuple[int, int]:
    prec = request.get("prec_bits", 128)
    if not isinstance(prec, int) or isinstance(prec, bool) or not (
            PREC_RANGE[0] <= prec <= PREC_RANGE[1]):
        raise OracleError(f"prec_bits: expected an integer in [{PREC_RANGE[0]}, "
                          f"{PREC_RANGE[1]}], found {prec!r}")
    digits = request.get("digits", default_digits(prec))
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= MAX_DIGITS:
        raise OracleError(f"digits: expected an integer in [1, {MAX_DIGITS}], found {digits!r}")
    return prec, digits


KEYS = {"unary": {"kind", "func", "lo", "hi", "prec_bits", "digits"},
        "expr": {"kind", "expr", "vars", "prec_bits", "digits"},
        "mlp": {"kind", "layers", "input", "prec_bits", "digits"}}


def run_request(request: Any, allow_float: bool = False) -> dict:
    """Answer one request in-process; never raises for a bad request (an error document)."""
    head: dict = {"kind": request.get("kind") if isinstance(request, dict) else None}
    try:
        if not isinstance(request, dict):
            raise OracleError("expected a JSON object request")
        kind = request.get("kind")
        if kind == "unary":
            head["func"] = request.get("func")
        extra = set(request) - KEYS.get(kind, set(request))
        if extra:  # (a misspelt "prec_bits" fell back to the default)
            raise OracleError(f"unexpected keys {sorted(extra)} in a {kind} request (expected "
                              f"{sorted(KEYS[kind])})")
        prec, digits = _precision(request)
        head.update(prec_bits=prec, digits=digits, flint_version=flint.__version__,
                    request_sha256=request_sha256(request))
        old = ctx.prec
        ctx.prec = prec
        try:
            if kind == "unary":
                lo = exact_input(request.get("lo"), "lo", allow_float)
                hi = exact_input(request.get("hi", request.get("lo")), "hi", allow_float)
                return {"status": "ok", **head, "ball": encode_interval(
                    *unary_enclosure(request.get("func"), lo, hi), digits)}
            if kind == "expr":
                vars_ = request.get("vars")
                if not isinstance(vars_, dict):
                    raise OracleError("vars: expected an object of [lo, hi] boxes")
                boxes = {}
                for name, pair in vars_.items():
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise OracleError(f"vars.{name}: expected [lo, hi]")
                    a, b = (exact_input(v, f"vars.{name}", allow_float) for v in pair)
                    if a > b:
                        raise OracleError(f"vars.{name}: empty interval")
                    boxes[name] = _ball_of(a, b)
                return {"status": "ok", **head,
                        "ball": encode_ball(eval_expr(request.get("expr"), boxes,
                                                      allow_float=allow_float), digits)}
            if kind == "mlp":
                return {"status": "ok", **head, "balls": [encode_ball(y, digits) for y in
                                                          eval_mlp(request, allow_float)]}
            raise OracleError(f"kind: expected unary, expr or mlp, found {kind!r}")
        finally:
            ctx.prec = old
    except OracleError as err:
        return {"status": "error", **head, "reason": err.reason}
    except (RecursionError, ValueError, TypeError, ZeroDivisionError, OverflowError) as err:
        return {"status": "error", **head, "reason": f"{type(err).__name__}: {err}"}


def run_request_text(text: str) -> tuple[Any, dict]:
    """Answer one request given as JSON text (what both command-line forms read on stdin):
    (the request, or None when the text is not JSON; the answer or error document)."""
    try:
        request = load_json(text, "arb-oracle", "<stdin>")
    except KernelError as err:
        return None, {"status": "error", "reason": f"the request is not JSON: {err.message}"}
    return request, run_request(request)


def unary(func: str, lo: Any, hi: Any = None, prec_bits: int = 128, **extra) -> dict:
    """Convenience: the request and response documents for one unary enclosure."""
    request = {"kind": "unary", "func": func, "lo": lo, "hi": lo if hi is None else hi,
               "prec_bits": prec_bits, **extra}
    return run_request(request)


def mlp_to_enclosures(request: dict, response: dict, allow_float: bool = False) -> list[dict]:
    """The kernel's Enclosure claims for an mlp answer: one expression AST per output over
    variables x0..x(n-1) (the network written out as a tree), interval = the output's ball."""
    inp = request["input"]
    xs = [{"op": "var", "name": f"x{i}"} for i in range(len(inp["lo"]))]
    for layer in request["layers"]:
        act = layer.get("activation", "identity")
        bias = layer.get("bias", ["0"] * len(layer["weight"]))
        nxt = []
        for row, b in zip(layer["weight"], bias):
            cs = [exact_input(c, "weight", allow_float) for c in row]
            terms = [{"op": "mul", "args": [{"op": "const", "value": encode_rational(c)}, x]}
                     for c, x in zip(cs, xs) if c != 0]
            b = {"op": "const", "value": encode_rational(exact_input(b, "bias", allow_float))}
            z = {"op": "add", "args": [b, *terms]} if terms else b
            if act != "identity":
                z = {"op": act, "arg": z}
            nxt.append(z)
        xs = nxt
    boxes = {f"x{i}": [encode_rational(exact_input(a, "input.lo", allow_float)),
                       encode_rational(exact_input(b, "input.hi", allow_float))]
             for i, (a, b) in enumerate(zip(inp["lo"], inp["hi"]))}
    return [{"kind": "enclosure", "expr": e, "vars": boxes, "interval": ball}
            for e, ball in zip(xs, response["balls"])]


def run_subprocess(request: dict, timeout_s: float = 60) -> dict:
    """The same request through `python -m oracles.arb_oracle_main` (subprocess_layer): the
    interpreter is TL_ARB_ORACLE if set, else this one. Errors raise ToolError."""
    from oracles.subprocess_layer import run_json

    env = {"PYTHONPATH": ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                 if os.environ.get("PYTHONPATH") else "")}
    doc = run_json("arb-oracle", ["-m", "oracles.arb_oracle_main"],
                   default_executable=sys.executable, stdin=json.dumps(request),
                   timeout_s=timeout_s, env=env, cwd=ROOT,
                   install_hint="pip install python-flint (the oracle runs python -m "
                   "oracles.arb_oracle_main)")
    if not isinstance(doc, dict):
        raise ValueError("the Arb oracle printed a JSON document that is not an object")
    return doc
