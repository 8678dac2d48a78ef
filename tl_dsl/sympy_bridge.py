"""sympy expressions <-> the kernel's expression ASTs (Enclosure claims), and LaTeX printing.

    x = sympy.Symbol("x")
    claim = enclosure_claim(sympy.exp(x) * sympy.sin(x), {"x": ("0", "1/2")}, ("0", "1"))
    thm = enclose(sympy.exp(x) * sympy.sin(x), {"x": ("0", "1/2")})   # oracle, then kernel
    print(enclosure_latex(thm.claim))

Supported: symbols, integers and rationals (floats only with allow_float=True, read as the exact
binary value sympy holds), +, *, integer powers, half-integer powers (through sqrt), Abs, exp,
log, sin, cos, tanh, atan, erf, Max(0, e) (relu) and `sigmoid` (below). Anything else (pi,
other functions, symbolic exponents) is refused with a message naming it.
"""

from __future__ import annotations

import numpy as np
import sympy
from flint import fmpq

from kernel_checker.enclosure import Enclosure, check_enclosure, parse_enclosure, request_sha256
from kernel_checker.exact import encode_rational


class sigmoid(sympy.Function):  # noqa: N801 - reads like the other sympy functions
    """The logistic function 1 / (1 + exp(-x))."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))

    def _latex(self, printer, exp=None):
        body = rf"\sigma\left({printer._print(self.args[0])}\right)"
        return body if exp is None else rf"{body}^{{{exp}}}"


_FUNCS = {sympy.exp: "exp", sympy.log: "log", sympy.sin: "sin", sympy.cos: "cos",
          sympy.tanh: "tanh", sympy.atan: "atan", sympy.erf: "erf", sigmoid: "sigmoid"}
_INVERSE = {v: k for k, v in _FUNCS.items()} | {"sqrt": sympy.sqrt, "abs": sympy.Abs}


class BridgeError(ValueError):
    """An expression the kernel's AST cannot express."""


def _const(value: fmpq) -> dict:
    return {"op": "const", "value": encode_rational(value)}


def _number(e: sympy.Expr, allow_float: bool) -> fmpq:
    if isinstance(e, sympy.Integer):
        return fmpq(int(e))
    if isinstance(e, sympy.Rational):
        return fmpq(int(e.p), int(e.q))
    if isinstance(e, sympy.Float):
        if not allow_float:
            raise BridgeError(f"the float {e} is not exact; write a Rational (or pass "
                              "allow_float=True to read its binary value exactly)")
        sign, man, exp, _ = e._mpf_
        v = fmpq(-man if sign else man) * fmpq(2) ** exp
        return v
    raise BridgeError(f"{e} is not an exact number the kernel can write (pi, E**x and other "
                      "symbolic constants are refused; bound them by rationals)")


# the assumptions of a plain and of a real symbol: with others (positive, integer, ...) sympy
# may already have simplified the expression by facts the boxes need not satisfy (Abs(x) - x
# to 0 for a positive x, sqrt(x)**2 to x), so the claim would be about another expression
_PLAIN = (sympy.Symbol("t").assumptions0, sympy.Symbol("t", real=True).assumptions0)


def symbols_of(e) -> dict:
    """The expression's symbols by name: plain or real sympy Symbols (not Dummy or Wild), one
    per name (the kernel's AST knows a variable by its name alone)."""
    out: dict = {}
    for sym in sorted(e.free_symbols if isinstance(e, sympy.Basic) else sympy.sympify(
            e).free_symbols, key=str):
        if type(sym) is not sympy.Symbol or sym.assumptions0 not in _PLAIN:
            facts = getattr(sym, "_assumptions_orig", None) or sym.assumptions0
            raise BridgeError(f"the symbol {sym} ({type(sym).__name__}, assumptions {facts}) "
                              "is not a plain or real Symbol: sympy may have simplified the "
                              "expression by facts its box need not satisfy")
        if sym.name in out:
            raise BridgeError(f"two different symbols are named {sym.name!r}")
        out[sym.name] = sym
    return out


