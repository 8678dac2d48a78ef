"""`tl serve --socket PATH`: a warm worker for `tl verify --server PATH`.

A fresh `tl verify` spends about a second importing torch before it reads the model. The server
pays the imports once, then forks a child per connection; the child runs `tl verify` with the
client's command line, working directory, stdout and stderr, exactly as a fresh process would
(the same producers, the same kernel check, the same output), and sends back the exit code.
No torch computation runs in the server itself: a fork copies one thread, so thread pools must
not exist yet when it happens.

The child also takes the client's umask and environment (TMPDIR, CUDA_VISIBLE_DEVICES, ...); what
the preloaded libraries read from the environment at import time stays the server's. Resource
limits (ulimit) and the cgroup are not transferred: the served run has the server's.

If the client goes away before the answer (a harness killing it on timeout, Ctrl-C), the child
kills its own process group, so the `--jobs` workers die with it. If the child dies, the client
learns it at once: processes forked from the child close their copy of the connection.

Both ends check that the other runs as the same user (SO_PEERCRED): a client does not send work
to a socket another user listens on, and the server refuses connections from other users.

The server serves the code it loaded at start. It keeps a fingerprint of the files of
kernel_checker, tl_dsl, oracles and stdlib (see code_fingerprint); a client whose files differ
(an edit or a `git pull` since the server started) is refused with exit 4, as with no server.

Protocol, one request per connection. The client sends one JSON line
{"argv": ["verify", ...], "cwd": DIR, "umask": INT, "env": {NAME: VALUE, ...}, "code": SHA256}
with its fds 1 and 2 attached (SCM_RIGHTS) and keeps its end open until the answer, one JSON
line {"exit": CODE} or {"exit": CODE, "error": MESSAGE}."""

import hashlib
import importlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import traceback

NO_SERVER_EXIT = 4  # `tl verify --server` with no usable server: none, another user's, stale
ERROR_EXIT = 3  # as `tl verify` for an error: refused request, lost connection
CRASH_EXIT = 1  # as a fresh `tl verify` for an uncaught exception
MAX_REQUEST_BYTES = 1 << 20
CODE_PACKAGES = ("kernel_checker", "tl_dsl", "oracles", "stdlib")  # what code_fingerprint covers

# Everything `tl verify` imports on its way to an answer, so that a child imports nothing
# (tl_dsl.verify imports the producers inside its functions).
PRELOAD = (
    "numpy",
    "numpy.random",
    "torch",
    "torch.profiler._cupti_monitor",
    "flint",
    "onnx",
    "rich.console",
    "rich.status",
    "rich._emoji_codes",
    "multiprocessing.popen_fork",
    "multiprocessing.synchronize",
    "kernel_checker",
    "oracles.onnx_import",
    "oracles.bab",
    "oracles.bounds_torch",
    "oracles.pgd",
    "oracles.float32_reference",
    "stdlib.vnnlib",
    "tl_dsl.verify",
    "tl_dsl.cli",
    "tl_dsl.cli_export",
    "tl_dsl.cli_oracle",
)


def run_on_server(path: str, argv: list[str]) -> int:
    """Run `tl <argv>` (a verify command line) on the server at `path` with this process's
    working directory, stdout, stderr, umask and environment; return the exit code the server
    sends back."""
    for f in (sys.stdout, sys.stderr):
        if f is not None:  # None: the fd was closed when Python started (`>&-`)
            f.flush()
    _fill_closed_std_fds()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        uid = _peer_uid(sock)
    except OSError:
        sock.close()
        _say(f"error: no tl server at {path} (start one with: tl serve --socket {path})")
        return NO_SERVER_EXIT
    with sock:
        if uid != os.getuid():  # e.g. another user squatting the path in /tmp
            _say(
                f"error: the socket {path} is served by uid {uid}, not by this user "
                f"(uid {os.getuid()}); not sending it work"
            )
            return NO_SERVER_EXIT
        umask = os.umask(0o077)
        os.umask(umask)
        request = {
            "argv": argv,
            "cwd": os.getcwd(),
            "umask": umask,
            "env": dict(os.environ),
            "code": code_fingerprint(),
        }
        try:
            try:
                _send_request(sock, request, [1, 2])
            except OSError:  # a server that answers before reading (fork failed) and closes
                pass
            reply = _read_reply(sock)
        except KeyboardInterrupt:  # closing the socket makes the server's child stop
            if os.isatty(2):  # the killed child cannot show the cursor its spinner hid
                os.write(2, b"\x1b[?25h")
            return 130
        except OSError:
            reply = None
    if reply is None:
        _say(f"error: the tl server at {path} closed the connection before sending an exit code")
        return ERROR_EXIT
    if "error" in reply:
        _say(f"error: {reply['error']}")
    return reply["exit"]


