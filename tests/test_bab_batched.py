"""Batched relu-split branch and bound (oracles/bab.py `prove_relu_batched`; beta-CROWN leaves):
it proves a robustness claim that needs relu splits, the kernel accepts the certificate, the
split tree stays within the kernel's depth limit; a false claim gets a counterexample or no
proof, never a certificate the kernel accepts."""

from fractions import Fraction

import pytest
import torch

from kernel_checker import KernelError
from kernel_checker.crown import MAX_SPLIT_DEPTH
from oracles import bounds_torch as bt
from oracles.bab import prove_relu_batched
from stdlib import robustness
from tl_dsl import proof

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net(mlp12):
    """A 12-24-24-3 relu MLP and its input point's label."""
    return mlp12


def _depth(cert) -> int:
    """The split tree's depth (iterative)."""
    out, stack = 0, [(cert, 0)]
    while stack:
        node, d = stack.pop()
        out = max(out, d)
        if node.get("rule") == "split":
            stack.extend((child, d + 1) for child in node["children"])
    return out


def _splits(cert) -> list:
    out, stack = [], [cert]
    while stack:
        node = stack.pop()
        if node.get("rule") == "split":
            out.append(node["split"])
            stack.extend(node["children"])
    return out


def test_batched_relu_bab_proves_a_claim_that_needs_splits(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    root, _ = bt.crown_certificate(built.path, claim, "alpha", chain=chain)
    with pytest.raises(KernelError):  # alpha-CROWN on the box alone does not prove it
        proof.check(claim, root, built.graph)
    res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain)
    assert res.status == "proved", res.stats
    assert res.stats["relu_splits"] >= 1 and res.stats["batches"] >= 2
    assert all(s["kind"] == "relu" for s in _splits(res.certificate))
    assert _depth(res.certificate) <= MAX_SPLIT_DEPTH
    thm = proof.check(claim, res.certificate, built.graph)
    assert thm.rule == "split"


def test_batched_relu_bab_leaves_carry_multipliers(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.22, label)
    res = prove_relu_batched(built.path, claim, timeout_s=60, batch=4, chain=chain)
    stack, betas = [res.certificate], []
    while stack:
        node = stack.pop()
        if node.get("rule") == "split":
            stack.extend(node["children"])
        else:
            betas += node.get("beta", [])
    assert betas and all(Fraction(v) >= 0 for b in betas for v in b["values"])


def test_batched_relu_bab_never_proves_a_false_claim(net):
    built, chain, x0, label = net
    claim = robustness.robust(built.graph, x0, 0.6, label)
    for attack in (True, False):
        res = prove_relu_batched(built.path, claim, timeout_s=20, batch=4, chain=chain,
                                 attack=attack)
        assert res.status in ("counterexample", "unknown", "timeout"), res.stats
        if res.status == "counterexample":
            y = chain.forward(chain.tensor(res.point.reshape(-1))[None])[0]
            assert int(torch.argmax(y)) != label
