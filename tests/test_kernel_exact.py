"""Exact number and tensor decoders (kernel_checker.exact, kernel_checker.tensor): every encoding
an artifact may use decodes to the exact rational it denotes, and every malformed or non-finite
one is refused with a KernelError naming the rule and the field's path."""

import base64
import hashlib
import json
import struct
import sys
from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors

from kernel_checker.errors import KernelError
from kernel_checker.exact import (
    DecimalText,
    common_denominator,
    decode_ball,
    decode_rational,
    decode_vector,
    encode_rational,
    load_json,
)
from kernel_checker.tensor import SafetensorsFile, decode_inline_tensor, decode_raw


def q(num, den=1) -> fmpq:
    return fmpq(num, den)


def refused(fn, *args, rule=None, path=None, contains=()):
    """Call fn(*args), expect a KernelError, check rule, path and message fragments."""
    with pytest.raises(KernelError) as info:
        fn(*args)
    err = info.value
    if rule is not None:
        assert err.rule == rule, err
    if path is not None:
        assert err.path == path, err
    for fragment in (contains if isinstance(contains, tuple) else (contains,)):
        assert fragment in err.message, err
    return err


# ---------------------------------------------------------------- scalars that decode exactly

@pytest.mark.parametrize("text, value", [
    (0, q(0)), (7, q(7)), (-12, q(-12)), (10**40, q(10**40)),
    ("123", q(123)), ("-7", q(-7)), ("+3", q(3)), ("  4 ", q(4)),
    ("-7/3", q(-7, 3)), ("6/4", q(3, 2)), ("0/5", q(0)),
    ("0.1", q(1, 10)), ("1.5e-3", q(3, 2000)), ("-.5", q(-1, 2)), ("5.", q(5)),
    ("1e5", q(100000)), ("2.5E+2", q(250)), ("-0.000", q(0)),
    ("0.30000000000000004", q(30000000000000004, 10**17)),
    ("f32:3f800000", q(1)), ("f32:3F800000", q(1)), ("f32:bf000000", q(-1, 2)),
    ("f32:3dcccccd", q(13421773, 2**27)),  # float32(0.1), not 1/10
    ("f32:00000001", q(1, 2**149)),  # smallest subnormal
    ("f32:807fffff", q(-(2**23 - 1), 2**149)),  # largest negative subnormal
    ("f32:00800000", q(1, 2**126)),  # smallest normal
    ("f32:7f7fffff", q((2**24 - 1) * 2**104)),  # largest finite
    ("f32:80000000", q(0)),  # negative zero
    ("f64:3ff0000000000000", q(1)), ("f64:3fb999999999999a", q(3602879701896397, 2**55)),
    ("f64:0000000000000001", q(1, 2**1074)), ("f64:c000000000000000", q(-2)),
    ("f16:3c00", q(1)), ("f16:0001", q(1, 2**24)), ("f16:7bff", q(65504)),
    ("f16:c400", q(-4)), ("f16:0400", q(1, 2**14)),
    ("bf16:3f80", q(1)), ("bf16:0001", q(1, 2**133)), ("bf16:c0a0", q(-5)),
    ("bf16:7f7f", q(255 * 2**120)),
])
def test_decode_rational_exact(text, value):
    assert decode_rational(text, "x") == value


def test_bit_patterns_match_numpy_exactly():
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.standard_normal(50), [1e-40, -3e-42, 3.4e38, 1e-310]])
    for v in vals:
        f32 = np.float32(v)
        bits32 = f"f32:{int(f32.view(np.uint32)):08x}"
        assert decode_rational(bits32, "x") == q(*Fraction(float(f32)).as_integer_ratio())
        f64 = np.float64(v)
        bits64 = f"f64:{int(f64.view(np.uint64)):016x}"
        assert decode_rational(bits64, "x") == q(*Fraction(float(f64)).as_integer_ratio())
        with np.errstate(over="ignore"):
            f16 = np.float16(v)
        if np.isfinite(f16):
            bits16 = f"f16:{int(f16.view(np.uint16)):04x}"
            assert decode_rational(bits16, "x") == q(*Fraction(float(f16)).as_integer_ratio())


