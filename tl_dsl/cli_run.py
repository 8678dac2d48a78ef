"""`tl run`: execute a checked graph in binary32 on the CPU or a CUDA device, and audit the run:
the kernel checks sampled outputs (or all) against its enclosure of every binary32 evaluation
and writes a bundle `tl check` re-derives."""

import os
import sys
import time
from collections import Counter


def register(sub) -> None:
    from tl_dsl.cli import _positive

    r = sub.add_parser("run", help="execute a checked graph in binary32 (CPU or CUDA) and audit "
                       "sampled outputs with the kernel")
    r.add_argument("graph", help="a tl.graph.v1 graph.json or an ONNX model (imported beside "
                   "the bundle, BUNDLE.model/, as tl verify does), checked by the kernel first")
    r.add_argument("--device", required=True, choices=["cpu", "cuda"],
                   help="where to run (never a silent fallback: cuda without a device fails)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="X.npy", help="float32 inputs, one per row (or one)")
    src.add_argument("--random", type=_positive, metavar="N", help="N inputs drawn uniformly in "
                     "[--low, --high] (float32)")
    r.add_argument("--low", type=float, default=-1.0)
    r.add_argument("--high", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--node", help="the output node (default: the graph's first output)")
    r.add_argument("--audit", default="8", metavar="K|all", help="outputs the kernel checks: K "
                   "evenly spaced rows, 'all', or 0 (default 8)")
    r.add_argument("--bundle", help="write the audit's bundle here (re-check: tl check)")
    r.add_argument("--out", metavar="Y.npy", help="write the outputs here")
    r.set_defaults(func=cmd_run)


def _rows(spec: str, n: int) -> list:
    if spec == "all":
        return list(range(n))
    k = int(spec)
    if k < 0:
        raise ValueError(f"--audit: expected K >= 0 or 'all', found {spec}")
    k = min(k, n)
    return sorted({(i * (n - 1)) // max(k - 1, 1) for i in range(k)}) if k else []


def cmd_run(args) -> int:
    import shutil
    import tempfile

    own = None
    if args.graph.endswith(".onnx"):  # imported where the bundle can name it, else for the run
        workdir = os.path.splitext(args.bundle)[0] + ".model" if args.bundle else None
        own = tempfile.mkdtemp(prefix="tl-run-") if workdir is None else None
        try:
            from tl_dsl.verify import load_model

            args.graph = load_model(args.graph, workdir or own)
        except Exception as err:  # noqa: BLE001 (the importer's reason, whatever its type)
            print(f"tl run: cannot import {args.graph}: {err}", file=sys.stderr)
            return 2
    try:
        return _run(args)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


def _run(args) -> int:
    import numpy as np

    import kernel_checker
    from gpu import NoDeviceError, UnsupportedGraphError, runner
    from gpu.audit import audit_rows
    from tl_dsl import proof

    try:
        graph = kernel_checker.load_graph(args.graph)
        run = runner(graph, args.device, args.node)
    except kernel_checker.KernelError as err:
        print(f"invalid graph: {err.path}: {err.message}", file=sys.stderr)
        return 1
    except (NoDeviceError, UnsupportedGraphError) as err:
        print(f"tl run: {err}", file=sys.stderr)
        return 2
    try:
        if args.input:
            x = np.load(args.input, allow_pickle=False)
        else:
            rng = np.random.default_rng(args.seed)
            x = rng.uniform(args.low, args.high, (args.random, run.plan.n_in)).astype(np.float32)
        t = time.perf_counter()
        y = run.forward(x)
        took = time.perf_counter() - t
        rows = _rows(args.audit, len(y))
        prov = run.provenance()
    except (OSError, ValueError, TypeError) as err:
        print(f"tl run: {err}", file=sys.stderr)
        return 2
    finally:
        if hasattr(run, "close"):
            run.close()
    where = prov.get("device", prov.get("processor", "cpu"))
    print(f"ran {len(y)} input(s) through {run.plan.output_id} on {args.device} ({where}) in "
          f"{took:.4f} s ({len(y) / took:,.0f} inputs/s, transfers included)")
    if args.out:
        np.save(args.out, y)
        print(f"outputs {args.out} ({y.shape[0]} x {y.shape[1]}, float32)")
    if not rows:
        print("audit: none asked (--audit 0); nothing the kernel checked")
        return 0
    x2 = x.reshape(len(y), -1)
    try:
        t = time.perf_counter()
        claim, cert, thm = audit_rows(graph, run.plan.output_id, x2, y, rows, args.device, prov)
    except kernel_checker.KernelError as err:
        print(f"audit: rejected: {err.path}: {err.message}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"audit: {err}", file=sys.stderr)
        return 1
    counts = Counter(a.name for a in thm.assumptions)
    names = ", ".join(f"{n} (x{k})" for n, k in sorted(counts.items()))
    print(f"audit: {len(rows)} output(s) inside the kernel's binary32 enclosure "
          f"({time.perf_counter() - t:.2f} s); level {thm.level.label}; assumes {names}")
    if args.bundle:
        proof.write_bundle(args.bundle, claim, cert, args.graph, graph,
                           {"tool": "tl run", "device": args.device, **prov})
        print(f"bundle {args.bundle} (re-check: tl check {args.bundle})")
    return 0
