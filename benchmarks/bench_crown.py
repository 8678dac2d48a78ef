"""Kernel check of CROWN / alpha-CROWN certificates on a 784-256-256-10 ReLU MLP, one L-inf box,
a 9-row margin spec; beside the float producer's own time for the same bound (same run).

Run: python benchmarks/bench_crown.py [--onnx PATH.onnx] [--eps 0.03] [--repeats 5]
Without --onnx the MLP has random float32 weights (He-like, fixed seed).
Writes benchmarks/results/crown.json (numbers, the command and the machine)."""

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flint  # noqa: E402
import torch  # noqa: E402

import kernel_checker  # noqa: E402
from benchmarks._common import BASIC_FIELDS, machine_info, median_time, utc_now, write_result  # noqa: E402
from oracles.bounds_torch import crown_certificate, ibp_bounds, load_chain  # noqa: E402
from stdlib.robustness import margin  # noqa: E402
from tl_dsl import proof  # noqa: E402
from tl_dsl.builder import GraphBuilder  # noqa: E402


def random_mlp(folder: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([784])
    sizes = [784, 256, 256, 10]
    for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32)
        b = (rng.standard_normal(o) * 0.05).astype(np.float32)
        x = g.linear(x, w, b, name=f"fc{k + 1}")
        if k < 2:
            x = g.relu(x)
    g.output(x)
    return g.save(folder)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", help="an ONNX MLP (e.g. mnist-net_256x2.onnx) instead of random")
    ap.add_argument("--vnnlib", help="take the input point from this property's box centre")
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "crown.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    folder = tempfile.mkdtemp()
    if args.onnx:
        from oracles.onnx_import import import_onnx

        graph_path = import_onnx(args.onnx, folder).graph_path
        source = os.path.basename(args.onnx)
    else:
        graph_path = random_mlp(folder, args.seed)
        source = f"random float32 784-256-256-10 (seed {args.seed})"
    graph = kernel_checker.load_graph(graph_path)
    rng = np.random.default_rng(args.seed)
    x0 = rng.uniform(0, 1, 784).astype(np.float32)
    if args.vnnlib:  # the property's box centre (a real test image for MNIST-FC)
        from stdlib.vnnlib import read_vnnlib

        region = read_vnnlib(args.vnnlib).regions[0]
        x0 = np.array([float((a + b) / 2) for a, b in zip(region.lo, region.hi)])
        source += f" at the centre of {os.path.basename(args.vnnlib)}"
    chain = load_chain(graph_path, graph.outputs[0])
    with torch.no_grad():
        logits = chain.forward(chain.tensor(x0.astype(np.float64))[None]).reshape(-1)
    label = int(torch.argmax(logits))
    eps = str(args.eps)
    probe = margin(graph, x0, eps, label, -10**6, clamp=(0, 1))
    rows = []
    for method in ("crown", "alpha"):
        t_float, (cert, lows) = median_time(lambda m=method: crown_certificate(
            graph_path, probe, m, chain=chain, early_stop=False), args.repeats)
        # the claim: each margin row >= its float bound, lowered by 2^-10 and made dyadic
        rhs = [str(np.floor((lo - 2 ** -10) * 2 ** 20) / 2 ** 20) for lo in lows]
        claim = margin(graph, x0, eps, label, 0, clamp=(0, 1))
        claim = kernel_checker.Claim(**{**claim.__dict__, "rhs": tuple(
            kernel_checker.claims.decode_rational(r, "rhs") for r in rhs)})
        proof.check(claim, cert, graph)  # warm caches (weight matrices), and must hold
        t_kernel, _ = median_time(lambda c=cert, cl=claim: proof.check(cl, c, graph), args.repeats)
        n_inter = sum(len(e.get("indices", e["lo"])) for e in cert.get("intermediate", []))
        rows.append({"method": method, "float_s": t_float, "kernel_s": t_kernel,
                     "ratio_kernel_over_float": t_kernel / t_float,
                     "intermediate_neurons": n_inter, "min_margin_lower_bound": float(min(lows))})
    t_ibp, _ = median_time(lambda: ibp_bounds(graph_path, probe), args.repeats)
    print(f"{source}, eps {eps}, 9 margin rows, label {label}")
    print(f"{'certificate':<12} {'float producer':>15} {'kernel check':>13} {'ratio':>7} "
          f"{'interm. neurons':>16} {'target':>8}")
    for r in rows:
        ok = "PASS" if r["kernel_s"] <= 0.1 else "FAIL"
        print(f"{r['method']:<12} {r['float_s'] * 1e3:>12.1f} ms {r['kernel_s'] * 1e3:>10.1f} ms "
              f"{r['ratio_kernel_over_float']:>7.2f} {r['intermediate_neurons']:>16} "
              f"{ok + ' (<=100 ms)':>8}")
    print(f"float IBP (for scale): {t_ibp * 1e3:.1f} ms")
    result = {"source": source, "eps": args.eps, "rows": rows, "float_ibp_s": t_ibp,
              "targets": {"kernel_s_max": 0.1, "ratio_moonshot": 2},
              "command": " ".join(["python benchmarks/bench_crown.py"] + sys.argv[1:]),
              "machine": machine_info(BASIC_FIELDS, python_flint=flint.__version__,
                                      torch=torch.__version__),
              "date": utc_now()}
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
