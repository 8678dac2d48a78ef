"""State dicts at the PyTorch boundary: safetensors files with a JSON manifest.

Export writes `weights.safetensors` and `manifest.json` (`tl.weights_manifest.v1`: file sha256,
and name, shape, dtype, sha256 of each tensor's raw bytes). Import hands the bytes and the
manifest to the kernel (`kernel_checker.contracts.check_state_dict`: names, shapes, dtypes,
finiteness, missing and unexpected keys, sha256 binding) before any tensor is built.

Pickled checkpoints (`.pt`, `.pth`) are never unpickled in this process: `convert_checkpoint` runs
`oracles/checkpoint_bridge.py` in a separate Python process (`TL_PYTHON`, else this interpreter)
through the subprocess layer; it loads with `torch.load(weights_only=True)`.

Untrusted: everything here is re-checked by the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kernel_checker.contracts import MANIFEST_FORMAT, check_state_dict
from kernel_checker.errors import read_bytes, refuse
from kernel_checker.exact import load_json
from oracles.subprocess_layer import Tool

WEIGHTS_NAME = "weights.safetensors"
MANIFEST_NAME = "manifest.json"
BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_bridge.py")
PYTHON = Tool("python", sys.executable)  # (the bridge says itself when torch is missing)
CHECKPOINT_KEYS = ("state_dict", "model_state_dict")

_NUMPY_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
                 "int32": "I32", "int8": "I8", "uint8": "U8"}
_TORCH_DTYPES = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
                 "torch.bfloat16": "BF16", "torch.int64": "I64", "torch.int32": "I32",
                 "torch.int8": "I8", "torch.uint8": "U8"}


class StateDictError(ValueError):
    """A state dict this producer refuses to write (wrong type, NaN/Inf, unsupported dtype)."""


@dataclass(frozen=True)
class RawTensor:
    """A tensor as safetensors stores it: dtype name, shape and a little-endian numpy array
    holding its bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class Written:
    weights_path: str
    manifest_path: str
    sha256: str
    manifest: dict
    nbytes: int


