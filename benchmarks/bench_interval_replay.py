"""Benchmark: exact interval replay on a 784-256-256-10 ReLU MLP with float32 weights.

One L-inf box (radius 0.01, clamped to [0, 1]) around a random input is pushed through the net
four ways, each timed with time.perf_counter (median of several repeats, warm-up excluded):

  conversion    kernel_checker.load_graph(path) plus decoding every weight and bias into the
                kernel's exact integer form (semantics._weight_matrix for each linear weight),
                in a fresh graph object each repeat;
  exact replay  rules.box_interval(ball.as_box(), (784,)) + semantics.evaluate(graph, x), the
                kernel's exact rational IBP (weights already converted);
  claim check   tl_dsl.proof.check(stdlib.robustness.robust(...), tl_dsl.proof.ibp(), graph),
                the same replay plus the claim's shape checks and conclusion (claim prebuilt);
  numpy         the same centre-radius interval arithmetic in float64 (NOT sound: the float
                baseline);
  Fraction      a pure fractions.Fraction lo/hi replay (weights converted with
                Fraction(float(w))), run once or twice only.

The Fraction bounds must equal the kernel's exactly and numpy's must be within 1e-6 of them.
Targets (issue): replay <= 30 ms per box, conversion <= 0.5 s, Fraction/exact >= 100x.

Run from the repository root: python benchmarks/bench_interval_replay.py
"""

import argparse
import gc
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import flint  # noqa: E402

import kernel_checker  # noqa: E402
from benchmarks._common import machine_info, utc_now, write_result  # noqa: E402
from kernel_checker.errors import KernelError  # noqa: E402
from kernel_checker.rules import box_interval  # noqa: E402
from kernel_checker.semantics import _weight_matrix, evaluate  # noqa: E402
from stdlib.robustness import robust  # noqa: E402
from tl_dsl import proof  # noqa: E402
from tl_dsl.builder import GraphBuilder  # noqa: E402
from tl_dsl.claims import ball  # noqa: E402

SIZES = (784, 256, 256, 10)
EPS = 0.01
CLAMP = (0, 1)
TARGET_REPLAY_MS = 30.0
TARGET_CONVERSION_S = 0.5
TARGET_FRACTION_RATIO = 100.0
NUMPY_TOLERANCE = 1e-6
COMMAND = "python benchmarks/bench_interval_replay.py"
RESULT_PATH = Path(__file__).resolve().parent / "results" / "interval_replay.json"


