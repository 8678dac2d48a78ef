"""Run `tl verify` on the VNN-COMP 2021 instances in ../shared/benchmarks/vnncomp2021 with the
competition timeouts from the instance lists, one fresh process per instance (as a user would
run it), and write a table plus totals beside the 2021 competition times. With --server, one
`tl serve` runs for the whole run and every `tl verify` goes through it (`--server`), so the
per-instance start-up (imports) is paid once; each row records `overhead_s`, the wall time
outside producing and kernel checking. With --jobs N every instance runs `tl verify --jobs N`
(with --parallel 1: N cores per instance, as the issue timed the peers on this machine).

Run: python benchmarks/vnncomp2021/run.py [--bench acasxu mnistfc] [--parallel 2] [--limit N]
                                          [--server] [--jobs N] [--results DIR]
Results: benchmarks/results/vnncomp2021.jsonl (one line per instance, resumable) and
benchmarks/results/vnncomp2021.json (totals), benchmarks/results/vnncomp2021.md (table); --results
puts them (and the bundles) in DIR instead."""

import argparse
import concurrent.futures
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, wall_totals, write_result  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "benchmarks", "vnncomp2021")
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def instances(bench: str) -> list[dict]:
    expected = {}
    with open(os.path.join(SHARED, "expected_verdicts.csv")) as f:
        for row in csv.DictReader(f):
            expected[(row["benchmark"], row["onnx"], row["vnnlib"])] = row
    out = []
    with open(os.path.join(SHARED, bench, f"{bench}_instances.csv")) as f:
        for onnx, vnnlib, timeout in csv.reader(f):
            exp = expected.get((bench, onnx, vnnlib), {})
            out.append({"benchmark": bench, "onnx": onnx, "vnnlib": vnnlib,
                        "timeout": float(timeout), "expected": exp.get("expected", "?"),
                        "abcrown_2021_s": exp.get("abcrown_2021_s"),
                        "nnenum_2021_s": exp.get("nnenum_2021_s")})
    return out


def run_one(inst: dict, out: str, server: str | None = None, jobs: int = 1) -> dict:
    name = f"{inst['benchmark']}_{inst['onnx'][:-5]}_{inst['vnnlib'][:-7]}"
    bundle = os.path.join(out, name + ".bundle.json")
    cex = os.path.join(out, name + ".cex")
    cmd = [sys.executable, "-m", "tl_dsl.cli", "verify",
           os.path.join(SHARED, inst["benchmark"], inst["onnx"]),
           os.path.join(SHARED, inst["benchmark"], inst["vnnlib"]),
           "--timeout", str(inst["timeout"]), "--bundle", bundle, "--cex", cex]
    if server:
        cmd += ["--server", server]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=inst["timeout"] + 120)
    wall = time.perf_counter() - t
    lines = proc.stdout.splitlines()
    verdict = lines[0] if lines else "error"
    m = re.search(r"setup ([0-9.]+) s, producing ([0-9.]+) s, kernel checking ([0-9.]+) s",
                  proc.stdout)
    leaves = re.search(r"leaves (\d+)", proc.stdout)
    recheck = None
    if verdict == "unsat" and os.path.exists(bundle):
        r = subprocess.run([sys.executable, "-m", "kernel_checker", bundle], capture_output=True,
                           text=True)
        recheck = r.returncode == 0
    producer_s, kernel_s = (float(m.group(2)), float(m.group(3))) if m else (None, None)
    return {**inst, "verdict": verdict, "wall_s": wall, "server": server is not None,
            "setup_s": float(m.group(1)) if m else None, "producer_s": producer_s,
            "kernel_s": kernel_s, "jobs": jobs,
            # (with --jobs the producer's seconds add up over processes: no overhead from them)
            "overhead_s": wall - producer_s - kernel_s if m and jobs == 1 else None,
            "leaves": int(leaves.group(1)) if leaves else None,
            "bundle_bytes": os.path.getsize(bundle) if verdict == "unsat" and os.path.exists(
                bundle) else 0, "bundle_rechecked": recheck,
            "wrong": verdict in ("sat", "unsat") and inst["expected"] in ("sat", "unsat")
            and verdict != inst["expected"], "stderr_tail": proc.stderr[-300:]}


