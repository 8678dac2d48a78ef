"""`tl serve` and `tl verify --server`, with real processes and a real server: the same answers
as in-process verification, files written relative to the client's directory, fail-closed
without a server, refused requests, and no work left running when a client is killed."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"
UNSAT = ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib")  # from test_cli QUICK
SAT = ("mnistfc", "mnist-net_256x2.onnx", "prop_0_0.05.vnnlib")
LONG = ("acasxu", "ACASXU_run2a_3_3_batch_2000.onnx", "prop_2.vnnlib")  # runs past 60 s
NO_SERVER = "error: no tl server at {0} (start one with: tl serve --socket {0})"

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")


def instance(case: tuple[str, str, str]) -> list[str]:
    bench, onnx, prop = case
    return [str(SHARED / bench / onnx), str(SHARED / bench / prop)]


def tl(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tl_dsl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def start_server(sock: pathlib.Path, workdir: pathlib.Path, *extra: str):
    """A `tl serve` process and its stderr log, once it says it is listening."""
    log = workdir / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_dsl.cli", "serve", "--socket", str(sock), *extra],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=f,
        )
    deadline = time.monotonic() + 120
    while "listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tl serve did not start: {log.read_text()}")
        time.sleep(0.1)
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    proc, log = start_server(d / "sock", d)
    yield {"sock": str(d / "sock"), "proc": proc, "log": log, "dir": d}
    stop(proc)


def raw_request(sock_path: str, doc: dict, pass_fds: bool = True) -> tuple[dict, str, str]:
    """Send one request by hand; the reply and what the server wrote to the passed stdout and
    stderr (pipes)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        data = json.dumps(doc).encode() + b"\n"
        if pass_fds:
            socket.send_fds(s, [data], [out_w, err_w])
        else:
            s.sendall(data)
        os.close(out_w)
        os.close(err_w)
        s.settimeout(60)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, f"connection closed before a reply; got {reply!r}"
            reply += chunk
    with os.fdopen(out_r) as o, os.fdopen(err_r) as e:
        return json.loads(reply), o.read(), e.read()


def group_alive(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are still running (zombies count as gone: in a
    container, PID 1 may never reap orphans)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(int(entry))
    return alive


@needs_shared
@pytest.mark.parametrize("case, expected", [(UNSAT, "unsat"), (SAT, "sat")])
def test_answer_through_server_matches_in_process(server, tmp_path, case, expected):
    here, client = tmp_path / "here", tmp_path / "client"
    here.mkdir()
    client.mkdir()
    files = ["--bundle", "out/b.json"] if expected == "unsat" else ["--cex", "c.txt"]
    local = tl(
        "verify", *instance(case), "--timeout", "120", *files, cwd=here, env={"TL_SERVER": ""}
    )
    if expected == "unsat":  # the flag overrides the environment
        remote = tl(
            "verify",
            *instance(case),
            "--timeout",
            "120",
            *files,
            "--server",
            server["sock"],
            cwd=client,
            env={"TL_SERVER": str(tmp_path / "nothing")},
        )
    else:  # the environment alone
        remote = tl(
            "verify",
            *instance(case),
            "--timeout",
            "120",
            *files,
            cwd=client,
            env={"TL_SERVER": server["sock"]},
        )
    assert local.stdout.splitlines()[0] == expected, local.stdout + local.stderr
    assert remote.stdout.splitlines()[0] == expected, remote.stdout + remote.stderr
    assert remote.returncode == local.returncode == 0
    assert f"(cwd {client})" in server["log"].read_text()  # it ran on the server
    if expected == "unsat":
        bundle = client / "out" / "b.json"
        assert bundle.exists() and not (server["dir"] / "out" / "b.json").exists()
        check = tl("check", "out/b.json", cwd=client)
        assert check.returncode == 0 and check.stdout.startswith("holds:"), check.stderr
    else:
        assert (client / "c.txt").read_text().startswith("((X_0 ")
        assert "counterexample checked exactly" in remote.stdout


@needs_shared
def test_no_server_fails_closed_with_exit_4(tmp_path):
    missing = str(tmp_path / "nothing")
    stale = tmp_path / "stale"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))  # a socket file that nobody listens on
    s.close()
    for flags, env, path in [
        (["--server", missing], None, missing),
        ([], {"TL_SERVER": missing}, missing),
        (["--server", str(stale)], None, str(stale)),
    ]:
        r = tl("verify", *instance(UNSAT), *flags, cwd=tmp_path, env=env)
        assert r.returncode == 4, r.stdout + r.stderr
        assert r.stderr.strip() == NO_SERVER.format(path)
        assert r.stdout == ""  # nothing was verified in-process


