"""The one way this project runs an external tool (Julia, a Python bridge, an Arb oracle, ...).

Every tool is untrusted: it may be missing, hang, crash, spawn children that outlive it, flood its
output or print something that is almost JSON. This layer turns all of that into one error type,
`ToolError`, with the facts needed to act on it (which tool, the exact command, exit code, the end
of stderr, an install hint), and guarantees that:

* the executable comes from `TL_<TOOL>` if set, else from PATH, so tests and users can substitute;
* no shell is involved (`[exe, *args]`), so arguments are never re-interpreted;
* a timeout kills the tool's whole process group, grandchildren included;
* stdout is read incrementally and capped, so a runaway tool cannot exhaust our memory;
* stdout must be exactly one JSON document in strict UTF-8, without NaN/Infinity, and every JSON
  number with a fraction or exponent is kept as its exact decimal text (`DecimalText`) instead of
  being rounded through binary64 -- the kernel decides how to read it.

POSIX only (process groups, non-blocking pipes with `selectors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DecimalText",
    "Tool",
    "ToolError",
    "env_var_for",
    "is_available",
    "resolve_executable",
    "run_json",
]

DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
STDERR_TAIL_CHARS = 2000
_STDERR_KEEP_BYTES = 64 * 1024  # raw bytes kept of stderr; enough for STDERR_TAIL_CHARS chars
_CHUNK = 64 * 1024
_JSON_WS = " \t\n\r"  # the only whitespace JSON allows (str.strip would also eat U+00A0 etc.)


class DecimalText(str):
    """A JSON number with a fraction or exponent, kept as the exact text the tool wrote.

    Parsing through `float` would silently round "0.1000000000000000055511151231257827" to the
    nearest binary64; evidence must be read exactly, so consumers convert explicitly."""

    __slots__ = ()

    def to_decimal(self) -> Decimal:
        """The exact value as a `Decimal` (no rounding: Decimal(str) is exact)."""
        return Decimal(str(self))

    def to_fraction(self) -> Fraction:
        """The exact value as a `Fraction`."""
        return Fraction(str(self))

    def __repr__(self) -> str:
        return f"DecimalText({str.__repr__(self)})"


class ToolError(Exception):
    """Any failure of an external tool call; one type so callers need a single `except`.

    `reason` is a short stable phrase ("not found", "could not start", "non-zero exit",
    "timeout", "output too large", "invalid UTF-8", "not JSON", "extra output",
    "non-finite number"); `detail` says more. `exit_code` is None when the process never ran
    or was killed by us (timeout, output too large); negative means killed by that signal."""

    def __init__(
        self,
        tool: str,
        command: Sequence[str],
        reason: str,
        detail: str = "",
        exit_code: int | None = None,
        stderr_tail: str = "",
        install_hint: str = "",
    ):
        # All fields go into args (positionally) so the exception pickles and copies intact.
        command = list(command)
        super().__init__(tool, command, reason, detail, exit_code, stderr_tail, install_hint)
        self.tool = tool
        self.command = command
        self.reason = reason
        self.detail = detail
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.install_hint = install_hint

    def __str__(self) -> str:
        lines = [f"external tool {self.tool!r} failed: {self.reason}"]
        if self.detail:
            lines.append(f"  detail: {self.detail}")
        lines.append(f"  command: {shlex.join(self.command)}")
        lines.append(f"  exit code: {'none' if self.exit_code is None else self.exit_code}")
        if self.stderr_tail.strip():
            lines.append("  stderr (tail):")
            lines.extend(f"    | {line}" for line in self.stderr_tail.rstrip("\n").split("\n"))
        else:
            lines.append("  stderr: (empty)")
        if self.install_hint:
            lines.append(f"  hint: {self.install_hint}")
        return "\n".join(lines)


def env_var_for(tool: str) -> str:
    """The variable that overrides `tool`'s executable: "arb-oracle" -> TL_ARB_ORACLE."""
    return "TL_" + re.sub(r"[^A-Za-z0-9]", "_", tool).upper()


def _executable_file(path: str) -> bool:
    try:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    except (OSError, ValueError):  # ValueError: embedded NUL
        return False


