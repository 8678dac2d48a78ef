"""Exact numbers: decoders for every number encoding an artifact may use, all to FLINT rationals.

Encodings (DESIGN.md, "Exact numbers"): JSON integers; strings "123", "-7/3", decimals "0.1",
"1.5e-3" read as the exact decimal written; float bit patterns "f32:3f800000" and
"f64:3ff0000000000000"; Arb balls {"mid","rad","exp"} meaning [(mid-rad)*10^exp, (mid+rad)*10^exp].
JSON numbers with a fraction or exponent reach us as `DecimalText` (see `load_json`), never as
binary64. NaN and Inf are refused everywhere; so are booleans posing as integers.
"""

import json
import re
import struct

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


def _unique(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):  # (json keeps the last: a reader keeping the first sees another doc)
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def load_json(text: str | bytes, rule: str, path: str = "") -> object:
    """Parse JSON strictly: floats stay exact decimal text, NaN/Infinity and an object's
    duplicate keys are refused."""
    try:
        return json.loads(text, parse_float=DecimalText, parse_constant=_reject_constant,
                          object_pairs_hook=_unique)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise refuse(rule, path or "<document>",
                     f"expected a JSON document, found: {err}") from None


_LANES = {"f16": (16, 5, 10), "bf16": (16, 8, 7), "f32": (32, 8, 23), "f64": (64, 11, 52)}


def float_lanes(data: bytes, n: int, kind: str, rule: str, path: str, index: bool = True
                ) -> tuple[list[int], int]:
    """n little-endian IEEE values of one kind to integer numerators over one power-of-two
    denominator, exactly; NaN or Inf is refused at path[i] (at path when not `index`). The bit
    fields of all n values are taken at once from the bytes read as one integer, value i in
    bits [w i, w (i + 1)): masks and shifts of that integer act on every w-bit lane together,
    and sums stay in their lane."""
    w, ebits, fbits = _LANES[kind]
    emask, code = (1 << ebits) - 1, {16: "H", 32: "I", 64: "Q"}[w]

    def every(v: int) -> int:  # v in each lane
        return int.from_bytes(v.to_bytes(w // 8, "little") * n, "little")

    def lanes(x: int) -> tuple:
        return struct.unpack(f"<{n}{code}", x.to_bytes(len(data), "little"))

    x, one = int.from_bytes(data, "little"), every(1)
    frac, field = x & every((1 << fbits) - 1), (x >> fbits) & every(emask)
    bad = ((field + one) >> ebits) & one  # field all ones: NaN or Inf
    if bad:
        i = lanes(bad).index(1)
        bits, found = lanes(x)[i], "NaN" if lanes(frac)[i] else "Inf"
        raise refuse(rule, f"{path}[{i}]" if index else path, f"expected a finite {kind} "
                     f"value, found {found} (bits {bits:x})")
    normal = ((field + every(emask)) >> ebits) & one  # field >= 1: the hidden bit is set
    mag = frac | (normal << fbits)
    # value i = (-1)^sign mag 2^(max(field, 1) - bias - fbits); a zero's field is raised to
    # emask so that the smallest field is a nonzero value's
    zero = (((mag + every((2 << fbits) - 1)) >> (fbits + 1)) & one) ^ one
    mags, fields, signs = lanes(mag), lanes(field | (normal ^ one) | zero * emask), lanes(
        (x >> (w - 1)) & one)
    low = min(fields, default=emask)
    if low == emask:  # every value is zero (or there is none)
        return [0] * n, 1
    nums = [-(m << (f - low)) if s else m << (f - low) for m, f, s in zip(mags, fields, signs)]
    e = low - (1 << (ebits - 1)) + 1 - fbits
    return ([v << e for v in nums], 1) if e >= 0 else (nums, 1 << -e)


def float_bits_to_dyadic(kind: str, bits: int, rule: str, path: str) -> fmpq:
    """IEEE binary16/bfloat16/binary32/binary64 bits (below 2^width) to their value exactly."""
    nums, den = float_lanes(bits.to_bytes(_LANES[kind][0] // 8, "little"), 1, kind, rule, path,
                            index=False)
    return fmpq(nums[0], den)


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
        return float_bits_to_dyadic(kind, int(digits, 16), rule, path)
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
