"""Producers: IBP / CROWN / alpha-CROWN in torch (oracles/bounds_torch.py), branch and bound
(oracles/bab.py) and PGD (oracles/pgd.py), checked against sampling and the kernel's `crown`,
`split` and `counterexample` rules."""

from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pytest
import torch
from rule_helpers import side_value

import kernel_checker.rules as kernel_rules
from kernel_checker import KernelError, load_graph
from oracles import bounds_torch as bt
from oracles.bab import prove_with_bab
from oracles.numpy_forward import NumpyGraph
from oracles.pgd import pgd_attack
from stdlib import robustness
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

needs_crown = pytest.mark.skipif(
    "crown" not in kernel_rules.RULES or "split" not in kernel_rules.RULES,
    reason="the kernel's crown/split rules are not registered yet")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These networks are tiny: torch's intra-op threads only add overhead (and stall badly on
    a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(folder, sizes, seed):
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([sizes[0]])
    for i in range(len(sizes) - 1):
        w = rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])
        x = g.linear(x, w, rng.normal(size=sizes[i + 1]) * 0.1)
        if i < len(sizes) - 2:
            x = g.relu(x)
    g.output(x)
    return g.save(str(folder))


def _cnn(folder, seed):
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 6, 6])
    x = g.conv2d(x, rng.normal(size=(2, 1, 3, 3)) / 3, rng.normal(size=2) * 0.1)
    x = g.relu(x)
    x = g.flatten(x)
    x = g.linear(x, rng.normal(size=(3, 32)) / 5, rng.normal(size=3) * 0.1)
    g.output(x)
    return g.save(str(folder))