def raw_from_numpy(name: str, value) -> RawTensor:
    arr = np.asarray(value, order="C")
    if str(arr.dtype) == "bfloat16":  # ml_dtypes (ONNX initializers): keep the bits
        return RawTensor("BF16", arr.shape, arr.view(np.uint16).astype("<u2", copy=False))
    dtype = _NUMPY_DTYPES.get(str(arr.dtype))
    if dtype is None:
        raise StateDictError(f"{name}: dtype {arr.dtype} is not one of "
                             f"{sorted(_NUMPY_DTYPES)} (or bfloat16)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise StateDictError(f"{name}: NaN or Inf values")
    return RawTensor(dtype, arr.shape, arr.astype(arr.dtype.newbyteorder("<"), copy=False))


def raw_from_torch(name: str, tensor) -> RawTensor:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise StateDictError(f"{name}: expected a tensor, found {type(tensor).__name__}")
    t = tensor.detach().cpu().contiguous()
    dtype = _TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise StateDictError(f"{name}: dtype {t.dtype} is not one of {sorted(_TORCH_DTYPES)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise StateDictError(f"{name}: NaN or Inf values")
    if sys.byteorder != "little":
        raise StateDictError("big-endian hosts are not supported")
    arr = t.view(torch.int16).numpy() if dtype == "BF16" else t.numpy()
    return RawTensor(dtype, tuple(t.shape), arr)


def write_weights(tensors: Mapping[str, RawTensor], folder: str, source: dict | None = None,
                  weights_name: str = WEIGHTS_NAME, manifest_name: str = MANIFEST_NAME
                  ) -> Written:
    """Write a safetensors file (tensors in the given order, contiguous) and its manifest."""
    os.makedirs(folder, exist_ok=True)
    header, entries, offset = {}, [], 0
    for name, raw in tensors.items():
        view = memoryview(np.ascontiguousarray(raw.data).reshape(-1).view(np.uint8))
        size = view.nbytes
        header[name] = {"dtype": raw.dtype, "shape": [int(d) for d in raw.shape],
                        "data_offsets": [offset, offset + size]}
        entries.append((name, raw, view))
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    file_hash = hashlib.sha256()
    listed = []
    path = os.path.join(folder, weights_name)
    with open(path, "wb") as f:
        for chunk in (len(text).to_bytes(8, "little"), text):
            f.write(chunk)
            file_hash.update(chunk)
        for name, raw, view in entries:
            f.write(view)
            file_hash.update(view)
            listed.append({"name": name, "shape": [int(d) for d in raw.shape],
                           "dtype": raw.dtype, "sha256": hashlib.sha256(view).hexdigest()})
    manifest = {"format": MANIFEST_FORMAT,
                "weights": {"path": weights_name, "sha256": file_hash.hexdigest()},
                "tensors": listed}
    if source:
        manifest["source"] = source
    mpath = os.path.join(folder, manifest_name)
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=1)
    return Written(path, mpath, manifest["weights"]["sha256"], manifest, 8 + len(text) + offset)


def strip_prefix(state: Mapping, prefix: str = "module.") -> dict:
    """Remove `prefix` from every key that has it (DataParallel / DDP checkpoints); refuse when
    two keys would collide."""
    out = {}
    for key, value in state.items():
        new = key[len(prefix):] if key.startswith(prefix) else key
        if new in out:
            raise StateDictError(f"{key}: stripping {prefix!r} collides with another key {new!r}")
        out[new] = value
    return out


def unwrap_checkpoint(obj: object, key: str | None = None) -> tuple[Mapping, str | None]:
    """The state dict inside a loaded checkpoint: `obj[key]` if given, else `obj["state_dict"]`
    or `obj["model_state_dict"]` when present, else `obj` itself."""
    if not isinstance(obj, Mapping):
        raise StateDictError(f"expected a dict of tensors, found {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise StateDictError(f"checkpoint has no key {key!r}; keys: {sorted(map(str, obj))}")
        inner, used = obj[key], key
    else:
        used = next((k for k in CHECKPOINT_KEYS if k in obj), None)
        inner = obj[used] if used else obj
        nested = [k for k, v in inner.items() if isinstance(v, Mapping)] if isinstance(
            inner, Mapping) else []
        if nested:  # e.g. {"model": state_dict, "optimizer": ...}
            raise StateDictError(f"checkpoint key {nested[0]!r} holds a dict, not a tensor; "
                                 f"to take the state dict from it, pass --checkpoint-key "
                                 f"{nested[0]} (tl export) or --key {nested[0]} (the bridge)")
    if not isinstance(inner, Mapping):
        raise StateDictError(f"{used}: expected a dict of tensors, found {type(inner).__name__}")
    return inner, used


def export_state_dict(state, folder: str, *, strip_module_prefix: bool = False,
                      source: dict | None = None) -> Written:
    """An nn.Module's or a mapping's tensors to `folder`/weights.safetensors + manifest.json."""
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise StateDictError(f"expected an nn.Module or a dict of tensors, found "
                             f"{type(state).__name__}")
    if strip_module_prefix:
        state = strip_prefix(state)
    raws = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise StateDictError(f"{name!r}: keys must be strings")
        raws[name] = (raw_from_numpy(name, value) if isinstance(value, np.ndarray)
                      else raw_from_torch(name, value))
    return write_weights(raws, folder, source)


def _read_manifest(location: str) -> tuple[dict, bytes]:
    """The manifest (read as the kernel reads JSON) and the weights file's bytes; a missing
    file or a manifest without weights.path is a KernelError naming it."""
    mpath = os.path.join(location, MANIFEST_NAME) if os.path.isdir(location) else location
    manifest = load_json(read_bytes(mpath, "state_dict", "manifest", "the manifest"),
                         "state_dict", "manifest")
    weights = manifest.get("weights") if isinstance(manifest, dict) else None
    if not isinstance(weights, dict) or not isinstance(weights.get("path"), str):
        raise refuse("state_dict", "manifest.weights.path", f"expected a manifest object with "
                     f"weights.path (a string), found {str(manifest)[:80]}")
    wpath = os.path.join(os.path.dirname(os.path.abspath(mpath)), weights["path"])
    return manifest, read_bytes(wpath, "state_dict", "manifest.weights.path", "the weights")


def check_saved(location: str, expected: Mapping | None = None):
    """Kernel check of a saved state dict (folder or manifest path); returns the contract."""
    manifest, data = _read_manifest(location)
    return check_state_dict(manifest, data, expected)


def load_state_dict(location: str, expected: Mapping | None = None) -> dict:
    """Tensors of a saved state dict as torch tensors, after the kernel has checked the file
    against its manifest and against `expected` (e.g. `expected_from_module(model)`)."""
    from safetensors.torch import load

    manifest, data = _read_manifest(location)
    check_state_dict(manifest, data, expected)
    return load(data)


def expected_from_module(module) -> dict:
    """What a module's `load_state_dict` needs: name -> {"shape", "dtype"}."""
    return {name: {"shape": list(t.shape), "dtype": _TORCH_DTYPES.get(str(t.dtype), str(t.dtype))}
            for name, t in module.state_dict().items()}


def convert_checkpoint(checkpoint: str, folder: str, *, strip_module_prefix: bool = False,
                       key: str | None = None, timeout_s: float = 600) -> dict:
    """Convert a pickled checkpoint with the bridge in a separate process; returns its JSON
    report (weights and manifest paths, sha256, tensor count). Raises ToolError on failure."""
    args = [BRIDGE, os.path.abspath(checkpoint), "--out", os.path.abspath(folder)]
    if strip_module_prefix:
        args.append("--strip-module-prefix")
    if key is not None:
        args += ["--key", key]
    return PYTHON.run_json(args, timeout_s=timeout_s)