def test_json_numbers_stay_exact_decimals():
    doc = load_json('{"a": 0.1, "b": 1.5e-3, "c": -2.5E+2, "d": 7, "e": 1e400, "f": -0.0}',
                    "claim")
    assert isinstance(doc["a"], DecimalText) and doc["a"] == "0.1"
    assert isinstance(doc["d"], int) and not isinstance(doc["d"], DecimalText)
    assert decode_rational(doc["a"], "a") == q(1, 10)  # not the binary64 nearest 0.1
    assert decode_rational(doc["a"], "a") != q(*Fraction(0.1).as_integer_ratio())
    assert decode_rational(doc["b"], "b") == q(3, 2000)
    assert decode_rational(doc["c"], "c") == q(-250)
    assert decode_rational(doc["d"], "d") == q(7)
    assert decode_rational(doc["e"], "e") == q(10**400)  # beyond binary64, still exact
    assert decode_rational(doc["f"], "f") == q(0)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_non_finite_tokens_refused(token):
    err = refused(load_json, f'{{"lo": [1, {token}]}}', "claim", rule="claim",
                  path="<document>", contains="non-finite")
    assert token.lstrip("-") in err.message


def test_load_json_refuses_garbage_and_names_the_path():
    refused(load_json, b"{not json", "bundle", "x.json", rule="bundle", path="x.json",
            contains="expected a JSON document")
    refused(load_json, b"\xff\xfe", "bundle", rule="bundle", path="<document>")


# ---------------------------------------------------------------- scalars that are refused

@pytest.mark.parametrize("text", ["f32:7f800000", "f32:ff800000", "f64:7ff0000000000000",
                                  "f64:fff0000000000000", "f16:7c00", "f16:fc00", "bf16:7f80",
                                  "bf16:ff80"])
def test_infinite_bits_refused(text):
    refused(decode_rational, text, "claim.lo[3]", "claim", rule="claim", path="claim.lo[3]",
            contains=("expected a finite", "found Inf"))


@pytest.mark.parametrize("text", ["f32:7fc00000", "f32:7f800001", "f32:ffffffff",
                                  "f64:7ff8000000000000", "f64:7ff0000000000001", "f16:7e00",
                                  "f16:7c01", "bf16:7fc0", "bf16:ff81"])
def test_nan_bits_refused(text):
    refused(decode_rational, text, "v", rule="decode", path="v", contains="found NaN")


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "+inf", "-Inf", "Infinity",
                                  "-infinity"])
def test_nan_inf_text_refused(text):
    refused(decode_rational, text, "claim.hi[0]", "claim", rule="claim", path="claim.hi[0]",
            contains="expected a finite number")


@pytest.mark.parametrize("value", [True, False])
def test_booleans_refused(value):
    refused(decode_rational, value, "a.b", rule="decode", path="a.b", contains="boolean")


@pytest.mark.parametrize("value", [0.5, float("nan"), float("inf"), None, [1], 1j])
def test_non_numbers_refused(value):
    """A binary float never enters the kernel directly: it must come as text or bits."""
    refused(decode_rational, value, "p", rule="decode", path="p", contains="expected a number")


@pytest.mark.parametrize("text", ["1/0", "-3/0", "0/0"])
def test_zero_denominator_refused(text):
    refused(decode_rational, text, "p", rule="decode", path="p",
            contains="nonzero denominator")


@pytest.mark.parametrize("text, want", [("f32:3f8000", 8), ("f32:3f80000000", 8),
                                        ("f64:3ff00000", 16), ("f16:3c000", 4), ("bf16:3f8", 4)])
def test_wrong_hex_length_refused(text, want):
    refused(decode_rational, text, "p", rule="decode", path="p",
            contains=f"expected {want} hex digits")


@pytest.mark.parametrize("text", ["1e999999", "1e-999999", "-2.5e4098", "1e4097", "0.5e-4096"])
def test_huge_exponent_is_a_resource_limit(text):
    refused(decode_rational, text, "p", rule="decode", path="p", contains="beyond the limit")