def _cnn_ops(folder, seed):
    """Every supported op: strided/padded/dilated/grouped conv, avgpool, reshape, flatten."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([2, 8, 8])
    x = g.conv2d(x, rng.normal(size=(4, 1, 3, 3)) / 3, rng.normal(size=4) * 0.1, stride=(2, 1),
                 padding=(1, 2), dilation=(1, 2), groups=2)
    x = g.relu(x)
    x = g.avgpool2d(x, (2, 2), stride=(1, 2), padding=(1, 1), count_include_pad=False)
    x = g.relu(x)
    x = g.reshape(x, [4, -1])
    x = g.reshape(x, [-1])
    x = g.linear(x, rng.normal(size=(6, x.shape[0])) / 6, rng.normal(size=6) * 0.1)
    x = g.relu(x)
    x = g.avgpool2d(g.reshape(x, [1, 2, 3]), (1, 2), stride=(1, 1), padding=(0, 1))
    x = g.flatten(x)
    x = g.linear(x, rng.normal(size=(3, x.shape[0])), rng.normal(size=3) * 0.1)
    g.output(x)
    return g.save(str(folder))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("producers")
    out = {}
    for name, build in (("mlp", lambda f: _mlp(f, [4, 16, 16, 3], 0)),
                        ("cnn", lambda f: _cnn(f, 1)),
                        ("ops", lambda f: _cnn_ops(f, 2)),
                        ("wide", lambda f: _mlp(f, [12, 24, 24, 3], 3))):
        path = build(root / name)
        out[name] = (path, load_graph(path))
    return out


def _x0_label(path, seed):
    chain = bt.load_chain(path)
    x0 = np.random.default_rng(seed).uniform(0.2, 0.8, size=chain.n_in)
    with torch.no_grad():
        y = chain.forward(chain.tensor(x0)[None])[0].reshape(-1)
    return x0, int(torch.argmax(y))


def _accepts(claim, cert, graph) -> bool:
    try:
        proof.check(claim, cert, graph)
        return True
    except KernelError:
        return False


def test_torch_forward_matches_numpy(nets):
    for name in ("mlp", "cnn", "ops"):
        path, _ = nets[name]
        chain = bt.load_chain(path)
        xs = np.random.default_rng(0).uniform(-1, 1, size=(5,) + chain.input_shape)
        with torch.no_grad():
            y = chain.forward(chain.tensor(xs)).cpu().numpy()
        assert np.allclose(y, NumpyGraph(path).forward(xs), atol=1e-12), name


@pytest.mark.parametrize("name", ["mlp", "cnn", "ops"])
def test_crown_tighter_than_ibp_alpha_tighter_than_crown(nets, name):
    path, graph = nets[name]
    x0, label = _x0_label(path, 1)
    n_out = bt.load_chain(path).n_out
    for eps in (0.01, 0.05, 0.1):
        for claim in (robustness.robust(graph, x0, eps, label),
                      claims.bounds(graph, claims.ball(x0, eps, (0, 1)), [-9] * n_out,
                                    [9] * n_out)):
            ibp = bt.ibp_bounds(path, claim)
            _, crown = bt.crown_certificate(path, claim, "crown")
            _, alpha = bt.crown_certificate(path, claim, "alpha", early_stop=False)
            assert np.all(crown >= ibp - 1e-9), (eps, crown - ibp)
            assert np.all(alpha >= crown - 1e-9), (eps, alpha - crown)


@pytest.mark.parametrize("name", ["mlp", "cnn", "ops"])
def test_float_bounds_are_sound_on_samples(nets, name):
    path, graph = nets[name]
    chain = bt.load_chain(path)
    x0, label = _x0_label(path, 2)
    rng = np.random.default_rng(0)
    for eps in (0.05, 0.3):
        lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
        claim = claims.bounds(graph, claims.ball(x0, eps, (0, 1)), [-9] * chain.n_out,
                              [9] * chain.n_out)
        xs = np.concatenate([rng.uniform(lo, hi, size=(1000, lo.size)),
                             np.where(rng.integers(0, 2, size=(200, lo.size)) > 0, hi, lo)])
        with torch.no_grad():
            y = chain.forward(chain.tensor(xs)).reshape(len(xs), -1).cpu().numpy()
        spec = bt.spec_of(claim, chain.n_out)
        values = y @ spec.c.T
        for method in ("crown", "alpha"):
            _, lower = bt.crown_certificate(path, claim, method, early_stop=False)
            assert np.all(values >= lower[None, :] - 1e-9), (method, eps)
        assert np.all(values >= bt.ibp_bounds(path, claim)[None, :] - 1e-9)


def _node_values(chain, xs):
    """Float values of every chain node for a batch (node id -> [B, n])."""
    out = {}
    with torch.no_grad():
        x = chain.tensor(xs).reshape((len(xs),) + chain.input_shape)
        for layer in chain.layers:
            x = layer.forward(x)
            out[layer.id] = x.reshape(len(xs), -1).cpu().numpy()
    return out


@pytest.mark.parametrize("name", ["mlp", "ops"])
def test_domain_bounds_are_sound_on_samples(nets, name):
    """Input-box overrides and relu phase constraints: the bounds hold at every sample of the
    box that satisfies the phases."""
    path, graph = nets[name]
    chain = bt.load_chain(path)
    x0, _ = _x0_label(path, 6)
    claim = claims.bounds(graph, claims.ball(x0, 0.3, (0, 1)), [-9] * chain.n_out,
                          [9] * chain.n_out)
    lo, hi = np.clip(x0 - 0.3, 0, 1), np.clip(x0 + 0.3, 0, 1)
    lo = lo.copy()
    lo[0] = (lo[0] + hi[0]) / 2  # an input piece
    rng = np.random.default_rng(1)
    xs = rng.uniform(lo, hi, size=(4000, lo.size))
    vals = _node_values(chain, xs)
    pre = [chain.ids[k] for k in chain.relus if k > 0]
    pick = rng.choice(vals[pre[0]].shape[1], size=2, replace=False)
    phases = {pre[0]: {int(pick[0]): "active", int(pick[1]): "inactive"}}
    keep = (vals[pre[0]][:, pick[0]] >= 0) & (vals[pre[0]][:, pick[1]] <= 0)
    assert keep.sum() > 20
    spec = bt.spec_of(claim, chain.n_out)
    values = vals[chain.ids[-1]][keep] @ spec.c.T
    for method in ("crown", "alpha"):
        _, lower = bt.crown_certificate(path, claim, method, {"lo": lo, "hi": hi, "relu": phases},
                                        early_stop=False)
        assert np.all(values >= lower[None, :] - 1e-9), method


@needs_crown
def test_hand_built_split_certificates(nets):
    """Children made with `domain` close the kernel's input and relu splits."""
    path, graph = nets["mlp"]
    chain = bt.load_chain(path)
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    box = claim.input_set.as_box()
    lo = np.array([float(v) for v in box.lo])
    hi = np.array([float(v) for v in box.hi])
    mid = float((box.lo[0] + box.hi[0]) / 2)  # a dyadic: sent exactly
    halves = [{"lo": lo, "hi": np.concatenate([[mid], hi[1:]])},
              {"lo": np.concatenate([[mid], lo[1:]]), "hi": hi}]
    made = [bt.crown_certificate(path, claim, "alpha", dom) for dom in halves]
    m = str(claims.to_rational(mid))
    pieces = [[str(box.lo[0]), m], [m, str(box.hi[0])]]
    cert = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": pieces},
            "children": [c for c, _ in made]}
    lows = [v for _, v in made]
    spec = bt.spec_of(claim, chain.n_out)
    assert _accepts(claim, cert, graph) == all(spec.holds(v) for v in lows)
    pre = chain.ids[chain.relus[1]]
    res, _ = bt.bounds_for_claim(path, claim, "crown")
    j = int(torch.argmax(res.relax[chain.relus[1]].unstable))
    kids = [bt.crown_certificate(path, claim, "alpha", {"relu": {pre: {j: ph}}})
            for ph in ("inactive", "active")]
    cert = {"rule": "split", "split": {"kind": "relu", "node": pre, "index": j},
            "children": [c for c, _ in kids]}
    assert _accepts(claim, cert, graph) == all(spec.holds(v) for _, v in kids)
    wrong = {"rule": "split", "split": {"kind": "relu", "node": pre, "index": j},
             "children": [c for c, _ in reversed(kids)]}
    if not all(spec.holds(v) for _, v in kids):
        assert not _accepts(claim, wrong, graph)


