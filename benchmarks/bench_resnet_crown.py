"""CROWN / alpha-CROWN on a small residual CNN (conv-batchnorm-relu, two residual blocks,
maxpool, linear; random float32 weights, input 3 x size x size): the torch producer on the
CPU and, when torch sees one, on a CUDA device (same certificate request, same run), and the
kernel's exact check of each certificate (CPU, exact arithmetic).

Run: python benchmarks/bench_resnet_crown.py [--size 16] [--channels 4] [--eps 0.002]
Writes benchmarks/results/resnet_crown.json (numbers, the command, the machine and the GPU)."""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flint  # noqa: E402
import torch  # noqa: E402

import kernel_checker  # noqa: E402
from benchmarks._common import BASIC_FIELDS, machine_info, median_time, utc_now, write_result  # noqa: E402
from oracles.bounds_torch import crown_certificate, load_chain  # noqa: E402
from stdlib.robustness import margin  # noqa: E402
from tl_dsl import proof  # noqa: E402
from tl_dsl.builder import GraphBuilder  # noqa: E402


def resnet(folder: str, size: int, channels: int, seed: int) -> str:
    rng = np.random.default_rng(seed)

    def conv(x, cin, cout, name, stride=1):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        return g.conv2d(x, w, (rng.standard_normal(cout) * 0.05).astype(np.float32),
                        stride=(stride, stride), padding=(1, 1), name=name)

    def bn(x, c, name):
        return g.batchnorm(x, rng.uniform(0.5, 1.5, c).astype(np.float32),
                           (rng.standard_normal(c) * 0.1).astype(np.float32),
                           (rng.standard_normal(c) * 0.1).astype(np.float32),
                           rng.uniform(0.5, 2.0, c).astype(np.float32), name=name)

    g = GraphBuilder()
    x = g.input([3, size, size])
    h = g.relu(bn(conv(x, 3, channels, "stem", stride=2), channels, "bn0"))  # c x size/2 ...
    for blk in range(2):
        r = g.relu(bn(conv(h, channels, channels, f"b{blk}c1"), channels, f"b{blk}n1"))
        r = bn(conv(r, channels, channels, f"b{blk}c2"), channels, f"b{blk}n2")
        h = g.relu(g.add(h, r))
    h = g.flatten(g.maxpool2d(h, (2, 2)))  # c x size/4 x size/4
    w = (rng.standard_normal((10, h.shape[0])) * np.sqrt(1 / h.shape[0])).astype(np.float32)
    g.output(g.linear(h, w, np.zeros(10, np.float32), name="fc"))
    return g.save(folder)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--eps", type=float, default=0.002)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "resnet_crown.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = resnet(tempfile.mkdtemp(), args.size, args.channels, args.seed)
    graph = kernel_checker.load_graph(path)
    rng = np.random.default_rng(args.seed)
    x0 = rng.uniform(0, 1, 3 * args.size ** 2)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cpu_chain = load_chain(path, graph.outputs[0], device="cpu")
    with torch.no_grad():
        logits = cpu_chain.forward(cpu_chain.tensor(x0)[None]).reshape(-1)
    label = int(torch.argmax(logits))
    probe = margin(graph, x0, str(args.eps), label, -10**6, clamp=(0, 1))
    rows = []
    for method in ("crown", "alpha"):
        for dev in devices:
            chain = load_chain(path, graph.outputs[0], device=dev)
            crown_certificate(path, probe, method, chain=chain, early_stop=False)  # warm up
            if dev == "cuda":
                torch.cuda.synchronize()
            t_prod, (cert, lows) = median_time(lambda m=method, c=chain: crown_certificate(
                path, probe, m, chain=c, early_stop=False), args.repeats)
            rhs = [str(np.floor((lo - 2 ** -10) * 2 ** 20) / 2 ** 20) for lo in lows]
            claim = margin(graph, x0, str(args.eps), label, 0, clamp=(0, 1))
            claim = kernel_checker.Claim(**{**claim.__dict__, "rhs": tuple(
                kernel_checker.claims.decode_rational(r, "rhs") for r in rhs)})
            t = time.perf_counter()
            thm = proof.check(claim, cert, graph)
            t_kernel = time.perf_counter() - t
            n_inter = sum(len(e.get("indices", e["lo"])) for e in cert.get("intermediate", []))
            rows.append({"method": method, "device": dev, "producer_s": t_prod,
                         "kernel_s": t_kernel, "kernel_rule": thm.rule,
                         "intermediate_neurons": n_inter,
                         "min_margin_lower_bound": float(min(lows))})
    print(f"residual CNN 3x{args.size}x{args.size}, {args.channels} channels, eps {args.eps}, "
          f"9 margin rows, "
          f"label {label}; {graph.parameter_count()} parameters")
    print(f"{'method':<7} {'device':<6} {'producer':>10} {'kernel check':>13} "
          f"{'interm. neurons':>16} {'min margin':>11}")
    for r in rows:
        print(f"{r['method']:<7} {r['device']:<6} {r['producer_s'] * 1e3:>7.1f} ms "
              f"{r['kernel_s']:>11.2f} s {r['intermediate_neurons']:>16} "
              f"{r['min_margin_lower_bound']:>11.4f}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    write_result(args.out, {
        "model": f"residual CNN 3x{args.size}x{args.size}, {args.channels} channels (random "
                 f"float32 weights, "
                 f"seed {args.seed})", "eps": args.eps, "rows": rows,
        "command": " ".join(["python benchmarks/bench_resnet_crown.py"] + sys.argv[1:]),
        "machine": machine_info(BASIC_FIELDS, python_flint=flint.__version__,
                                torch=torch.__version__),
        "gpu": gpu, "date": utc_now()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