def test_exponent_at_the_limit_is_fine():
    assert decode_rational("1e4096", "p") == q(10**4096)
    assert decode_rational("1e-4096", "p") == q(1, 10**4096)


@pytest.mark.parametrize("text", ["1" * 5000, "-" + "9" * 4400, "1" * 4400 + ".5",
                                  "1" * 4500 + "/3", "3/" + "7" * 4400])
def test_long_integers_decode_or_are_refused_cleanly(text):
    """Long number texts (within MAX_INTEGER_DIGITS = 20000) must decode exactly or be refused
    with a KernelError; a raw ValueError from Python's int-digit limit is a kernel bug."""
    try:
        value = decode_rational(text, "p")
    except KernelError as err:
        assert err.path == "p"
        return
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        want = Fraction(text)
    finally:
        sys.set_int_max_str_digits(old)
    assert value == q(want.numerator, want.denominator)


def test_too_long_text_refused():
    refused(decode_rational, "1" * 20001, "p", rule="decode", path="p", contains="longer than")


@pytest.mark.parametrize("text", ["", " ", ".", "e5", "1/2/3", "1/-2", "0x10", "1,5", "--1",
                                  "1e", "one", "f32:", "f32:zzzzzzzz", "f80:3fff", "1_000",
                                  "½", "١٢"])
def test_malformed_text_refused(text):
    refused(decode_rational, text, "p", rule="decode", path="p")


# ---------------------------------------------------------------- Arb balls

def test_ball_endpoints_exact():
    assert decode_ball({"mid": "15", "rad": "1", "exp": "-1"}, "b") == (q(7, 5), q(8, 5))
    assert decode_ball({"mid": -3, "rad": 0, "exp": 2}, "b") == (q(-300), q(-300))
    assert decode_ball({"mid": "1", "rad": "2", "exp": "-1"}, "b") == (q(-1, 10), q(3, 10))


def test_zero_radius_ball_is_an_exact_number():
    assert decode_rational({"mid": "15", "rad": "0", "exp": "-1"}, "b") == q(3, 2)
    refused(decode_rational, {"mid": "15", "rad": "1", "exp": "-1"}, "claim.eps",
            path="claim.eps", contains="ball of positive radius")


def test_negative_radius_refused_at_rad():
    err = refused(decode_ball, {"mid": "1", "rad": "-1", "exp": "0"}, "claim.lo[2]", "claim",
                  rule="claim", path="claim.lo[2].rad", contains="rad >= 0")
    assert "-1" in err.message
    refused(decode_rational, {"mid": "1", "rad": "-5", "exp": "0"}, "x", path="x.rad")


@pytest.mark.parametrize("ball, path", [
    ({"mid": "1.5", "rad": "0", "exp": "0"}, "b.mid"),
    ({"mid": "1", "rad": "nan", "exp": "0"}, "b.rad"),
    ({"mid": True, "rad": "0", "exp": "0"}, "b.mid"),
    ({"mid": "1", "rad": 0.5, "exp": "0"}, "b.rad"),
    ({"mid": "1", "rad": "0", "exp": "1e3"}, "b.exp"),
    ({"mid": "1", "rad": "0", "exp": "5000"}, "b.exp"),
    ({"mid": "1", "rad": "0", "exp": -5000}, "b.exp"),
    ({"mid": "1", "rad": "0"}, "b"),
    ({"mid": "1", "rad": "0", "exp": "0", "extra": "1"}, "b"),
    ([1, 0, 0], "b"),
])
def test_malformed_balls_refused(ball, path):
    refused(decode_ball, ball, "b", rule="decode", path=path)


def test_huge_ball_mid_refused_cleanly():
    """A 5000-digit mid is within no stated limit's reach; it must be a KernelError (or decode),
    never a raw ValueError from Python's int-digit limit."""
    ball = {"mid": "1" * 5000, "rad": "0", "exp": "0"}
    try:
        lo, hi = decode_ball(ball, "b")
    except KernelError as err:
        assert err.path.startswith("b")
        return
    assert lo == hi and lo.p == fmpq(10**5000 - 1, 9).p


