"""`tl export module.py:Ctor --example-shape 1,784 -o DIR`: PyTorch module -> tl.graph.v1.

`register(subparsers)` adds the subcommand to the `tl` parser. PyTorch is imported only when the
command runs; without it the command says how to install it. The result is checked by the kernel
on the way out (the same check as `tl graph DIR/graph.json`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

TORCH_HINT = "tl export needs PyTorch: pip install 'tl-verify[torch]' (or pip install torch)"


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}"
                                         ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions, found {text!r}")
    return dims


def load_constructor(target: str):
    """`path/to/module.py:Ctor` -> the callable `Ctor` from that file."""
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"expected FILE.py:CONSTRUCTOR, found {target!r}")
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"tl_export_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path} has no attribute {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj


def cmd_export(args) -> int:
    try:
        import torch
    except ImportError:
        print(TORCH_HINT, file=sys.stderr)
        return 2
    from kernel_checker import KernelError
    from oracles.torch_export import ExportError, export_module

    try:
        module = load_constructor(args.target)()
    except Exception as err:  # noqa: BLE001 - user code: report whatever it raised
        print(f"cannot build {args.target}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if not isinstance(module, torch.nn.Module):
        print(f"{args.target} returned {type(module).__name__}, not a torch.nn.Module",
              file=sys.stderr)
        return 1
    from oracles.subprocess_layer import ToolError

    weights_from = None
    try:
        if args.checkpoint is not None:
            weights_from = _load_checkpoint(module, args)
        examples = tuple(torch.zeros(shape) for shape in args.example_shape)
        result = export_module(module, examples, args.out, batch=not args.no_batch,
                               strip_module_prefix=args.strip_module_prefix,
                               weights_from=weights_from)
    except ToolError as err:  # the bridge: its own one-line reason first
        why = [t for t in (err.stderr_tail or "").splitlines() if "checkpoint_bridge:" in t]
        print(f"checkpoint refused: {why[-1].split('checkpoint_bridge:', 1)[1].strip()}"
              if why else f"checkpoint conversion failed: {err}", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"export refused: {err}", file=sys.stderr)
        return 1
    except KernelError as err:
        print(f"rejected by the kernel: {err.path}: {err.message}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - torch.export and the bridge raise many types
        print(f"export failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    graph = result.graph
    params = graph.parameter_count() if graph.weights is not None else 0
    print(f"wrote {result.graph_path} ({len(graph.nodes)} nodes, {params} parameters, "
          f"sha256 {graph.sha256})")
    if result.weights_path:
        print(f"wrote {result.weights_path} (sha256 {graph.weights_sha256}) and "
              f"{result.manifest_path}")
    batch = "" if args.no_batch else " (batch dimension stripped)"
    print(f"inputs {[list(n.shape) for n in graph.input_nodes]} -> outputs "
          f"{[list(graph.by_id[o].shape) for o in graph.outputs]}{batch}")
    if weights_from is not None:
        print(f"weights from {args.checkpoint} (sha256 {weights_from['sha256']}), "
              "loaded bit for bit")
    print(f"kernel check passed; validate again with: tl graph {result.graph_path}")
    return 0


def _load_checkpoint(module, args) -> dict:
    """Load --checkpoint into `module` through the bridge (a separate process) and the kernel's
    check of the converted file; every entry of the module's state dict must then equal the
    checkpoint's bit for bit (tied parameters given two values, or a load hook that changes a
    value, are refused). What to record of it: path, sha256 and the key used."""
    import hashlib

    import torch

    from oracles.state_dict import convert_checkpoint, expected_from_module, load_state_dict

    path = args.checkpoint
    if not path or not os.path.isfile(path):
        raise ValueError(f"--checkpoint: expected a checkpoint file, found {path!r}" + (
            " (an empty path)" if not path else " (not a file)" if os.path.exists(path) else
            " (no such file)"))
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        report = convert_checkpoint(path, tmp, strip_module_prefix=args.strip_module_prefix,
                                    key=args.checkpoint_key)
        state = load_state_dict(tmp, expected_from_module(module))
    module.load_state_dict(state)
    for name, got in module.state_dict().items():
        want = state[name]
        if (got.dtype, got.shape) != (want.dtype, want.shape) or not torch.equal(*(
                t.detach().contiguous().reshape(-1).view(torch.uint8) for t in (got, want))):
            raise ValueError(f"--checkpoint: after loading, the module's {name} differs from "
                             "the checkpoint's (tied parameters given different values, or a "
                             "load hook that changes it)")
    # (the file's name, not its path: the graph's hash must not depend on where it sits)
    return {"checkpoint": os.path.basename(path), "sha256": digest,
            "key": report.get("unwrapped")}


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a PyTorch module to tl.graph.v1 + weights",
                              description=__doc__.split("\n")[0])
    p.add_argument("target", help="FILE.py:CONSTRUCTOR, a callable returning an nn.Module")
    p.add_argument("--example-shape", type=parse_shape, action="append", required=True,
                   metavar="1,784", help="shape of an example input, batch dimension first "
                   "(repeat for several inputs)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--strip-module-prefix", action="store_true",
                   help="strip a leading 'module.' from parameter names (DataParallel)")
    p.add_argument("--checkpoint", default=None, help="load weights from a pickled checkpoint "
                   "first (through the separate-process bridge, kernel-checked)")
    p.add_argument("--checkpoint-key", default=None, metavar="KEY",
                   help="the checkpoint's top-level key holding the state dict (default: "
                   "state_dict or model_state_dict if present, else the whole checkpoint)")
    p.add_argument("--no-batch", action="store_true",
                   help="the example shapes have no batch dimension (keep every dimension)")
    p.set_defaults(func=cmd_export)
    return p
