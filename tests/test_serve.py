"""`tl serve` and `tl verify --server`, with real processes and a real server: the same answers
as in-process verification, files written relative to the client's directory, fail-closed
without a server, refused requests, and no work left running when a client is killed."""

import json
import os
import pathlib
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
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


# A server of tl_dsl.serve without the preload (a quick start) and with `patch` run first: the
# patches below stand in for tl_dsl.verify.verify or for what the system does.
PATCHED_SERVER = """
import json, os, sys, tempfile, time
import tl_dsl.verify
from tl_dsl import serve
serve.PRELOAD = ()
os.umask(0o022)  # not the umask of the client in the umask test
tempfile.gettempdir()  # cached, as after the real preload
{patch}
sys.exit(serve.serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None))
"""

# verify writes what its process sees to MODEL (a path relative to the client's directory),
# prints a line to stdout and one to stderr, forks a sleeping worker if MODEL starts with
# "fork", then waits until PROPERTY exists and answers unsat.
PROBE = """
def probe(model, prop, *args, **kwargs):
    worker = os.fork() if os.path.basename(model).startswith("fork") else None
    if worker == 0:
        time.sleep(60)
        os._exit(0)
    umask = os.umask(0)
    os.umask(umask)
    seen = {"pid": os.getpid(), "worker": worker, "umask": umask, "env": dict(os.environ),
            "tempdir": tempfile.gettempdir()}
    with open(model, "w") as f:
        json.dump(seen, f)
    print("probe: stdout")
    print("probe: stderr", file=sys.stderr)
    while not os.path.exists(prop):
        time.sleep(0.05)
    return {"result": "unsat"}
tl_dsl.verify.verify = probe
"""
CRASH = """
def crash(*args, **kwargs):
    raise RuntimeError("verify crashed")
tl_dsl.verify.verify = crash
"""


def start_server(sock: pathlib.Path, workdir: pathlib.Path, *extra: str, patch=None, env=None):
    """A `tl serve` process (or a PATCHED_SERVER with `patch` and `extra` the idle seconds) and
    its stderr log, once it says it is listening."""
    log = workdir / "serve.log"
    if patch is None:
        command = [sys.executable, "-m", "tl_dsl.cli", "serve", "--socket", str(sock), *extra]
    else:
        command = [sys.executable, "-c", PATCHED_SERVER.format(patch=patch), str(sock), *extra]
    with open(log, "w") as f:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=f,
            env={**os.environ, **(env or {})},
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


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "server_tmp").mkdir()
    proc, log = start_server(d / "sock", d, patch=PROBE, env={"TMPDIR": str(d / "server_tmp")})
    yield {"sock": str(d / "sock"), "proc": proc, "log": log, "dir": d}
    stop(proc)