def _crown_decided_neuron(path, graph, x0):
    """(ball, pre-activation id, index, phase CROWN proves) for a neuron IBP leaves unstable."""
    n_out = bt.load_chain(path).n_out
    for eps in (0.05, 0.1, 0.2, 0.3):
        ball = claims.ball(x0, eps, (0, 1))
        res, _ = bt.bounds_for_claim(path, claims.bounds(graph, ball, [-9] * n_out, [9] * n_out))
        for e in res.entries:
            for t, j in enumerate(e["indices"]):
                if side_value(e, "lo", t) > 0:
                    return ball, e["node"], j, "active"
                if side_value(e, "hi", t) < 0:
                    return ball, e["node"], j, "inactive"
    raise AssertionError("no neuron decided by CROWN alone")


@needs_crown
@pytest.mark.parametrize("name", ["mlp", "wide"])
def test_vacuous_relu_child(nets, name):
    """Forcing the phase CROWN excludes empties the domain: the float bounds are +inf and the
    kernel accepts that child's certificate in a split whose claim is tight on the other."""
    path, graph = nets[name]
    n_out = bt.load_chain(path).n_out
    x0, _ = _x0_label(path, 2)
    ball, node, j, phase = _crown_decided_neuron(path, graph, x0)
    other = "inactive" if phase == "active" else "active"
    probe = claims.bounds(graph, ball, [-9] * n_out, [9] * n_out)
    _, low = bt.crown_certificate(path, probe, "crown", {"relu": {node: {j: phase}}})
    tight = claims.bounds(graph, ball, list(low[:n_out] - 1e-6), list(-low[n_out:] + 1e-6))
    for method in ("crown", "alpha"):
        kids = {ph: bt.crown_certificate(path, tight, method, {"relu": {node: {j: ph}}})
                for ph in ("inactive", "active")}
        assert np.all(np.isinf(kids[other][1]))
        assert bt.spec_of(tight, n_out).holds(kids[phase][1])
        cert = {"rule": "split", "split": {"kind": "relu", "node": node, "index": j},
                "children": [kids["inactive"][0], kids["active"][0]]}
        proof.check(tight, cert, graph)