# ---------------------------------------------------------------- vectors and helpers

def test_vectors_and_lengths():
    assert decode_vector(["1/2", 3, "0.25"], "v") == [q(1, 2), q(3), q(1, 4)]
    refused(decode_vector, ["1", "2"], "claim.lo", "claim", 3, rule="claim", path="claim.lo",
            contains="expected 3 numbers, found 2")
    refused(decode_vector, ["1", "nan"], "claim.lo", "claim", rule="claim", path="claim.lo[1]")
    refused(decode_vector, "1", "v", path="v", contains="expected a list")


@settings(max_examples=200, deadline=None)
@given(p=st.integers(-10**70, 10**70), q=st.integers(1, 10**70), signed=st.booleans(),
       zeros=st.integers(0, 3))
def test_vector_texts_decode_as_the_rational_they_spell(p, q, signed, zeros):
    """decode_vector's fast path (integers and p/q, the texts producers send) and its general
    one agree: each text is the exact rational decode_rational reads, whatever its length,
    padding or sign; a zero denominator, however written, is refused at its index."""
    num = ("+" if signed and p >= 0 else "") + str(p)
    texts = [num, f"{num}/{'0' * zeros}{q}", f"{p}/{q}", "7"]
    want = [decode_rational(t, "v") for t in texts]
    assert want[:3] == [fmpq(p), fmpq(p, q), fmpq(p, q)]
    assert decode_vector(texts, "v") == want
    assert decode_vector(texts, "v") == want  # again, from the texts already decoded
    refused(decode_vector, ["1", f"{num}/{'0' * (zeros + 1)}"], "v", path="v[1]",
            contains="nonzero denominator")


def test_common_denominator_and_encoding():
    nums, den = common_denominator([q(1, 2), q(-1, 3), q(5)])
    assert (nums, den) == ([3, -2, 30], 6)
    assert encode_rational(q(-6, 4)) == "-3/2"
    assert encode_rational(q(12)) == "12"
    for v in (q(-3, 2), q(0), q(10**30, 7)):
        assert decode_rational(encode_rational(v), "p") == v


# ---------------------------------------------------------------- raw tensors, base64

def _inline(arr: np.ndarray, dtype: str) -> dict:
    data = arr.tobytes()
    return {"dtype": dtype, "shape": list(arr.shape),
            "b64": base64.b64encode(data).decode(), "sha256": hashlib.sha256(data).hexdigest()}


def _values(tensor) -> list:
    return tensor.values()


@pytest.mark.parametrize("dtype, np_dtype", [("F32", np.float32), ("F64", np.float64),
                                             ("F16", np.float16)])
def test_inline_float_tensor_exact(dtype, np_dtype):
    arr = np.array([[1.5, -0.1, 3e-5], [7.0, -2.0, 0.3]], dtype=np_dtype)
    t = decode_inline_tensor(_inline(arr, dtype), "graph", "nodes[0].attrs.value")
    assert t.shape == (2, 3)
    assert _values(t) == [q(*Fraction(float(v)).as_integer_ratio()) for v in arr.reshape(-1)]