def client(sock, *args, cwd, env=None, **popen) -> subprocess.Popen:
    """`tl verify MODEL PROPERTY --server SOCK` (no --server if `sock` is None)."""
    server = [] if sock is None else ["--server", str(sock)]
    return subprocess.Popen(
        [sys.executable, "-m", "tl_dsl.cli", "verify", *args, *server],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        **({"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True} | popen),
    )


def wait_for(path: pathlib.Path, timeout: float = 30) -> dict:
    """The probe's report once written."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            assert time.monotonic() < deadline, f"no {path}"
            time.sleep(0.05)


def raw_request(sock_path: str, doc, pass_fds: bool = True) -> tuple[dict, str, str]:
    """Send one request by hand (a dict completed with this process's umask, environment and
    code fingerprint, or bytes as they are); the reply and what the server wrote to the passed
    stdout and stderr (pipes)."""
    from tl_dsl.serve import code_fingerprint

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        if isinstance(doc, dict):
            base = {"umask": 0o022, "env": dict(os.environ), "code": code_fingerprint()}
            data = json.dumps(base | doc).encode() + b"\n"
        else:
            data = doc
        try:
            if pass_fds:
                socket.send_fds(s, [data], [out_w, err_w])
            else:
                s.sendall(data)
        except BrokenPipeError:  # a server that answers before reading (fork failed)
            pass
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


def test_client_refuses_a_socket_served_by_another_user(tmp_path, monkeypatch, capsys):
    from tl_dsl import serve

    path = str(tmp_path / "sock")
    got = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
        fake.bind(path)
        fake.listen(1)

        def answer():  # a squatter that reads the request and hangs up
            conn, _ = fake.accept()
            with conn:
                conn.settimeout(10)
                got.append(socket.recv_fds(conn, 65536, 2))

        t = threading.Thread(target=answer)
        t.start()
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)  # the listener is someone else
        assert serve.run_on_server(path, ["verify", "--", "m.onnx", "p.vnnlib"]) == 4
        monkeypatch.undo()
        t.join(10)
    assert [g[:2] for g in got] == [(b"", [])]  # no request and no fds sent
    err = capsys.readouterr().err
    assert f"the socket {path} is served by uid {uid}" in err


def test_server_refuses_connections_of_another_user(tmp_path):
    patch = "_uid = os.getuid()\nos.getuid = lambda: _uid + 1"
    proc, log = start_server(tmp_path / "sock", tmp_path, patch=patch)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(tmp_path / "sock"))
            s.settimeout(30)
            reply = json.loads(s.makefile().readline())  # answered before any request
        assert reply["exit"] == 3 and f"serves only uid {os.getuid() + 1}" in reply["error"]
        assert f"refused a connection from uid {os.getuid()}" in log.read_text()
        assert ": check (cwd /)" not in log.read_text()  # no child ran the request
    finally:
        stop(proc)


def test_ctrl_c_in_the_client_shows_the_cursor_again(probe_server, tmp_path):
    master, slave = pty.openpty()
    c = client(  # (SIGINT as a terminal's process has it: a shell's background job, as a
        # test runner may be, starts with SIGINT ignored, and Ctrl-C would never arrive)
        probe_server["sock"], "report.json", "never",
        cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, text=False,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(slave)
    seen = bytearray()

    def drain():  # (read as a terminal does: a full pty buffer would block the writers)
        while select.select([master], [], [], 0.2)[0] or c.poll() is None:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no writer left
                break
            if not chunk:
                break
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_for(tmp_path / "report.json")  # the client waits for the answer
        c.send_signal(signal.SIGINT)
        assert c.wait(timeout=30) == 130
        reader.join(timeout=10)
        assert bytes(seen).endswith(b"\x1b[?25h")
    finally:
        c.kill()
        c.wait()
        reader.join(timeout=10)
        os.close(master)


def test_uncaught_exception_exits_1_as_in_a_fresh_process(tmp_path):
    fresh = subprocess.run(
        [sys.executable, "-c", "import sys\nimport tl_dsl.verify\n" + CRASH
         + "from tl_dsl.cli import main\nsys.exit(main())", "verify", "m.onnx", "p.vnnlib"],
        capture_output=True, text=True, timeout=60,
    )
    assert fresh.returncode == 1 and "RuntimeError: verify crashed" in fresh.stderr
    proc, log = start_server(tmp_path / "sock", tmp_path, patch=CRASH)
    try:
        served = client(tmp_path / "sock", "m.onnx", "p.vnnlib", cwd=tmp_path)
        out, err = served.communicate(timeout=60)
        assert served.returncode == 1, err
        assert "Traceback" in err and err.rstrip().endswith("RuntimeError: verify crashed")
    finally:
        stop(proc)


@pytest.mark.parametrize("closed", [1, 2])
def test_client_with_stdout_or_stderr_closed(probe_server, tmp_path, closed):
    (tmp_path / "go").touch()
    c = client(probe_server["sock"], "report.json", "go", cwd=tmp_path,
               preexec_fn=lambda: os.close(closed))
    out, err = c.communicate(timeout=60)
    assert c.returncode == 0, err
    assert (out, err) == (("", "probe: stderr\n") if closed == 1 else ("probe: stdout\n", ""))


def test_served_run_has_the_clients_umask_and_environment(probe_server, tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "go").touch()
    env = {"TMPDIR": str(tmp_path / "tmp"), "TL_SERVER": probe_server["sock"], "TL_PROBE": "1"}
    c = client(None, "report.json", "go", cwd=tmp_path, env=env,
               preexec_fn=lambda: os.umask(0o077))
    out, err = c.communicate(timeout=60)
    assert c.returncode == 0 and out == "probe: stdout\n", err
    seen = json.loads((tmp_path / "report.json").read_text())
    assert seen["pid"] != c.pid and f"pid {seen['pid']}:" in probe_server["log"].read_text()
    assert seen["umask"] == 0o077
    assert seen["tempdir"] == str(tmp_path / "tmp")
    assert seen["env"]["TL_PROBE"] == "1" and "TL_SERVER" not in seen["env"]
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o600


def test_idle_server_waits_for_a_running_request(tmp_path):
    proc, log = start_server(tmp_path / "sock", tmp_path, "1", patch=PROBE)
    try:
        c = client(tmp_path / "sock", "report.json", "go", cwd=tmp_path)
        wait_for(tmp_path / "report.json")
        time.sleep(2.5)  # past --idle while the request runs
        assert proc.poll() is None and (tmp_path / "sock").exists()
        (tmp_path / "go").touch()
        assert c.wait(timeout=30) == 0
        assert proc.wait(timeout=30) == 0 and not (tmp_path / "sock").exists()
        lines = log.read_text().splitlines()
        assert "exit 0 after" in lines[-2] and "no connection for 1 s" in lines[-1]
    finally:
        stop(proc)


def test_child_killed_while_a_worker_runs_answers_the_client_at_once(probe_server, tmp_path):
    with open(tmp_path / "err", "w") as err:  # (a file: the worker holds the client's fds)
        c = client(probe_server["sock"], "fork.json", "never", cwd=tmp_path, stderr=err)
    seen = wait_for(tmp_path / "fork.json")
    try:
        os.kill(seen["pid"], signal.SIGKILL)  # as the OOM killer would
        assert c.wait(timeout=15) == 3  # not when the worker ends (60 s)
        err = (tmp_path / "err").read_text()
        assert "closed the connection before sending an exit code" in err
    finally:
        c.kill()
        c.wait()
        try:
            os.kill(seen["worker"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_malformed_requests_get_an_error_reply(server):
    for data in [b"[1, 2]\n", b'"verify"\n', b"[" * 100000 + b"]" * 100000 + b"\n"]:
        reply, out, err = raw_request(server["sock"], data)
        assert reply["exit"] == 3 and reply["error"].startswith("tl serve: bad request:"), data
    assert server["log"].read_text().count(": bad request: ") >= 3
    reply, _, _ = raw_request(server["sock"], {"argv": ["verify"], "cwd": "/", "env": []})
    assert reply["exit"] == 3 and "bad request" in reply["error"]


def test_failed_fork_is_answered_and_the_server_goes_on(tmp_path):
    patch = """
_fork, _calls = os.fork, []
def fork():
    _calls.append(1)
    if len(_calls) == 1:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    return _fork()
os.fork = fork
"""
    proc, log = start_server(tmp_path / "sock", tmp_path, patch=patch)
    try:
        out, err = client(tmp_path / "sock", "m.onnx", "p.vnnlib", cwd=tmp_path).communicate()
        assert err.startswith("error: tl serve: cannot fork for this request:"), err
        reply, _, _ = raw_request(str(tmp_path / "sock"), {"argv": ["check"], "cwd": "/"})
        assert reply["exit"] == 3 and "only `tl verify`" in reply["error"]
        assert proc.poll() is None
    finally:
        stop(proc)


def test_client_with_changed_code_is_refused_with_exit_4(probe_server, tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    copy = tmp_path / "copy"
    for package in ("kernel_checker", "tl_dsl", "oracles", "stdlib"):
        for f in (root / package).rglob("*"):
            if f.suffix in (".py", ".lark") and "__pycache__" not in f.parts:
                (copy / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, copy / f.relative_to(root))
    with open(copy / "tl_dsl" / "verify.py", "a") as f:
        f.write("# an edit after the server started\n")
    (tmp_path / "go").touch()  # (so that a server that does not check answers at once)
    c = client(probe_server["sock"], "report.json", "go", cwd=tmp_path,
               env={"PYTHONPATH": str(copy)})
    out, err = c.communicate(timeout=60)
    assert c.returncode == 4 and out == "", err
    assert err.strip() == (
        f"error: the tl server at {probe_server['sock']} runs other code than this client "
        "(files changed since it started): restart it"
    )
    assert not (tmp_path / "report.json").exists()
    reply, _, _ = raw_request(probe_server["sock"], {"argv": ["verify"], "cwd": "/", "code": ""})
    assert reply["exit"] == 4 and "runs other code" in reply["error"]
