"""State-dict contracts: a safetensors file, the producer's manifest of it, and optionally the
tensors a consumer expects (name -> shape, dtype), checked against each other exactly.

Manifest (`tl.weights_manifest.v1`): {"format", "weights": {"path", "sha256"}, "tensors":
[{"name", "shape", "dtype", "sha256"}, ...], "source" (optional, not checked)}. The file is
bound by its sha256 and every tensor by the sha256 of its raw bytes; float tensors (F32, F64,
F16, BF16: exact dyadics) must be finite. Errors name the key: `fc1.weight: expected shape
[256, 784], got [784, 256]`.
"""

from dataclasses import dataclass

from kernel_checker.errors import refuse
from kernel_checker.tensor import DTYPES, SafetensorsFile, check_sha256, numel

RULE = "state_dict"
MANIFEST_FORMAT = "tl.weights_manifest.v1"
FLOAT_BITS = {"F64": (52, 11), "F32": (23, 8), "F16": (10, 5), "BF16": (7, 8)}  # fraction, exp


@dataclass(frozen=True)
class StateDictContract:
    """A checked state dict: the file's sha256 and name -> (dtype, shape, sha256 of the bytes)."""

    sha256: str
    tensors: dict


def _lanes(pattern: int, width: int, count: int) -> int:
    return int.from_bytes(pattern.to_bytes(width, "little") * count, "little")


def first_nonfinite(data, dtype: str) -> int | None:
    """Index of the first NaN/Inf element of little-endian float bytes, or None.

    Fast path: an element is non-finite only if its top byte holds the exponent field's top bits.
    Otherwise, exactly, in integer lanes of `width` bytes: z = (x & F) ^ F is zero in a lane iff
    its exponent field is all ones; z + F then sets the lane's top bit iff z != 0, and never
    carries into the next lane (2F < 2^(8 width))."""
    frac, exp = FLOAT_BITS[dtype]
    width = (1 + frac + exp) // 8
    field = ((1 << exp) - 1) << frac
    top_mask = field >> (8 * (width - 1))
    table = bytes(1 if (b & top_mask) == top_mask else 0 for b in range(256))
    if 1 not in bytes(data[width - 1::width]).translate(table):
        return None
    count = len(data) // width
    fields, top = _lanes(field, width, count), _lanes(1 << (frac + exp), width, count)
    missing = ((((int.from_bytes(data, "little") & fields) ^ fields) + fields) & top) ^ top
    return ((missing & -missing).bit_length() - 1) // (8 * width) if missing else None


def _keys(obj: object, required: set, optional: set, path: str) -> dict:
    if not isinstance(obj, dict):
        raise refuse(RULE, path, f"expected an object, found {type(obj).__name__}")
    if required - set(obj) or set(obj) - required - optional:
        raise refuse(RULE, path, f"expected keys {sorted(required)} (optional {sorted(optional)}),"
                     f" found {sorted(obj)}")
    return obj


def _shape(value: object, path: str) -> list:
    if not isinstance(value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise refuse(RULE, path, f"expected a list of non-negative integers, found {value!r}")
    return value


def _names(kind: str, names: set) -> str:
    return f"{kind} keys {sorted(names)}" if names else ""


def check_expected(found: dict, expected: object) -> None:
    """`found` (name -> (dtype, shape, ...)) against `expected` (name -> {"shape", "dtype"?})."""
    if not isinstance(expected, dict):
        raise refuse(RULE, "expected", f"expected an object, found {type(expected).__name__}")
    missing, unexpected = set(expected) - set(found), set(found) - set(expected)
    if missing or unexpected:
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = " (the keys carry a 'module.' prefix: strip it on export)"
        text = "; ".join(t for t in (_names("missing", missing), _names("unexpected", unexpected))
                         if t)
        raise refuse(RULE, "<state_dict>", text + hint)
    for name in sorted(expected):
        spec = _keys(expected[name], {"shape"}, {"dtype"}, f"expected.{name}")
        shape = _shape(spec["shape"], f"expected.{name}.shape")
        dtype, got_shape = found[name][0], list(found[name][1])
        if got_shape != shape:
            raise refuse(RULE, name, f"expected shape {shape}, got {got_shape}")
        want = spec.get("dtype")
        if want is not None and dtype not in (want if isinstance(want, list) else [want]):
            raise refuse(RULE, name, f"expected dtype {want}, got {dtype}")


def check_state_dict(manifest: object, data: bytes, expected: object = None
                     ) -> StateDictContract:
    """Bind `data` (the safetensors bytes) to `manifest`, then check it against `expected`."""
    doc = _keys(manifest, {"format", "weights", "tensors"}, {"source"}, "manifest")
    if doc["format"] != MANIFEST_FORMAT:
        raise refuse(RULE, "manifest.format", f"expected {MANIFEST_FORMAT!r}, found "
                     f"{doc['format']!r}")
    weights = _keys(doc["weights"], {"path", "sha256"}, set(), "manifest.weights")
    check_sha256(data, weights["sha256"], RULE, "manifest.weights.sha256")
    header = SafetensorsFile(data, RULE, "weights")
    payload = memoryview(data)[8 + int.from_bytes(data[:8], "little"):]
    if not isinstance(doc["tensors"], list):
        raise refuse(RULE, "manifest.tensors", "expected a list of tensor entries")
    found = {}
    for i, entry in enumerate(doc["tensors"]):
        entry = _keys(entry, {"name", "shape", "dtype", "sha256"}, set(), f"manifest.tensors[{i}]")
        name = entry["name"]
        if not isinstance(name, str) or name in found:
            raise refuse(RULE, f"manifest.tensors[{i}].name", f"expected a new name, found "
                         f"{name!r}")
        if name not in header.entries:
            raise refuse(RULE, name, "listed in the manifest but absent from the weights file")
        dtype, shape, begin, end = header.entries[name]
        if entry["dtype"] != dtype:
            raise refuse(RULE, name, f"manifest says dtype {entry['dtype']!r}, file has {dtype}")
        if _shape(entry["shape"], f"{name}.shape") != list(shape):
            raise refuse(RULE, name, f"manifest says shape {entry['shape']}, file has "
                         f"{list(shape)}")
        if end - begin != numel(shape) * DTYPES[dtype][1]:
            raise refuse(RULE, name, f"expected {numel(shape) * DTYPES[dtype][1]} bytes for "
                         f"{dtype} {list(shape)}, found {end - begin}")
        check_sha256(payload[begin:end], entry["sha256"], RULE, f"{name}.sha256")
        found[name] = (dtype, shape, entry["sha256"].lower())
    extra = set(header.entries) - set(found)
    if extra:
        raise refuse(RULE, "manifest.tensors", f"the weights file holds tensors the manifest "
                     f"does not list: {sorted(extra)}")
    if expected is not None:
        check_expected(found, expected)
    for name, (dtype, _, _) in found.items():
        if dtype in FLOAT_BITS:
            _, _, begin, end = header.entries[name]
            bad = first_nonfinite(payload[begin:end], dtype)
            if bad is not None:
                raise refuse(RULE, f"{name}[{bad}]", f"expected a finite {dtype} value, found "
                             "NaN or Inf")
    return StateDictContract(weights["sha256"], found)