def resolve_executable(tool: str, default: str, *, install_hint: str = "") -> str:
    """Absolute path of the executable for `tool`, from `TL_<TOOL>` (a path or a command name)
    if set and non-empty, else `default` looked up on PATH. Raises ToolError("not found").

    The result is absolute so that running with another `cwd` cannot change what runs."""
    var = env_var_for(tool)
    value = os.environ.get(var, "")
    if value:
        expanded = os.path.expanduser(value)
        is_path = os.sep in expanded or (os.altsep is not None and os.altsep in expanded)
        try:
            found = expanded if is_path and _executable_file(expanded) else None
            if not is_path:
                found = shutil.which(expanded)
        except (OSError, ValueError):
            found = None
        if found is None:
            what = "an existing executable file" if is_path else "a command on PATH"
            raise ToolError(
                tool,
                [value],
                "not found",
                f"{var}={value!r} is not {what}; fix or unset {var}",
                install_hint=install_hint,
            )
        return os.path.abspath(found)
    try:
        found = shutil.which(default)
    except (OSError, ValueError):
        found = None
    if found is None:
        raise ToolError(
            tool,
            [default],
            "not found",
            f"{default!r} is not on PATH; install it or set {var} to its path",
            install_hint=install_hint,
        )
    return os.path.abspath(found)


def is_available(tool: str, default: str) -> bool:
    """Whether `tool` resolves to an executable (it is not run); for skipping, never raises."""
    try:
        resolve_executable(tool, default)
    except Exception:  # noqa: BLE001 - an availability probe must not fail
        return False
    return True


class _NonFiniteError(Exception):
    def __init__(self, token: str):
        super().__init__(token)
        self.token = token


def _reject_constant(token: str) -> Any:
    raise _NonFiniteError(token)


