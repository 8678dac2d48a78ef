"""Peers on this machine, on the VNN-COMP 2021 instances with the competition timeouts, beside
`tl verify`'s figures from a `run.py` results file of the same machine. nnenum and
alpha-beta-CROWN, the peers the issue timed, are not on PyPI; these are:

- Marabou 2.0.0 (`maraboupy`), complete (simplex with ReLU splitting, DeepPoly bounds);
- NeuralSAT 0.2.17 (`neuralsat`; DPLL(T) over auto_LiRPA-style bound propagation, with input
  splitting on low-dimensional inputs; second overall at VNN-COMP 2024 and 2025).

Neither checks its answers. Each runs in its own environment, so that its packages stay out
of ours:

    python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install maraboupy==2.0.0 onnx onnxruntime
    python benchmarks/vnncomp2021/peer.py --tool marabou --python /tmp/mvenv/bin/python \\
        --ours benchmarks/results/vnncomp2021_epyc_89baa2e.jsonl --bench acasxu \\
        --match 'ACASXU_run2a_[12]_\\d_batch_2000\\.onnx prop_[1-4]\\.vnnlib' --parallel 2

    python3 -m venv /tmp/nsvenv && /tmp/nsvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/nsvenv/bin/pip install --no-deps neuralsat==0.2.17
    /tmp/nsvenv/bin/pip install beartype coloredlogs gurobipy onnx onnxsim onnxruntime \\
        sortedcontainers sympy termcolor joblib scipy psutil tqdm networkx 'protobuf<6'
    python benchmarks/vnncomp2021/peer.py --tool neuralsat --python /tmp/nsvenv/bin/python ...

(NeuralSAT's wheel asks for torchaudio too, which its verifier never imports; torchvision its
ONNX reader imports. Its wheel installs a top-level package `src` whose `main.py` is the
command line.)

Each instance: the tool's command line with the instance's timeout, on the CPU, with
`--workers` threads (default 1: `OMP_NUM_THREADS`, and Marabou's `--num-workers`),
`--parallel` instances at a time (2 with one thread each matches run.py's `--parallel 2`; 1 with
two threads, run.py's `--parallel 1 --jobs 2`), its wall time measured here from process start
to exit. The verdict is the line of its output that says sat, unsat, timeout or unknown
(`timeout` too where it was killed, still running, 60 s after its timeout). NeuralSAT also
prints its own runtime (from its start, after Python's imports), kept as `reported_s` (summed
over the rows that have one). Prints a line per instance and a table, and writes the rows and
totals to --out (with the machine).
"""

import argparse
import concurrent.futures
import functools
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, wall_totals, write_result  # noqa: E402
from benchmarks.vnncomp2021.run import SHARED, instances  # noqa: E402

WORDS = ("sat", "unsat", "timeout", "unknown")


def _paths(inst: dict) -> tuple[str, str]:
    return (os.path.join(SHARED, inst["benchmark"], inst["onnx"]),
            os.path.join(SHARED, inst["benchmark"], inst["vnnlib"]))


def marabou_command(python: str, inst: dict, workers: int) -> list:
    net, prop = _paths(inst)
    return [python, "-m", "maraboupy", net, prop, "--timeout", str(int(inst["timeout"])),
            "--verbosity", "0", "--num-workers", str(workers)]


def marabou_verdict(out: str) -> tuple[str, float | None]:
    """The verdict is a line of its own after the network and property lines (a sat answer's
    assignment follows it)."""
    said = [ln.strip().lower() for ln in out.splitlines() if ln.strip().lower() in WORDS]
    return (said[0] if said else ""), None