def test_inline_bf16_and_int_tensors():
    f32 = np.array([1.0, -2.5, 3.0e-3], dtype=np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact top halves
    t = decode_inline_tensor(_inline(bf16, "BF16"), "r", "t")
    want = [Fraction(float(v)) for v in (bf16.astype(np.uint32) << 16).view(np.float32)]
    assert _values(t) == [q(*w.as_integer_ratio()) for w in want]
    ints = np.array([-3, 0, 7, 2**40], dtype=np.int64)
    assert _values(decode_inline_tensor(_inline(ints, "I64"), "r", "t")) == [
        q(-3), q(0), q(7), q(2**40)]


def test_inline_tensor_with_zero_elements():
    """Zeros (and -0.0) next to ordinary values are the commonest weights there are (a zero
    bias, a pruned weight): they must decode to 0 exactly."""
    for dtype, np_dtype in (("F32", np.float32), ("F64", np.float64), ("F16", np.float16)):
        arr = np.array([0.0, 1.0, -0.0, -0.25], dtype=np_dtype)
        t = decode_inline_tensor(_inline(arr, dtype), "r", "t")
        assert _values(t) == [q(0), q(1), q(0), q(-1, 4)], dtype


def test_raw_all_zero_and_subnormal_tensors():
    assert decode_raw(struct.pack("<3f", 0.0, -0.0, 0.0), "F32", (3,), "r", "t").values() == [
        q(0)] * 3
    sub = np.array([1e-45, -1e-40], dtype=np.float32)
    assert decode_raw(sub.tobytes(), "F32", (2,), "r", "t").values() == [
        q(*Fraction(float(v)).as_integer_ratio()) for v in sub]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([("F16", np.float16, np.uint16), ("F32", np.float32, np.uint32),
                        ("F64", np.float64, np.uint64)]),
       st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=300),
       st.integers(min_value=0, max_value=300))
def test_raw_float_tensors_decode_every_bit_pattern_exactly(kind, words, bad):
    """decode_raw takes a whole tensor's bits at once: any finite bit patterns (subnormals,
    -0.0, the largest exponents) decode to the values numpy reads; one NaN or Inf anywhere is
    refused at its index."""
    dtype, np_dtype, np_bits = kind
    bits = np.array([w % (1 << (8 * np.dtype(np_bits).itemsize)) for w in words], dtype=np_bits)
    vals = bits.view(np_dtype)
    finite = np.isfinite(vals)
    bits, vals = bits[finite], vals[finite]
    if len(bits):
        got = decode_raw(bits.tobytes(), dtype, (len(bits),), "r", "t").values()
        assert got == [q(*Fraction(float(v)).as_integer_ratio()) for v in vals]
    i = bad % (len(bits) + 1)
    for special in (np.nan, np.inf, -np.inf):
        arr = np.insert(vals, i, special).astype(np_dtype)
        refused(decode_raw, arr.tobytes(), dtype, (len(arr),), "r", "t", rule="r",
                path=f"t[{i}]", contains="NaN" if np.isnan(special) else "Inf")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**16 - 1), min_size=1, max_size=700),
       st.integers(min_value=0, max_value=700))
def test_raw_bfloat16_tensors_are_the_top_halves_of_binary32(words, bad):
    """A bfloat16 is the top half of a binary32: each value decodes to what numpy reads from its
    bits shifted up 16 (subnormals and -0.0 included, hundreds of values a tensor); NaN or Inf
    is refused at its index."""
    wide = np.array([w << 16 for w in words], dtype=np.uint32).view(np.float32)
    keep = [w for w, v in zip(words, wide) if np.isfinite(v)]
    if keep:
        got = decode_raw(struct.pack(f"<{len(keep)}H", *keep), "BF16", (len(keep),), "r",
                         "t").values()
        assert got == [q(*Fraction(float(v)).as_integer_ratio()) for v in
                       np.array([w << 16 for w in keep], dtype=np.uint32).view(np.float32)]
    i = bad % (len(keep) + 1)
    for special, name in ((0x7FC0, "NaN"), (0xFF80, "Inf")):
        arr = [*keep[:i], special, *keep[i:]]
        refused(decode_raw, struct.pack(f"<{len(arr)}H", *arr), "BF16", (len(arr),), "r", "t",
                rule="r", path=f"t[{i}]", contains=name)


def test_values_inline_tensor():
    t = decode_inline_tensor({"shape": [2, 2], "values": ["1/3", 2, "0.5", "f32:3f800000"]},
                             "graph", "c")
    assert t.shape == (2, 2) and _values(t) == [q(1, 3), q(2), q(1, 2), q(1)]
    refused(decode_inline_tensor, {"shape": [2], "values": ["1", "nan"]}, "graph", "c",
            rule="graph", path="c.values[1]")
    refused(decode_inline_tensor, {"shape": [3], "values": ["1"]}, "graph", "c", path="c.values")