def test_unsupported_op_is_refused(tmp_path):
    g = GraphBuilder()
    x = g.input([1, 4, 4])
    g.output(g.flatten(g.abs(x)))
    path = g.save(str(tmp_path))
    with pytest.raises(ValueError, match=r"'abs'.*abs1.*supported.*linear.*maxpool2d"):
        bt.load_chain(path)


def _false_claim(path, graph):
    """Robustness at radius 0.9 around the point of seed 1: false (a counterexample exists)."""
    x0, label = _x0_label(path, 1)
    return robustness.robust(graph, x0, 0.9, label)


def _check_counterexample(claim, point, graph):
    """The kernel accepts the float point, clamped into the input set, as a counterexample."""
    point = claims.clamp_into(point, claim.input_set.as_box())
    proof.check(claims.counterexample(claim, point), proof.counterexample_cert(), graph)


def _scan_crown_not_ibp(path, graph, seed):
    """A robustness claim CROWN proves and IBP does not (scanning the radius)."""
    x0, label = _x0_label(path, seed)
    for eps in np.arange(0.005, 0.5, 0.005):
        claim = robustness.robust(graph, x0, float(eps), label)
        spec = bt.spec_of(claim, bt.load_chain(path).n_out)
        _, crown = bt.crown_certificate(path, claim, "crown")
        if spec.holds(crown) and not spec.holds(bt.ibp_bounds(path, claim)):
            return claim
    raise AssertionError("no radius where CROWN proves and IBP does not")


@needs_crown
@pytest.mark.parametrize("name", ["mlp", "cnn", "ops"])
def test_kernel_accepts_crown_and_alpha_where_ibp_fails(nets, name):
    path, graph = nets[name]
    claim = _scan_crown_not_ibp(path, graph, 3)
    assert not _accepts(claim, proof.ibp(), graph)
    for method in ("crown", "alpha"):
        cert, _ = bt.crown_certificate(path, claim, method)
        proof.check(claim, cert, graph)


@needs_crown
@pytest.mark.parametrize("name", ["mlp", "cnn", "ops"])
def test_float_bounds_track_the_kernel(nets, name):
    """The kernel's exact bounds agree with the float ones: rhs just below the float bound is
    accepted, rhs a little above is refused (linear_bound rows = the spec rows)."""
    path, graph = nets[name]
    chain = bt.load_chain(path)
    x0, label = _x0_label(path, 4)
    rows = np.random.default_rng(5).normal(size=(3, chain.n_out))
    for method in ("crown", "alpha"):
        probe = claims.linear_bound(graph, claims.ball(x0, 0.2, (0, 1)), rows, [-100] * 3)
        _, lower = bt.crown_certificate(path, probe, method, early_stop=False)
        below = claims.linear_bound(graph, probe.input_set, rows, list(lower - 1e-6))
        cert, _ = bt.crown_certificate(path, below, method, early_stop=False)
        proof.check(below, cert, graph)
        above = claims.linear_bound(graph, probe.input_set, rows, list(lower + 1e-4))
        cert, _ = bt.crown_certificate(path, above, method, early_stop=False)
        assert not _accepts(above, cert, graph)


def _scan_alpha_fails(path, graph, seed, step):
    """A robustness claim alpha-CROWN clearly cannot prove and a quick PGD cannot break."""
    x0, label = _x0_label(path, seed)
    chain = bt.load_chain(path)
    for eps in np.arange(step, 1.0, step):
        claim = robustness.robust(graph, x0, float(eps), label)
        _, alpha = bt.crown_certificate(path, claim, "alpha")
        if bt.spec_of(claim, chain.n_out).margin(alpha) < -0.01:
            assert pgd_attack(path, claim, steps=30, restarts=3) is None
            return claim
    raise AssertionError("alpha-CROWN proves every radius")


