"""Benchmark: Arb oracle throughput and the kernel's own enclosure checks.

  oracle (in-process)   oracles.arb.run_request on scalar unary requests (exp, log, sqrt,
                        tanh, sigmoid, sin, cos, atan, erf at rational points), 128 bits: the
                        whole protocol (exact input decoding, request hash, Arb, exact outward
                        decimal encoding). Target: >= 10,000 enclosures/s.
  oracle (Arb only)     oracles.arb.unary_enclosure alone (for comparison).
  kernel check          kernel_checker.enclosure.check_ball_encloses on balls of relative width
                        about 2^-50 (the oracle's answers at prec_bits 50, decoded once), for
                        the seven functions the kernel evaluates itself. Target: >= 1,000/s.
  kernel check_oracle   the full kernel path per answer: echo checks, request hash, claim
                        parsing, verification, theorem (same 2^-50 answers).
  kernel at 128 bits    check_ball_encloses on the 128-bit answers (balls ~ 1e-38 relative).

Every timing is time.perf_counter over a fixed workload after a warm-up pass (median of
--repeats passes). Results go to benchmarks/results/enclosure.json with the machine, the date and
the command. Run from the repository root: python benchmarks/bench_enclosure.py [--strict]
"""

import argparse
import datetime
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import flint  # noqa: E402
from flint import fmpq  # noqa: E402

from benchmarks._common import machine_info, write_result  # noqa: E402
from kernel_checker.enclosure import FUNCS, check_ball_encloses, check_oracle  # noqa: E402
from kernel_checker.exact import decode_ball  # noqa: E402
from kernel_checker.theorem import Level  # noqa: E402
from oracles.arb import UNARY, run_request, unary_enclosure  # noqa: E402

TARGET_ORACLE = 10_000
TARGET_KERNEL = 1_000


def workload(n: int, funcs, prec_bits: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        func = funcs[i % len(funcs)]
        x = fmpq(rng.randint(-3000, 3000), rng.choice([7, 100, 1000, 1024]))
        if func in ("log", "sqrt"):
            x = abs(x) + fmpq(1, 1000)
        text = str(x.p) if x.q == 1 else f"{x.p}/{x.q}"
        out.append({"kind": "unary", "func": func, "lo": text, "hi": text,
                    "prec_bits": prec_bits})
    return out


def rate(fn, items, repeats: int) -> tuple[float, list[float]]:
    for it in items[: max(1, len(items) // 10)]:
        fn(it)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for it in items:
            fn(it)
        times.append(time.perf_counter() - t)
    best = statistics.median(times)
    return len(items) / best, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="enclosures per pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "enclosure.json"))
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)

    reqs = workload(args.n, UNARY, 128)
    oracle_rate, oracle_times = rate(run_request, reqs, args.repeats)
    points = [(r["func"], fmpq(r["lo"])) for r in reqs]
    flint.ctx.prec = 128
    arb_rate, _ = rate(lambda p: unary_enclosure(p[0], p[1], p[1]), points, args.repeats)
    flint.ctx.prec = 53

    kreqs = workload(args.n, FUNCS, 50, seed=1)
    answers = [run_request(r) for r in kreqs]
    balls = []
    for r, a in zip(kreqs, answers):
        lo, hi = decode_ball(a["ball"], "ball")
        balls.append((r["func"], fmpq(r["lo"]), lo, hi))
    rel = [(hi - lo) / max(abs(lo), abs(hi)) for _, _, lo, hi in balls if lo != hi]
    widths_log2 = sorted(int(w.p).bit_length() - int(w.q).bit_length() for w in rel)

    def kcheck(b):
        assert check_ball_encloses(b[0], b[1], b[1], b[2], b[3])

    kernel_rate, kernel_times = rate(kcheck, balls, args.repeats)

    def full(pair):
        assert check_oracle(*pair).level == Level.PROVED

    full_rate, _ = rate(full, list(zip(kreqs, answers)), max(1, args.repeats // 2))

    balls128 = []
    for r in reqs:
        if r["func"] in FUNCS:
            a = run_request(r)
            lo, hi = decode_ball(a["ball"], "ball")
            balls128.append((r["func"], fmpq(r["lo"]), lo, hi))
    k128_rate, _ = rate(kcheck, balls128, max(1, args.repeats // 2))

    result = {
        "benchmark": "enclosure",
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(("platform", "processor", "cpu_model", "cpu_count", "python"),
                                python_flint=flint.__version__),
        "timing": "time.perf_counter, median of passes over the workload, warm-up excluded",
        "workload": {"enclosures_per_pass": args.n, "passes": args.repeats,
                     "oracle_functions": list(UNARY), "kernel_functions": list(FUNCS),
                     "arguments": "rationals p/q, |p| <= 3000, q in {7, 100, 1000, 1024}; "
                                  "log, sqrt: |x| + 1/1000"},
        "oracle_in_process_per_s": round(oracle_rate),
        "oracle_pass_s": oracle_times,
        "oracle_arb_only_per_s": round(arb_rate),
        "kernel_check_2^-50_per_s": round(kernel_rate),
        "kernel_check_pass_s": kernel_times,
        "kernel_check_oracle_full_2^-50_per_s": round(full_rate),
        "kernel_check_128bit_balls_per_s": round(k128_rate),
        "ball_relative_width_log2_2^-50": {"min": widths_log2[0], "median":
                                            widths_log2[len(widths_log2) // 2],
                                            "max": widths_log2[-1]},
        "targets": {"oracle_per_s": TARGET_ORACLE, "kernel_per_s": TARGET_KERNEL},
        "pass": {"oracle>=10000/s": oracle_rate >= TARGET_ORACLE,
                 "kernel>=1000/s": kernel_rate >= TARGET_KERNEL},
    }
    result["all_pass"] = all(result["pass"].values())
    write_result(args.out, result)
    rows = [("measure", "per second", "target"),
            ("oracle in-process (128 bits, full protocol)", f"{oracle_rate:,.0f}",
             f">= {TARGET_ORACLE:,}"),
            ("oracle, Arb call only", f"{arb_rate:,.0f}", ""),
            ("kernel check_ball_encloses (2^-50 balls)", f"{kernel_rate:,.0f}",
             f">= {TARGET_KERNEL:,}"),
            ("kernel check_oracle, full path (2^-50)", f"{full_rate:,.0f}", ""),
            ("kernel check_ball_encloses (128-bit balls)", f"{k128_rate:,.0f}", "")]
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>12}  {r[2]}")
    print(f"ball relative width (log2) at prec 50: {result['ball_relative_width_log2_2^-50']}")
    print(f"wrote {args.out}; all targets met: {result['all_pass']}")
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