def to_ast(e, allow_float: bool = False) -> dict:
    """A sympy expression to the kernel's expression AST (JSON-ready dict)."""
    symbols_of(e)
    return _ast(sympy.sympify(e), allow_float)


def _ast(e, allow_float: bool) -> dict:
    if isinstance(e, sympy.Symbol):
        return {"op": "var", "name": e.name}
    if e is sympy.E:
        return {"op": "exp", "arg": _const(fmpq(1))}
    if e.is_Number:
        return _const(_number(e, allow_float))
    if isinstance(e, sympy.Add):
        return {"op": "add", "args": [_ast(a, allow_float) for a in e.args]}
    if isinstance(e, sympy.Mul):
        args = list(e.args)
        if args[0] == -1 and len(args) == 2:
            return {"op": "neg", "arg": _ast(args[1], allow_float)}
        return {"op": "mul", "args": [_ast(a, allow_float) for a in args]}
    if isinstance(e, sympy.Pow):
        base, ex = e.args
        if base is sympy.E:
            return {"op": "exp", "arg": _ast(ex, allow_float)}
        if ex.is_Integer:
            return {"op": "pow", "base": _ast(base, allow_float), "exp": int(ex)}
        if ex.is_Rational and ex.q == 2:
            root = {"op": "sqrt", "arg": _ast(base, allow_float)}
            return root if ex.p == 1 else {"op": "pow", "base": root, "exp": int(ex.p)}
        raise BridgeError(f"the power {e} has exponent {ex}: only integers and halves")
    if isinstance(e, sympy.Abs):
        return {"op": "abs", "arg": _ast(e.args[0], allow_float)}
    if isinstance(e, sympy.Max) and len(e.args) == 2 and sympy.S.Zero in e.args:
        other = e.args[1] if e.args[0] == 0 else e.args[0]
        return {"op": "relu", "arg": _ast(other, allow_float)}
    for fn, name in _FUNCS.items():
        if isinstance(e, fn):
            return {"op": name, "arg": _ast(e.args[0], allow_float)}
    raise BridgeError(f"{e} ({type(e).__name__}) has no kernel expression form; supported: "
                      "+, *, integer and half powers, Abs, Max(0, .), exp, log, sqrt, sin, cos, "
                      "tanh, atan, erf, sigmoid")


def from_ast(doc: dict):
    """The kernel's AST (dict) back to sympy (exact rationals)."""
    op = doc["op"]
    if op == "var":
        return sympy.Symbol(doc["name"])
    if op == "const":
        q = parse_enclosure({"kind": "enclosure", "expr": doc, "vars": {},
                             "interval": ["0", "0"]}).expr[1]
        return sympy.Rational(int(q.p), int(q.q))
    if op in ("add", "mul"):
        parts = [from_ast(a) for a in doc["args"]]
        return sympy.Add(*parts, evaluate=False) if op == "add" else sympy.Mul(*parts,
                                                                               evaluate=False)
    if op == "sub":
        a, b = (from_ast(x) for x in doc["args"])
        return sympy.Add(a, sympy.Mul(-1, b, evaluate=False), evaluate=False)
    if op == "div":
        a, b = (from_ast(x) for x in doc["args"])
        return sympy.Mul(a, sympy.Pow(b, -1, evaluate=False), evaluate=False)
    if op == "pow":
        return sympy.Pow(from_ast(doc["base"]), doc["exp"], evaluate=False)
    if op == "neg":
        return sympy.Mul(-1, from_ast(doc["arg"]), evaluate=False)
    if op == "relu":
        return sympy.Max(0, from_ast(doc["arg"]))
    return _INVERSE[op](from_ast(doc["arg"]))


def _pair(v, path: str, allow_float: bool) -> list[str]:
    from tl_dsl.claims import to_rational

    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise BridgeError(f"{path}: expected (lo, hi), found {v!r}")
    out = []
    for x, side in zip(v, ("lo", "hi")):
        if isinstance(x, (float, np.floating, sympy.Float)) and not allow_float:
            raise BridgeError(f"{path}.{side}: the float {x} is not exact; write a Rational or a "
                              "decimal string (or pass allow_float=True to read its binary "
                              "value exactly)")
        out.append(encode_rational(to_rational(x, f"{path}.{side}")))
    return out


