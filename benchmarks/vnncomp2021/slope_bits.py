"""Coarser slopes against the kernel's time (issue 5's kernel share on ACAS Xu): for each
setting in --bits, `tl verify` makes each instance's bundle with the lower slopes (the
producers' ALPHA_BITS) and the default upper lines (UPPER_BITS, and the kernel's
UPPER_LINE_BITS alike) multiples of 2^-bits; then the kernel derives each bundle, with its
UPPER_LINE_BITS set as when it was made, --reps times, the settings alternating, in fresh
processes (process time of the derivation alone; the minimum is reported). The constants are
set in the child processes only; nothing in the project changes.

    python benchmarks/vnncomp2021/slope_bits.py --bits 16 12 \\
        --inst 4_6:1 2_9:1 3_7:1 4_9:1 1_1:3 1_1:2 1_1:6 --par 14 --dpar 4

Prints the trees (leaves, kernel and producer time as `tl verify` reports them) and the
derivation times, and writes them to --out with the machine.
"""

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, write_result  # noqa: E402
from benchmarks.vnncomp2021.kernel_ab import WORKER  # noqa: E402
from benchmarks.vnncomp2021.run import SHARED  # noqa: E402


def _set_bits(bits: int) -> None:
    import kernel_checker.crown as crown
    import oracles.bab as bab
    import oracles.bounds_torch as bounds

    crown.UPPER_LINE_BITS = bits
    bounds.ALPHA_BITS = bounds.UPPER_BITS = bab.ALPHA_BITS = bits


def child_verify(bits: int, argv: list) -> int:
    _set_bits(bits)
    from tl_dsl.cli import main

    return main(["verify", *argv])


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def make(bits: int, net: str, prop: str, folder: str, acas: str) -> dict:
    bundle = os.path.join(folder, f"b{bits}_{net}_{prop}.json")
    proc = subprocess.run([sys.executable, __file__, "--child-verify", str(bits),
                           os.path.join(acas, f"ACASXU_run2a_{net}_batch_2000.onnx"),
                           os.path.join(acas, f"prop_{prop}.vnnlib"),
                           "--timeout", "300", "--bundle", bundle],
                          capture_output=True, text=True, env=ENV)
    lines = proc.stdout.splitlines()
    summary = next((ln for ln in lines if ln.startswith("time ")), "")
    num = {k: re.search(rf"{k} ([0-9.]+)", summary) for k in ("producing", "checking",
                                                               "leaves")}
    return {"bits": bits, "net": net, "prop": prop, "bundle": bundle,
            "verdict": lines[0] if lines else f"error: {proc.stderr[-200:]}",
            **{k: (int if k == "leaves" else float)(m.group(1)) if m else None
               for k, m in num.items()}}


def derive_times(row: dict, settings: list, reps: int) -> dict:
    times: dict = {b: [] for b in settings}
    for _ in range(reps):
        for b in settings:
            # kernel_ab.py's worker (the derivation's process time), the kernel's default
            # upper lines set first as when the bundle was made
            setup = f"import kernel_checker.crown as c\nc.UPPER_LINE_BITS = {b}\n"
            proc = subprocess.run([sys.executable, "-c", setup + WORKER],
                                  input=row[b]["bundle"] + "\n", capture_output=True,
                                  text=True, env=ENV, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(f"deriving {row[b]['bundle']} failed: {proc.stderr[-300:]}")
            times[b].append(float(proc.stdout.strip()))
    return times


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child-verify":
        return child_verify(int(sys.argv[2]), sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 12])
    ap.add_argument("--inst", nargs="+", default=["4_6:1", "1_1:2"], help="NET:PROP, ACAS Xu")
    ap.add_argument("--acas", default=os.path.join(SHARED, "acasxu"),
                    help="folder of the ACAS Xu networks and properties")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--par", type=int, default=2, help="bundles made at a time")
    ap.add_argument("--dpar", type=int, default=1, help="instances derived at a time")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "vnncomp2021_slope_bits.json"))
    args = ap.parse_args()
    insts = [tuple(s.split(":")) for s in args.inst]
    folder = tempfile.mkdtemp(prefix="slope-bits-")
    jobs = [(b, n, p) for n, p in insts for b in args.bits]
    with concurrent.futures.ThreadPoolExecutor(args.par) as pool:
        made = list(pool.map(lambda j: make(*j, folder, args.acas), jobs))
    rows = {(n, p): {m["bits"]: m for m in made if (m["net"], m["prop"]) == (n, p)}
            for n, p in insts}
    for m in made:
        print(f"{m['net']} prop_{m['prop']} bits {m['bits']:2}: {m['verdict']}, leaves "
              f"{m['leaves']}, producing {m['producing']} s, kernel {m['checking']} s", flush=True)
    bad = [m for m in made if m["verdict"] != "unsat"]
    if bad:
        raise SystemExit(f"not unsat: {bad[0]}")
    with concurrent.futures.ThreadPoolExecutor(args.dpar) as pool:
        derived = list(pool.map(lambda key: derive_times(rows[key], args.bits, args.reps),
                                insts))
    out = []
    for (n, p), times in zip(insts, derived):
        best = {b: round(min(t), 3) for b, t in times.items()}
        print(f"{n} prop_{p}: derivation s (min of {args.reps}) " +
              ", ".join(f"{b} bits {v}" for b, v in best.items()), flush=True)
        out.append({"net": n, "prop": p, "derive_min_s": best, "derive_s": times,
                    "trees": {b: {k: rows[(n, p)][b][k] for k in ("leaves", "producing",
                                                                   "checking")}
                              for b in args.bits}})
    write_result(args.out, {"machine": machine_info(BASIC_FIELDS), "date": utc_now(),
                            "command": " ".join(["python"] + sys.argv), "rows": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
