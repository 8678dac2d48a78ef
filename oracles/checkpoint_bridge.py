"""Checkpoint bridge: a script run in its own Python process (never imported by tl-verify).

    python oracles/checkpoint_bridge.py CHECKPOINT --out DIR [--strip-module-prefix] [--key K]

Loads a pickled PyTorch checkpoint with `torch.load(..., weights_only=True)` (no arbitrary
code runs), takes the state dict out of it (`--key`, else `state_dict` or `model_state_dict` when
present, else the whole object), strips a `module.` prefix on request and writes DIR/
weights.safetensors + DIR/manifest.json. Prints exactly one JSON document on stdout (the
subprocess layer's contract); on failure prints the reason on stderr and exits with status 2.
"""

import argparse
import json
import os
import re
import sys


def _import_state_dict_module():
    try:
        from oracles import state_dict
    except ImportError:  # run by path from a source tree: make the project importable
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from oracles import state_dict
    return state_dict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="checkpoint_bridge", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="folder for weights.safetensors + manifest.json")
    p.add_argument("--strip-module-prefix", action="store_true",
                   help="remove a leading 'module.' from every key (DataParallel checkpoints)")
    p.add_argument("--key", default=None, help="take the state dict from this top-level key")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("checkpoint_bridge: torch is not installed (pip install torch)", file=sys.stderr)
        return 2
    sd = _import_state_dict_module()
    try:
        obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        state, used = sd.unwrap_checkpoint(obj, args.key)
        source = {"producer": "oracles/checkpoint_bridge.py", "torch": torch.__version__,
                  "checkpoint": os.path.abspath(args.checkpoint), "unwrapped": used,
                  "stripped_module_prefix": args.strip_module_prefix}
        written = sd.export_state_dict(state, args.out,
                                       strip_module_prefix=args.strip_module_prefix,
                                       source=source)
    except Exception as err:  # noqa: BLE001 - weights_only refusals are UnpicklingError, etc.
        if type(err).__name__ == "UnpicklingError":  # (torch's text advises weights_only=False)
            why = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\n\s*\n\s*Check "
                            r"the documentation|$)", str(err), re.S)
            why = " ".join(why.group(1).split()) if why else str(err).strip()[:200]
            print(f"checkpoint_bridge: UnpicklingError: torch.load(weights_only=True) refused "
                  f"the checkpoint ({why}): it is not a state dict of tensors and plain "
                  "containers (save the model's state_dict() instead)", file=sys.stderr)
        else:
            print(f"checkpoint_bridge: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"format": "tl.bridge.v1", "weights": written.weights_path,
                      "manifest": written.manifest_path, "sha256": written.sha256,
                      "tensors": len(written.manifest["tensors"]), "bytes": written.nbytes,
                      "unwrapped": used, "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