def test_inline_tensor_bit_flip_is_a_sha_mismatch():
    arr = np.array([1.0, 2.0, -3.5], dtype=np.float32)
    doc = _inline(arr, "F32")
    data = bytearray(arr.tobytes())
    data[5] ^= 0x01
    doc["b64"] = base64.b64encode(bytes(data)).decode()
    err = refused(decode_inline_tensor, doc, "graph", "nodes[1].attrs.value", rule="graph",
                  path="nodes[1].attrs.value.sha256", contains="sha256 mismatch")
    assert doc["sha256"] in err.message
    assert hashlib.sha256(bytes(data)).hexdigest() in err.message


def test_inline_tensor_with_nan_element_names_the_index():
    arr = np.array([1.0, 2.0, np.nan, 4.0], dtype=np.float32)
    refused(decode_inline_tensor, _inline(arr, "F32"), "graph", "w", rule="graph", path="w[2]",
            contains="NaN")
    arr = np.array([[1.0, 2.0], [-np.inf, 4.0]], dtype=np.float64)
    refused(decode_inline_tensor, _inline(arr, "F64"), "graph", "w", path="w[2]",
            contains="Inf")
    arr = np.array([1.0, np.inf], dtype=np.float16)
    refused(decode_inline_tensor, _inline(arr, "F16"), "graph", "w", path="w[1]",
            contains="Inf")


@pytest.mark.parametrize("mutate, path, fragment", [
    (lambda d: d.update(dtype="F128"), "t.dtype", "expected one of"),
    (lambda d: d.update(b64="!!not base64!!"), "t.b64", "base64"),
    (lambda d: d.update(sha256="abc"), "t.sha256", "64-hex-digit"),
    (lambda d: d.update(shape=[4]), "t", "expected 16 bytes"),
    (lambda d: d.update(shape=[-1]), "t.shape", "integers in [0, 2^63)"),
    (lambda d: d.pop("sha256"), "t", "expected keys"),
])
def test_inline_tensor_malformed(mutate, path, fragment):
    doc = _inline(np.array([1.0, 2.0, 3.0], dtype=np.float32), "F32")
    mutate(doc)
    refused(decode_inline_tensor, doc, "graph", "t", rule="graph", path=path, contains=fragment)


# ---------------------------------------------------------------- safetensors files

def _st_bytes() -> bytes:
    return save_safetensors({"w": np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32),
                             "b": np.array([3.0, -1.5], dtype=np.float32)})


def test_safetensors_good_file():
    sf = SafetensorsFile(_st_bytes(), "graph", "weights")
    assert sf.shape("w") == (2, 2)
    assert sf.tensor("w").values() == [q(1), q(-2), q(1, 2), q(4)]
    assert sf.tensor("b").values() == [q(3), q(-3, 2)]


def test_safetensors_header_length_too_large():
    data = bytearray(_st_bytes())
    data[0:8] = struct.pack("<Q", len(data) + 1)
    refused(SafetensorsFile, bytes(data), "graph", "weights", rule="graph", path="weights",
            contains="exceeds the file size")


def test_safetensors_too_short():
    refused(SafetensorsFile, b"\x01\x02", "graph", "weights", path="weights",
            contains="fewer than 8 bytes")


def test_safetensors_corrupted_header_json():
    data = bytearray(_st_bytes())
    data[8] = ord("[") if data[8] != ord("[") else ord("{")
    data[9] = ord("x")
    refused(SafetensorsFile, bytes(data), "graph", "weights", rule="graph",
            path="weights:header")