@functools.cache
def _neuralsat_main(python: str) -> str:
    """Its command line, `main.py` of the top-level package `src` its wheel installs."""
    return subprocess.run([python, "-c", "import importlib.util, os; print(os.path.join("
                           "os.path.dirname(importlib.util.find_spec('src').origin), 'main.py'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def neuralsat_command(python: str, inst: dict, workers: int) -> list:
    net, prop = _paths(inst)
    return [python, _neuralsat_main(python), "--net", net, "--spec", prop, "--timeout",
            str(inst["timeout"]), "--device", "cpu", "--verbosity", "0"]


def neuralsat_verdict(out: str) -> tuple[str, float | None]:
    """Its last line of output is `STATUS,RUNTIME`."""
    said = [ln.strip().split(",") for ln in out.splitlines()
            if re.fullmatch(r"(sat|unsat|timeout|unknown),[0-9.]+", ln.strip())]
    return (said[-1][0], float(said[-1][1])) if said else ("", None)


TOOLS = {"marabou": (marabou_command, marabou_verdict, ["-m", "maraboupy", "--version"]),
         "neuralsat": (neuralsat_command, neuralsat_verdict, None)}


def run_peer(tool: str, python: str, inst: dict, workers: int, extra: list) -> dict:
    command, verdict_of, _ = TOOLS[tool]
    cmd = command(python, inst, workers) + extra
    env = {**os.environ, "OMP_NUM_THREADS": str(workers), "MKL_NUM_THREADS": str(workers)}
    t = time.perf_counter()
    reported = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=inst["timeout"] + 60)
        said, reported = verdict_of(proc.stdout)
        raw = said or f"error (exit {proc.returncode}): {proc.stderr.strip()[-200:]}"
    except subprocess.TimeoutExpired:
        raw = "timeout (killed at the timeout + 60 s)"
    wall = time.perf_counter() - t
    verdict = "timeout" if raw.startswith("timeout") else raw if raw in ("sat", "unsat") \
        else "unknown"
    return {**inst, "peer": verdict, "peer_raw": raw[:300], "peer_wall_s": wall,
            "reported_s": reported,
            "wrong": verdict in ("sat", "unsat") and inst["expected"] in ("sat", "unsat")
            and verdict != inst["expected"]}


def _totals(rows: list, key: str, solved: str, reported: str | None = None) -> dict:
    walls = {k: v if v is None else round(v, 3 if k.startswith("median") else 2)
             for k, v in wall_totals([r[key] for r in rows]).items()}
    return {"instances": len(rows), "solved": sum(r[solved] in ("sat", "unsat") for r in rows),
            **walls,
            **({"total_reported_s": round(sum(r[reported] or 0 for r in rows), 2),
                "reported_rows": sum(r[reported] is not None for r in rows)}
               if reported and any(r[reported] is not None for r in rows) else {})}


def _version(tool: str, python: str) -> str | None:
    if TOOLS[tool][2] is not None:
        out = subprocess.run([python, *TOOLS[tool][2]], capture_output=True, text=True).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    out = subprocess.run([python, "-m", "pip", "show", tool], capture_output=True,
                         text=True).stdout
    found = re.search(r"^Version: (\S+)", out, re.M)
    return f"{tool} {found.group(1)}" if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", choices=sorted(TOOLS), required=True)
    ap.add_argument("--python", required=True, help="an interpreter with the tool installed")
    ap.add_argument("--ours", required=True, help="run.py results (.jsonl) from this machine")
    ap.add_argument("--bench", nargs="+", default=["acasxu"])
    ap.add_argument("--match", default=None, help="keep instances whose 'ONNX VNNLIB' matches")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1,
                    help="threads per instance (Marabou's --num-workers, OMP_NUM_THREADS)")
    ap.add_argument("--peer-args", default="",
                    help="more arguments for the tool, e.g. '--disable_attack' (one string)")
    ap.add_argument("--out", default=None,
                    help="default benchmarks/results/vnncomp2021_peer_TOOL.json")
    args = ap.parse_args()
    out = args.out or os.path.join(ROOT, "benchmarks", "results",
                                   f"vnncomp2021_peer_{args.tool}.json")
    ours = {(r["benchmark"], r["onnx"], r["vnnlib"]): r
            for r in map(json.loads, open(args.ours))}
    todo = [i for b in args.bench for i in instances(b)
            if args.match is None or re.search(args.match, f"{i['onnx']} {i['vnnlib']}")]
    missing = [i for i in todo if (i["benchmark"], i["onnx"], i["vnnlib"]) not in ours]
    if missing:
        raise SystemExit(f"--ours has no row for {len(missing)} instances, e.g. "
                         f"{missing[0]['onnx']} {missing[0]['vnnlib']}")
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for row in pool.map(lambda i: run_peer(args.tool, args.python, i, args.workers,
                                                  args.peer_args.split()), todo):
            o = ours[(row["benchmark"], row["onnx"], row["vnnlib"])]
            row.update(ours=o["verdict"], ours_wall_s=o["wall_s"], ours_code=o.get("code"))
            rows.append(row)
            print(f"{row['benchmark']:8} {row['onnx']:34} {row['vnnlib']:20} expected "
                  f"{row['expected']:6} {args.tool} {row['peer']:8} {row['peer_wall_s']:7.2f} s"
                  f"   tl verify {row['ours']:8} {row['ours_wall_s']:7.2f} s", flush=True)
    totals = {}
    for b in args.bench:
        sub = [r for r in rows if r["benchmark"] == b]
        if sub:
            totals[b] = {args.tool: {**_totals(sub, "peer_wall_s", "peer", "reported_s"),
                                     "wrong": sum(r["wrong"] for r in sub)},
                         "tl_verify": _totals(sub, "ours_wall_s", "ours")}
    print("\n| benchmark | tool | solved | total wall s | median s | 14 slowest s | "
          "reported s |\n|---|---|---|---|---|---|---|")
    for b, t in totals.items():
        for tool, x in t.items():
            print(f"| {b} | {tool} | {x['solved']}/{x['instances']} | {x['total_wall_s']} | "
                  f"{x['median_wall_s']} | {x['slowest_14_wall_s']} | "
                  f"{x.get('total_reported_s', '-')} |")
    write_result(out, {"machine": machine_info(BASIC_FIELDS), "date": utc_now(),
                       "command": " ".join(["python"] + sys.argv), "tool": args.tool,
                       "version": _version(args.tool, args.python),
                       "ours": os.path.relpath(os.path.abspath(args.ours), ROOT),
                       "totals": totals, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
