"""Exact numbers: decoders for every number encoding an artifact may use, all to FLINT rationals.

Encodings (DESIGN.md, "Exact numbers"): JSON integers; strings "123", "-7/3", decimals "0.1",
"1.5e-3" read as the exact decimal written; float bit patterns "f32:3f800000" and
"f64:3ff0000000000000"; Arb balls {"mid","rad","exp"} meaning [(mid-rad)*10^exp, (mid+rad)*10^exp].
JSON numbers with a fraction or exponent reach us as `DecimalText` (see `load_json`), never as
binary64. NaN and Inf are refused everywhere; so are booleans posing as integers.
"""

import json
import re

from flint import fmpq, fmpz

from kernel_checker.errors import refuse

MAX_DECIMAL_EXPONENT = 4096  # resource limit: 10^4096 is far beyond any float and still cheap
MAX_INTEGER_DIGITS = 4000  # below CPython's int/str conversion limit (4300 digits)

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FRACTION_RE = re.compile(r"([+-]?[0-9]+)/([0-9]+)\Z")
_SIMPLE_RE = re.compile(r"([+-]?[0-9]{1,60})(?:/([0-9]{1,60}))?\Z")  # short ones: a fast path
_DECIMAL_RE = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?\Z")
_BITS_RE = re.compile(r"(f32|f64|f16|bf16):([0-9a-fA-F]+)\Z")
_BITS_WIDTH = {"f16": 4, "bf16": 4, "f32": 8, "f64": 16}


class DecimalText(str):
    """The exact text of a JSON number that had a fraction or an exponent."""


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")


def load_json(text: str | bytes, rule: str, path: str = "") -> object:
    """Parse JSON strictly: floats stay exact decimal text, NaN/Infinity are refused."""
    try:
        return json.loads(text, parse_float=DecimalText, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise refuse(rule, path or "<document>",
                     f"expected a JSON document, found: {err}") from None


def float_bits_to_dyadic(kind: str, bits: int, rule: str, path: str) -> tuple[int, int]:
    """IEEE binary16/bfloat16/binary32/binary64 bits to (m, e) with value m * 2^e exactly."""
    mants, exps = float_bits_to_dyadics(kind, [bits], rule, path, index=False)
    return mants[0], exps[0]


def float_bits_to_dyadics(kind: str, bits: list, rule: str, path: str, index: bool = True
                          ) -> tuple[list[int], list[int]]:
    """Many values' bits of one kind to (mantissas, exponents), value i being m[i] * 2^e[i]
    exactly; NaN or Inf is refused at path[i] (at path when not `index`)."""
    ebits, fbits = {"f16": (5, 10), "bf16": (8, 7), "f32": (8, 23), "f64": (11, 52)}[kind]
    emask, fmask, sign_at, hidden = (1 << ebits) - 1, (1 << fbits) - 1, ebits + fbits, 1 << fbits
    fields = [(b >> fbits) & emask for b in bits]
    if emask in fields:
        i = fields.index(emask)
        found = "NaN" if bits[i] & fmask else "Inf"
        raise refuse(rule, f"{path}[{i}]" if index else path, f"expected a finite {kind} value, "
                     f"found {found} (bits {bits[i]:x})")
    mags = [(b & fmask) | hidden if e else b & fmask for b, e in zip(bits, fields)]
    shift = (1 << (ebits - 1)) - 1 + fbits  # bias + fraction bits; a subnormal's field counts 1
    return ([-m if b >> sign_at else m for m, b in zip(mags, bits)],
            [(e or 1) - shift for e in fields])


def _dyadic_to_fmpq(m: int, e: int) -> fmpq:
    return fmpq(m << e) if e >= 0 else fmpq(m, 1 << -e)


def decode_rational(value: object, path: str, rule: str = "decode") -> fmpq:
    """Any scalar encoding to an exact rational, or a KernelError naming `path`."""
    if isinstance(value, bool):
        raise refuse(rule, path, f"expected a number, found boolean {value}")
    if isinstance(value, int):
        return fmpq(value)
    if isinstance(value, fmpq):
        return value
    if isinstance(value, fmpz):
        return fmpq(value)
    if isinstance(value, dict):
        lo, hi = decode_ball(value, path, rule)
        if lo != hi:
            raise refuse(rule, path, "expected an exact number, found a ball of positive radius")
        return lo
    if not isinstance(value, str):
        raise refuse(rule, path, f"expected a number or numeric string, found "
                     f"{type(value).__name__}")
    text = value.strip()
    if len(text) > MAX_INTEGER_DIGITS:
        raise refuse(rule, path, f"number text longer than {MAX_INTEGER_DIGITS} characters")
    if _INT_RE.match(text):
        return fmpq(int(text))
    m = _FRACTION_RE.match(text)
    if m:
        den = int(m.group(2))
        if den == 0:
            raise refuse(rule, path, f"expected a nonzero denominator, found {text!r}")
        return fmpq(int(m.group(1)), den)
    m = _BITS_RE.match(text)
    if m:
        kind, digits = m.group(1), m.group(2)
        if len(digits) != _BITS_WIDTH[kind]:
            raise refuse(rule, path, f"expected {_BITS_WIDTH[kind]} hex digits after {kind}:, "
                         f"found {len(digits)} in {text!r}")
        mant, exp = float_bits_to_dyadic(kind, int(digits, 16), rule, path)
        return _dyadic_to_fmpq(mant, exp)
    m = _DECIMAL_RE.match(text)
    if m and (m.group(2) or m.group(3)):
        sign, whole, frac, exp = m.group(1), m.group(2) or "", m.group(3) or "", m.group(4)
        e10 = (int(exp) if exp else 0) - len(frac)
        if abs(e10) > MAX_DECIMAL_EXPONENT:
            raise refuse(rule, path, f"decimal exponent beyond the limit "
                         f"{MAX_DECIMAL_EXPONENT}: {text!r}")
        digits = int(whole + frac)
        if sign == "-":
            digits = -digits
        return fmpq(digits * 10**e10) if e10 >= 0 else fmpq(digits, 10**-e10)
    lowered = text.lower().lstrip("+-")
    if lowered in ("nan", "inf", "infinity"):
        raise refuse(rule, path, f"expected a finite number, found {text!r}")
    raise refuse(rule, path, f"expected an integer, 'p/q', exact decimal or 'f32:' bits, "
                 f"found {text!r}")


def decode_ball(value: object, path: str, rule: str = "decode") -> tuple[fmpq, fmpq]:
    """An Arb ball {"mid","rad","exp"} (decimal integer strings) to its exact endpoints."""
    if not isinstance(value, dict) or set(value) != {"mid", "rad", "exp"}:
        raise refuse(rule, path, "expected a ball object with exactly the keys mid, rad, exp")
    parts = {}
    for key in ("mid", "rad", "exp"):
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, (int, str)) or (
                isinstance(item, str) and (not _INT_RE.match(item.strip())
                                           or len(item) > MAX_INTEGER_DIGITS)):
            raise refuse(rule, f"{path}.{key}",
                         f"expected a decimal integer string, found {item!r}")
        parts[key] = int(item)
    if parts["rad"] < 0:
        raise refuse(rule, f"{path}.rad", f"expected rad >= 0, found {parts['rad']}")
    if abs(parts["exp"]) > MAX_DECIMAL_EXPONENT:
        raise refuse(rule, f"{path}.exp", f"exponent beyond the limit {MAX_DECIMAL_EXPONENT}: "
                     f"{parts['exp']}")
    e = parts["exp"]
    scale = fmpq(10**e) if e >= 0 else fmpq(1, 10**-e)
    return (parts["mid"] - parts["rad"]) * scale, (parts["mid"] + parts["rad"]) * scale