def _vars(e, boxes: dict, allow_float: bool) -> dict:
    """The boxes by variable name: keys are names or the expression's own symbols."""
    syms, out = symbols_of(e), {}
    for k, v in boxes.items():
        if not isinstance(k, (str, sympy.Symbol)):
            raise BridgeError(f"boxes: expected variable names or Symbols as keys, found {k!r}")
        symbols_of(k)  # (a positive x may have left the expression already: Abs(x) - x is 0)
        name = k if isinstance(k, str) else k.name
        if isinstance(k, sympy.Symbol) and name in syms and syms[name] != k:
            raise BridgeError(f"boxes[{k!r}]: another symbol than the expression's {name!r}")
        if name in out:
            raise BridgeError(f"boxes: two boxes for the variable {name!r}")
        out[name] = _pair(v, f"boxes[{name!r}]", allow_float)
    return out


def enclosure_claim(e, boxes: dict, interval, name: str | None = None,
                    allow_float: bool = False) -> dict:
    """An Enclosure claim document: for all variables in their boxes, e lies in interval
    ([lo, hi] of exact numbers, or an Arb ball {mid, rad, exp})."""
    doc = {"kind": "enclosure", "expr": to_ast(e, allow_float),
           "vars": _vars(e, boxes, allow_float),
           "interval": interval if isinstance(interval, dict) else _pair(interval, "interval",
                                                                        allow_float)}
    if name is not None:
        doc["name"] = name
    parse_enclosure(doc)  # well-formed for the kernel (names boxed, numbers exact)
    return doc


def oracle_request(e, boxes: dict, prec_bits: int = 128, allow_float: bool = False) -> dict:
    return {"kind": "expr", "expr": to_ast(e, allow_float),
            "vars": _vars(e, boxes, allow_float), "prec_bits": prec_bits}


def enclose(e, boxes: dict, prec_bits: int = 128, name: str | None = None,
            allow_float: bool = False):
    """Ask the Arb oracle (in-process) for a ball, then let the kernel check the claim: the
    theorem is `proved` when the kernel verified it, else it carries oracle.arb.enclosure."""
    from oracles.arb import run_request

    request = oracle_request(e, boxes, prec_bits, allow_float)
    response = run_request(request)
    if response["status"] != "ok":
        raise BridgeError(f"the Arb oracle refused: {response['reason']}")
    claim = {"kind": "enclosure", "expr": request["expr"], "vars": request["vars"],
             "interval": response["ball"]}
    if name is not None:
        claim["name"] = name
    ev = {"tool": "python-flint", "version": response["flint_version"],
          "prec_bits": str(prec_bits), "request_sha256": request_sha256(request)}
    return check_enclosure({"claim": claim, "certificate": {"rule": "enclosure", "oracle": ev}})


def latex_number(q: fmpq) -> str:
    """Exact: an integer, a decimal when the denominator is 2^a 5^b (up to 60 places), else a
    fraction."""
    q = fmpq(q)
    p, den = int(q.p), int(q.q)
    if den == 1:
        return str(p)
    d, twos, fives = den, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    k = max(twos, fives)
    sign = "-" if p < 0 else ""
    if d == 1 and k <= 60:
        digits = str(abs(p) * (10**k // den)).rjust(k + 1, "0")
        return f"{sign}{digits[:-k]}.{digits[-k:]}"
    return rf"{sign}\frac{{{abs(p)}}}{{{den}}}"


def enclosure_latex(claim) -> str:
    """LaTeX of an Enclosure (a kernel Enclosure or its JSON document)."""
    c = claim if isinstance(claim, Enclosure) else parse_enclosure(claim)
    doc = c.to_json()
    expr = sympy.latex(from_ast(doc["expr"]))
    quant = r",\; ".join(rf"{sympy.latex(sympy.Symbol(n))} \in \left[{latex_number(a)}, "
                         rf"{latex_number(b)}\right]" for n, a, b in c.boxes)
    body = rf"{expr} \in \left[{latex_number(c.lo)}, {latex_number(c.hi)}\right]"
    return rf"\forall {quant}:\quad {body}" if quant else body
