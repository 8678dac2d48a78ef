"""Exact tensors: integer numerators over one shared positive denominator.

A value tensor of float32 weights is a list of integers with denominator 2^k, so a matrix product
is one exact FLINT integer matrix product (fmpz_mat). Interval tensors carry `lo` and `hi`
numerators over the same denominator; a point is an interval whose `lo` is `hi`.

Tensors enter the kernel from a safetensors file (read here with the standard library: an 8-byte
little-endian header length, a JSON header, raw little-endian data) or from base64 bytes, and are
bound by sha256 before they are decoded.
"""

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from flint import fmpq, fmpz

from kernel_checker.errors import refuse
from kernel_checker.exact import decode_rational, float_lanes

# dtype -> (struct code, bytes per element, float kind or None for integers)
DTYPES = {
    "F64": ("Q", 8, "f64"), "F32": ("I", 4, "f32"), "F16": ("H", 2, "f16"),
    "BF16": ("H", 2, "bf16"), "I64": ("q", 8, None), "I32": ("i", 4, None),
    "I8": ("b", 1, None), "U8": ("B", 1, None),
}
MAX_ELEMENTS = 200_000_000


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def lcm(a: int, b: int) -> int:
    a, b = fmpz(a), fmpz(b)
    return int(a * b // a.gcd(b))


@dataclass(frozen=True)
class Tensor:
    """Exact tensor: element i is nums[i] / den, row-major over `shape`."""

    shape: tuple[int, ...]
    nums: list
    den: int

    def value(self, i: int) -> fmpq:
        return fmpq(self.nums[i], self.den)

    def values(self) -> list[fmpq]:
        return [fmpq(n, self.den) for n in self.nums]


def rescale(nums: list, den: int, new_den: int) -> list:
    """Numerators over `den` re-expressed over a multiple `new_den` of it."""
    if new_den == den:
        return nums
    factor = new_den // den
    return [n * factor for n in nums]


def tensor_from_rationals(shape: tuple[int, ...], values: list[fmpq]) -> Tensor:
    den = fmpz(1)
    for v in values:
        if v.q != 1:
            den = den * v.q // den.gcd(v.q)
    den = int(den)
    return Tensor(tuple(shape), [int(v.p) * (den // int(v.q)) for v in values], den)


def decode_raw(data: bytes, dtype: str, shape: tuple[int, ...], rule: str, path: str) -> Tensor:
    """Little-endian raw bytes of a float or integer dtype to an exact tensor."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise refuse(rule, f"{path}.dtype", f"expected one of {sorted(DTYPES)}, found {dtype!r}")
    code, width, kind = DTYPES[dtype]
    n = numel(shape)
    if n > MAX_ELEMENTS:
        raise refuse(rule, f"{path}.shape", f"{n} elements exceed the limit {MAX_ELEMENTS}")
    if len(data) != n * width:
        raise refuse(rule, path, f"expected {n * width} bytes for {dtype} {list(shape)}, "
                     f"found {len(data)}")
    if kind is None:
        return Tensor(tuple(shape), list(struct.unpack(f"<{n}{code}", data)), 1)
    nums, den = float_lanes(data, n, kind, rule, path)
    return Tensor(tuple(shape), nums, den)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: object, rule: str, path: str) -> None:
    if not isinstance(expected, str) or len(expected) != 64:
        raise refuse(rule, path, f"expected a 64-hex-digit sha256, found {expected!r}")
    found = sha256_hex(data)
    if found != expected.lower():
        raise refuse(rule, path, f"sha256 mismatch: expected {expected}, found {found}")


def _shape_field(value: object, rule: str, path: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(  # (below 2^63, as safetensors readers need)
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 63 for d in value):
        raise refuse(rule, path, f"expected a list of integers in [0, 2^63), found {value!r}")
    return tuple(value)


def decode_inline_tensor(obj: object, rule: str, path: str) -> Tensor:
    """{"dtype","shape","b64","sha256"} (sha256 of the raw bytes) or {"shape","values"}."""
    if not isinstance(obj, dict):
        raise refuse(rule, path, f"expected a tensor object, found {type(obj).__name__}")
    shape = _shape_field(obj.get("shape"), rule, f"{path}.shape")
    if "values" in obj:
        if set(obj) != {"shape", "values"}:
            raise refuse(rule, path, "a values tensor has exactly the keys shape, values")
        vals = obj["values"]
        if not isinstance(vals, list) or len(vals) != numel(shape):
            raise refuse(rule, f"{path}.values", f"expected {numel(shape)} numbers")
        return tensor_from_rationals(shape, [decode_rational(v, f"{path}.values[{i}]", rule)
                                             for i, v in enumerate(vals)])
    if set(obj) != {"dtype", "shape", "b64", "sha256"}:
        raise refuse(rule, path, f"expected keys dtype, shape, b64, sha256, found {sorted(obj)}")
    try:
        data = base64.b64decode(obj["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise refuse(rule, f"{path}.b64", "expected base64 text") from None
    check_sha256(data, obj["sha256"], rule, f"{path}.sha256")
    return decode_raw(data, obj["dtype"], shape, rule, path)


class SafetensorsFile:
    """A safetensors file already bound by sha256; tensors decode on first use and are cached."""

    def __init__(self, data: bytes, rule: str, path: str):
        self._rule, self._path = rule, path
        if len(data) < 8:
            raise refuse(rule, path, "expected a safetensors file, found fewer than 8 bytes")
        (hlen,) = struct.unpack("<Q", data[:8])
        if hlen > len(data) - 8:
            raise refuse(rule, path, f"header length {hlen} exceeds the file size {len(data)}")
        from kernel_checker.exact import load_json

        try:  # (safetensors' header is UTF-8 JSON; json.loads would also guess UTF-16 or 32)
            header = load_json(data[8:8 + hlen].decode("utf-8"), rule, f"{path}:header")
        except UnicodeDecodeError:
            raise refuse(rule, f"{path}:header", "expected UTF-8 JSON") from None
        if not isinstance(header, dict):
            raise refuse(rule, f"{path}:header", "expected a JSON object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise refuse(rule, f"{path}:header.__metadata__", "expected an object of strings")
        self._payload = data[8 + hlen:]
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            ipath = f"{path}:{name}"
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise refuse(rule, ipath, "expected keys dtype, shape, data_offsets")
            shape = _shape_field(info["shape"], rule, f"{ipath}.shape")
            offs = info["data_offsets"]
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                    or not 0 <= offs[0] <= offs[1] <= len(self._payload)):
                raise refuse(rule, f"{ipath}.data_offsets", f"expected [begin, end] inside the "
                             f"{len(self._payload)}-byte payload, found {offs!r}")
            if not isinstance(info["dtype"], str) or info["dtype"] not in DTYPES:
                raise refuse(rule, f"{ipath}.dtype",
                             f"expected one of {sorted(DTYPES)}, found {info['dtype']!r}")
            if offs[1] - offs[0] != numel(shape) * DTYPES[info["dtype"]][1]:
                raise refuse(rule, f"{ipath}.data_offsets", f"expected {numel(shape)} "
                             f"{info['dtype']} values' bytes, found {offs[1] - offs[0]}")
            self.entries[name] = (info["dtype"], shape, offs[0], offs[1])
        end = 0  # the tensors' bytes tile the payload: no gap, overlap or trailing byte
        for begin, stop in sorted((b, e) for _, _, b, e in self.entries.values()):
            if begin != end:
                raise refuse(rule, path, f"tensor bytes do not tile the payload at byte {end}")
            end = stop
        if end != len(self._payload):
            raise refuse(rule, path, f"{len(self._payload) - end} bytes after the last tensor")
        self._cache: dict[str, Tensor] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def tensor(self, name: str) -> Tensor:
        if name not in self._cache:
            dtype, shape, begin, end = self.entries[name]
            self._cache[name] = decode_raw(self._payload[begin:end], dtype, shape, self._rule,
                                           f"{self._path}:{name}")
        return self._cache[name]
