"""`tl run`'s runtimes, timed in one process on one machine: the binary32 forward of checked
graphs on CUDA (gpu/kernels/forward.cu through PyCUDA) against the CPU runtime (numpy) and, as a
reference, torch's cuBLAS (TF32 off), and the CUDA interval forward (directed rounding), over
batches of inputs; plus what the kernel's audit of one output costs. Times include the host to
device copies and back (what `tl run` sees). Ratios are taken within the run.

    python benchmarks/bench_gpu.py [--onnx A.onnx B.onnx] [--out benchmarks/results/gpu_run.json]

Needs a CUDA device and pycuda (the lent GPU machine); prints a table and writes the JSON."""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import BASIC_FIELDS, machine_info, median_time, utc_now, write_result  # noqa: E402

import kernel_checker  # noqa: E402
from gpu import CpuRunner, CudaRunner, cuda_status, plan  # noqa: E402
from gpu.audit import audit_rows  # noqa: E402
from tl_dsl.builder import GraphBuilder, Linear, ReLU, Sequential  # noqa: E402


def _wide_mlp(folder: str) -> str:
    rng = np.random.default_rng(0)
    sizes, layers = (784, 1024, 1024, 1024, 10), []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Linear((rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32),
                             (rng.standard_normal(b) * 0.1).astype(np.float32)))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Sequential(layers).save(folder, [784])


def _cnn(folder: str) -> str:
    rng = np.random.default_rng(1)
    g = GraphBuilder()
    x = g.input([3, 32, 32])
    h = g.relu(g.conv2d(x, (rng.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32),
                        np.zeros(32, np.float32), stride=(2, 2), padding=(1, 1)))
    h = g.relu(g.conv2d(h, (rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32), None,
                        stride=(2, 2), padding=(1, 1)))
    g.output(g.linear(g.flatten(h), (rng.standard_normal((10, 64 * 8 * 8)) / 64).astype(
        np.float32), np.zeros(10, np.float32)))
    return g.save(folder)


def _torch_forward(graph_plan, xs):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    ws = [(None if s.weight is None else torch.tensor(s.weight, device="cuda"),
           None if s.bias is None else torch.tensor(s.bias, device="cuda"), s.op)
          for s in graph_plan.steps[1:]]
    conv = {id(w): s.geometry for (w, _, _), s in zip(ws, graph_plan.steps[1:]) if s.geometry}

    def run():
        h = torch.from_numpy(xs).cuda()
        for w, b, op in ws:
            if op == "linear":
                h = torch.nn.functional.linear(h.reshape(len(h), -1), w, b)
            elif op == "conv2d":
                geo = conv[id(w)]
                h = torch.nn.functional.conv2d(h.reshape(len(h), *geo[0]), w, b, stride=geo[2],
                                               padding=geo[3], dilation=geo[4], groups=geo[5])
            elif op == "relu":
                h = torch.relu(h)
        out = h.reshape(len(h), -1).cpu().numpy()
        torch.cuda.synchronize()
        return out
    return run


CPU_CAP_S = 30.0  # a CPU run predicted longer than this (from the smallest batch) is skipped


def _write(out: str, rows: list, prov: dict) -> None:
    write_result(out, {"benchmark": "gpu_run", "when": utc_now(),
                       "machine": machine_info(BASIC_FIELDS, numpy=np.__version__),
                       "device": prov, "results": rows,
                       "note": "times are medians, host-device copies included; the CPU runtime "
                               "is numpy on this machine's CPUs; cpu_s null: skipped, predicted "
                               f"over {CPU_CAP_S:g} s from the smallest batch"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", nargs="*", default=[])
    ap.add_argument("--batches", nargs="*", type=int, default=[1024, 65536, 524288])
    ap.add_argument("--out", default="benchmarks/results/gpu_run.json")
    args = ap.parse_args()
    ok, device = cuda_status()
    if not ok:
        print(f"no CUDA device: {device}", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp()
    nets = [("mlp 784-1024x3-10", _wide_mlp(os.path.join(tmp, "wide"))),
            ("cnn 3x32x32 conv32-conv64-fc10", _cnn(os.path.join(tmp, "cnn")))]
    for i, path in enumerate(args.onnx):
        import onnx

        from oracles.onnx_import import import_onnx

        folder = os.path.join(tmp, f"onnx{i}")
        import_onnx(onnx.load(path), folder)
        nets.append((os.path.basename(path), os.path.join(folder, "graph.json")))
    rows, cpu_per_row = [], {}
    print(f"{'network':<34} {'batch':>8} {'cpu s':>9} {'cuda s':>9} {'torch s':>9} "
          f"{'interval s':>10} {'cuda/cpu':>9} {'cuda/torch':>10}")
    for name, path in nets:
        graph = kernel_checker.load_graph(path)
        p = plan(graph)
        cpu = CpuRunner(p)
        with CudaRunner(p) as cuda:
            prov = cuda.provenance()
            for batch in args.batches:
                xs = np.random.default_rng(batch).uniform(-1, 1, (batch, p.n_in)).astype(
                    np.float32)
                cuda.forward(xs[:16])  # (compiled and warm)
                per_row = cpu_per_row.get(name)
                if per_row is not None and per_row * batch > CPU_CAP_S:  # (predicted too long)
                    t_cpu, y_cpu = None, cpu.forward(xs[:1024])
                else:
                    t_cpu, y_cpu = median_time(lambda xs=xs, cpu=cpu: cpu.forward(xs),
                                               3 if batch <= 1024 else 1)
                    cpu_per_row.setdefault(name, t_cpu / batch)
                t_cuda, y_cuda = median_time(lambda xs=xs: cuda.forward(xs), 5)
                t_torch, y_torch = median_time(_torch_forward(p, xs), 5)
                t_iv, _ = median_time(lambda xs=xs: cuda.interval(xs - 1e-3, xs + 1e-3), 5)
                t = time.perf_counter()
                audit_rows(graph, p.output_id, xs, y_cuda, [0, batch // 2, batch - 1], "cuda",
                           prov)
                t_audit = (time.perf_counter() - t) / 3
                row = {"network": name, "batch": batch, "cpu_s": t_cpu, "cuda_s": t_cuda,
                       "torch_cublas_s": t_torch, "cuda_interval_s": t_iv,
                       "audit_s_per_output": t_audit,
                       "max_abs_diff_cuda_cpu": float(np.max(np.abs(y_cuda[:len(y_cpu)] -
                                                                     y_cpu))),
                       "max_abs_diff_cuda_torch": float(np.max(np.abs(y_cuda - y_torch)))}
                rows.append(row)
                cpu_text = f"{t_cpu:>9.4f}" if t_cpu else f"{'skipped':>9}"
                ratio = f"{t_cuda / t_cpu:>9.3f}" if t_cpu else f"{'-':>9}"
                print(f"{name:<34} {batch:>8} {cpu_text} {t_cuda:>9.4f} {t_torch:>9.4f} "
                      f"{t_iv:>10.4f} {ratio} {t_cuda / t_torch:>10.3f}", flush=True)
                _write(args.out, rows, prov)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
