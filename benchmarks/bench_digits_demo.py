"""The digits demo (`tl demo`) as a benchmark: certified / counterexample / unknown per model and
radius, IBP-alone and IBP-or-CROWN counts, producer vs kernel time and the kernel's share.

Run: python benchmarks/bench_digits_demo.py [--images 100]
Writes benchmarks/results/digits_demo.json with the machine it ran on."""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flint  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, write_result  # noqa: E402
from tl_dsl.demo import run_demo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "digits_demo.json"))
    args = ap.parse_args()
    folder = tempfile.mkdtemp()
    rc = run_demo(folder, images=args.images)
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    summary.update(
        exit_code=rc, command=" ".join(["python benchmarks/bench_digits_demo.py"] + sys.argv[1:]),
        machine=machine_info(BASIC_FIELDS, python_flint=flint.__version__,
                             torch=torch.__version__),
        date=utc_now())
    write_result(args.out, summary)
    print(f"wrote {args.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
