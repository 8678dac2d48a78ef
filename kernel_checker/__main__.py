"""`python -m kernel_checker BUNDLE`: the minimal re-check, kernel only (exit 0 holds, 1 not)."""

import sys

from kernel_checker.bundle import check_bundle
from kernel_checker.errors import KernelError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kernel_checker BUNDLE", file=sys.stderr)
        return 2
    try:
        theorem, _ = check_bundle(argv[0])
    except KernelError as err:
        print(f"rejected: {err}", file=sys.stderr)
        return 1
    print(f"holds: {theorem.claim.kind} by {theorem.rule}, level {theorem.level.label}, "
          f"{len(theorem.assumptions)} assumption(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
