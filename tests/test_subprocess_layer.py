"""Tests for oracles.subprocess_layer: every way an untrusted tool can misbehave must surface as a
ToolError with the right fields, quickly, and without leaving processes behind."""

from __future__ import annotations

import os
import pickle
import sys
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import pytest

from oracles.subprocess_layer import (
    DecimalText,
    Tool,
    ToolError,
    env_var_for,
    is_available,
    resolve_executable,
    run_json,
)

FAKE = Path(__file__).parent / "fixtures" / "fake_tools" / "fake_tool.py"
HINT = "install the fake tool with `pip install nothing`"


@pytest.fixture(autouse=True)
def _fake_is_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """TL_FAKE = this interpreter, the script is the first argument: no chmod/shebang needed."""
    monkeypatch.setenv("TL_FAKE", sys.executable)


def fake(*args: str, **kw: object) -> object:
    kw.setdefault("timeout_s", 20)
    kw.setdefault("install_hint", HINT)
    return run_json("fake", [str(FAKE), *args], default_executable="no-such-fake-tool", **kw)


def emit(stdout: bytes, stderr: str = "", **kw: object) -> object:
    """The fake tool prints exactly `stdout` (and `stderr`) and exits 0."""
    return fake("emit", *([stderr] if stderr else []), stdin=stdout, **kw)


def fake_error(*args: str, **kw: object) -> ToolError:
    with pytest.raises(ToolError) as info:
        fake(*args, **kw)
    err = info.value
    assert err.tool == "fake"
    assert err.command == [sys.executable, str(FAKE), *args]
    assert err.install_hint == HINT
    return err


def emit_error(stdout: bytes, **kw: object) -> ToolError:
    return fake_error("emit", stdin=stdout, **kw)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie awaiting a reaper that may never come counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pid: int, within_s: float = 3.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


# --- success ---------------------------------------------------------------------------------


def test_success_parses_document_and_keeps_exact_decimal_text() -> None:
    doc = emit(b' \n{"x": 0.1000000000000000055511151231257827, "n": 12345678901234567890123,'
               b' "e": 1e400, "z": -0.0, "s": "\xc3\xa9", "l": [true, null]}\r\n\t')
    assert isinstance(doc, dict)
    x = doc["x"]
    assert isinstance(x, DecimalText)
    assert x == "0.1000000000000000055511151231257827"
    assert x.to_fraction() != Fraction(1, 10)
    assert x.to_fraction() == Fraction("0.1000000000000000055511151231257827")
    assert doc["n"] == 12345678901234567890123 and type(doc["n"]) is int
    assert isinstance(doc["e"], DecimalText) and doc["e"] == "1e400"  # no overflow to inf
    assert doc["z"] == "-0.0"
    assert doc["s"] == "é"
    assert doc["l"] == [True, None]


def test_stderr_on_success_is_ignored() -> None:
    assert emit(b"[1, 2]", stderr="warning: chatty tool\n") == [1, 2]


def test_stdin_is_passed_through_as_str_and_bytes() -> None:
    assert fake("echo", stdin="héllo\n")["stdin"] == "héllo\n"
    assert fake("echo", stdin=b"bytes ok")["stdin"] == "bytes ok"
    assert fake("echo")["stdin"] == ""  # None: empty stdin, not ours (would hang)


def test_large_stdin_and_stdout_do_not_deadlock() -> None:
    big = "x" * (3 * 1024 * 1024)  # far beyond any pipe buffer, both directions
    assert fake("echo", stdin=big)["stdin"] == big


def test_env_is_overlaid_and_cwd_applies(tmp_path: Path) -> None:
    doc = fake("echo", "TL_TEST_VAR", env={"TL_TEST_VAR": "set"}, cwd=tmp_path)
    assert doc["env"] == "set"
    assert Path(doc["cwd"]).resolve() == tmp_path.resolve()
    assert fake("echo", "PATH", env={"TL_TEST_VAR": "x"})["env"] == os.environ["PATH"]
    assert fake("echo", "PATH", env={"PATH": None})["env"] is None


# --- resolution ------------------------------------------------------------------------------