def overhead_s(row: dict) -> float | None:
    """Wall time outside producing and kernel checking: process start, imports, model import,
    writing the bundle (computed for rows written before `overhead_s` was recorded)."""
    if "overhead_s" in row or row.get("producer_s") is None or row.get("jobs", 1) > 1:
        return row.get("overhead_s")
    return row["wall_s"] - row["producer_s"] - row["kernel_s"]


def start_server(folder: str) -> tuple[subprocess.Popen, str]:
    """A `tl serve` on a socket in `folder`, once it is listening; its log is folder/serve.log."""
    sock, log = os.path.join(folder, "sock"), os.path.join(folder, "serve.log")
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tl_dsl.cli", "serve", "--socket", sock],
                                stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 120
    while True:
        with open(log) as f:
            text = f.read()
        if "listening on" in text:
            return proc, sock
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"tl serve did not start: {text}")
        time.sleep(0.1)


def _commit() -> str:
    """The commit the instances ran on (with '+dirty' when the tree had changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()  # results being rewritten are not code
    return head + ("+dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", nargs="*", default=["acasxu", "mnistfc"])
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--match", default="",
                    help="only instances whose 'ONNX VNNLIB' matches this regular expression")
    ap.add_argument("--server", action="store_true",
                    help="run every instance through one `tl serve` started for the run")
    ap.add_argument("--jobs", type=int, default=1,
                    help="`tl verify --jobs N` for every instance (use with --parallel 1 to give "
                         "each instance N cores)")
    ap.add_argument("--results", default=RESULTS,
                    help="folder for the results and bundles (default benchmarks/results)")
    args = ap.parse_args()
    out = os.path.join(args.results, "vnncomp2021_bundles")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(args.results, "vnncomp2021.jsonl")
    done = {}
    if os.path.exists(log):
        with open(log) as f:
            for line in f:
                r = json.loads(line)
                done[(r["benchmark"], r["onnx"], r["vnnlib"])] = r
    todo = [i for b in args.bench for i in instances(b)
            if (i["benchmark"], i["onnx"], i["vnnlib"]) not in done]
    if args.match:
        todo = [i for i in todo if re.search(args.match, f"{i['onnx']} {i['vnnlib']}")]
    if args.limit:
        todo = todo[:args.limit]
    run = {"command": " ".join(["python benchmarks/vnncomp2021/run.py"] + sys.argv[1:]),
           "code": _commit(), "parallel": args.parallel, "jobs": args.jobs}
    folder = tempfile.mkdtemp(prefix="tl-serve-") if args.server else None
    server, sock = start_server(folder) if folder else (None, None)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for r in pool.map(lambda inst: run_one(inst, out, sock, args.jobs), todo):
                r.update(run)
                done[(r["benchmark"], r["onnx"], r["vnnlib"])] = r
                with open(log, "a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"{r['benchmark']:8} {r['onnx']:34} {r['vnnlib']:22} {r['verdict']:8} "
                      f"(expected {r['expected']:6}) {r['wall_s']:7.2f} s, overhead "
                      f"{r['overhead_s'] or 0:.2f} s" + ("  WRONG" if r["wrong"] else ""),
                      flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
            shutil.rmtree(folder, ignore_errors=True)
    write_report(list(done.values()), args.results)
    return 0


PEER_SUBSET = r"ACASXU_run2a_[12]_\d_batch_2000\.onnx prop_[1-4]\.vnnlib"


def report_only() -> None:
    with open(os.path.join(RESULTS, "vnncomp2021.jsonl")) as f:
        write_report([json.loads(line) for line in f])


def write_report(rows: list[dict], results: str = RESULTS) -> None:
    totals = {}
    for b in sorted({r["benchmark"] for r in rows}):
        rs = [r for r in rows if r["benchmark"] == b]
        solved = [r for r in rs if r["verdict"] in ("sat", "unsat") and not r["wrong"]
                  and r["wall_s"] <= r["timeout"]]  # an answer after the timeout is not solved
        kern = sum(r["kernel_s"] or 0 for r in rs)
        prod = sum(r["producer_s"] or 0 for r in rs)
        tot = sum(r["wall_s"] for r in rs)
        overheads = [o for o in map(overhead_s, rs) if o is not None]
        servers = {r.get("server", False) for r in rs}
        totals[b] = {"instances": len(rs), "solved": len(solved),
                     "unsat": sum(r["verdict"] == "unsat" for r in rs),
                     "sat": sum(r["verdict"] == "sat" for r in rs),
                     "wrong": sum(bool(r["wrong"]) for r in rs),
                     "answered_after_timeout": sum(r["verdict"] in ("sat", "unsat")
                                                   and r["wall_s"] > r["timeout"] for r in rs),
                     "median_wall_s": sorted(r["wall_s"] for r in rs)[len(rs) // 2],
                     "unsat_bundles_rechecked": sum(bool(r["bundle_rechecked"]) for r in rs),
                     "total_wall_s": tot, "kernel_s": kern,
                     "kernel_share": kern / tot if tot else 0,
                     # of the seconds spent producing and checking, summed over processes
                     # (with --jobs the kernel runs beside the workers, so its share of the
                     # wall time says little)
                     "kernel_share_of_work": kern / (kern + prod) if kern + prod else 0,
                     "median_setup_s": sorted(r["setup_s"] or 0 for r in rs)[len(rs) // 2],
                     "median_overhead_s": statistics.median(overheads) if overheads else None,
                     "server": servers.pop() if len(servers) == 1 else "mixed",
                     "abcrown_2021_total_s": sum(float(r["abcrown_2021_s"] or 0) for r in rs),
                     "nnenum_2021_total_s": sum(float(r["nnenum_2021_s"] or 0) for r in rs)}
        if b == "acasxu":  # where the issue timed nnenum and alpha-beta-CROWN here (14 of these)
            sub = [r["wall_s"] for r in rs
                   if re.fullmatch(PEER_SUBSET, f"{r['onnx']} {r['vnnlib']}")]
            if sub:
                totals[b]["peer_subset"] = {
                    "instances": len(sub), "definition": "props 1-4 on networks 1_x and 2_x",
                    **wall_totals(sub), "mean_wall_s": statistics.mean(sub),
                    "max_wall_s": max(sub)}
    runs = sorted({(r.get("command", "?"), r.get("code", "?"), r.get("parallel", "?"),
                    r.get("server", False), r.get("jobs", 1)) for r in rows}, key=str)
    meta = {"machine": machine_info(BASIC_FIELDS), "date": utc_now(),
            "runs": [{"command": c, "code": k, "parallel": p, "server": s, "jobs": j}
                     for c, k, p, s, j in runs],
            "note": "2021 competition times ran on other hardware (the competition's AWS "
                    "instances), so they are context, not a same-machine comparison"}
    write_result(os.path.join(results, "vnncomp2021.json"), {"totals": totals, **meta})
    lines = ["| benchmark | network | property | verdict | expected | wall s | producer s | "
             "kernel s | leaves | bundle bytes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["benchmark"], r["onnx"], r["vnnlib"])):
        lines.append(f"| {r['benchmark']} | {r['onnx']} | {r['vnnlib']} | {r['verdict']}"
                     f"{' WRONG' if r['wrong'] else ''} | {r['expected']} | {r['wall_s']:.2f} | "
                     f"{r['producer_s'] or 0:.2f} | {r['kernel_s'] or 0:.2f} | "
                     f"{r['leaves'] or 0} | {r['bundle_bytes']} |")
    lines.append("")
    for b, t in totals.items():
        lines.append(f"**{b}**: {t['solved']}/{t['instances']} solved ({t['unsat']} unsat, "
                     f"{t['sat']} sat), {t['wrong']} wrong, total {t['total_wall_s']:.0f} s, "
                     f"kernel share {t['kernel_share']:.0%} of the wall time, "
                     f"{t['kernel_share_of_work']:.0%} of the work, median overhead "
                     + ("n/a (--jobs)" if t["median_overhead_s"] is None else
                        f"{t['median_overhead_s']:.2f} s") + f" (server: {t['server']}); 2021 "
                     f"competition totals (other hardware): alpha-beta-CROWN "
                     f"{t['abcrown_2021_total_s']:.0f} s, nnenum {t['nnenum_2021_total_s']:.0f} s.")
        if "peer_subset" in t:
            p = t["peer_subset"]
            lines.append(f"**{b}, {p['definition']}** ({p['instances']} instances): total "
                         f"{p['total_wall_s']:.0f} s, median {p['median_wall_s']:.2f} s, mean "
                         f"{p['mean_wall_s']:.2f} s, max {p['max_wall_s']:.1f} s, the 14 "
                         f"slowest {p['slowest_14_wall_s']:.1f} s.")
    with open(os.path.join(results, "vnncomp2021.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:
        report_only()
        sys.exit(0)
    sys.exit(main())
