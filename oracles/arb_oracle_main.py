"""`python -m oracles.arb_oracle_main`: one Arb oracle request on stdin, one JSON document on
stdout (oracles/arb.py). Exit status 0 with a ball, 1 with an error document (whose reason also
goes to stderr, so the subprocess layer's error carries it)."""

import json
import sys

from kernel_checker.errors import KernelError
from kernel_checker.exact import load_json
from oracles.arb import run_request


def main(stdin_text: str | None = None) -> int:
    text = sys.stdin.read() if stdin_text is None else stdin_text
    try:
        request = load_json(text, "arb-oracle", "<stdin>")
    except KernelError as err:
        response = {"status": "error", "reason": f"the request is not JSON: {err.message}"}
    else:
        response = run_request(request)
    print(json.dumps(response))
    if response["status"] != "ok":
        print(f"arb oracle: {response['reason']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