_DECODER = json.JSONDecoder(parse_float=DecimalText, parse_constant=_reject_constant, strict=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the tool process has exited, WITHOUT reaping it where possible: while it is an
    unreaped zombie its pid (= our process group id) cannot be reused, so killpg stays safe."""
    if hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None
    return proc.poll() is not None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def run_json(
    tool: str,
    args: Sequence[str | os.PathLike[str]],
    *,
    default_executable: str,
    stdin: str | bytes | None = None,
    timeout_s: float = 60,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    install_hint: str = "",
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> object:
    """Run `[exe, *args]` (no shell) and return the single JSON document it prints on stdout.

    `stdin` (str is sent as UTF-8) is the tool's whole input; None gives it an empty stdin rather
    than ours. `env` is overlaid on our environment (a None value removes a variable). Floats come
    back as `DecimalText`; ints as `int`. Any failure raises `ToolError`; the tool's process group
    is always killed before returning, so nothing it spawned outlives the call."""
    exe = resolve_executable(tool, default_executable, install_hint=install_hint)
    command = [exe, *(os.fspath(a) for a in args)]
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8")
    child_env: dict[str, str] | None = None
    if env is not None:
        child_env = dict(os.environ)
        for key, val in env.items():
            if val is None:
                child_env.pop(key, None)
            else:
                child_env[key] = val

    def fail(
        reason: str, detail: str = "", exit_code: int | None = None, err: bytes = b""
    ) -> ToolError:
        tail = err.decode("utf-8", errors="replace")[-STDERR_TAIL_CHARS:]
        return ToolError(tool, command, reason, detail, exit_code, tail, install_hint)

    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=child_env,
            start_new_session=True,  # own process group, so killpg reaches grandchildren
            close_fds=True,
        )
    except OSError as exc:  # vanished since resolution, not executable format, bad cwd, ...
        if isinstance(exc, FileNotFoundError) and exc.filename == exe:
            raise fail("not found", f"{exc.strerror}: {exe}") from exc
        raise fail("could not start", str(exc)) from exc

    out = bytearray()
    err = bytearray()
    timed_out = too_large = False
    try:
        timed_out, too_large = _pump(proc, stdin, out, err, timeout_s, max_output_bytes)
    finally:
        # Timeout/overflow: kills the tool. Normal exit: kills whatever it left behind. An
        # unexpected exception (KeyboardInterrupt, ...): never leaves the group running.
        _kill_group(proc.pid)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    errb = bytes(err)
    if timed_out:
        raise fail("timeout", f"no result within {timeout_s:g} s; process group killed", err=errb)
    if too_large:
        raise fail(
            "output too large",
            f"stdout exceeded {max_output_bytes} bytes; process group killed",
            err=errb,
        )
    code = proc.returncode
    if code is None:  # still alive 10 s after SIGKILL (uninterruptible sleep)
        raise fail("timeout", "the tool did not terminate after SIGKILL", err=errb)
    if code != 0:
        detail = f"killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        raise fail("non-zero exit", detail, code, errb)
    return _parse_document(bytes(out), lambda reason, detail: fail(reason, detail, code, errb))


def _pump(
    proc: subprocess.Popen[bytes],
    stdin: bytes | None,
    out: bytearray,
    err: bytearray,
    timeout_s: float,
    max_output_bytes: int,
) -> tuple[bool, bool]:
    """Feed stdin and drain stdout/stderr without deadlock until the tool is done.

    Returns (timed_out, too_large). Done means: the tool exited and both pipes reached EOF; if
    the tool exits while a descendant still holds the pipes open, the group is killed so we do
    not wait for a background process until the timeout."""
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, stream)
    out_fd = proc.stdout.fileno()
    pending = memoryview(stdin or b"")
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, proc.stdin)
    exited = False
    try:
        while True:
            if not exited and _leader_exited(proc):
                exited = True
                _kill_group(proc.pid)  # stray descendants may hold our pipes open
            if exited and not any(
                key.events & selectors.EVENT_READ for key in sel.get_map().values()
            ):
                return False, False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True, False
            if not sel.get_map():
                time.sleep(min(remaining, 0.002))  # pipes closed; the exit is imminent
                continue
            for key, _ in sel.select(timeout=min(remaining, 0.05)):
                fd = key.fd
                if key.events & selectors.EVENT_WRITE:
                    try:
                        written = os.write(fd, pending[:_CHUNK])
                    except BlockingIOError:
                        continue
                    except OSError:  # BrokenPipeError: the tool stopped reading; not our error
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        sel.unregister(fd)
                        key.data.close()
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                if fd == out_fd:
                    out += chunk
                    if len(out) > max_output_bytes:
                        return False, True
                else:
                    err += chunk
                    if len(err) > 2 * _STDERR_KEEP_BYTES:
                        del err[:-_STDERR_KEEP_BYTES]
    finally:
        sel.close()
        if len(err) > _STDERR_KEEP_BYTES:
            del err[:-_STDERR_KEEP_BYTES]


def _parse_document(data: bytes, fail: Callable[[str, str], ToolError]) -> object:
    """Exactly one strict JSON document, optionally surrounded by JSON whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(
            "invalid UTF-8", f"stdout is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    start = len(text) - len(text.lstrip(_JSON_WS))
    if start == len(text):
        raise fail("not JSON", "stdout is not JSON (it is empty)")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except _NonFiniteError as exc:
        raise fail(
            "non-finite number", f"stdout JSON contains {exc.token}, which is not JSON"
        ) from None
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise fail(
            "not JSON", f"stdout is not JSON ({where}; starts {text[start:start + 60]!r})"
        ) from exc
    except (ValueError, RecursionError) as exc:  # e.g. an int beyond the digit limit, deep nesting
        raise fail(
            "not JSON", f"stdout JSON could not be read ({type(exc).__name__}: {exc})"
        ) from exc
    rest = text[end:]
    if rest.strip(_JSON_WS):
        extra = rest.lstrip(_JSON_WS)[:60]
        raise fail("extra output", f"extra output after the JSON document: {extra!r}")
    return value


@dataclass(frozen=True)
class Tool:
    """One external tool, named once, so its env var, default executable and install hint
    stay consistent everywhere it is used."""

    name: str
    default_executable: str
    install_hint: str = ""

    @property
    def env_var(self) -> str:
        """The `TL_<NAME>` variable that overrides the executable."""
        return env_var_for(self.name)

    def resolve(self) -> str:
        """Absolute path of the executable; raises ToolError("not found")."""
        return resolve_executable(
            self.name, self.default_executable, install_hint=self.install_hint
        )

    def available(self) -> bool:
        """Whether the executable resolves; never raises."""
        return is_available(self.name, self.default_executable)

    def run_json(self, args: Sequence[str | os.PathLike[str]], **kw: Any) -> object:
        """`run_json` for this tool; keyword arguments as there."""
        kw.setdefault("install_hint", self.install_hint)
        return run_json(self.name, args, default_executable=self.default_executable, **kw)