def test_env_var_name() -> None:
    assert env_var_for("julia") == "TL_JULIA"
    assert env_var_for("python") == "TL_PYTHON"
    assert env_var_for("arb-oracle.v2") == "TL_ARB_ORACLE_V2"


def test_missing_tool_env_var_points_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_FAKE", "/nonexistent/dir/fake-tool")
    with pytest.raises(ToolError) as info:
        fake("emit", stdin=b"{}")
    err = info.value
    assert err.reason == "not found"
    assert err.exit_code is None
    assert err.command == ["/nonexistent/dir/fake-tool"]
    text = str(err)
    assert "TL_FAKE" in text and "/nonexistent/dir/fake-tool" in text and HINT in text
    assert not is_available("fake", "no-such-fake-tool")


def test_missing_tool_not_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TL_FAKE")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError) as info:
        fake("emit", stdin=b"{}")
    err = info.value
    assert (err.reason, err.exit_code, err.command) == ("not found", None, ["no-such-fake-tool"])
    text = str(err)
    assert "set TL_FAKE" in text and "no-such-fake-tool" in text and HINT in text
    assert not is_available("fake", "no-such-fake-tool")


def test_env_var_may_be_a_command_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.setenv("TL_FAKE", os.path.basename(sys.executable))
    assert os.path.samefile(resolve_executable("fake", "unused"), sys.executable)
    assert emit(b"7") == 7
    monkeypatch.setenv("TL_FAKE", "no-such-command-anywhere")
    with pytest.raises(ToolError, match="TL_FAKE") as info:
        resolve_executable("fake", "unused")
    assert info.value.reason == "not found"


def test_default_found_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TL_FAKE")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    name = os.path.basename(sys.executable)
    assert os.path.isabs(resolve_executable("fake", name))
    assert is_available("fake", name)


def test_non_executable_file_is_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho 1\n")
    script.chmod(0o644)
    monkeypatch.setenv("TL_FAKE", str(script))
    assert not is_available("fake", "x")
    with pytest.raises(ToolError) as info:
        resolve_executable("fake", "x")
    assert info.value.reason == "not found"


def test_unstartable_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a program")
    junk.chmod(0o755)
    monkeypatch.setenv("TL_FAKE", str(junk))
    with pytest.raises(ToolError) as info:
        run_json("fake", [], default_executable="x")
    assert info.value.reason == "could not start"
    assert info.value.exit_code is None


# --- process failures ------------------------------------------------------------------------


def test_non_zero_exit_reports_code_and_stderr_tail() -> None:
    err = fake_error("exit", "3", stdin="first line\nlast words: boom\n")
    assert err.reason == "non-zero exit"
    assert err.exit_code == 3
    assert err.stderr_tail.endswith("last words: boom\n")
    text = str(err)
    for part in ("'fake'", "non-zero exit", "exit code: 3", "last words: boom", HINT, str(FAKE)):
        assert part in text


def test_stderr_tail_is_bounded_and_keeps_the_end() -> None:
    noise = "".join(f"line {i}\n" for i in range(20000)) + "THE END\n"
    err = fake_error("exit", "1", stdin=noise)
    assert err.stderr_tail.endswith("THE END\n")
    assert 1000 < len(err.stderr_tail) <= 2000


def test_killed_by_signal() -> None:
    err = fake_error("signal", "SIGTERM")
    assert err.reason == "non-zero exit"
    assert err.exit_code == -15
    assert "SIGTERM" in str(err)