def test_client_imports_neither_torch_nor_numpy(tmp_path):
    missing = str(tmp_path / "nothing")
    r = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "tl_dsl.cli",
            "verify",
            "m.onnx",
            "p.vnnlib",
            "--server",
            missing,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 4
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "tl_dsl.serve" in modules
    heavy = {
        m
        for m in modules
        if m.split(".")[0] in ("torch", "numpy", "flint", "kernel_checker") or m == "tl_dsl.verify"
    }
    assert heavy == set()


def test_forwarded_command_line_parses_back_to_the_same_options():
    from tl_dsl.cli import build_parser, verify_argv

    given = {
        "model": "-m x.onnx",
        "property": "p y.vnnlib",
        "timeout": 7.25,
        "bundle": "-b.json",
        "cex": "c z.txt",
        "jobs": 3,
    }
    args = build_parser().parse_args(
        [
            "verify",
            "--timeout",
            "7.25",
            "--bundle=-b.json",
            "--cex",
            "c z.txt",
            "--jobs",
            "3",
            "--server",
            "s",
            "--",
            "-m x.onnx",
            "p y.vnnlib",
        ]
    )
    # a new verify option fails here until verify_argv forwards it
    assert set(vars(args)) - {"command", "func", "server"} == set(given)
    again = vars(build_parser().parse_args(verify_argv(args)))
    assert {k: again[k] for k in given} == given and again["server"] is None


def test_server_refuses_requests_other_than_verify(server):
    reply, out, err = raw_request(server["sock"], {"argv": ["check", "b.json"], "cwd": "/"})
    assert (
        reply["exit"] == 3
        and "only `tl verify`" in reply["error"]
        and "`tl check`" in reply["error"]
    )
    assert out == err == ""
    reply, _, _ = raw_request(
        server["sock"], {"argv": ["verify", "m", "p"], "cwd": "/"}, pass_fds=False
    )
    assert reply["exit"] == 3 and "stdout and stderr fds" in reply["error"]
    reply, _, err = raw_request(
        server["sock"], {"argv": ["verify", "m", "p", "--server", "x"], "cwd": "/"}
    )
    assert reply["exit"] == 3 and "--server inside a request" in err


def test_server_writes_to_the_clients_stderr(server):
    reply, out, err = raw_request(
        server["sock"], {"argv": ["verify", "m", "p", "--timeout", "soon"], "cwd": "/"}
    )
    assert reply == {"exit": 2}  # argparse's usage error, as in a fresh process
    assert "invalid float value: 'soon'" in err and out == ""


@needs_shared
def test_killed_client_leaves_no_work_running(server, tmp_path):
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tl_dsl.cli",
            "verify",
            *instance(LONG),
            "--timeout",
            "300",
            "--jobs",
            "2",
            "--server",
            server["sock"],
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        mark = f"(cwd {tmp_path})"
        deadline = time.monotonic() + 30
        while mark not in server["log"].read_text():
            assert time.monotonic() < deadline, server["log"].read_text()
            time.sleep(0.1)
        line = next(x for x in server["log"].read_text().splitlines() if x.endswith(mark))
        pid = int(line.split(":")[0].split()[1])
        time.sleep(3)
        assert client.poll() is None
        assert pid in group_alive(pid) and len(group_alive(pid)) >= 3  # child and 2 workers
    finally:
        client.kill()
        client.wait()
    deadline = time.monotonic() + 10
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_alive(pid)
    if left:
        os.killpg(pid, signal.SIGKILL)  # do not leave a failed run's work behind
    assert left == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped by the server
    assert f"pid {pid}: client hung up; killing process group" in server["log"].read_text()


def test_second_server_on_a_live_socket_is_refused(server):
    r = tl("serve", "--socket", server["sock"], timeout=60)
    assert r.returncode == 1 and "already listening on" in r.stderr
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server["sock"])  # the first server still answers


def test_server_replaces_a_stale_socket_is_0600_and_unlinks_on_sigterm(tmp_path):
    sock = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    proc, _ = start_server(sock, tmp_path)
    try:
        assert sock.stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not sock.exists()
    finally:
        stop(proc)


def test_server_does_not_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    r = tl("serve", "--socket", str(path), timeout=60)
    assert r.returncode == 1 and "is not a socket" in r.stderr
    assert path.read_text() == "keep me"


def test_idle_server_exits_and_removes_its_socket(tmp_path):
    sock = tmp_path / "sock"
    proc, log = start_server(sock, tmp_path, "--idle", "1")
    try:
        assert proc.wait(timeout=30) == 0
        assert not sock.exists() and "no connection for 1 s" in log.read_text()
    finally:
        stop(proc)
