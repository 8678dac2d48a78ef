"""The kernel's time alone, two versions in one sitting: every `unsat` bundle of one run.py
results folder derived by one kernel checkout, and the same instance's bundle of another folder by
another checkout, alternating instance by instance (A then B, then B then A) so that both see
the machine's drift alike. Each side is one long-lived process (its imports and caches warm, as
in `tl serve`); the time is the process time of `derive` alone (loading and parsing the bundle
are outside it).

    python benchmarks/vnncomp2021/kernel_ab.py --a-src OLD_CHECKOUT --a-results OLD_RESULTS \\
        --b-src NEW_CHECKOUT --b-results NEW_RESULTS [--bench acasxu] [--out FILE.json]

Prints a line per instance and the totals (all, and per property), and writes them to --out.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
import kernel_checker.bundle as kb
for line in sys.stdin:
    path = line.strip()
    doc = kb.load_json(kb.read_bytes(path, kb.RULE, path, "bundle"), kb.RULE, path)
    graph = kb.load_graph(os.path.join(os.path.dirname(os.path.abspath(path)),
                                       doc["artifacts"]["graph"]["path"]))
    claim = kb.parse_claim(doc["claim"], "claim")
    t = time.process_time()
    if not os.environ.get("KERNEL_AB_LOAD_ONLY"):  # (set: the bundle is loaded, not derived)
        kb.derive(kb.Context([graph]), claim, doc["certificate"], "certificate")
    print(json.dumps(time.process_time() - t), flush=True)
"""


def _worker(src: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    return subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=os.path.abspath(src))


def _bundles(results: str, bench: str) -> dict:
    """{(onnx, vnnlib) file names: bundle path} of the unsat instances of a results folder."""
    out = {}
    with open(os.path.join(results, "vnncomp2021.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["benchmark"] == bench and r["verdict"] == "unsat":
                onnx, prop = os.path.basename(r["onnx"]), os.path.basename(r["vnnlib"])
                name = f"{bench}_{onnx[:-5]}_{prop[:-7]}.bundle.json"
                out[(onnx, prop)] = os.path.join(results, "vnncomp2021_bundles", name)
    return out


def _rev(src: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True,
                          text=True).stdout.strip()


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a-src", required=True)
    ap.add_argument("--a-results", required=True)
    ap.add_argument("--b-src", required=True)
    ap.add_argument("--b-results", required=True)
    ap.add_argument("--bench", default="acasxu")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    a, b = _bundles(args.a_results, args.bench), _bundles(args.b_results, args.bench)
    common = [k for k in a if k in b]
    workers = {"a": _worker(args.a_src), "b": _worker(args.b_src)}
    paths = {"a": a, "b": b}
    rows = []
    for i, key in enumerate(common):
        times = {}
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            w = workers[side]
            w.stdin.write(paths[side][key] + "\n")
            w.stdin.flush()
            line = w.stdout.readline()
            if not line:
                raise SystemExit(f"kernel {side} stopped on {paths[side][key]}")
            times[side] = json.loads(line)
        rows.append({"onnx": key[0], "vnnlib": key[1], "a_s": times["a"], "b_s": times["b"]})
        print(f"{key[0]:36s} {key[1]:16s} {times['a']:8.3f} {times['b']:8.3f}", flush=True)
    per: dict = {}
    for r in rows:
        t = per.setdefault(r["vnnlib"], [0, 0.0, 0.0])
        t[0], t[1], t[2] = t[0] + 1, t[1] + r["a_s"], t[2] + r["b_s"]
    ta, tb = sum(r["a_s"] for r in rows), sum(r["b_s"] for r in rows)
    print("\n| property | instances | a s | b s | b / a |\n|---|---|---|---|---|")
    for prop, (n, sa, sb) in sorted(per.items()):
        print(f"| {prop} | {n} | {sa:.1f} | {sb:.1f} | {sb / sa:.3f} |")
    print(f"| all | {len(rows)} | {ta:.1f} | {tb:.1f} | {tb / ta:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(["python", *sys.argv]), "a": _rev(args.a_src),
                       "b": _rev(args.b_src), "machine": {
                           "platform": platform.platform(), "processor": _cpu(),
                           "cpus": os.cpu_count(), "python": platform.python_version()},
                       "total_a_s": ta, "total_b_s": tb,
                       "per_property": {p: {"instances": n, "a_s": sa, "b_s": sb}
                                        for p, (n, sa, sb) in per.items()},
                       "instances": rows}, f, indent=1)


if __name__ == "__main__":
    main()
