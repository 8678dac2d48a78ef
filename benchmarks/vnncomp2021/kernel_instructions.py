"""The kernel's work counted in instructions, not seconds (issue 5's kernel share): this
machine's timings drift by 10-20% within an hour, callgrind's instruction counts do not. For
each kernel source tree (--src LABEL=PATH) and bundle, `valgrind --tool=callgrind` counts the
instructions of a process that loads the bundle and derives it (`kernel_ab.py`'s worker) and of
one that only loads it; the difference is the derivation's. A run takes about 50 times as long
as the derivation alone.

    python benchmarks/vnncomp2021/kernel_instructions.py --src base=. --src floor=/tmp/kb \\
        --bundle RESULTS/vnncomp2021_bundles/NAME.bundle.json [...] [--parallel 2] [--out F.json]

A patch tried on the kernel and not kept is in `patches/` beside this file; to count it, apply
it to a worktree (`git worktree add /tmp/kb HEAD && git -C /tmp/kb apply
benchmarks/vnncomp2021/patches/NAME.diff`) and pass that worktree as a --src. Prints the
derivations' instructions (G) per bundle and source with the ratio to the first source, and
writes them to --out with the machine.
"""

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, write_result  # noqa: E402
from benchmarks.vnncomp2021.kernel_ab import WORKER, _rev  # noqa: E402


def count(src: str, bundle: str, derive: bool) -> int:
    """Instructions of one worker process (callgrind's `I refs`) on one bundle."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    env.pop("KERNEL_AB_LOAD_ONLY", None)
    if not derive:
        env["KERNEL_AB_LOAD_ONLY"] = "1"
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, "-c", WORKER], input=os.path.abspath(bundle) + "\n",
                         capture_output=True, text=True, env=env, cwd=os.path.abspath(src))
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode or not found or not out.stdout.strip():
        raise SystemExit(f"callgrind run failed ({src}, {bundle}, derive={derive}):\n"
                         f"{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--bundle", nargs="+", required=True)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    srcs = dict(s.split("=", 1) for s in args.src)
    if len(srcs) != len(args.src) or not all(srcs):
        raise SystemExit("--src: expected distinct LABEL=PATH pairs")
    for path in srcs.values():  # byte-compiled first, so that no count includes compiling
        subprocess.run([sys.executable, "-c", "import kernel_checker.bundle"], check=True,
                       cwd=path, env={**os.environ, "PYTHONPATH": os.path.abspath(path)})
    jobs = [(label, b, d) for b in args.bundle for label in srcs for d in (True, False)]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        counts = dict(zip(jobs, pool.map(lambda j: count(srcs[j[0]], j[1], j[2]), jobs)))
    rows, first = [], next(iter(srcs))
    revs = {label: _rev(path) + ("+changes" if subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=path, capture_output=True,
        text=True).stdout.strip() else "") for label, path in srcs.items()}
    print(f"\n| bundle | {' | '.join(srcs)} |\n|---|{'---|' * len(srcs)}")
    for b in args.bundle:
        net = {label: counts[(label, b, True)] - counts[(label, b, False)] for label in srcs}
        rows += [{"bundle": os.path.basename(b), "src": label, "rev": revs[label],
                  "derive_and_load": counts[(label, b, True)],
                  "load": counts[(label, b, False)], "derive": net[label]} for label in srcs]
        print(f"| {os.path.basename(b)} | " + " | ".join(
            f"{net[label] / 1e9:.2f} G ({net[label] / net[first]:.3f})" for label in srcs) + " |")
    if args.out:
        write_result(args.out, {"benchmark": "vnncomp2021_kernel_instructions",
                                "command": " ".join(["python", *sys.argv]), "date": utc_now(),
                                "machine": machine_info(BASIC_FIELDS), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