def _with_header(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def test_safetensors_bad_entries():
    payload = np.array([1.0, 2.0], dtype=np.float32).tobytes()
    bad_offsets = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}
    refused(SafetensorsFile, _with_header(bad_offsets, payload), "graph", "weights",
            path="weights:w.data_offsets", contains="inside the 8-byte payload")
    bad_dtype = {"w": {"dtype": "F8", "shape": [2], "data_offsets": [0, 8]}}
    refused(SafetensorsFile, _with_header(bad_dtype, payload), "graph", "weights",
            path="weights:w.dtype")
    bad_keys = {"w": {"dtype": "F32", "shape": [2]}}
    refused(SafetensorsFile, _with_header(bad_keys, payload), "graph", "weights",
            path="weights:w")
    not_obj = ["w"]
    refused(SafetensorsFile, _with_header(not_obj, payload), "graph", "weights",
            path="weights:header")
    short = {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    refused(SafetensorsFile, _with_header(short, payload), "graph", "weights",
            path="weights:w.data_offsets", contains="expected 3 F32 values' bytes, found 8")
    nan = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    sf = SafetensorsFile(_with_header(nan, np.array([1.0, np.nan], np.float32).tobytes()),
                         "graph", "weights")
    refused(sf.tensor, "w", rule="graph", path="weights:w[1]", contains="NaN")


@pytest.mark.parametrize("header,payload,path,fragment", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},  # overlapping tensors
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "weights",
     "do not tile the payload at byte 8"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "weights",
     "do not tile the payload at byte 0"),  # a gap before it
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 8, "weights",
     "4 bytes after the last tensor"),
    ({"__metadata__": {"n": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 4,
     "weights:header.__metadata__", "expected an object of strings"),
])
def test_safetensors_bytes_tile_the_payload_and_metadata_are_strings(header, payload, path,
                                                                     fragment):
    """What the safetensors format (and its library) refuses, the kernel refuses: the tensors'
    byte ranges cover the payload exactly once, and the metadata map strings to strings."""
    data = _with_header(header, np.arange(payload // 4, dtype=np.float32).tobytes())
    refused(SafetensorsFile, data, "graph", "weights", path=path, contains=fragment)


def test_safetensors_header_must_be_utf8_and_keys_unique():
    payload = np.array([2.0], dtype=np.float32).tobytes()
    entry = '"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    utf16 = ("{" + entry + "}").encode("utf-16")
    refused(SafetensorsFile, struct.pack("<Q", len(utf16)) + utf16 + payload, "graph", "weights",
            path="weights:header", contains="expected UTF-8 JSON")
    twice = ("{" + entry + ", " + entry.replace("[0, 4]", "[0, 4] ") + "}").encode()
    refused(SafetensorsFile, struct.pack("<Q", len(twice)) + twice + payload, "graph",
            "weights", path="weights:header", contains="duplicate key 'w'")


def test_json_objects_with_duplicate_keys_are_refused():
    """json keeps an object's last duplicate; a reader keeping the first would check another
    document from the same bytes, so the kernel refuses both readings."""
    from kernel_checker.exact import load_json

    assert load_json('{"a": {"b": 1}, "c": [{"b": 2}]}', "graph") == {"a": {"b": 1},
                                                                     "c": [{"b": 2}]}
    refused(load_json, '{"a": 1, "b": {"c": 2, "c": 3}}', "graph", "doc", rule="graph",
            path="doc", contains="duplicate key 'c'")


def test_safetensors_metadata_ignored():
    payload = np.array([2.0], dtype=np.float32).tobytes()
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    sf = SafetensorsFile(_with_header(header, payload), "graph", "weights")
    assert list(sf.entries) == ["w"] and sf.tensor("w").values() == [q(2)]


@pytest.mark.parametrize("dtype", [["F32"], {"a": 1}])
def test_unhashable_dtype_is_a_kernel_error(dtype):
    """A malformed (JSON list/object) dtype must be refused as a KernelError, not crash."""
    payload = np.array([1.0], dtype=np.float32).tobytes()
    header = {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}
    refused(SafetensorsFile, _with_header(header, payload), "graph", "weights",
            path="weights:w.dtype")
    doc = {"dtype": dtype, "shape": [1], "b64": base64.b64encode(payload).decode(),
           "sha256": hashlib.sha256(payload).hexdigest()}
    refused(decode_inline_tensor, doc, "graph", "t", path="t.dtype")
