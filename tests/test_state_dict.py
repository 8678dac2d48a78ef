"""State dicts: safetensors + manifest export, the kernel's contract check (names, shapes, dtypes,
finiteness, missing/unexpected keys, sha256 binding) and the separate-process checkpoint bridge."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_checker.contracts import check_state_dict, first_nonfinite
from kernel_checker.errors import KernelError
from kernel_checker.tensor import SafetensorsFile
from oracles import state_dict as sd
from oracles.subprocess_layer import ToolError

torch = pytest.importorskip("torch")
nn = torch.nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.bn = nn.BatchNorm1d(256)
        self.fc2 = nn.Linear(256, 10)


def saved(tmp_path, state=None, **kw):
    w = sd.export_state_dict(state if state is not None else Net(), str(tmp_path), **kw)
    return w, json.load(open(w.manifest_path)), open(w.weights_path, "rb").read()


def test_export_writes_safetensors_and_a_manifest_with_per_tensor_sha256(tmp_path):
    w, manifest, data = saved(tmp_path)
    assert manifest["format"] == "tl.weights_manifest.v1"
    assert manifest["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    names = [t["name"] for t in manifest["tensors"]]
    assert names == list(Net().state_dict())
    header = SafetensorsFile(data, "t", "w")
    payload = data[8 + struct.unpack("<Q", data[:8])[0]:]
    for t in manifest["tensors"]:
        dtype, shape, b, e = header.entries[t["name"]]
        assert (dtype, list(shape)) == (t["dtype"], t["shape"])
        assert hashlib.sha256(payload[b:e]).hexdigest() == t["sha256"]
    from safetensors.torch import load_file  # the official reader accepts our writer's file

    assert set(load_file(w.weights_path)) == set(names)


def test_round_trip_every_float_dtype_bit_exactly(tmp_path):
    torch.manual_seed(0)
    state = {f"t.{d}": torch.randn(3, 5).to(d) for d in
             (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
    state["count"] = torch.tensor(7)
    saved(tmp_path, state)
    loaded = sd.load_state_dict(str(tmp_path), {k: {"shape": list(v.shape)}
                                                for k, v in state.items()})
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    contract = sd.check_saved(str(tmp_path))
    assert {k: v[0] for k, v in contract.tensors.items()} == {
        "t.torch.float32": "F32", "t.torch.float64": "F64", "t.torch.float16": "F16",
        "t.torch.bfloat16": "BF16", "count": "I64"}


def test_shape_mismatch_names_the_key_expected_and_found(tmp_path):
    net = Net()
    with torch.no_grad():
        net.fc1.weight = nn.Parameter(net.fc1.weight.T.contiguous())
    saved(tmp_path, net)
    with pytest.raises(KernelError) as info:
        sd.check_saved(str(tmp_path), sd.expected_from_module(Net()))
    assert str(info.value) == "state_dict: fc1.weight: expected shape [256, 784], got [784, 256]"


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = Net().state_dict()
    state.pop("fc2.bias")
    state["extra.weight"] = torch.zeros(2)
    saved(tmp_path, state)
    with pytest.raises(KernelError, match=r"missing keys \['fc2.bias'\]; unexpected keys "
                       r"\['extra.weight'\]"):
        sd.check_saved(str(tmp_path), sd.expected_from_module(Net()))


def test_module_prefix_is_diagnosed_and_strippable(tmp_path):
    state = {f"module.{k}": v for k, v in Net().state_dict().items()}
    saved(tmp_path / "a", state)
    with pytest.raises(KernelError, match="'module.' prefix"):
        sd.check_saved(str(tmp_path / "a"), sd.expected_from_module(Net()))
    saved(tmp_path / "b", state, strip_module_prefix=True)
    sd.check_saved(str(tmp_path / "b"), sd.expected_from_module(Net()))


def test_dtype_mismatch_is_refused(tmp_path):
    saved(tmp_path, Net().double())
    with pytest.raises(KernelError, match="bn.bias: expected dtype F32, got F64"):
        sd.check_saved(str(tmp_path), sd.expected_from_module(Net()))


def test_sha256_binding_of_the_file_and_of_each_tensor(tmp_path):
    _, manifest, data = saved(tmp_path, {"a": torch.ones(4), "b": torch.zeros(2)})
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(KernelError, match="manifest.weights.sha256: sha256 mismatch"):
        check_state_dict(manifest, bytes(tampered))
    manifest["tensors"][1]["sha256"] = manifest["tensors"][0]["sha256"]
    with pytest.raises(KernelError, match=r"b.sha256: sha256 mismatch"):
        check_state_dict(manifest, data)


def test_manifest_and_file_must_list_the_same_tensors(tmp_path):
    _, manifest, data = saved(tmp_path, {"a": torch.ones(4), "b": torch.zeros(2)})
    short = dict(manifest, tensors=manifest["tensors"][:1])
    with pytest.raises(KernelError, match=r"does not list: \['b'\]"):
        check_state_dict(short, data)
    wrong = json.loads(json.dumps(manifest))
    wrong["tensors"][0]["shape"] = [2, 2]
    with pytest.raises(KernelError, match=r"a: manifest says shape \[2, 2\], file has \[4\]"):
        check_state_dict(wrong, data)
    with pytest.raises(KernelError, match="manifest.format"):
        check_state_dict(dict(manifest, format="other"), data)


def _raw_file(name: str, dtype: str, shape: list, payload: bytes) -> tuple[dict, bytes]:
    header = json.dumps({name: {"dtype": dtype, "shape": shape,
                                "data_offsets": [0, len(payload)]}}).encode()
    data = struct.pack("<Q", len(header)) + header + payload
    manifest = {"format": "tl.weights_manifest.v1",
                "weights": {"path": "w", "sha256": hashlib.sha256(data).hexdigest()},
                "tensors": [{"name": name, "dtype": dtype, "shape": shape,
                             "sha256": hashlib.sha256(payload).hexdigest()}]}
    return manifest, data


@pytest.mark.parametrize("dtype, np_dtype", [("F32", np.float32), ("F64", np.float64),
                                             ("F16", np.float16), ("BF16", None)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_the_element_index(dtype, np_dtype, bad):
    values = np.linspace(-3, 3, 40).astype(np.float32)
    values[17] = bad
    if np_dtype is None:  # bfloat16: the top half of each float32
        payload = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        payload = values.astype(np_dtype).tobytes()
    manifest, data = _raw_file("layer.weight", dtype, [40], payload)
    with pytest.raises(KernelError, match=r"layer.weight\[17\]: expected a finite"):
        check_state_dict(manifest, data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_first_nonfinite_agrees_with_numpy_on_any_bit_pattern(words):
    data = np.array(words, dtype="<u4").tobytes()
    for dtype, view in (("F32", "<f4"), ("F16", "<f2"), ("F64", "<f8")):
        arr = np.frombuffer(data[:len(data) // 8 * 8] if dtype == "F64" else data, view)
        bad = np.flatnonzero(~np.isfinite(arr))
        expected = int(bad[0]) if bad.size else None
        assert first_nonfinite(memoryview(arr.tobytes()), dtype) == expected


def test_producer_refuses_nan_before_writing(tmp_path):
    with pytest.raises(sd.StateDictError, match="w: NaN or Inf"):
        sd.export_state_dict({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path))


def test_unwrap_checkpoint_variants():
    inner = {"w": torch.ones(1)}
    assert sd.unwrap_checkpoint({"state_dict": inner, "epoch": 3}) == (inner, "state_dict")
    assert sd.unwrap_checkpoint({"model_state_dict": inner}) == (inner, "model_state_dict")
    assert sd.unwrap_checkpoint(inner) == (inner, None)
    assert sd.unwrap_checkpoint({"ema": inner}, "ema") == (inner, "ema")
    with pytest.raises(sd.StateDictError, match="no key 'ema'"):
        sd.unwrap_checkpoint(inner, "ema")
    with pytest.raises(sd.StateDictError, match="collides"):
        sd.strip_prefix({"module.a": 1, "a": 2})


def test_bridge_converts_wrapped_checkpoints_in_a_separate_process(tmp_path):
    net = Net()
    ckpt = tmp_path / "ck.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "epoch": 4, "optimizer": {"lr": 0.1}}, ckpt)
    report = sd.convert_checkpoint(str(ckpt), str(tmp_path / "out"), strip_module_prefix=True)
    assert report["format"] == "tl.bridge.v1" and report["unwrapped"] == "model_state_dict"
    loaded = sd.load_state_dict(str(tmp_path / "out"), sd.expected_from_module(Net()))
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v)
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["source"]["stripped_module_prefix"] is True


def test_bridge_loads_with_weights_only_and_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": Payload()}}, ckpt)
    with pytest.raises(ToolError) as info:
        sd.convert_checkpoint(str(ckpt), str(tmp_path / "out"))
    assert info.value.exit_code == 2 and "torch.load(weights_only=True) refused the checkpoint" \
        in info.value.stderr_tail and "weights_only` set to `False`" not in info.value.stderr_tail
    assert not (tmp_path / "out").exists()


def test_a_manifest_without_its_fields_or_files_is_refused_naming_them(tmp_path):
    """_read_manifest raised KeyError, TypeError or a bare FileNotFoundError (a review)."""
    w, manifest, _ = saved(tmp_path / "ok")
    for doc, where in (({"format": manifest["format"]}, "manifest.weights.path"),
                       ({**manifest, "weights": "x"}, "manifest.weights.path"),
                       ([1, 2], "manifest.weights.path"),
                       ({**manifest, "weights": {**manifest["weights"], "path": "gone.st"}},
                        "manifest.weights.path")):
        (tmp_path / "m.json").write_text(json.dumps(doc))
        with pytest.raises(KernelError) as info:
            sd.check_saved(str(tmp_path / "m.json"))
        assert info.value.path == where, info.value
    with pytest.raises(KernelError, match="cannot read the manifest"):
        sd.check_saved(str(tmp_path / "none.json"))


def test_a_dimension_no_safetensors_reader_takes_is_refused():
    """[2^70, 0] (zero bytes) passed the kernel, then failed in the safetensors loader."""
    manifest, data = _raw_file("w", "F32", [2**70, 0], b"")
    with pytest.raises(KernelError, match=r"integers in \[0, 2\^63\)"):
        check_state_dict(manifest, data)


def test_bridge_refuses_non_tensor_values(tmp_path):
    ckpt = tmp_path / "ck.pt"
    torch.save({"w": torch.ones(2), "note": "hello"}, ckpt)
    with pytest.raises(ToolError) as info:
        sd.convert_checkpoint(str(ckpt), str(tmp_path / "out"))
    assert "note: expected a tensor, found str" in info.value.stderr_tail
