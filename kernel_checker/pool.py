"""Derivations in forked copies of this process (`tl verify --jobs`): `Pool(ctx, jobs)` forks
`jobs` processes, each of which derives the (claim, certificate) pairs it is sent with `derive`
and sends back only the refusal, or the theorem's rule, assumptions and level, from which the
parent makes the same theorem. What this adds to the trusted base: fork (a child is a copy of
the kernel's process; only this module's loop runs in it) and the pipes between parent and
children, whose replies the parent unpickles. The children's CPU time is counted in `cpu_ns`.
"""

import contextlib
import multiprocessing
import multiprocessing.connection
import time

from kernel_checker.claims import Claim, parse_claim
from kernel_checker.errors import KernelError, refuse
from kernel_checker.rules import Context, derive
from kernel_checker.theorem import Theorem, _derive

IN_FLIGHT = 2  # pairs sent to a child before its replies: the rest wait here, so no child idles
# while another has a backlog


def _serve(conn, ctx: Context) -> None:
    while (job := conn.recv()) is not None:
        key, claim_doc, cert = job
        t0, got, err = time.process_time_ns(), None, None
        try:
            thm = derive(ctx, parse_claim(claim_doc, "claim"), cert)
            got = (thm.rule, thm.assumptions, thm.level)
        except KernelError as e:
            err = (e.rule, e.path, e.message)
        except Exception as e:  # noqa: BLE001 (a crash refuses too: the parent must not wait)
            err = ("pool", "", f"the kernel process failed: {e!r}")
        conn.send((key, got, err, time.process_time_ns() - t0))


class Pool:
    """`jobs` kernel processes forked now, with ctx's graphs; use as a context manager."""

    def __init__(self, ctx: Context, jobs: int):
        fork = multiprocessing.get_context("fork")
        self.conns, self.load, self.waiting, self.claims, self.cpu_ns = [], [], [], {}, 0
        self.procs = []
        for _ in range(jobs):
            mine, theirs = fork.Pipe()
            proc = fork.Process(target=_serve, args=(theirs, ctx), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.load.append(0)
            self.procs.append(proc)

    def submit(self, key, claim: Claim, cert: dict) -> None:
        """Queue `cert` for `claim`; its theorem (or refusal) comes from `results` under `key`."""
        self.claims[key] = claim.to_json()  # the theorem is made for what the child parsed
        self.waiting.append((key, self.claims[key], cert))
        self._feed()

    def _feed(self) -> None:
        while self.waiting and min(self.load) < IN_FLIGHT:
            i = self.load.index(min(self.load))
            self.conns[i].send(self.waiting.pop(0))
            self.load[i] += 1

    def pending(self) -> int:
        return len(self.waiting) + sum(self.load)

    def results(self, timeout: float = 0) -> list[tuple[object, Theorem | KernelError]]:
        """What came back within `timeout` seconds: (key, theorem or refusal) pairs."""
        busy = [c for c, n in zip(self.conns, self.load) if n]
        out = []
        for conn in multiprocessing.connection.wait(busy, timeout) if busy else []:
            try:
                key, got, err, ns = conn.recv()
            except (EOFError, OSError):  # (a killed child's pipe may also be reset)
                raise refuse("pool", "", "a kernel process ended without answering") from None
            self.load[self.conns.index(conn)] -= 1
            self.cpu_ns += ns
            claim = parse_claim(self.claims.pop(key), "claim")
            out.append((key, KernelError(*err) if err else _derive(
                claim, got[0], got[1], level=got[2])))
        self._feed()
        return out

    def close(self) -> None:
        """Children with work left are killed (the budget ran out, or a refusal ended the run)."""
        for conn, proc, n in zip(self.conns, self.procs, self.load):
            if n == 0 and proc.is_alive():
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
