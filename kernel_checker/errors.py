"""The one error type of the kernel: which rule refused, at which artifact path, and why."""

import os


class KernelError(Exception):
    """A refusal by the kernel. `rule` names the rule or decoder, `path` the field (dotted, with
    [i] for list items) and `message` says what was expected and what was found."""

    def __init__(self, rule: str, path: str, message: str):
        super().__init__(f"{rule}: {path}: {message}" if path else f"{rule}: {message}")
        self.rule = rule
        self.path = path
        self.message = message


def refuse(rule: str, path: str, message: str) -> KernelError:
    """Build (not raise) a KernelError, so call sites read `raise refuse(...)`."""
    return KernelError(rule, path, message)


def read_bytes(file: str, rule: str, path: str, what: str) -> bytes:
    """A whole file, or a KernelError at `path` saying which file could not be read."""
    if os.path.exists(file) and not os.path.isfile(file):  # (a device such as /dev/zero)
        raise refuse(rule, path, f"cannot read {what} {file}: not a regular file")
    try:
        with open(file, "rb") as f:
            return f.read()
    except OSError as err:
        raise refuse(rule, path, f"cannot read {what} {file}: {err.strerror}") from None