def _say(line: str) -> None:
    if sys.stderr is not None:
        print(line, file=sys.stderr)


def _fill_closed_std_fds() -> None:
    """Open /dev/null on fd 1 or 2 where it is closed, so that the server gets an fd to write to
    (and the socket does not take the number)."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket."""
    ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", ucred)[1]  # struct ucred: pid, uid, gid


def code_fingerprint() -> str:
    """sha256 over (path, size, mtime) of the .py and .lark files of CODE_PACKAGES, found where
    this process imports them from (without importing them); a few ms."""
    h = hashlib.sha256()
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        roots = spec.submodule_search_locations if spec is not None else None
        for root in roots or [f"({name} not found)"]:
            root = os.path.realpath(root)
            h.update(os.fsencode(f"{name} {root}\n"))
            found = []
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for f in files:
                    if f.endswith((".py", ".lark")):
                        st = os.stat(os.path.join(folder, f))
                        rel = os.path.relpath(os.path.join(folder, f), root)
                        found.append(f"{rel} {st.st_size} {st.st_mtime_ns}\n")
            h.update(os.fsencode("".join(sorted(found))))
    return h.hexdigest()


def _send_request(sock: socket.socket, doc: dict, fds: list[int]) -> None:
    data = json.dumps(doc).encode() + b"\n"
    sent = socket.send_fds(sock, [data], fds)
    sock.sendall(data[sent:])


def _read_reply(sock: socket.socket) -> dict | None:
    """The server's answer line, or None when the connection ends without a valid one."""
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST_BYTES:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    ok = isinstance(reply, dict) and isinstance(reply.get("exit"), int)
    return reply if ok else None


def _stop(signum, frame) -> None:
    raise SystemExit(0)  # SIGTERM / SIGINT: the `finally` in serve() removes the socket


_children: set[int] = set()  # the server's children still running
_last_seen = 0.0  # time.monotonic() of the last connection or child's end, for --idle
_code = ""  # code_fingerprint() when the server started


def _reap(signum, frame) -> None:
    global _last_seen
    try:
        while True:
            pid = os.waitpid(-1, os.WNOHANG)[0]
            if not pid:
                break
            _children.discard(pid)
            _last_seen = time.monotonic()
    except ChildProcessError:
        pass