@needs_crown
@pytest.mark.parametrize("name,strategy", [("mlp", "input"), ("wide", "relu"), ("wide", "auto")])
def test_bab_proves_what_alpha_cannot(nets, name, strategy):
    path, graph = nets[name]
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    cert, _ = bt.crown_certificate(path, claim, "alpha")
    assert not _accepts(claim, cert, graph)
    seen = []
    result = prove_with_bab(path, claim, timeout_s=20, strategy=strategy,
                            progress=lambda stats: seen.append(stats["domains"]))
    assert result.status == "proved", result.stats
    assert seen == list(range(1, result.stats["domains"] + 1))  # one call per domain taken
    assert result.certificate["rule"] == "split"
    assert result.stats["leaves"] >= 2
    kind = "input" if strategy == "input" else "relu"
    assert result.stats[f"{kind}_splits"] >= 1
    proof.check(claim, result.certificate, graph)


@needs_crown
def test_bab_finds_counterexample(nets):
    path, graph = nets["mlp"]
    claim = _false_claim(path, graph)
    result = prove_with_bab(path, claim, timeout_s=10, attack=False)
    assert result.status == "counterexample"
    _check_counterexample(claim, result.point, graph)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_pgd_counterexample_accepted_by_kernel(nets, name):
    path, graph = nets[name]
    x0, label = _x0_label(path, 1)
    claim = robustness.robust(graph, x0, 0.9, label)
    point = pgd_attack(path, claim)
    assert point is not None
    assert point.shape == bt.load_chain(path).input_shape
    cex = claims.counterexample(claim, claims.clamp_into(point, claim.input_set.as_box()))
    proof.check(cex, proof.counterexample_cert(), graph)
    small = robustness.robust(graph, x0, 0.001, label)
    assert pgd_attack(path, small, steps=10, restarts=2) is None


# --------------------------------------------------------------------------------------------
# Batched bounds and batched input-split branch and bound


def _boxes(chain, x0, eps, count, seed):
    """`count` sub-boxes of the clamped ball around x0 (floats)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    a = rng.uniform(lo, hi, size=(count, lo.size))
    b = rng.uniform(lo, hi, size=(count, lo.size))
    return np.minimum(a, b), np.maximum(a, b)


class _Batched(NamedTuple):
    path: str
    claim: object
    chain: bt.TorchChain
    batch: bt.BatchChain
    spec: bt.Spec
    lo: np.ndarray
    hi: np.ndarray


def _batched_mlp(nets, label_seed: int, eps: float, count: int, box_seed: int) -> _Batched:
    """The mlp as a chain and a BatchChain, its robustness claim at radius eps around the point
    of `label_seed`, the claim's spec, and `count` sub-boxes of that ball (seed `box_seed`)."""
    path, graph = nets["mlp"]
    chain = bt.load_chain(path)
    x0, label = _x0_label(path, label_seed)
    claim = robustness.robust(graph, x0, eps, label)
    lo, hi = _boxes(chain, x0, eps, count, box_seed)
    return _Batched(path, claim, chain, bt.BatchChain(chain), bt.spec_of(claim, chain.n_out),
                    lo, hi)


def test_batched_bounds_match_per_domain_crown(nets):
    path, claim, chain, bc, spec, lo, hi = _batched_mlp(nets, 1, 0.2, 6, 0)
    r = bc.bounds(chain.tensor(lo), chain.tensor(hi), chain.tensor(spec.c))
    for i in range(len(lo)):
        res, _ = bt.bounds_for_claim(path, claim, "crown", {"lo": lo[i], "hi": hi[i]})
        assert np.allclose(r.lower[i].cpu().numpy(), res.lower, atol=1e-9)
        ibp = bt.ibp_bounds(path, claim, {"lo": lo[i], "hi": hi[i]})
        assert np.allclose(r.ibp[i].cpu().numpy(), ibp, atol=1e-9)
        assert np.all(r.plain[i].cpu().numpy() <= res.lower + 1e-9)