def build_mlp(seed: int) -> tuple[GraphBuilder, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """He-like float32 weights (N(0, 2/fan_in)), small float32 biases, and a random input."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        w = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        params.append((w, b))
    center = rng.random(SIZES[0]).astype(np.float32)  # an "image" in [0, 1]
    g = GraphBuilder()
    x = g.input([SIZES[0]])
    for i, (w, b) in enumerate(params):
        x = g.linear(x, w, b, name=f"fc{i + 1}")
        if i < len(params) - 1:
            x = g.relu(x)
    g.output(x)
    return g, params, center


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median seconds of `repeats` calls after `warmup` untimed ones; also the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def convert(path: str) -> kernel_checker.Graph:
    """Load a fresh graph and decode every linear weight (and bias) into exact integers."""
    graph = kernel_checker.load_graph(path)
    for node in graph.nodes:
        if node.op == "linear":
            rows, cols = graph.weights.shape(node.attrs["weight"])
            _weight_matrix(graph, node.attrs["weight"], rows, cols)
            if node.attrs["bias"] is not None:
                graph.param(node.attrs["bias"])
    return graph


def numpy_replay(layers64, center: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre-radius interval propagation in float64 (the same math as the kernel, rounded)."""
    lo = np.clip(center - eps, CLAMP[0], CLAMP[1])
    hi = np.clip(center + eps, CLAMP[0], CLAMP[1])
    mid, rad = (lo + hi) * 0.5, (hi - lo) * 0.5
    last = len(layers64) - 1
    for i, (w, w_abs, b) in enumerate(layers64):
        ym = w @ mid + b
        yr = w_abs @ rad
        lo, hi = ym - yr, ym + yr
        if i < last:
            lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
            mid, rad = (lo + hi) * 0.5, (hi - lo) * 0.5
    return lo, hi


def fraction_weights(params) -> list[tuple[list[list[Fraction]], list[Fraction]]]:
    return [([[Fraction(float(v)) for v in row] for row in w.tolist()],
             [Fraction(float(v)) for v in b.tolist()]) for w, b in params]


def fraction_replay(layers, center: np.ndarray, eps: Fraction) -> tuple[list, list]:
    """lo/hi per neuron, every operation a fractions.Fraction operation."""
    a, b = Fraction(CLAMP[0]), Fraction(CLAMP[1])
    lo, hi = [], []
    for c in center.tolist():
        c = Fraction(c)  # exact: the float32 value as a float64
        lo.append(max(c - eps, a))
        hi.append(min(c + eps, b))
    last = len(layers) - 1
    for i, (w_rows, bias) in enumerate(layers):
        new_lo, new_hi = [], []
        for row, bj in zip(w_rows, bias, strict=True):
            s_lo = s_hi = bj
            for w, xl, xh in zip(row, lo, hi, strict=True):
                if w > 0:
                    s_lo += w * xl
                    s_hi += w * xh
                elif w < 0:
                    s_lo += w * xh
                    s_hi += w * xl
            new_lo.append(s_lo)
            new_hi.append(s_hi)
        if i < last:
            zero = Fraction(0)
            new_lo = [v if v > 0 else zero for v in new_lo]
            new_hi = [v if v > 0 else zero for v in new_hi]
        lo, hi = new_lo, new_hi
    return lo, hi


def print_table(rows: list[tuple[str, str, str, str]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for k, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if k in (0, 3) else "right")
    for r in rows[1:]:
        table.add_row(*r)
    Console(width=120).print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conversion-repeats", type=int, default=5)
    ap.add_argument("--replay-repeats", type=int, default=15)
    ap.add_argument("--numpy-repeats", type=int, default=200)
    ap.add_argument("--fraction-repeats", type=int, default=2, help="1 or 2: it is slow")
    ap.add_argument("--out", type=Path, default=RESULT_PATH)
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    builder, params, center = build_mlp(args.seed)
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        path = builder.save(tmp)

        # (a) conversion, in a fresh graph object each repeat
        load_s, _, _ = timed(lambda: kernel_checker.load_graph(path), args.conversion_repeats)
        conv_s, conv_all, graph = timed(lambda: convert(path), args.conversion_repeats)

    # (b) exact replay of one box, weights already converted (graph's cache)
    the_ball = ball(center, EPS, clamp=CLAMP)
    out_id = graph.outputs[0]

    def exact():
        x = box_interval(the_ball.as_box(), (SIZES[0],))
        return evaluate(graph, x)[out_id]

    replay_s, replay_all, y = timed(exact, args.replay_repeats)
    exact_lo = [Fraction(int(v), int(y.den)) for v in y.lo]
    exact_hi = [Fraction(int(v), int(y.den)) for v in y.hi]

    # the full robustness claim check through the DSL (claim built outside the timing)
    exact_mid = [(a + b) / 2 for a, b in zip(exact_lo, exact_hi, strict=True)]
    label = max(range(SIZES[-1]), key=lambda j: exact_mid[j])
    claim = robust(graph, center, EPS, label, clamp=CLAMP)
    ibp = proof.ibp()

    def claim_check():
        try:
            proof.check(claim, ibp, graph)
            return "proved"
        except KernelError:
            return "refused (not certified by IBP)"

    check_s, _, claim_outcome = timed(claim_check, max(3, args.replay_repeats // 2))

    # (c) numpy float64 centre-radius replay (the unsound float baseline)
    layers64 = [(w.astype(np.float64), np.abs(w.astype(np.float64)), b.astype(np.float64))
                for w, b in params]
    center64 = center.astype(np.float64)
    numpy_s, _, (np_lo, np_hi) = timed(lambda: numpy_replay(layers64, center64, EPS),
                                       args.numpy_repeats, warmup=5)

    # (d) pure fractions.Fraction lo/hi replay, once or twice
    t0 = time.perf_counter()
    frac_layers = fraction_weights(params)
    frac_conv_s = time.perf_counter() - t0
    frac_s, _, (fr_lo, fr_hi) = timed(lambda: fraction_replay(frac_layers, center, Fraction(EPS)),
                                      max(1, args.fraction_repeats), warmup=0)

    # correctness: Fraction == kernel exactly; numpy within 1e-6 of the kernel
    assert fr_lo == exact_lo and fr_hi == exact_hi, "Fraction replay differs from the kernel's"
    exact_lo_f = np.array([float(v) for v in exact_lo])
    exact_hi_f = np.array([float(v) for v in exact_hi])
    np_err = float(max(np.max(np.abs(np_lo - exact_lo_f)), np.max(np.abs(np_hi - exact_hi_f))))
    assert np_err <= NUMPY_TOLERANCE, f"numpy bounds differ from the kernel's by {np_err}"
    den_bits = max(b.denominator.bit_length() for b in exact_lo + exact_hi)
    common_den_bits = int(y.den).bit_length()
    width_max = float(max(h - lo for lo, h in zip(exact_lo, exact_hi, strict=True)))

    replay_ms, check_ms, numpy_ms, frac_ms = (1e3 * replay_s, 1e3 * check_s, 1e3 * numpy_s,
                                              1e3 * frac_s)
    exact_over_numpy = replay_s / numpy_s
    frac_over_exact = frac_s / replay_s
    targets = {
        "replay_ms<=30": replay_ms <= TARGET_REPLAY_MS,
        "conversion_s<=0.5": conv_s <= TARGET_CONVERSION_S,
        "fraction_over_exact>=100": frac_over_exact >= TARGET_FRACTION_RATIO,
    }

    def pf(ok):
        return "PASS" if ok else "FAIL"

    rows = [
        ("measure", "value", "target", "result"),
        ("conversion (load + decode weights)", f"{conv_s:.3f} s", "<= 0.5 s",
         pf(targets["conversion_s<=0.5"])),
        ("  of which load_graph alone", f"{load_s:.3f} s", "", ""),
        ("exact replay per box", f"{replay_ms:.2f} ms", "<= 30 ms",
         pf(targets["replay_ms<=30"])),
        ("robust-claim check (ibp)", f"{check_ms:.2f} ms", "", claim_outcome),
        ("numpy float64 replay", f"{numpy_ms:.3f} ms", "", "float, not sound"),
        ("Fraction replay", f"{frac_ms:.0f} ms", "", f"{max(1, args.fraction_repeats)} run(s)"),
        ("  Fraction weight conversion", f"{frac_conv_s:.3f} s", "", ""),
        ("exact / numpy", f"{exact_over_numpy:.0f}x", "", ""),
        ("Fraction / exact", f"{frac_over_exact:.0f}x", ">= 100x",
         pf(targets["fraction_over_exact>=100"])),
        ("max output-bound denominator", f"{den_bits} bits", "", f"common den {common_den_bits} "
         "bits"),
        ("max output-bound width (IBP)", f"{width_max:.3g}", "", ""),
        ("max |numpy - exact| bound", f"{np_err:.1e}", "<= 1e-6", "PASS"),
        ("Fraction bounds == exact bounds", "yes", "exact", "PASS"),
    ]
    print_table(rows, "Exact interval replay, 784-256-256-10 ReLU MLP, float32 weights, one "
                "L-inf box (eps 0.01)")

    result = {
        "benchmark": "interval_replay",
        "network": {"sizes": list(SIZES), "activation": "relu", "weights": "float32, He-like "
                    "N(0, 2/fan_in); biases N(0, 0.01^2)", "seed": args.seed,
                    "parameters": graph.parameter_count()},
        "input_set": {"kind": "linf_ball", "eps": EPS, "clamp": list(CLAMP),
                      "center": f"uniform [0, 1) float32, seed {args.seed}"},
        "repeats": {"conversion": args.conversion_repeats, "replay": args.replay_repeats,
                    "claim_check": max(3, args.replay_repeats // 2),
                    "numpy": args.numpy_repeats, "fraction": max(1, args.fraction_repeats)},
        "timing": "time.perf_counter, median of repeats, warm-up excluded",
        "conversion_s": conv_s,
        "conversion_all_s": conv_all,
        "load_graph_s": load_s,
        "exact_replay_ms": replay_ms,
        "exact_replay_all_ms": [1e3 * t for t in replay_all],
        "robust_claim_check_ms": check_ms,
        "robust_claim_label": label,
        "robust_claim_outcome": claim_outcome,
        "numpy_float64_ms": numpy_ms,
        "fraction_ms": frac_ms,
        "fraction_weight_conversion_s": frac_conv_s,
        "ratio_exact_over_numpy": exact_over_numpy,
        "ratio_fraction_over_exact": frac_over_exact,
        "output_bound_denominator_max_bits": den_bits,
        "output_common_denominator_bits": common_den_bits,
        "output_bound_width_max": width_max,
        "numpy_max_abs_error": np_err,
        "fraction_equals_exact": True,
        "targets": {"exact_replay_ms": TARGET_REPLAY_MS, "conversion_s": TARGET_CONVERSION_S,
                    "fraction_over_exact": TARGET_FRACTION_RATIO},
        "pass": targets,
        "all_pass": all(targets.values()),
        "machine": machine_info(("platform", "processor", "cpu_model", "cpu_count",
                                 "cpus_available", "python"),
                                python_flint=flint.__version__, numpy=np.__version__),
        "date": utc_now(),
        "command": COMMAND,
        "wall_s": time.perf_counter() - t_start,
    }
    write_result(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.1f} s total)")
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