def serve(path: str, idle_s: float | None = None) -> int:
    """Listen on `path` until SIGTERM / SIGINT (or `idle_s` seconds without a connection or a
    running request), forking one child per request; return the exit code."""
    global _code, _last_seen
    if idle_s is not None and idle_s <= 0:
        print("tl serve: --idle must be a positive number of seconds", file=sys.stderr)
        return 1
    why = _claim_path(path)
    if why:
        print(f"tl serve: {why}", file=sys.stderr)
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the socket is born 0600: only this user may ask for work
    try:
        listener.bind(path)
    except OSError as e:
        listener.close()
        print(f"tl serve: cannot listen on {path}: {e}", file=sys.stderr)
        return 1
    finally:
        os.umask(umask)
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        listener.listen(64)  # clients that come during the preload wait in the backlog
        _code = code_fingerprint()  # before the imports: a file changed during them is stale
        _preload()
        signal.signal(signal.SIGCHLD, _reap)
        print(f"tl serve: listening on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
        _last_seen = time.monotonic()
        while True:
            if idle_s is not None:
                left = _last_seen + idle_s - time.monotonic()
                if left <= 0 and not _children:
                    print(f"tl serve: no connection for {idle_s:g} s, exiting", file=sys.stderr)
                    break
                listener.settimeout(idle_s if _children else left)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            _last_seen = time.monotonic()
            _start_child(listener, conn, path)
    finally:
        listener.close()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass
    return 0


def _start_child(listener: socket.socket, conn: socket.socket, path: str) -> None:
    """Fork a child to serve `conn`; refuse another user's connection, and answer an error
    when fork fails (the server goes on)."""
    try:
        uid = _peer_uid(conn)
    except OSError:
        uid = -1
    if uid != os.getuid():
        print(f"tl serve: refused a connection from uid {uid}", file=sys.stderr, flush=True)
        _reply(conn, ERROR_EXIT, f"tl serve serves only uid {os.getuid()}")
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # reaped only once recorded
    try:
        pid = os.fork()
    except OSError as e:
        print(f"tl serve: cannot fork for a request: {e}", file=sys.stderr, flush=True)
        _reply(conn, ERROR_EXIT, f"tl serve: cannot fork for this request: {e}")
        pid = None
    if pid == 0:
        code = ERROR_EXIT
        try:
            listener.close()
            code = _child(conn, path)
        finally:
            os._exit(code)
    if pid is not None:
        _children.add(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    conn.close()


def _claim_path(path: str) -> str | None:
    """None when `path` is free to bind (a stale socket file is removed), else why not."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; not replacing it"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # left by a server that died without cleaning up
        return None
    except OSError as e:
        return f"cannot tell whether a server is listening on {path}: {e}"
    finally:
        probe.close()
    return f"a tl server is already listening on {path}"


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass  # then `tl verify` fails in the child exactly as it would in a fresh process
    from stdlib.vnnlib import _parser

    _parser()  # the lark grammar is compiled on first use and cached


def _log(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


class _OtherCodeError(Exception):
    """The client's code_fingerprint() is not the server's."""


def _child(conn: socket.socket, path: str) -> int:
    """Serve one request in the forked child; return its exit code."""
    os.setpgrp()  # the process group that a hang-up kills, --jobs workers included
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # blocked by _start_child
    pid, log_fd = os.getpid(), os.dup(2)  # the server's stderr, for the log
    _hold_alone(conn, log_fd)
    try:
        request, fds = _receive_request(conn)
    except _OtherCodeError:
        _log(log_fd, f"pid {pid}: refused: the client's code differs from the server's")
        _reply(
            conn,
            NO_SERVER_EXIT,
            f"the tl server at {path} runs other code than this client (files changed since "
            "it started): restart it",
        )
        return NO_SERVER_EXIT
    except Exception as e:  # not JSON, not an object, nested too deep, missing fds, ...
        _log(log_fd, f"pid {pid}: bad request: {e}")
        _reply(conn, ERROR_EXIT, f"tl serve: bad request: {e}")
        return ERROR_EXIT
    if request is None:  # connected and left, e.g. another server's liveness probe
        return 0
    argv, cwd = request["argv"], request["cwd"]
    _log(log_fd, f"pid {pid}: {shlex.join(argv)} (cwd {cwd})")
    if argv[:1] != ["verify"]:
        got = f"`tl {argv[0]}`" if argv else "an empty command line"
        _reply(conn, ERROR_EXIT, f"tl serve runs only `tl verify`; got {got}")
        return ERROR_EXIT
    try:  # the client's umask and environment, as in a fresh process
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop("TL_SERVER", None)  # a child runs verify here, never forwards it
        tempfile.tempdir = None  # so that the client's TMPDIR counts
    except ValueError as e:  # a name or value that putenv refuses
        _log(log_fd, f"pid {pid}: bad request: {e}")
        _reply(conn, ERROR_EXIT, f"tl serve: bad request: {e}")
        return ERROR_EXIT
    done = threading.Event()
    threading.Thread(target=_kill_group_on_hangup, args=(conn, done, log_fd), daemon=True).start()
    t0 = time.perf_counter()
    code = _run_verify(argv, cwd, fds)
    done.set()
    _reply(conn, code)
    _log(log_fd, f"pid {pid}: exit {code} after {time.perf_counter() - t0:.2f} s")
    return code


def _hold_alone(conn: socket.socket, log_fd: int) -> None:
    """Make this child the only holder of the connection (and the log fd): every process forked
    from it (--jobs workers) closes its copies, so that the client sees this child's death at
    once instead of when the last worker ends."""
    held = [log_fd]

    def let_go() -> None:
        conn.close()
        while held:  # emptied: a fork of a fork must not close a reused fd number
            try:
                os.close(held.pop())
            except OSError:
                pass

    os.register_at_fork(after_in_child=let_go)


def _receive_request(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """The request and the client's stdout / stderr fds; (None, []) if it sent nothing."""
    data, fds, flags, _ = socket.recv_fds(conn, 65536, 2)
    if not data:
        return None, []
    if flags & socket.MSG_CTRUNC or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected the client's stdout and stderr fds, got {len(fds)} fd(s)")
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk or len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request line incomplete or over 1 MiB")
        data += chunk
    request = json.loads(data)
    if not isinstance(request, dict):
        raise ValueError("expected a JSON object")
    if request.get("code") != _code:
        raise _OtherCodeError()
    argv, cwd, umask, env = (request.get(k) for k in ("argv", "cwd", "umask", "env"))
    if not (
        isinstance(argv, list)
        and all(isinstance(a, str) for a in argv)
        and isinstance(cwd, str)
        and isinstance(umask, int)
        and 0 <= umask <= 0o777
        and isinstance(env, dict)
        and all(isinstance(v, str) for v in env.values())
    ):
        raise ValueError(
            'expected {"argv": [strings], "cwd": string, "umask": int, '
            '"env": {string: string}, "code": string}'
        )
    return request, fds


def _reply(conn: socket.socket, code: int, error: str | None = None) -> None:
    doc = {"exit": code} if error is None else {"exit": code, "error": error}
    try:
        conn.sendall(json.dumps(doc).encode() + b"\n")
    except OSError:
        pass


def _kill_group_on_hangup(conn: socket.socket, done: threading.Event, log_fd: int) -> None:
    """The client sends nothing after its request, so a read returns only at its hang-up."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    if not done.is_set():
        _log(log_fd, f"pid {os.getpid()}: client hung up; killing process group")
        os.killpg(0, signal.SIGKILL)


def _run_verify(argv: list[str], cwd: str, fds: list[int]) -> int:
    """`tl verify` in this process with the client's stdout, stderr and working directory."""
    from tl_dsl.cli import build_parser, stdout_gone

    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    try:
        os.chdir(cwd)
    except OSError as e:
        print(f"error: tl serve cannot enter the client's working directory: {e}", file=sys.stderr)
        return ERROR_EXIT
    try:
        args = build_parser().parse_args(argv)
        if args.server is not None:
            print("error: --server inside a request to tl serve", file=sys.stderr)
            code = ERROR_EXIT
        else:
            code = args.func(args)
    except SystemExit as e:  # argparse: usage errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # the client's reader closed stdout
        code = stdout_gone()
    except KeyboardInterrupt:  # SIGINT sent to the child: Python's exit code for it
        traceback.print_exc()
        code = 130
    except BaseException:  # as a fresh process: the traceback and exit 1
        traceback.print_exc()
        code = CRASH_EXIT
    sys.stdout.flush()
    sys.stderr.flush()
    return code
