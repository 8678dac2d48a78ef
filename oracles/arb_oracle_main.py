"""`python -m oracles.arb_oracle_main`: one Arb oracle request on stdin, one JSON document on
stdout (oracles/arb.py). Exit status 0 with a ball, 1 with an error document (whose reason also
goes to stderr, so the subprocess layer's error carries it)."""

import json
import sys

from oracles.arb import run_request_text


def main(stdin_text: str | None = None) -> int:
    _, response = run_request_text(sys.stdin.read() if stdin_text is None else stdin_text)
    print(json.dumps(response))
    if response["status"] != "ok":
        print(f"arb oracle: {response['reason']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
