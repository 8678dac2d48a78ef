"""`tl serve --socket PATH`: a warm worker for `tl verify --server PATH`.

A fresh `tl verify` spends about a second importing torch before it reads the model. The server
pays the imports once, then forks a child per connection; the child runs `tl verify` with the
client's command line, working directory, stdout and stderr, exactly as a fresh process would
(the same producers, the same kernel check, the same output), and sends back the exit code.
No torch computation runs in the server itself: a fork copies one thread, so thread pools must
not exist yet when it happens.

If the client goes away before the answer (a harness killing it on timeout, Ctrl-C), the child
kills its own process group, so the `--jobs` workers die with it.

Protocol, one request per connection. The client sends one JSON line
{"argv": ["verify", ...], "cwd": DIR} with its fds 1 and 2 attached (SCM_RIGHTS) and keeps its
end open until the answer, one JSON line {"exit": CODE} or {"exit": CODE, "error": MESSAGE}."""

import importlib
import json
import os
import shlex
import signal
import socket
import stat
import sys
import threading
import time
import traceback

NO_SERVER_EXIT = 4  # `tl verify --server` with nothing answering at the socket
ERROR_EXIT = 3  # as `tl verify` for an error: refused request, crash, lost connection
MAX_REQUEST_BYTES = 1 << 20

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
    working directory, stdout and stderr; return the exit code the server sends back."""
    sys.stdout.flush()
    sys.stderr.flush()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        print(
            f"error: no tl server at {path} (start one with: tl serve --socket {path})",
            file=sys.stderr,
        )
        return NO_SERVER_EXIT
    with sock:
        try:
            _send_request(sock, {"argv": argv, "cwd": os.getcwd()}, [1, 2])
            reply = _read_reply(sock)
        except KeyboardInterrupt:  # closing the socket makes the server's child stop
            return 130
        except OSError:
            reply = None
    if reply is None:
        print(
            f"error: the tl server at {path} closed the connection before sending an exit code",
            file=sys.stderr,
        )
        return ERROR_EXIT
    if "error" in reply:
        print(f"error: {reply['error']}", file=sys.stderr)
    return reply["exit"]


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


def _reap(signum, frame) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def serve(path: str, idle_s: float | None = None) -> int:
    """Listen on `path` until SIGTERM / SIGINT (or `idle_s` seconds without a connection),
    forking one child per request; return the exit code."""
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
        _preload()
        signal.signal(signal.SIGCHLD, _reap)
        print(f"tl serve: listening on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
        listener.settimeout(idle_s)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                print(f"tl serve: no connection for {idle_s:g} s, exiting", file=sys.stderr)
                break
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                code = ERROR_EXIT
                try:
                    listener.close()
                    code = _child(conn)
                finally:
                    os._exit(code)
            conn.close()
    finally:
        listener.close()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass
    return 0


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
    os.environ.pop("TL_SERVER", None)  # a child runs verify here, never forwards it
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


def _child(conn: socket.socket) -> int:
    """Serve one request in the forked child; return its exit code."""
    os.setpgrp()  # the process group that a hang-up kills, --jobs workers included
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pid, log_fd = os.getpid(), os.dup(2)  # the server's stderr, for the log
    try:
        request, fds = _receive_request(conn)
    except (OSError, ValueError) as e:
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
    done = threading.Event()
    threading.Thread(target=_kill_group_on_hangup, args=(conn, done, log_fd), daemon=True).start()
    t0 = time.perf_counter()
    code = _run_verify(argv, cwd, fds)
    done.set()
    _reply(conn, code)
    _log(log_fd, f"pid {pid}: exit {code} after {time.perf_counter() - t0:.2f} s")
    return code


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
    argv, cwd = request.get("argv"), request.get("cwd")
    if not (
        isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(cwd, str)
    ):
        raise ValueError('expected {"argv": [strings], "cwd": string}')
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
    except BaseException:
        traceback.print_exc()
        code = ERROR_EXIT
    sys.stdout.flush()
    sys.stderr.flush()
    return code
