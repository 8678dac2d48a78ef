"""`kernel_checker.pool`: derivations in forked kernel processes (`tl verify --jobs`). What one
process derives, the pool derives (the same claim, rule, assumptions and level); what one
process refuses, the pool refuses with the same rule, path and message, and the other leaves
still come back; a child that crashes or dies is a refusal, never a theorem or a hang; closing
the pool leaves no process behind."""

import copy
import multiprocessing
import time

import pytest
from rule_helpers import set_bound, side_value
from test_bab_batched import _acas, _no_workers_left, needs_acas

from kernel_checker import Context, KernelError, pool
from kernel_checker.theorem import Level
from tl_dsl import proof

pytestmark = needs_acas


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    """(graph, [(claim on a leaf's box, its certificate), ...]): ACAS Xu 1_2 prop_1's
    input-split leaves as the `--jobs` workers make them (most with intermediate entries)."""
    from oracles.bab import prove_input_split
    from tl_dsl import verify

    gp, graph, claim = _acas(tmp_path_factory.mktemp("pool"))
    box = claim.input_set.as_box()
    res = prove_input_split(gp, claim, 60, sample=False, roots=[(box.lo, box.hi)], depths=[0])
    assert res.status == "proved", res
    forest = res.certificate
    out = [(verify._on_box(claim, forest["boxes"][i]), cert)
           for i, cert in forest["leaves"].items()]
    assert len(out) > 10 and sum(bool(c.get("intermediate")) for _, c in out) > 5
    return graph, out


def _all(kp, n, timeout=60) -> dict:
    got, end = {}, time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got.update(kp.results(1))
    assert len(got) == n and kp.pending() == 0
    return got


def test_the_pool_derives_what_one_process_derives(leaves):
    graph, items = leaves
    with pool.Pool(Context([graph]), 2) as kp:
        for i, (claim, cert) in enumerate(items):
            kp.submit(i, claim, cert)
        got = _all(kp, len(items))
        assert kp.cpu_ns > 0
    _no_workers_left()
    for i, (claim, cert) in enumerate(items):
        one = proof.check(claim, cert, graph)
        thm = got[i]
        assert (thm.claim, thm.rule, thm.assumptions, thm.level) == (
            one.claim, one.rule, one.assumptions, one.level) == (
                claim, cert["rule"], frozenset(), Level.PROVED)


def test_the_pool_refuses_what_one_process_refuses(leaves):
    """One claimed upper bound of one leaf lowered by 1 (below the kernel's bound): the same
    refusal as in one process; every other leaf is still derived."""
    graph, items = leaves
    bad = next(i for i, (_, c) in enumerate(items) if c.get("intermediate"))
    cert = copy.deepcopy(items[bad][1])
    e = cert["intermediate"][0]
    k = next(k for k, v in enumerate(e["hi"]) if v is not None)
    set_bound(e, "hi", k, side_value(e, "hi", k) - 1)
    with pytest.raises(KernelError) as one:
        proof.check(items[bad][0], cert, graph)
    with pool.Pool(Context([graph]), 2) as kp:
        for i, (claim, c) in enumerate(items):
            kp.submit(i, claim, cert if i == bad else c)
        got = _all(kp, len(items))
    refusal = got.pop(bad)
    assert isinstance(refusal, KernelError)
    assert (refusal.rule, refusal.path, refusal.message) == (
        one.value.rule, one.value.path, one.value.message)
    assert "below the kernel's bound" in refusal.message
    assert not any(isinstance(t, KernelError) for t in got.values())


def test_the_pool_keeps_assumptions_and_levels(leaves):
    graph, items = leaves
    claim = items[0][0]
    cert = proof.assume("user.hypothesis", reason="stated by the test")
    with pool.Pool(Context([graph]), 1) as kp:
        kp.submit("a", claim, cert)
        thm = _all(kp, 1)["a"]
    one = proof.check(claim, cert, graph)
    assert (thm.claim, thm.rule, thm.assumptions, thm.level) == (
        one.claim, one.rule, one.assumptions, one.level)
    assert thm.level == Level.SHAPE_CHECKED and [a.name for a in thm.assumptions] == [
        "user.hypothesis"]


def test_derivations_with_premises_keep_their_rule_and_level(leaves):
    """A `weaken` over an `assume` premise (its level from the premise) and a `cases` over a
    leaf: the pool's theorems have the rule, assumptions and level of one process's."""
    graph, items = leaves
    claim, cert = items[0]
    certs = [proof.by_rule("weaken", premise=proof.premise(claim, proof.assume(
                 "user.hypothesis", reason="stated by the test"))),
             proof.by_rule("cases", premises=[proof.premise(claim, cert)])]
    with pool.Pool(Context([graph]), 2) as kp:
        for i, c in enumerate(certs):
            kp.submit(i, claim, c)
        got = _all(kp, 2)
    for i, c in enumerate(certs):
        one = proof.check(claim, c, graph)
        assert (got[i].claim, got[i].rule, got[i].assumptions, got[i].level) == (
            one.claim, one.rule, one.assumptions, one.level)
    assert (got[0].rule, got[0].level) == ("weaken", Level.SHAPE_CHECKED)
    assert (got[1].rule, got[1].level) == ("cases", Level.PROVED)


