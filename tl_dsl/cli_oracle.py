"""`tl oracle arb`: one Arb oracle request on stdin, exactly one JSON document on stdout.

    echo '{"kind":"unary","func":"exp","lo":"1","hi":"2","prec_bits":128}' | tl oracle arb

Exit status 0 with a ball (or balls), 1 with {"status": "error", "reason": ...}. With --check
the kernel also checks the answer (unary and expr requests: kernel_checker.enclosure.
check_oracle; mlp requests: each output written out as an expression) and the document gains
"kernel": {"level", "assumptions"} per answer; a refusal by the kernel exits 2.

`register(subparsers)` adds `oracle` with its `arb` subcommand to the `tl` parser;
`register_arb(oracle_subparsers)` adds only `arb` under an existing `oracle` group.
"""

from __future__ import annotations

import json
import sys


def _kernel_summary(theorem) -> dict:
    return {"level": theorem.level.label, "rule": theorem.rule,
            "assumptions": [a.to_json() for a in sorted(theorem.assumptions)]}


def cmd_arb(args) -> int:
    from kernel_checker.errors import KernelError
    from oracles.arb import mlp_to_enclosures, run_request_text

    request, response = run_request_text(sys.stdin.read())
    code = 0 if response.get("status") == "ok" else 1
    if code == 0 and args.check:
        from kernel_checker.enclosure import check_enclosure, check_oracle, request_sha256

        try:
            if request.get("kind") == "mlp":
                ev = {"tool": "python-flint", "version": response["flint_version"],
                      "prec_bits": str(response["prec_bits"]),
                      "request_sha256": request_sha256(request)}
                response["kernel"] = [_kernel_summary(check_enclosure(
                    {"claim": c, "certificate": {"rule": "enclosure", "oracle": ev}}))
                    for c in mlp_to_enclosures(request, response)]
            else:
                response["kernel"] = _kernel_summary(check_oracle(request, response))
        except KernelError as err:
            response["kernel"] = {"refused": {"rule": err.rule, "path": err.path,
                                              "message": err.message}}
            code = 2
    print(json.dumps(response, indent=args.indent))
    if code == 1:
        print(f"tl oracle arb: {response.get('reason')}", file=sys.stderr)
    return code


def register_arb(oracle_subparsers) -> None:
    a = oracle_subparsers.add_parser(
        "arb", help="Arb (python-flint) enclosures: one JSON request on stdin, one JSON "
        "document on stdout",
        description="Request kinds: unary (func exp|log|sqrt|tanh|sigmoid|sin|cos|atan|erf over "
        "[lo, hi]), expr (an expression AST over variable boxes), mlp (layers over an input "
        "box). Numbers are exact text. Balls are {mid, rad, exp} = [(mid-rad) 10^exp, "
        "(mid+rad) 10^exp]. See oracles/arb.py.")
    a.add_argument("--check", action="store_true",
                   help="also check the answer with the kernel and report level and assumptions")
    a.add_argument("--indent", type=int, default=None, help="pretty-print the JSON document")
    a.set_defaults(func=cmd_arb)


def register(subparsers) -> None:
    o = subparsers.add_parser("oracle", help="run a producer (untrusted) and print its answer")
    osub = o.add_subparsers(dest="oracle", required=True)
    register_arb(osub)
