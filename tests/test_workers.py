"""tl_dsl.workers: the --jobs worker processes. Values and errors come back, a worker that dies
(even half-way through its reply) is an error and never a wait, and neither `close` nor the
process's exit waits for a stopped worker."""

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tl_dsl.workers import WorkerDiedError, Workers

BIG = 8 * 2**20  # a reply far over a pipe's buffer: its sender blocks until it is read


def _square(x):
    return x * x


def _fail(msg):
    raise ValueError(msg)


def _sleep(s):
    time.sleep(s)
    return s


def _big_later(n, s):
    time.sleep(s)
    return b"x" * n


def _unpicklable():
    return lambda: 0


def _pid():
    return os.getpid()


def _collect(pool, n, timeout=60):
    got, end = [], time.monotonic() + timeout
    while len(got) < n:
        done = pool.wait(max(0.0, end - time.monotonic()))
        assert done, f"only {len(got)} of {n} jobs came back"
        got += done
    return got


def _no_children_left():
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_values_and_errors_come_back_and_extra_jobs_queue():
    with Workers(2) as pool:
        jobs = [pool.submit(_square, k) for k in range(7)] + [pool.submit(_fail, "bad input")]
        assert pool.pending() == 8
        _collect(pool, 8)
        assert [j.result() for j in jobs[:7]] == [k * k for k in range(7)]
        with pytest.raises(ValueError, match="bad input"):
            jobs[7].result()
        assert pool.pending() == 0 and pool.wait(0) == []
    _no_children_left()


def test_a_reply_that_does_not_pickle_is_an_error_and_the_worker_goes_on():
    with Workers(1) as pool:
        bad = pool.submit(_unpicklable)
        good = pool.submit(_square, 3)
        _collect(pool, 2)
        with pytest.raises(RuntimeError, match="could not be sent"):
            bad.result()
        assert good.result() == 9


def test_wait_returns_nothing_when_the_time_runs_out():
    with Workers(1) as pool:
        job = pool.submit(_sleep, 30)
        t0 = time.monotonic()
        assert pool.wait(0.2) == [] and not job.done
        assert time.monotonic() - t0 < 5
        with pytest.raises(RuntimeError, match="not finished"):
            job.result()
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5  # close kills the busy worker at once
    _no_children_left()


@pytest.mark.parametrize("when", ["while working", "half-way through its reply"])
def test_a_killed_worker_is_an_error_and_the_others_go_on(when):
    with Workers(2) as pool:
        pids = pool.pids
        call = (_sleep, 60) if when == "while working" else (_big_later, BIG, 2.0)
        victim = pool.submit(*call)
        other = pool.submit(_pid)
        (first,) = _collect(pool, 1)
        assert first is other and other.result() == pids[1]
        time.sleep(3.0)  # (the reply is being written: the pipe's buffer is full)
        os.kill(pids[0], signal.SIGKILL)
        (dead,) = _collect(pool, 1)
        assert dead is victim
        with pytest.raises(WorkerDiedError, match=f"worker process {pids[0]} ended"):
            victim.result()
        again = pool.submit(_square, 5)  # runs on the worker that is left
        _collect(pool, 1)
        assert again.result() == 25
    _no_children_left()


class _NeedsTwoError(Exception):
    def __init__(self, a, b):  # (pickles as _NeedsTwoError(message): does not rebuild)
        super().__init__(f"{a} {b}")


def _raise_needs_two():
    raise _NeedsTwoError("kernel", "refused")


def _exit():
    raise SystemExit(3)


def test_errors_that_do_not_rebuild_come_back_named_and_submit_refuses_what_does_not_pickle():
    with Workers(1) as pool:
        odd, leave = pool.submit(_raise_needs_two), pool.submit(_exit)
        _collect(pool, 2)
        with pytest.raises(RuntimeError, match="_NeedsTwoError: kernel refused"):
            odd.result()
        with pytest.raises(RuntimeError, match="SystemExit: 3"):  # the job's, not an exit
            leave.result()
        with pytest.raises((AttributeError, pickle.PicklingError)):  # (a local function)
            pool.submit(lambda: 0)
        assert pool.pending() == 0


def test_a_job_sent_to_a_worker_that_died_idle_goes_to_another():
    with Workers(2) as pool:
        os.kill(pool.pids[0], signal.SIGKILL)
        time.sleep(0.5)
        job = pool.submit(_pid)
        (got,) = _collect(pool, 1)
        assert got is job and job.result() == pool.pids[1]


def test_jobs_fail_once_no_worker_is_left():
    with Workers(1) as pool:
        os.kill(pool.pids[0], signal.SIGKILL)
        time.sleep(0.5)
        first, second = pool.submit(_square, 2), pool.submit(_square, 3)
        got = _collect(pool, 2)
        assert set(got) == {first, second}
        for job in got:
            with pytest.raises(WorkerDiedError):
                job.result()


def test_the_process_exits_when_stopped_while_a_worker_sends_its_reply(tmp_path):
    """The hang this module exists for: a process that stops a worker half-way through its
    reply (ProcessPoolExecutor on Python 3.11 then waits for the rest at exit, forever)."""
    script = textwrap.dedent(f"""
        import time
        from tl_dsl.workers import Workers
        def _big(n):
            return b"x" * n
        pool = Workers(2)
        pool.submit(_big, {BIG})
        pool.submit(_big, {BIG})
        time.sleep(1.0)
        pool.close()
        print("closed", flush=True)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, cwd=root)
    assert r.returncode == 0 and r.stdout == "closed\n", r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_busy_workers_end_when_their_parent_is_killed():
    """A parent killed outright (SIGKILL, as the OOM killer does to a `tl serve` child) leaves
    no worker running on: each busy worker gets SIGKILL with it."""
    script = textwrap.dedent("""
        import time
        from tl_dsl.workers import Workers
        pool = Workers(2)
        pool.submit(time.sleep, 120)
        pool.submit(time.sleep, 120)
        print(*pool.pids, flush=True)
        time.sleep(120)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=root)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.5)  # both workers are in their jobs
    for pid in pids:
        os.kill(pid, 0)  # (alive)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in pids if _running(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _running(pid: int) -> bool:
    """pid exists and is not a zombie (an orphan is reaped by init; until then it is 'Z')."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