def _slow(*args):
    time.sleep(60)


def _crash(*args):
    raise RuntimeError("boom")


def test_a_crash_in_a_kernel_process_is_a_refusal(leaves, monkeypatch):
    graph, items = leaves
    monkeypatch.setattr(pool, "derive", _crash)  # (before the fork: the children run it)
    with pool.Pool(Context([graph]), 1) as kp:
        kp.submit(0, *items[0])
        thm = _all(kp, 1)[0]
    assert isinstance(thm, KernelError) and thm.rule == "pool" and "boom" in thm.message


def test_a_kernel_process_that_dies_is_a_refusal_and_close_kills_busy_ones(leaves, monkeypatch):
    graph, items = leaves
    monkeypatch.setattr(pool, "derive", _slow)
    kp = pool.Pool(Context([graph]), 2)
    kp.submit(0, *items[0])
    kp.submit(1, *items[1])
    kp.procs[0].kill()
    with pytest.raises(KernelError, match="ended without answering"):
        kp.results(10)
    t0 = time.monotonic()
    kp.close()  # the other child is still in its 60 s
    assert time.monotonic() - t0 < 5
    _no_workers_left()


def test_the_pool_sends_a_pair_only_to_an_idle_child(leaves, monkeypatch):
    """One pair per child at a time (a send never waits on a busy child); the rest wait in the
    parent."""
    graph, items = leaves
    monkeypatch.setattr(pool, "derive", _slow)
    with pool.Pool(Context([graph]), 2) as kp:
        for i, (claim, cert) in enumerate(items[:7]):
            kp.submit(i, claim, cert)
        assert [b[0] for b in kp.busy] == [0, 1] and [w[0] for w in kp.waiting] == [2, 3, 4, 5, 6]
        assert kp.pending() == 7 and kp.results(0) == []
    _no_workers_left()


def test_a_key_used_twice_gets_each_claims_own_theorem(leaves):
    """The parent pairs a reply with what it sent to that child, not with the key: two pairs
    under one key come back as two theorems, each for its own claim (or its own refusal)."""
    graph, items = leaves
    (c1, t1), (c2, t2) = items[:2]
    with pool.Pool(Context([graph]), 2) as kp:
        kp.submit("k", c1, t1)
        kp.submit("k", c2, {"rule": "bogus"})
        kp.submit("k", c2, t2)
        got = []
        end = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < end:
            got += kp.results(1)
    assert [k for k, _ in got] == ["k"] * 3
    thms = [t for _, t in got if not isinstance(t, KernelError)]
    refusals = [t for _, t in got if isinstance(t, KernelError)]
    assert sorted(str(t.claim.input_set) for t in thms) == sorted(
        str(c.input_set) for c in (c1, c2))
    assert len(refusals) == 1 and refusals[0].rule == "derive"


def test_a_send_to_a_dead_kernel_process_is_a_refusal(leaves):
    graph, items = leaves
    kp = pool.Pool(Context([graph]), 1)
    kp.procs[0].kill()
    kp.procs[0].join()
    with pytest.raises(KernelError, match="ended without answering"):
        kp.submit(0, *items[0])
    kp.close()
    _no_workers_left()


def test_a_long_refusal_is_cut_and_the_child_goes_on(leaves):
    """A certificate quoting a huge value gets a refusal of at most MAX_MESSAGE characters (so a
    reply never fills the pipe), and the same child derives the next pair."""
    graph, items = leaves
    with pool.Pool(Context([graph]), 1) as kp:
        kp.submit(0, items[0][0], {"rule": "x" * 1_000_000})
        kp.submit(1, *items[0])
        got = _all(kp, 2)
    assert isinstance(got[0], KernelError) and len(got[0].message) <= pool.MAX_MESSAGE
    assert got[1].rule == items[0][1]["rule"]


def _pool_then_wait(ctx, out):
    kp = pool.Pool(ctx, 2)
    out.send([p.pid for p in kp.procs])
    time.sleep(60)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_kernel_processes_end_when_their_parent_dies(leaves):
    """A parent killed outright (no close) closes its ends of the pipes: its kernel processes
    see the end and exit instead of waiting forever."""
    import os
    import signal

    graph, _ = leaves
    fork = multiprocessing.get_context("fork")
    mine, theirs = fork.Pipe()
    parent = fork.Process(target=_pool_then_wait, args=(Context([graph]), theirs))
    parent.start()
    pids = mine.recv()
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    end = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids), pids
