"""Derivations in forked copies of this process (`tl verify --jobs`): each of `jobs` children
derives the (claim, certificate) pairs it is sent with `derive` and replies with the refusal or
the theorem's rule, assumptions and level; the parent makes that theorem (without premises) for
the claim document it sent that child. Trusted beyond the rules: fork (only `_serve` runs in a
child) and the pipes, whose replies the parent unpickles. A pair goes only to an idle child, so a
send never waits on a busy one; a child exits when its parent dies (its pipe end closes).
"""

import contextlib
import multiprocessing
import multiprocessing.connection
import time

from kernel_checker.claims import Claim, parse_claim
from kernel_checker.errors import KernelError, refuse
from kernel_checker.rules import Context, derive
from kernel_checker.theorem import Theorem, _derive

MAX_MESSAGE = 2000  # characters of a refusal sent back (a certificate may quote a huge value)


def _serve(conn, ctx: Context, parent_ends: list) -> None:
    for end in parent_ends:  # this process's copies: the parent's death must close the pipe
        end.close()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if job is None:
            return
        t0, got, err = time.process_time_ns(), None, None
        try:
            thm = derive(ctx, parse_claim(job[0], "claim"), job[1])
            got = (thm.rule, thm.assumptions, thm.level)
        except KernelError as e:
            err = (e.rule, e.path, e.message[:MAX_MESSAGE])
        except Exception as e:  # noqa: BLE001 (a crash refuses too: the parent must not wait)
            err = ("pool", "", f"the kernel process failed: {e!r}"[:MAX_MESSAGE])
        conn.send((got, err, time.process_time_ns() - t0))


class Pool:
    """`jobs` kernel processes forked now, with ctx's graphs; use as a context manager."""

    def __init__(self, ctx: Context, jobs: int):
        fork = multiprocessing.get_context("fork")
        self.conns, self.procs, self.busy, self.waiting, self.cpu_ns = [], [], [], [], 0
        for _ in range(jobs):
            mine, theirs = fork.Pipe()
            proc = fork.Process(target=_serve, args=(theirs, ctx, [*self.conns, mine]),
                                daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(proc)
            self.busy.append(None)  # (key, claim document) of the pair a child derives

    def submit(self, key, claim: Claim, cert: dict) -> None:
        """Queue `cert` for `claim`; its theorem (or refusal) comes from `results` under `key`."""
        self.waiting.append((key, claim.to_json(), cert))
        self._feed()

    def _feed(self) -> None:
        while self.waiting and None in self.busy:
            i = self.busy.index(None)
            key, doc, cert = self.waiting.pop(0)
            self.busy[i] = (key, doc)  # the theorem is made for this document, which it parsed
            try:
                self.conns[i].send((doc, cert))
            except OSError:  # (a child that died)
                raise refuse("pool", "", "a kernel process ended without answering") from None

    def pending(self) -> int:
        return len(self.waiting) + sum(b is not None for b in self.busy)

    def results(self, timeout: float = 0) -> list[tuple[object, Theorem | KernelError]]:
        """What came back within `timeout` seconds: (key, theorem or refusal) pairs."""
        busy = [c for c, b in zip(self.conns, self.busy) if b is not None]
        out = []
        for conn in multiprocessing.connection.wait(busy, timeout) if busy else []:
            try:
                got, err, ns = conn.recv()
            except (EOFError, OSError):  # (a killed child's pipe may also be reset)
                raise refuse("pool", "", "a kernel process ended without answering") from None
            i = self.conns.index(conn)
            (key, doc), self.busy[i] = self.busy[i], None
            self.cpu_ns += ns
            out.append((key, KernelError(*err) if err else _derive(
                parse_claim(doc, "claim"), got[0], got[1], level=got[2])))
        self._feed()
        return out

    def close(self) -> None:
        """Children with work left are killed (the budget ran out, or a refusal ended the run)."""
        for conn, proc, job in zip(self.conns, self.procs, self.busy):
            if job is None and proc.is_alive():
                with contextlib.suppress(OSError):  # (it may die in between)
                    conn.send(None)
                proc.join(1)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