def test_batched_bounds_and_alpha_are_sound_on_samples(nets):
    _, _, chain, bc, spec, lo, hi = _batched_mlp(nets, 2, 0.3, 8, 1)
    c = chain.tensor(spec.c)
    r = bc.bounds(chain.tensor(lo), chain.tensor(hi), c)
    thr = chain.tensor(spec.thr)

    def objective(lower):
        return sum((lower - thr)[:, a:b].amax(dim=1) for a, b in spec.groups)

    ra, _, _ = bc.optimise(chain.tensor(lo), chain.tensor(hi), c, objective,
                           lambda lw: torch.full((lw.shape[0],), -1.0, dtype=lw.dtype,
                                                 device=lw.device),
                           iterations=8, lr=0.5)
    rng = np.random.default_rng(3)
    for i in range(len(lo)):
        xs = rng.uniform(lo[i], hi[i], size=(500, lo.shape[1]))
        with torch.no_grad():
            y = chain.forward(chain.tensor(xs)).reshape(len(xs), -1).cpu().numpy()
        vals = y @ spec.c.T
        for bound in (r.ibp, r.plain, r.lower, ra.lower):
            assert np.all(vals >= bound[i].cpu().numpy()[None, :] - 1e-9)


def test_outward_floats_contain_the_exact_box():
    from oracles.bab import _outward_floats

    lo = [claims.to_rational("-0.298552812"), claims.to_rational("1/3")]
    hi = [claims.to_rational("0.009549297"), claims.to_rational("2/3")]
    lo_f, hi_f = _outward_floats(lo, hi)
    for a, b, fa, fb in zip(lo, hi, lo_f, hi_f):
        assert claims.to_rational(float(fa)) <= a and claims.to_rational(float(fb)) >= b


@needs_crown
def test_input_split_proves_what_alpha_cannot(nets):
    from oracles.bab import prove_input_split

    path, graph = nets["mlp"]
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    for alpha_iters in (0, 6):
        result = prove_input_split(path, claim, timeout_s=30, alpha_iters=alpha_iters)
        assert result.status == "proved", result.stats
        assert result.certificate["rule"] == "split"
        assert result.stats["leaves"] >= 2 and result.stats["input_splits"] >= 1
        proof.check(claim, result.certificate, graph)


@needs_crown
def test_input_split_leaves_are_cheap(nets):
    """Leaves IBP proves are `ibp`, leaves CROWN proves without intermediate bounds have no
    `intermediate`, and no leaf carries per-row intermediate slopes."""
    from oracles.bab import prove_input_split

    path, graph = nets["mlp"]
    x0, label = _x0_label(path, 1)
    claim = robustness.robust(graph, x0, 0.02, label)
    res = prove_input_split(path, claim, timeout_s=30)
    assert res.status == "proved"
    assert res.certificate == {"rule": "ibp"}
    proof.check(claim, res.certificate, graph)
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    res = prove_input_split(path, claim, timeout_s=30)
    stack, kinds = [res.certificate], set()
    while stack:
        cert = stack.pop()
        if cert["rule"] == "split":
            stack.extend(cert["children"])
            continue
        kinds.add(cert["rule"])
        for entry in cert.get("intermediate", []):
            for value in entry.get("alpha", {}).values():
                assert not isinstance(value[0], list)  # shared, not per row
    assert kinds <= {"ibp", "crown"}
    s = res.stats
    assert s["leaves"] == s["leaf_ibp"] + s["leaf_crown"] + s["leaf_inter"] + s["leaf_alpha"]


@needs_crown
def test_input_split_uneven_cuts_cover_the_parent(nets):
    """Cuts at a quarter of the width: the kernel checks the pieces cover each parent."""
    from oracles.bab import prove_input_split

    path, graph = nets["mlp"]
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    seen = []
    res = prove_input_split(path, claim, timeout_s=30, fracs=(0.25,), alpha_iters=0,
                            progress=lambda stats: seen.append(stats["domains"]))
    assert res.status == "proved"
    proof.check(claim, res.certificate, graph)
    # the live display hears of every batch: counts rise to the final one
    assert len(seen) > 1 and seen == sorted(seen) and seen[-1] == res.stats["domains"]


@needs_crown
def test_input_split_finds_counterexample(nets):
    from oracles.bab import prove_input_split

    path, graph = nets["mlp"]
    claim = _false_claim(path, graph)
    for attack in (True, False):
        result = prove_input_split(path, claim, timeout_s=10, attack=attack)
        assert result.status == "counterexample"
        _check_counterexample(claim, result.point, graph)


