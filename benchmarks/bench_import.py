"""Benchmark: ONNX import with exact conversion, and state-dict export/import throughput.

  onnx import      mnist-net_256x2.onnx (VNN-COMP 2021 MNIST-FC, 269,322 parameters):
                   onnx.load + lowering + writing graph.json / weights.safetensors / manifest.json
                   (oracles.onnx_import.import_onnx without its own kernel load), then the exact
                   conversion: kernel_checker.load_graph (sha256 binding, well-formedness, shapes)
                   and decoding every linear weight (semantics._weight_matrix) and bias into the
                   kernel's exact integers. Target: at most 0.5 s in total.
  state dict       a 10,000,000-parameter float32 state dict (40 MB): export =
                   oracles.state_dict.export_state_dict (safetensors + manifest with per-tensor
                   sha256, written to a temporary folder); import = load_state_dict (read, the
                   kernel's contracts.check_state_dict against the expected names/shapes/dtypes,
                   sha256 of file and tensors, finiteness, then torch tensors). Target: at least
                   100 MB/s each way. For information: the kernel check alone, and the
                   separate-process bridge converting a torch.save checkpoint of the same tensors
                   (it includes starting Python and importing torch).

Every timing is time.perf_counter, the median of several repeats after one warm-up. Files go
through the OS page cache (tmpfs or disk as TMPDIR says); the numbers are CPU-bound work.

Run from the repository root: python benchmarks/bench_import.py [--repeats 5] [--strict]
"""

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import flint  # noqa: E402

import kernel_checker  # noqa: E402
from benchmarks._common import machine_info, utc_now, write_result  # noqa: E402
from kernel_checker.contracts import check_state_dict  # noqa: E402
from kernel_checker.semantics import _weight_matrix  # noqa: E402
from oracles import state_dict as sd  # noqa: E402
from oracles.onnx_import import import_onnx  # noqa: E402

MNIST = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "mnistfc" / "mnist-net_256x2.onnx"
TARGET_ONNX_S = 0.5
TARGET_MB_S = 100.0
STATE_SHAPES = {"enc.weight": (2048, 4096), "enc.bias": (2048,), "mid.weight": (784, 2048),
                "mid.bias": (784,), "out.weight": (10, 784), "out.bias": (10,)}


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_onnx(repeats: int, tmp: str) -> dict:
    import onnx

    out = os.path.join(tmp, "mnist")
    parts = {"onnx_load": [], "lower_and_write": [], "kernel_load_graph": [],
             "decode_weights": []}

    def run():
        t0 = time.perf_counter()
        model = onnx.load(str(MNIST))
        t1 = time.perf_counter()
        result = import_onnx(model, out, check=False)
        t2 = time.perf_counter()
        graph = kernel_checker.load_graph(result.graph_path)
        t3 = time.perf_counter()
        for node in graph.nodes:
            if node.op == "linear":
                rows, cols = graph.weights.shape(node.attrs["weight"])
                _weight_matrix(graph, node.attrs["weight"], rows, cols)
                graph.param(node.attrs["bias"])
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt)
        return graph

    total, all_times = timed(run, repeats)
    graph = run()
    return {"network": str(MNIST.relative_to(ROOT.parent)),
            "parameters": graph.parameter_count(), "nodes": len(graph.nodes),
            "total_s": total, "total_all_s": all_times,
            "parts_median_s": {k: statistics.median(v) for k, v in parts.items()},
            "target_s": TARGET_ONNX_S, "meets_target": total <= TARGET_ONNX_S}


def bench_state_dict(repeats: int, tmp: str) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(*s, generator=gen) for k, s in STATE_SHAPES.items()}
    params = sum(t.numel() for t in state.values())
    expected = {k: {"shape": list(s), "dtype": "F32"} for k, s in STATE_SHAPES.items()}
    folder = os.path.join(tmp, "sd")
    written = sd.export_state_dict(state, folder)
    nbytes = written.nbytes
    mb = nbytes / 1e6

    export_s, export_all = timed(lambda: sd.export_state_dict(state, folder), repeats)
    import_s, import_all = timed(lambda: sd.load_state_dict(folder, expected), repeats)
    with open(written.manifest_path) as f:
        manifest = json.load(f)
    with open(written.weights_path, "rb") as f:
        data = f.read()
    check_s, _ = timed(lambda: check_state_dict(manifest, data, expected), repeats)
    loaded = sd.load_state_dict(folder, expected)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    ckpt = os.path.join(tmp, "ck.pt")
    torch.save({"state_dict": state}, ckpt)
    bridge_s, _ = timed(lambda: sd.convert_checkpoint(ckpt, os.path.join(tmp, "bridge")),
                        max(1, repeats // 2))
    return {"parameters": params, "bytes": nbytes, "dtype": "float32",
            "export_s": export_s, "export_all_s": export_all, "export_mb_s": mb / export_s,
            "import_s": import_s, "import_all_s": import_all, "import_mb_s": mb / import_s,
            "kernel_check_s": check_s, "kernel_check_mb_s": mb / check_s,
            "bridge_checkpoint_s": bridge_s,
            "target_mb_s": TARGET_MB_S,
            "meets_target": mb / export_s >= TARGET_MB_S and mb / import_s >= TARGET_MB_S}


def machine() -> dict:
    import onnx
    import torch

    return machine_info(("platform", "cpu_model", "cpu_count", "cpus_available", "python"),
                        python_flint=flint.__version__, numpy=np.__version__,
                        torch=torch.__version__, onnx=onnx.__version__)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "import.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_res = bench_onnx(args.repeats, tmp)
        sd_res = bench_state_dict(args.repeats, tmp)
    parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in onnx_res["parts_median_s"].items())
    print(f"ONNX import + exact conversion, {onnx_res['network']} "
          f"({onnx_res['parameters']} parameters): {onnx_res['total_s'] * 1000:.1f} ms "
          f"(target <= {TARGET_ONNX_S * 1000:.0f} ms: "
          f"{'ok' if onnx_res['meets_target'] else 'MISSED'})\n  {parts}")
    print(f"state dict, {sd_res['parameters']} float32 parameters ({sd_res['bytes'] / 1e6:.1f} "
          f"MB):\n  export {sd_res['export_s'] * 1000:.0f} ms = {sd_res['export_mb_s']:.0f} "
          f"MB/s\n  import (kernel-checked) {sd_res['import_s'] * 1000:.0f} ms = "
          f"{sd_res['import_mb_s']:.0f} MB/s\n  kernel check alone "
          f"{sd_res['kernel_check_s'] * 1000:.0f} ms = {sd_res['kernel_check_mb_s']:.0f} MB/s\n"
          f"  bridge (separate process, torch.load weights_only) "
          f"{sd_res['bridge_checkpoint_s']:.2f} s\n  target >= {TARGET_MB_S:.0f} MB/s each way: "
          f"{'ok' if sd_res['meets_target'] else 'MISSED'}")
    result = {"benchmark": "import", "onnx": onnx_res, "state_dict": sd_res,
              "repeats": args.repeats, "timing": "time.perf_counter, median, warm-up excluded",
              "machine": machine(),
              "date_utc": utc_now(),
              "command": "python benchmarks/bench_import.py " + " ".join(argv or sys.argv[1:])}
    write_result(args.out, result)
    print(f"results: {args.out}")
    ok = onnx_res["meets_target"] and sd_res["meets_target"]
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
