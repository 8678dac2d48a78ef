"""A peer on this machine: Marabou (maraboupy on PyPI, which reads ONNX and VNN-LIB itself) on
the VNN-COMP 2021 instances with the competition timeouts, beside `tl verify`'s figures from a
`run.py` results file of the same machine. nnenum and alpha-beta-CROWN, the peers the issue
timed, are not on PyPI; Marabou is. Marabou checks none of its answers by default.

Marabou runs in its own environment, so that its packages (onnx, onnxruntime) stay out of
ours:

    python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install maraboupy==2.0.0 onnx onnxruntime
    python benchmarks/vnncomp2021/peer_marabou.py --python /tmp/mvenv/bin/python \\
        --ours benchmarks/results/vnncomp2021_epyc_89baa2e.jsonl --bench acasxu \\
        --match 'ACASXU_run2a_[12]_\\d_batch_2000\\.onnx prop_[1-4]\\.vnnlib' --parallel 2

Each instance: `python -m maraboupy NET PROP --timeout T --verbosity 0 --num-workers W`, the
line of its output that says sat, unsat, timeout or unknown read as the verdict, its wall time
measured here;
`--parallel` instances at a time (2 with W = 1 matches run.py's `--parallel 2`). Prints a line
per instance and a table, and writes the rows and totals to --out (with the machine).
"""

import argparse
import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, write_result  # noqa: E402
from benchmarks.vnncomp2021.run import SHARED, instances  # noqa: E402


def run_marabou(python: str, inst: dict, workers: int) -> dict:
    cmd = [python, "-m", "maraboupy", os.path.join(SHARED, inst["benchmark"], inst["onnx"]),
           os.path.join(SHARED, inst["benchmark"], inst["vnnlib"]), "--timeout",
           str(int(inst["timeout"])), "--verbosity", "0", "--num-workers", str(workers)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=inst["timeout"] + 60)
        # the verdict is a line of its own after the network and property lines (a sat
        # answer's assignment follows it)
        said = [ln.strip().lower() for ln in proc.stdout.splitlines()
                if ln.strip().lower() in ("sat", "unsat", "timeout", "unknown")]
        last = said[0] if said else f"error (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        last = "timeout"
    wall = time.perf_counter() - t
    verdict = last if last in ("sat", "unsat", "timeout") else "unknown"
    return {**inst, "marabou": verdict, "marabou_raw": last[:80], "marabou_wall_s": wall,
            "wrong": verdict in ("sat", "unsat") and inst["expected"] in ("sat", "unsat")
            and verdict != inst["expected"]}


def _totals(rows: list, key: str, solved: str) -> dict:
    walls = [r[key] for r in rows]
    return {"instances": len(rows), "solved": sum(r[solved] in ("sat", "unsat") for r in rows),
            "total_wall_s": round(sum(walls), 2),
            "median_wall_s": round(statistics.median(walls), 3) if walls else None,
            "slowest_14_wall_s": round(sum(sorted(walls)[-14:]), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True, help="an interpreter with maraboupy installed")
    ap.add_argument("--ours", required=True, help="run.py results (.jsonl) from this machine")
    ap.add_argument("--bench", nargs="+", default=["acasxu"])
    ap.add_argument("--match", default=None, help="keep instances whose 'ONNX VNNLIB' matches")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="Marabou's --num-workers")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "vnncomp2021_peer_marabou.json"))
    args = ap.parse_args()
    ours = {(r["benchmark"], r["onnx"], r["vnnlib"]): r
            for r in map(json.loads, open(args.ours))}
    todo = [i for b in args.bench for i in instances(b)
            if args.match is None or re.search(args.match, f"{i['onnx']} {i['vnnlib']}")]
    missing = [i for i in todo if (i["benchmark"], i["onnx"], i["vnnlib"]) not in ours]
    if missing:
        raise SystemExit(f"--ours has no row for {len(missing)} instances, e.g. "
                         f"{missing[0]['onnx']} {missing[0]['vnnlib']}")
    version = subprocess.run([args.python, "-m", "maraboupy", "--version"], capture_output=True,
                             text=True).stdout.strip().splitlines()
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for row in pool.map(lambda i: run_marabou(args.python, i, args.workers), todo):
            o = ours[(row["benchmark"], row["onnx"], row["vnnlib"])]
            row.update(ours=o["verdict"], ours_wall_s=o["wall_s"], ours_code=o.get("code"))
            rows.append(row)
            print(f"{row['benchmark']:8} {row['onnx']:34} {row['vnnlib']:20} expected "
                  f"{row['expected']:6} marabou {row['marabou']:8} {row['marabou_wall_s']:7.2f} s"
                  f"   tl verify {row['ours']:8} {row['ours_wall_s']:7.2f} s", flush=True)
    totals = {}
    for b in args.bench:
        sub = [r for r in rows if r["benchmark"] == b]
        if sub:
            totals[b] = {"marabou": {**_totals(sub, "marabou_wall_s", "marabou"),
                                     "wrong": sum(r["wrong"] for r in sub)},
                         "tl_verify": _totals(sub, "ours_wall_s", "ours")}
    print("\n| benchmark | tool | solved | total wall s | median s | 14 slowest s |\n"
          "|---|---|---|---|---|---|")
    for b, t in totals.items():
        for tool, x in t.items():
            print(f"| {b} | {tool} | {x['solved']}/{x['instances']} | {x['total_wall_s']} | "
                  f"{x['median_wall_s']} | {x['slowest_14_wall_s']} |")
    write_result(args.out, {"machine": machine_info(BASIC_FIELDS), "date": utc_now(),
                            "command": " ".join(["python"] + sys.argv),
                            "marabou_version": version[0] if version else None,
                            "ours": os.path.relpath(os.path.abspath(args.ours), ROOT),
                            "totals": totals, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
