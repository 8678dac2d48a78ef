"""Forked worker processes for `tl verify --jobs` that can be stopped at any moment.

`concurrent.futures.ProcessPoolExecutor` is not used: a worker stopped while it sends a result
(a reply over 16 KiB goes in two writes, one over a pipe's buffer in many) leaves the
executor's manager thread waiting forever for the rest, because this process holds a write end
of the same result pipe, and Python's exit waits on that thread. Seen on Python 3.11.7: a
worker returning 400 MB, stopped while writing it the way `--jobs` stopped workers
(shutdown without waiting, then terminate), and the process never exited; CI's run of 1218d99
printed every test passed, then did not end within its 90 minutes. Here each worker has a pipe
of its own whose far end only that worker holds, so a stopped worker's pipe ends (EOFError)
and nothing waits for it; no thread is started.
"""

import collections
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys


class WorkerDiedError(Exception):
    """A worker ended (killed, out of memory) before it answered."""


class Job:
    """One call sent to a worker; `done` once its value or error came back."""

    __slots__ = ("fn", "args", "data", "done", "value", "error")

    def __init__(self, fn, args: tuple):
        self.fn, self.args, self.done, self.value, self.error = fn, args, False, None, None
        self.data = pickle.dumps((fn, args))  # (at submit: an error here is the caller's)

    def result(self):
        """The call's value; its exception (or WorkerDiedError) is raised here."""
        if not self.done:
            raise RuntimeError("the job has not finished")
        if self.error is not None:
            raise self.error
        return self.value


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """On Linux, this worker gets SIGKILL when its parent ends, however it ends (the OOM
    killer's SIGKILL included: without this a busy worker ran on until its job finished);
    a parent already gone by now ends it at once."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # (no prctl: the EOF on the pipe still ends it)
            pass
    if os.getppid() != parent:
        os._exit(1)


def _serve(conn, others: list, init, initargs: tuple, parent: int) -> None:
    _die_with(parent)
    for end in others:  # this process's copies of the parent's ends: only the parent holds them
        end.close()
    if init is not None:
        init(*initargs)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            call = pickle.loads(data)
            if call is None:
                return
            reply = (True, call[0](*call[1]))
        except BaseException as e:  # noqa: BLE001 (the parent gets it as the job's error)
            reply = (False, _portable(e))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 (a value that does not pickle)
            try:
                conn.send((False, RuntimeError(f"the worker's reply could not be sent: {e!r}")))
            except OSError:
                return


def _portable(e: BaseException) -> Exception:
    """e itself if it is an Exception that survives pickling, else a RuntimeError naming it
    (SystemExit in a job is the job's error, not the parent's exit)."""
    try:
        if isinstance(e, Exception) and type(pickle.loads(pickle.dumps(e))) is type(e):
            return e
    except Exception:  # noqa: BLE001 (an exception whose class does not rebuild from its args)
        pass
    return RuntimeError(f"{type(e).__name__}: {e}")


_DEAD = object()  # a worker slot whose process ended


class Workers:
    """`n` processes forked now (`init(*initargs)` runs first in each); calls go to idle ones
    in the order submitted. `close` kills the busy ones; use as a context manager."""

    def __init__(self, n: int, init=None, initargs: tuple = ()):
        fork = multiprocessing.get_context("fork")
        self._conns, self._procs, self._busy = [], [], []
        self._queue: collections.deque = collections.deque()
        self._failed: list[Job] = []
        try:
            for _ in range(n):
                mine, theirs = fork.Pipe()
                proc = fork.Process(target=_serve, daemon=True,
                                    args=(theirs, [*self._conns, mine], init, initargs,
                                          os.getpid()))
                proc.start()
                theirs.close()
                self._conns.append(mine)
                self._procs.append(proc)
                self._busy.append(None)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def submit(self, fn, *args) -> Job:
        """Queue `fn(*args)` (fn and args pickled now, fn by name); its Job comes back from
        `wait`. A send waits for the worker to read it: calls are expected to be small."""
        job = Job(fn, args)
        self._queue.append(job)
        self._feed()
        return job

    def _feed(self) -> None:
        while self._queue and None in self._busy:
            i = self._busy.index(None)
            job = self._queue.popleft()
            try:
                self._conns[i].send_bytes(job.data)
                self._busy[i] = job
            except OSError:  # the worker ended while idle: the job goes to another
                self._queue.appendleft(job)
                self._end(i, None)
        if self._queue and all(b is _DEAD for b in self._busy):
            while self._queue:  # no worker left to run them
                self._end(None, self._queue.popleft())

    def _end(self, i: int | None, job: Job | None) -> None:
        """Worker i (if any) is killed and its slot closed; job (if any) fails with
        WorkerDiedError."""
        why = "no worker process is left"
        if i is not None:
            proc = self._procs[i]
            proc.kill()
            proc.join()
            self._conns[i].close()
            why = f"worker process {proc.pid} ended without answering (exit code {proc.exitcode})"
            self._busy[i] = _DEAD
        if job is not None:
            job.done, job.error = True, WorkerDiedError(why)
            self._failed.append(job)

    def pending(self) -> int:
        """Jobs queued or running."""
        return len(self._queue) + sum(b is not None and b is not _DEAD for b in self._busy)

    def wait(self, timeout: float | None = None) -> list[Job]:
        """The jobs that finished within `timeout` seconds (at once if one already had): at
        least one unless the time ran out or nothing is pending."""
        out, self._failed = self._failed, []
        busy = [c for c, b in zip(self._conns, self._busy) if b is not None and b is not _DEAD]
        ready = [] if out or not busy else multiprocessing.connection.wait(busy, timeout)
        for conn in ready:
            i = self._conns.index(conn)
            job = self._busy[i]
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):  # (a message cut short ends the same way)
                self._end(i, job)
                continue
            self._busy[i] = None
            job.done = True
            try:
                ok, got = pickle.loads(data)
            except Exception as e:  # noqa: BLE001
                ok, got = False, RuntimeError(f"the worker's reply could not be read: {e!r}")
            if ok:
                job.value = got
            else:
                job.error = got if isinstance(got, BaseException) else RuntimeError(repr(got))
            out.append(job)
        self._feed()
        out, self._failed = out + self._failed, []
        return out

    def close(self) -> None:
        """Idle workers are told to end; busy ones (and any that do not end) are killed."""
        for conn, proc, job in zip(self._conns, self._procs, self._busy):
            if job is None and proc.is_alive():
                try:
                    conn.send_bytes(pickle.dumps(None))
                except OSError:
                    pass
                proc.join(1)
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()
        self._busy = [_DEAD] * len(self._busy)
        self._queue.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