def decode_vector(value: object, path: str, rule: str = "decode", length: int | None = None
                  ) -> list[fmpq]:
    """A JSON list of scalars to rationals, checking the length when one is expected."""
    if not isinstance(value, list):
        raise refuse(rule, path, f"expected a list of numbers, found {type(value).__name__}")
    if length is not None and len(value) != length:
        raise refuse(rule, path, f"expected {length} numbers, found {len(value)}")
    try:  # every text decoded before (producers repeat themselves): one lookup each
        return [_SHORT[v] for v in value]
    except (KeyError, TypeError):  # (unhashable: a list or object, refused below)
        pass
    out = []
    if len(_SHORT) > 1 << 18:
        _SHORT.clear()
    for i, v in enumerate(value):
        if type(v) is str and len(v) < 64:  # fast paths for what producers send; same grammar
            q = _SHORT.get(v)
            if q is None:
                m = _SIMPLE_RE.match(v)  # integers and p/q: one match (the same grammar)
                if m and m.group(2) is None:
                    q = fmpq(int(m.group(1)))
                elif m and m.group(2).strip("0"):
                    q = fmpq(int(m.group(1)), int(m.group(2)))
                else:
                    q = decode_rational(v, f"{path}[{i}]", rule)
                _SHORT[v] = q
            out.append(q)
            continue
        out.append(decode_rational(v, f"{path}[{i}]", rule))
    return out


_SHORT: dict = {}  # short texts already decoded (fmpq values are immutable)


def common_denominator(values: list[fmpq]) -> tuple[list[int], int]:
    """Rationals to integer numerators over one positive denominator (their lcm)."""
    den = fmpz(1)
    for v in values:
        q = v.q
        if q != 1:
            den = den * q // den.gcd(q)
    return [int(v.p * (den // v.q)) for v in values], int(den)


def encode_rational(value: fmpq) -> str:
    """The canonical text of a rational: "n" or "p/q" (lowest terms)."""
    return str(value.p) if value.q == 1 else f"{value.p}/{value.q}"


def approx_text(value: fmpq, digits: int = 6) -> str:
    """A short decimal rendering for messages only (truncated toward zero, integer arithmetic)."""
    p, q = int(value.p), int(value.q)
    sign = "-" if p < 0 else ""
    p = abs(p)
    whole, rem = divmod(p, q)
    frac = (rem * 10**digits) // q
    text = f"{sign}{whole}.{frac:0{digits}d}".rstrip("0").rstrip(".")
    return text if value.q == 1 else f"~{text}"
