"""The `tl` command: demo, check, audit, graph, verify, serve, export, oracle, run.

The kernel and the producers are imported inside the commands that use them, so that
`tl verify --server` (a client of `tl serve`) starts without torch, numpy or the kernel."""

import argparse
import json
import os
import sys
from collections import Counter


def cmd_demo(args) -> int:
    from tl_dsl.demo import run_demo

    return run_demo(args.out, images=args.images)


def cmd_check(args) -> int:
    import kernel_checker

    try:
        theorem, _ = kernel_checker.check_bundle(args.bundle)
    except kernel_checker.KernelError as err:
        print(f"rejected: rule {err.rule}: {err.path}: {err.message}", file=sys.stderr)
        return 1
    from tl_dsl.audit import _shown

    name = f" {_shown(theorem.claim.name)}" if theorem.claim.name else ""
    print(f"holds:{name} {theorem.claim.kind} on graph {theorem.claim.graph[:12]} by "
          f"{theorem.rule}; level {theorem.level.label}; {len(theorem.assumptions)} assumption(s)")
    return 0


def cmd_audit(args) -> int:
    import kernel_checker
    from tl_dsl.audit import audit_bundle, format_audit

    try:
        report = audit_bundle(args.bundle, args.permit)
    except kernel_checker.KernelError as err:
        print(f"rejected: rule {err.rule}: {err.path}: {err.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1))
    else:
        print(format_audit(report, tree=args.tree))
    if not report["permitted"]:
        bad = [a["name"] for a in report["assumptions"] if not a["permitted"]]
        print(f"audit failed: assumptions not permitted by {args.permit or '[]'}: {bad}",
              file=sys.stderr)
        return 1
    return 0


def cmd_graph(args) -> int:
    import kernel_checker
    from kernel_checker.tensor import numel

    try:
        graph = kernel_checker.load_graph(args.graph)
    except kernel_checker.KernelError as err:
        print(f"invalid graph: {err.path}: {err.message}", file=sys.stderr)
        return 1
    ops = Counter(n.op for n in graph.nodes)
    print(f"graph {args.graph}: tl.graph.v1, {len(graph.nodes)} nodes, sha256 {graph.sha256}")
    if graph.weights_sha256:
        print(f"weights sha256 {graph.weights_sha256}, {graph.parameter_count()} parameters")
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())))
    for n in graph.nodes:
        print(f"  {n.id:<16} {n.op:<10} {str(list(n.shape)):<16} <- {', '.join(n.inputs) or '-'}")
    outs = ", ".join(f"{o} {list(graph.by_id[o].shape)} ({numel(graph.by_id[o].shape)} values)"
                     for o in graph.outputs)
    print(f"outputs: {outs}")
    return 0


def cmd_verify(args) -> int:
    server = args.server if args.server is not None else os.environ.get("TL_SERVER")
    if server:
        from tl_dsl.serve import run_on_server

        return run_on_server(server, verify_argv(args))
    from tl_dsl.verify import verify

    word = verify(args.model, args.property, args.timeout, args.bundle, args.cex,
                  args.jobs)["result"]
    return 0 if word in ("unsat", "sat") else (2 if word == "timeout" else 3)


def verify_argv(args) -> list[str]:
    """The `tl verify` command line that `args` was parsed from, less --server."""
    argv = ["verify", "--timeout", repr(args.timeout), "--jobs", str(args.jobs)]
    if args.bundle is not None:
        argv.append(f"--bundle={args.bundle}")
    if args.cex is not None:
        argv.append(f"--cex={args.cex}")
    return argv + ["--", args.model, args.property]


def cmd_serve(args) -> int:
    from tl_dsl.serve import serve

    return serve(args.socket, args.idle)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tl", description="tl-verify: claims about neural networks, "
                                "checked by a small exact kernel", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the main example end to end on built-in data")
    d.add_argument("--out", default="tl-out/demo", help="folder for graphs and bundles")
    d.add_argument("--images", type=_positive, default=100,
                   help="test images per model and radius")
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("check", help="re-derive a bundle's theorem with the kernel")
    c.add_argument("bundle")
    c.set_defaults(func=cmd_check)
    a = sub.add_parser("audit", help="claim, level, assumptions and trusted base of a bundle")
    a.add_argument("bundle")
    a.add_argument("--json", action="store_true", help="print the audit as JSON")
    a.add_argument("--tree", action="store_true", help="print the derivation tree")
    a.add_argument("--permit", nargs="*", default=[], metavar="PATTERN",
                   help="assumption name patterns that are allowed (fnmatch, e.g. "
                   "'runtime.cuda.*'); after the bundle, as it takes every word that follows")
    a.set_defaults(func=cmd_audit)
    g = sub.add_parser("graph", help="validate a tl.graph.v1 file and its weights, and summarise")
    g.add_argument("graph")
    g.set_defaults(func=cmd_graph)
    v = sub.add_parser("verify", help="decide a VNN-LIB property on an ONNX model, every "
                       "answer checked by the kernel")
    v.add_argument("model", help="MODEL.onnx or a tl.graph.v1 graph.json")
    v.add_argument("property", help="PROP.vnnlib")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    v.add_argument("--bundle", help="write the proof bundle here when the answer is unsat")
    v.add_argument("--cex", help="write the counterexample here (VNN-COMP format) when sat")
    v.add_argument("--jobs", type=int, default=1, help="processes for branch and bound")
    v.add_argument("--server", metavar="PATH", help="run on the `tl serve` worker listening on "
                   "this socket (default: $TL_SERVER); exit 4 if none answers")
    v.set_defaults(func=cmd_verify)
    s = sub.add_parser("serve", help="a warm worker for `tl verify --server`: imports once, "
                       "forks per request")
    s.add_argument("--socket", required=True, metavar="PATH", help="AF_UNIX socket to listen on")
    s.add_argument("--idle", type=float, metavar="S", help="exit after S seconds without a "
                   "connection")
    s.set_defaults(func=cmd_serve)
    from tl_dsl.cli_export import register
    from tl_dsl.cli_oracle import register as register_oracle
    from tl_dsl.cli_run import register as register_run

    register(sub)
    register_oracle(sub)
    register_run(sub)
    _no_abbreviations(p)
    return p


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Options only as written, in every subcommand (`--tre` was taken as `--tree`)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return stdout_gone()


def stdout_gone() -> int:
    """The reader closed stdout (`tl verify ... | head -1`; files are written before any
    output): stop quietly, keeping the exit-time flush from failing again; the exit code 141."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    return 141


if __name__ == "__main__":
    sys.exit(main())
