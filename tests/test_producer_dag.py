"""The torch bound producer (oracles/bounds_torch.py) on graphs that are DAGs: batchnorm,
maxpool2d and residual adds. Bounds are checked against sampling (an independent numpy forward),
against each other (CROWN vs IBP, alpha vs CROWN), and certificates against the format of
docs/crown_certificate.md; against the kernel's `crown` rule once it replays these ops."""

import json
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from kernel_checker import load_graph
from oracles import bounds_torch as bt
from oracles.numpy_forward import NumpyGraph
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

SAMPLES = 2000
EPS = (0.02, 0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _conv(g, rng, x, out_ch, bias=True):
    w = rng.normal(size=(out_ch, x.shape[0], 3, 3)) / np.sqrt(9 * x.shape[0])
    return g.conv2d(x, w, rng.normal(size=out_ch) * 0.1 if bias else None, padding=(1, 1))


def _bn(g, rng, x):
    c = x.shape[0]
    return g.batchnorm(x, rng.uniform(0.5, 1.5, c), rng.normal(size=c) * 0.1,
                       rng.normal(size=c) * 0.1, rng.uniform(0.5, 2.0, c), eps="1e-5")


def _head(g, rng, x, n_out=3):
    x = g.flatten(x)
    return g.linear(x, rng.normal(size=(n_out, x.shape[0])) / np.sqrt(x.shape[0]),
                    rng.normal(size=n_out) * 0.1)


def _conv_bn_pool(folder, seed):
    """conv -> batchnorm -> relu -> maxpool -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 8, 8])
    x = g.maxpool2d(g.relu(_bn(g, rng, _conv(g, rng, x, 4))), (2, 2))
    g.output(_head(g, rng, x))
    return g.save(str(folder))


def _residual(folder, seed):
    """x -> conv -> relu -> conv -> add(x) -> relu -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([2, 6, 6])
    h = _conv(g, rng, g.relu(_conv(g, rng, x, 2)), 2)
    g.output(_head(g, rng, g.relu(g.add(h, x))))
    return g.save(str(folder))


def _resnet(folder, seed):
    """conv-bn-relu, a residual block with batchnorms, a padded overlapping maxpool on the sum
    (its input is not a relu output: its bounds are certified), relu, flatten, linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([1, 8, 8])
    h = g.relu(_bn(g, rng, _conv(g, rng, x, 3, bias=False)))
    r = _bn(g, rng, _conv(g, rng, g.relu(_bn(g, rng, _conv(g, rng, h, 3))), 3))
    s = g.maxpool2d(g.add(r, h), (3, 3), stride=(2, 2), padding=(1, 1))
    g.output(_head(g, rng, g.relu(s)))
    return g.save(str(folder))


BUILDS = {"conv_bn_pool": _conv_bn_pool, "residual": _residual, "resnet": _resnet}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("producer_dag")
    return {name: build(root / name, seed) for seed, (name, build) in enumerate(BUILDS.items())}


def _claims(path):
    """`bounds` claims on L-inf balls (clamped to [0, 1]) around a fixed point, with their boxes
    as float arrays."""
    graph = load_graph(path)
    chain = bt.load_chain(path)
    x0 = np.random.default_rng(7).uniform(0.2, 0.8, size=chain.n_in)
    out = []
    for eps in EPS:
        claim = claims.bounds(graph, claims.ball(x0, eps, (0, 1)), [-99] * chain.n_out,
                              [99] * chain.n_out)
        box = claim.input_set.as_box()
        out.append((eps, claim, np.array([float(v) for v in box.lo]),
                    np.array([float(v) for v in box.hi])))
    return graph, chain, out


def _is_dyadic(text) -> bool:
    if isinstance(text, int):
        return True
    if isinstance(text, Fraction):
        return text.denominator & (text.denominator - 1) == 0
    m = re.fullmatch(r"-?(\d+)(?:/(\d+))?", text)
    if m is None:
        return False
    q = int(m.group(2) or 1)
    return q > 0 and q & (q - 1) == 0


def _numbers(cert):
    """Every number of a certificate's intermediate / alpha / upper fields."""
    def over(values, den):  # (integers over a den: the producers' form)
        return (v if den is None or v is None else Fraction(v, den) for v in values)

    for e in cert.get("intermediate", []):
        yield from over(e["lo"] + e["hi"], e.get("den"))
        for v in e.get("alpha", {}).values():
            yield from over(np.asarray(v["values"], dtype=object).reshape(-1), v["den"])
    for v in cert.get("alpha", {}).values():
        yield from over(np.asarray(v["values"], dtype=object).reshape(-1), v["den"])
    for v in cert.get("upper", {}).values():
        yield from v["slope"]
        yield from v["intercept"]


@pytest.mark.parametrize("name", list(BUILDS))
def test_bounds_enclose_samples_and_tighten(nets, name):
    """IBP, CROWN and alpha-CROWN enclose 2,000 sampled outputs; CROWN is no looser than IBP on
    average, alpha no looser than CROWN on any row."""
    path = nets[name]
    _, chain, cases = _claims(path)
    rng = np.random.default_rng(1)
    forward = NumpyGraph(path)
    for eps, claim, lo, hi in cases:
        xs = np.concatenate([rng.uniform(lo, hi, size=(SAMPLES - 200, lo.size)),
                             np.where(rng.integers(0, 2, size=(200, lo.size)) > 0, hi, lo)])
        y = forward.forward(xs.reshape((len(xs),) + chain.input_shape))
        with torch.no_grad():  # the producer's own forward agrees with the independent one
            y_t = chain.forward(chain.tensor(xs)).cpu().numpy()
        assert np.allclose(y_t, y, atol=1e-12), name
        values = y.reshape(len(xs), -1) @ bt.spec_of(claim, chain.n_out).c.T
        ibp = bt.ibp_bounds(path, claim)
        _, crown = bt.crown_certificate(path, claim, "crown")
        _, alpha = bt.crown_certificate(path, claim, "alpha", early_stop=False)
        for method, lower in (("ibp", ibp), ("crown", crown), ("alpha", alpha)):
            gap = values - lower[None, :]
            assert gap.min() >= -1e-9, (name, eps, method, gap.min())
        assert crown.mean() >= ibp.mean() - 1e-9, (name, eps, crown.mean(), ibp.mean())
        assert np.all(alpha >= crown - 1e-9), (name, eps, (alpha - crown).min())


@pytest.mark.parametrize("name", list(BUILDS))
def test_certificates_are_json_dyadic_and_in_node_order(nets, name):
    path = nets[name]
    graph, chain, cases = _claims(path)
    with open(path) as f:
        order = {n["id"]: i for i, n in enumerate(json.load(f)["nodes"])}
    ancestors = set(chain.ids)
    relus = {chain.layers[k].id for k in chain.relus}
    for _, claim, _, _ in cases:
        for method in ("crown", "alpha"):
            cert, _ = bt.crown_certificate(path, claim, method, early_stop=False)
            assert json.loads(json.dumps(cert)) == cert
            bad = [v for v in _numbers(cert) if not _is_dyadic(v)]
            assert not bad, (name, method, bad[:5])
            nodes = [e["node"] for e in cert.get("intermediate", [])]
            assert set(nodes) <= ancestors
            assert [order[n] for n in nodes] == sorted(order[n] for n in nodes), nodes
            assert len(set(nodes)) == len(nodes)
            for e in cert.get("intermediate", []):
                assert len(e["indices"]) == len(e["lo"]) == len(e["hi"]) > 0
                assert set(e.get("alpha", {})) <= relus
            assert set(cert.get("alpha", {})) <= relus


def test_maxpool_input_bounds_are_certified(nets):
    """In the ResNet-style graph the maxpool reads the residual sum: CROWN bounds of cells in
    windows whose relaxation is not exact are sent where tighter than IBP."""
    path = nets["resnet"]
    chain = bt.load_chain(path)
    pool = next(layer for layer in chain.layers if layer.op == "maxpool2d")
    pool_input = chain.ids[pool.src[0]]
    sent = set()
    for _, claim, _, _ in _claims(path)[2]:
        cert, _ = bt.crown_certificate(path, claim, "crown")
        sent |= {e["node"] for e in cert.get("intermediate", [])}
    assert pool_input in sent


def test_batch_chain_refuses_dag_ops(nets):
    for name in BUILDS:
        assert not bt.BatchChain.supports(bt.load_chain(nets[name]))


@pytest.mark.parametrize("op", ["mul", "abs"])
def test_unsupported_op_names_op_node_and_supported_set(tmp_path, op):
    g = GraphBuilder()
    x = g.input([4])
    h = g.linear(x, np.eye(4))
    h = g.mul(h, x) if op == "mul" else g.abs(h)
    g.output(g.linear(h, np.ones((1, 4))))
    path = g.save(str(tmp_path))
    node = f"{op}2"
    with pytest.raises(ValueError, match=rf"{op!r}.*{node!r}.*supported.*maxpool2d.*add"):
        bt.load_chain(path)


def _kernel_replays_dag_ops() -> bool:
    import kernel_checker.crown as kernel_crown

    with open(kernel_crown.__file__) as f:
        return "maxpool2d" in f.read()


@pytest.mark.skipif(not _kernel_replays_dag_ops(),
                    reason="the kernel's crown rule does not replay maxpool2d / add yet")
@pytest.mark.parametrize("name", list(BUILDS))
def test_kernel_accepts_certificates(nets, name):
    """Claims at the producer's float bounds loosened by 2^-10: the kernel re-derives them."""
    path = nets[name]
    graph, chain, cases = _claims(path)
    n = chain.n_out
    for _, claim, _, _ in cases:
        for method in ("crown", "alpha"):
            cert, low = bt.crown_certificate(path, claim, method, early_stop=False)
            lo = [str(np.floor((v - 2 ** -10) * 2 ** 20) / 2 ** 20) for v in low[:n]]
            hi = [str(np.ceil((-v + 2 ** -10) * 2 ** 20) / 2 ** 20) for v in low[n:]]
            tight = claims.bounds(graph, claim.input_set, lo, hi)
            proof.check(tight, cert, graph)