def test_sample_attack(nets):
    from oracles.pgd import sample_attack

    path, graph = nets["mlp"]
    x0, label = _x0_label(path, 1)
    claim = robustness.robust(graph, x0, 0.9, label)
    point = sample_attack(path, claim, samples=200)
    assert point is not None
    cex = claims.counterexample(claim, claims.clamp_into(point, claim.input_set.as_box()))
    proof.check(cex, proof.counterexample_cert(), graph)
    assert sample_attack(path, robustness.robust(graph, x0, 0.001, label), samples=200) is None


def test_sample_attack_looks_on_the_box_faces(tmp_path):
    """y = relu(x0 - 0.999) + relu(x1 - 0.999) >= 0.0019 holds only where x0 and x1 are both
    within 1e-4 of 1 (a corner of [0, 1]^3): no uniform sample lands there, and the gradient
    of a point with one of the two relus off cannot find it; a point on both upper faces is a
    counterexample, which the kernel checks."""
    from oracles.pgd import sample_attack

    g = GraphBuilder()
    x = g.input([3])
    h = g.relu(g.linear(x, np.array([[1.0, 0, 0], [0, 1.0, 0]]), np.array([-0.999, -0.999])))
    g.output(g.linear(h, np.array([[1.0, 1.0]]), np.array([0.0])))
    path = g.save(str(tmp_path / "corner"))
    graph = load_graph(path)
    box = claims.box([0, 0, 0], [1, 1, 1])
    claim = claims.unsat(graph, box, [claims.polytope([[-1]], [Fraction(-19, 10000)])])
    assert sample_attack(path, claim, on_face=0.0) is None
    point = sample_attack(path, claim)
    assert point is not None
    _check_counterexample(claim, point, graph)


def test_pgd_batched_starts(nets):
    path, graph = nets["mlp"]
    x0, label = _x0_label(path, 1)
    claim = robustness.robust(graph, x0, 0.9, label)
    assert pgd_attack(path, claim, steps=10, restarts=1, starts=16) is not None
    small = robustness.robust(graph, x0, 0.001, label)
    assert pgd_attack(path, small, steps=10, restarts=1, starts=16) is None


@needs_crown
def test_produce_routes_few_inputs_to_input_split(nets):
    from tl_dsl.verify import produce

    path, graph = nets["mlp"]
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    d = produce(path, claim.to_json(), 30)
    assert d.status == "unsat" and d.method == "input-split" and d.leaves >= 2
    proof.check(claim, d.certificate, graph)
    x0, label = _x0_label(path, 1)
    d = produce(path, robustness.robust(graph, x0, 0.9, label).to_json(), 30)
    assert d.status == "sat"
    path, graph = nets["wide"]  # 12 inputs: the general path
    claim = _scan_alpha_fails(path, graph, 1, 0.01)
    d = produce(path, claim.to_json(), 30)
    assert d.method != "input-split"


def test_batched_bounds_with_phases_match_per_domain_crown(nets):
    """Relu phase constraints in the batched bounds: as compute_bounds (and the kernel) apply
    them, including domains they empty."""
    _, _, chain, bc, spec, lo, hi = _batched_mlp(nets, 3, 0.3, 24, 2)
    c = chain.tensor(spec.c)
    base = bc.bounds(chain.tensor(lo), chain.tensor(hi), c)
    k = chain.relus[1]  # the second relu: its input is a linear node
    rng = np.random.default_rng(4)
    sign = torch.zeros(len(lo), chain.layers[k].n_out, dtype=torch.int8, device=chain.device)
    doms = []
    for i in range(len(lo)):
        j = int(rng.integers(chain.layers[k].n_out))
        s = 1 if i % 2 else -1
        sign[i, j] = s
        doms.append({chain.ids[k]: {j: "active" if s > 0 else "inactive"}})
    r = bc.bounds(chain.tensor(lo), chain.tensor(hi), c, phases={k: sign})
    for i in range(len(lo)):
        res = bt.compute_bounds(chain, lo[i], hi[i], spec.c, "crown", doms[i])
        assert res.vacuous == bool(r.vacuous[i])
        if not res.vacuous:
            assert np.allclose(r.lower[i].cpu().numpy(), res.lower, atol=1e-9)
    assert not bool(base.vacuous.any())