def test_timeout_kills_the_tool() -> None:
    start = time.monotonic()
    err = fake_error("sleep", "30", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5
    assert err.reason == "timeout"
    assert err.exit_code is None
    assert "going to sleep" in err.stderr_tail  # stderr read before the kill is kept


def test_timeout_kills_grandchildren_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    err = fake_error("grandchild", str(pidfile), "30", "hang", timeout_s=1.0)
    assert time.monotonic() - start < 5
    assert err.reason == "timeout"
    assert wait_dead(int(pidfile.read_text()))


def test_exited_tool_leaving_a_grandchild_on_stdout_returns_promptly(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    assert fake("grandchild", str(pidfile), "30", "answer", timeout_s=10) == {"answer": 42}
    assert time.monotonic() - start < 5  # did not wait for the sleeper holding the pipe
    assert wait_dead(int(pidfile.read_text()))


def test_huge_output_fails_fast_and_bounded() -> None:
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        start = time.monotonic()
        err = fake_error("flood", max_output_bytes=limit, timeout_s=30)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "output too large"
    assert err.exit_code is None
    assert str(limit) in str(err)
    assert elapsed < 5  # well before the 30 s timeout: the endless writer was killed
    assert peak < 8 * limit


def test_output_at_the_limit_is_fine() -> None:
    doc = b'"' + b"a" * 1000 + b'"'
    assert emit(doc, max_output_bytes=len(doc)) == "a" * 1000
    assert emit_error(doc, max_output_bytes=len(doc) - 1).reason == "output too large"


# --- malformed stdout ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "reason", "phrase"),
    [
        (b"hello world", "not JSON", "stdout is not JSON"),
        (b"", "not JSON", "empty"),
        (b" \n\t ", "not JSON", "empty"),
        (b'{"a": 1', "not JSON", "stdout is not JSON"),
        (b"\xef\xbb\xbf{}", "not JSON", "stdout is not JSON"),  # BOM is not allowed
        ("\u00a0{}".encode(), "not JSON", "stdout is not JSON"),  # only JSON whitespace is skipped
        (b"{'a': 1}", "not JSON", "stdout is not JSON"),
        (b'{"a": 1} trailing', "extra output", "extra output after the JSON document"),
        (b'{"a": 1}\nprogress: done\n', "extra output", "progress: done"),
        (b'{"a": 1}{"b": 2}', "extra output", "extra output after the JSON document"),
        (b'{"a": 1}\n{"b": 2}\n', "extra output", "extra output after the JSON document"),
        (b"1 2", "extra output", "extra output after the JSON document"),
        (b'{"a": NaN}', "non-finite number", "NaN"),
        (b"[Infinity]", "non-finite number", "Infinity"),
        (b"[1, -Infinity]", "non-finite number", "-Infinity"),
        (b'{"s": "caf\xe9"}', "invalid UTF-8", "not valid UTF-8"),
        (b'{"s": "\xed\xa0\x80"}', "invalid UTF-8", "not valid UTF-8"),  # encoded surrogate
        (b"[" * 100000 + b"]" * 100000, "not JSON", "could not be read"),  # nesting
        (b"1" * 5000, "not JSON", "could not be read"),  # int beyond Python's digit limit
    ],
)
def test_malformed_stdout(stdout: bytes, reason: str, phrase: str) -> None:
    err = emit_error(stdout)
    assert err.reason == reason
    assert err.exit_code == 0
    assert phrase in err.detail
    assert phrase in str(err)


# --- error object and Tool -------------------------------------------------------------------


def test_tool_error_message_and_pickling() -> None:
    err = ToolError("julia", ["/opt/julia", "run.jl", "a b"], "timeout", "no result within 1 s",
                    None, "ERROR: stuck\n", "get it from julialang.org")
    text = str(err)
    assert "'julia'" in text and "timeout" in text and "no result within 1 s" in text
    assert "/opt/julia run.jl 'a b'" in text
    assert "exit code: none" in text and "ERROR: stuck" in text and "julialang.org" in text
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.tool, copy.command, copy.reason, copy.exit_code, copy.stderr_tail) == (
        "julia", ["/opt/julia", "run.jl", "a b"], "timeout", None, "ERROR: stuck\n")
    assert str(copy) == text


def test_tool_dataclass_wraps_the_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    tool = Tool("fake", "no-such-fake-tool", install_hint=HINT)
    assert tool.env_var == "TL_FAKE"
    assert tool.available()
    assert tool.resolve() == os.path.abspath(sys.executable)
    assert tool.run_json([str(FAKE), "echo"], stdin="hi")["stdin"] == "hi"
    monkeypatch.setenv("TL_FAKE", "/nonexistent/fake")
    assert not tool.available()
    with pytest.raises(ToolError) as info:
        tool.run_json([str(FAKE), "echo"])
    assert info.value.reason == "not found" and info.value.install_hint == HINT

