"""The kernel's `agreement` rule (kernel_checker/float32.py): binary32 outputs of real runtimes
(numpy's BLAS, sums in shuffled orders) are accepted; outputs beyond the enclosure, a runtime that
computed with one weight bit flipped, inputs and weights that are no binary32 values, ops without
an enclosure and sums that may overflow are refused, naming the field."""

import dataclasses
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from rule_helpers import build_mlp, build_residual, randn, rejected

import kernel_checker
from gpu import CpuRunner, UnsupportedGraphError, plan
from gpu.audit import agreement, audit_rows
from kernel_checker import float32
from kernel_checker.claims import Box, Claim
from kernel_checker.errors import KernelError
from tl_dsl import proof
from tl_dsl.builder import GraphBuilder

CERT = {"rule": "agreement", "provenance": {"runtime": "cpu", "test": "yes"}}


def q(v) -> fmpq:
    p, d = Fraction(float(v)).as_integer_ratio()
    return fmpq(p, d)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp")
    path = build_mlp(7, (12, 40, 40, 4)).save(str(folder))
    return path, kernel_checker.load_graph(path)


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    """flatten, linear, relu, a residual add, linear: every op the rule encloses."""
    path = build_residual(3, (2, 3), 6, 3).save(str(tmp_path_factory.mktemp("res")))
    return path, kernel_checker.load_graph(path)


def _claim(graph, x, y, runtime="cpu", node=None):
    return agreement(graph, node or graph.outputs[0], np.asarray(x), np.asarray(y), runtime)


def _shuffled_forward(graph, x: np.ndarray, rng) -> np.ndarray:
    """The graph in binary32, one scalar operation at a time, each sum in a random order."""
    p = plan(graph)
    vals = {p.input_id: x.astype(np.float32).reshape(-1)}
    for s in p.steps[1:]:
        a = vals[s.inputs[0]]
        if s.op == "linear":
            out = []
            for j in range(s.weight.shape[0]):
                terms = [s.weight[j, i] * a[i] for i in range(len(a))]  # binary32 products
                if s.bias is not None:
                    terms.append(s.bias[j])
                rng.shuffle(terms)
                acc = np.float32(0)
                for t in terms:
                    acc = np.float32(acc + t)
                out.append(acc)
            vals[s.id] = np.array(out, dtype=np.float32)
        elif s.op == "relu":
            vals[s.id] = np.maximum(a, np.float32(0))
        elif s.op == "add":
            vals[s.id] = (a + vals[s.inputs[1]]).astype(np.float32)
        else:
            vals[s.id] = a
    return vals[p.output_id]


@pytest.mark.parametrize("net", ["mlp", "residual"])
def test_blas_and_shuffled_sums_agree(net, request):
    path, graph = request.getfixturevalue(net)
    run = CpuRunner(plan(graph))
    rng = np.random.default_rng(11)
    xs = rng.uniform(-2, 2, (6, run.plan.n_in)).astype(np.float32)
    ys = run.forward(xs)
    for x, y in zip(xs, ys):
        thm = proof.check(_claim(graph, x, y), CERT, graph)
        assert thm.level == kernel_checker.Level.REPLAY_CHECKED
        assert {a.name for a in thm.assumptions} == {"runtime.cpu.outputs"}
        proof.check(_claim(graph, x, _shuffled_forward(graph, x, rng)), CERT, graph)


def test_the_enclosure_is_tight_enough_to_matter(mlp):
    """Its width stays below 1e-3 relative on this net, and contains the exact real value."""
    _, graph = mlp
    x = np.random.default_rng(2).uniform(-1, 1, 12).astype(np.float32)
    enc = float32.enclosure(graph, tuple(q(v) for v in x), graph.outputs[0])
    exact = kernel_checker.semantics.evaluate(
        graph, kernel_checker.rules.point_interval(tuple(q(v) for v in x), (12,)))
    ex = exact[graph.outputs[0]]
    for j in range(len(enc.lo)):
        lo, hi = enc.bounds(j)
        v = ex.bounds(j)[0]
        assert lo <= v <= hi
        assert hi - lo < fmpq(1, 1000) * (1 + abs(v))


def test_the_last_binary32_inside_is_accepted_and_the_next_refused(mlp):
    """Values are binary32 (a runtime's); the largest one below the enclosure's upper end is
    accepted, the next one up refused, and a value that is no binary32 refused as such."""
    _, graph = mlp
    x = np.linspace(-1, 1, 12).astype(np.float32)
    claim = _claim(graph, x, CpuRunner(plan(graph)).forward(x)[0])
    hi = float32.enclosure(graph, claim.point, graph.outputs[0]).bounds(2)[1]
    f = np.float32(float(hi))
    while q(f) > hi:
        f = np.nextafter(f, np.float32(-np.inf))
    while q(np.nextafter(f, np.float32(np.inf))) <= hi:
        f = np.nextafter(f, np.float32(np.inf))
    y = list(claim.values)
    y[2] = q(f)
    proof.check(dataclasses.replace(claim, values=tuple(y)), CERT, graph)
    y[2] = q(np.nextafter(f, np.float32(np.inf)))
    rejected(dataclasses.replace(claim, values=tuple(y)), CERT, graph, rule="agreement",
             path="claim.values[2]", contains="outside the enclosure")
    y[2] = q(f) - fmpq(1, 2**60)
    rejected(dataclasses.replace(claim, values=tuple(y)), CERT, graph, rule="agreement",
             path="claim.values[2]", contains="expected a binary32 value")


def test_a_runtime_with_one_weight_bit_flipped_is_refused(mlp):
    """The top mantissa bit of one last-layer weight, on a neuron the inputs make active."""
    _, graph = mlp
    run = CpuRunner(plan(graph))
    xs = np.random.default_rng(5).uniform(-1, 1, (8, 12)).astype(np.float32)
    h = xs
    for s in run.plan.steps[1:-1]:  # the last hidden layer's outputs
        h = np.maximum(h @ s.weight.T + s.bias, 0) if s.op == "linear" else h
    step = run.plan.steps[-1]
    w = step.weight.copy()
    w.view(np.uint32)[0, int(np.argmax(h.min(axis=0)))] ^= np.uint32(1 << 22)
    step.weight = w
    ys = run.forward(xs)
    with pytest.raises(KernelError) as info:
        audit_rows(graph, graph.outputs[0], xs, ys, list(range(8)), "cpu", {"tool": "t"})
    assert info.value.rule == "agreement" and "outside the enclosure" in info.value.message
    assert info.value.path == "certificate.premises[0].claim.values[0]"


def test_inputs_and_weights_must_be_binary32(mlp, tmp_path):
    _, graph = mlp
    x = np.zeros(12, np.float32)
    claim = _claim(graph, x, CpuRunner(plan(graph)).forward(x)[0])
    point = (fmpq(1, 3),) + claim.point[1:]
    bad = dataclasses.replace(claim, point=point, input_set=Box(point, point))
    rejected(bad, CERT, graph, rule="agreement", path="claim.point[0]", contains="binary32")
    g = GraphBuilder()
    h = g.input([2])
    g.output(g.linear(h, np.array([[1 / 3, 1.0]]), None, name="fc"))  # float64: no binary32
    gpath = g.save(str(tmp_path / "third"))
    third = kernel_checker.load_graph(gpath)
    c = _claim(third, np.zeros(2, np.float32), np.zeros(1, np.float32))
    rejected(c, CERT, third, rule="agreement", path="graph.fc.weight[0]", contains="binary32")
    with pytest.raises(UnsupportedGraphError, match=r"node 'fc': weight\[0\] = 6004799503160661/"):
        plan(third)


def test_ops_without_an_enclosure_are_refused_naming_node_op_and_set(tmp_path):
    g = GraphBuilder()
    h = g.input([3])
    g.output(g.tanh(g.linear(h, np.eye(3, dtype=np.float32), None)) if hasattr(g, "tanh")
             else g.abs(g.linear(h, np.eye(3, dtype=np.float32), None)))
    graph = kernel_checker.load_graph(g.save(str(tmp_path / "t")))
    c = _claim(graph, np.zeros(3, np.float32), np.zeros(3, np.float32))
    err = rejected(c, CERT, graph, rule="agreement", path=f"graph.{graph.outputs[0]}")
    assert "has no binary32 enclosure" in err.message and "linear, conv2d, relu" in err.message
    with pytest.raises(UnsupportedGraphError, match="supported: input, linear, conv2d, relu"):
        plan(graph)


def test_sums_that_may_overflow_are_refused(tmp_path):
    g = GraphBuilder()
    h = g.input([2])
    g.output(g.linear(h, np.full((1, 2), 2.0**120, np.float32), None, name="big"))
    graph = kernel_checker.load_graph(g.save(str(tmp_path / "big")))
    c = _claim(graph, np.array([64.0, 64.0], np.float32), np.array([2.0**127], np.float32))
    rejected(c, CERT, graph, rule="agreement", path="graph.big", contains="may overflow")
    small = _claim(graph, np.array([1.0, 1.0], np.float32), np.array([2.0**121], np.float32))
    proof.check(small, CERT, graph)


def test_claim_forms_are_checked(mlp):
    _, graph = mlp
    x = np.zeros(12, np.float32)
    c = _claim(graph, x, CpuRunner(plan(graph)).forward(x)[0])
    for bad, path, frag in [
            (dataclasses.replace(c, semantics="real"), "claim.semantics", "'float32'"),
            (dataclasses.replace(c, runtime="tpu"), "claim.runtime", "['cuda', 'cpu']"),
            (dataclasses.replace(c, values=c.values[:3]), "claim.values", "expected 4"),
            (dataclasses.replace(c, input_set=Box(c.point, tuple(v + 1 for v in c.point))),
             "claim.input_set", "[point, point]")]:
        rejected(bad, CERT, graph, rule="claim", path=path, contains=frag)
    bounds = Claim(kind="bounds", graph=graph.sha256, semantics="float32",
                   input_set=c.input_set, node=c.node, lo=(fmpq(0),) * 4, hi=(fmpq(1),) * 4)
    rejected(bounds, {"rule": "ibp"}, graph, rule="claim", path="claim.semantics",
             contains="expected 'real'")
    for cert in ({"rule": "ibp"}, {"rule": "crown"}):
        with pytest.raises(KernelError, match="cannot conclude a agreement claim"):
            proof.check(c, cert, graph)
    rejected(c, {"rule": "agreement"}, graph, rule="agreement", path="certificate",
             contains="provenance")
    rejected(c, {"rule": "agreement", "provenance": {"x": 1}}, graph, rule="agreement",
             path="certificate.provenance", contains="strings")
    rejected(c, {"rule": "agreement", "provenance": {"runtime": "cuda"}}, graph,
             rule="agreement", path="certificate.provenance.runtime", contains="'cpu'")
    doc = c.to_json()
    assert kernel_checker.parse_claim(doc) == c
    doc["runtime"] = None
    with pytest.raises(KernelError, match="runtime"):
        kernel_checker.parse_claim(doc)
    weaken = proof.by_rule("weaken", premise=proof.premise(c, CERT))
    with pytest.raises(KernelError, match="does not imply"):
        proof.check(c, weaken, graph)


def test_tl_run_bundle_rechecks_and_a_tampered_value_is_refused(mlp, tmp_path):
    path, graph = mlp
    bundle = tmp_path / "audit.json"
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "run", path, "--device", "cpu",
                        "--random", "200", "--audit", "5", "--bundle", str(bundle)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "audit: 5 output(s) inside the kernel's binary32 enclosure" in r.stdout
    thm, _ = kernel_checker.check_bundle(str(bundle))
    assert thm.claim.kind == "all" and len(thm.claim.parts) == 5
    assert {a.name for a in thm.assumptions} == {"runtime.cpu.outputs"}
    doc = json.loads(bundle.read_text())
    part = doc["claim"]["parts"][3]
    v = Fraction(part["values"][1]) + Fraction(1, 100)
    part["values"][1] = f"{v.numerator}/{v.denominator}"
    doc["certificate"]["premises"][3]["claim"] = part
    doc["artifacts"]["spec"]["sha256"] = kernel_checker.parse_claim(doc["claim"]).spec_sha256()
    bundle.write_text(json.dumps(doc))
    with pytest.raises(KernelError) as info:
        kernel_checker.check_bundle(str(bundle))
    assert (info.value.rule, info.value.path) == (
        "agreement", "certificate.premises[3].claim.values[1]")


def test_tl_run_cuda_without_a_device_says_so(mlp):
    from gpu import cuda_status

    if cuda_status()[0]:
        pytest.skip("a CUDA device is here")
    path, _ = mlp
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "run", path, "--device", "cuda",
                        "--random", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "tl run: no CUDA device:" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """conv2d with padding, stride, dilation and groups, relu, a second conv, flatten, linear."""
    rng = np.random.default_rng(9)
    g = GraphBuilder()
    x = g.input([4, 9, 9])
    h = g.relu(g.conv2d(x, randn(rng, 6, 2, 3, 3), randn(rng, 6, scale=0.1), stride=(2, 1),
                        padding=(1, 2), dilation=(1, 2), groups=2))
    h = g.relu(g.conv2d(h, randn(rng, 3, 6, 2, 2), None))
    g.output(g.linear(g.flatten(h), randn(rng, 5, 3 * 4 * 8, scale=0.2), randn(rng, 5)))
    path = g.save(str(tmp_path_factory.mktemp("cnn")))
    return path, kernel_checker.load_graph(path)


def test_conv_nets_agree_and_a_flipped_conv_weight_is_refused(cnn):
    import torch

    from gpu.runtime import _conv_cpu

    path, graph = cnn
    run = CpuRunner(plan(graph))
    xs = np.random.default_rng(1).uniform(-1, 1, (5, 4 * 9 * 9)).astype(np.float32)
    conv = run.plan.steps[1]
    ref = torch.nn.functional.conv2d(torch.from_numpy(xs.reshape(5, 4, 9, 9)),
                                     torch.from_numpy(conv.weight), torch.from_numpy(conv.bias),
                                     stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    assert np.allclose(ref.numpy().reshape(5, -1), _conv_cpu(xs, conv), atol=1e-5)
    ys = run.forward(xs)
    _, _, thm = audit_rows(graph, graph.outputs[0], xs, ys, list(range(5)), "cpu", {"r": "t"})
    assert thm.claim.kind == "all"
    w = conv.weight.copy()
    w.view(np.uint32)[0, 0, 1, 1] ^= np.uint32(1 << 22)  # the top mantissa bit of one weight
    conv.weight = w
    with pytest.raises(KernelError, match="outside the enclosure"):
        audit_rows(graph, graph.outputs[0], xs, run.forward(xs), list(range(5)), "cpu", {})


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """maxpool (padding, dilation), conv, average pools with and without the padding counted."""
    rng = np.random.default_rng(12)
    g = GraphBuilder()
    x = g.input([2, 10, 10])
    h = g.relu(g.conv2d(x, randn(rng, 4, 2, 3, 3), randn(rng, 4, scale=0.1), padding=(1, 1)))
    h = g.maxpool2d(h, (3, 3), (2, 2), padding=(1, 1), dilation=(1, 2))
    h = g.avgpool2d(h, (2, 2), (1, 1), padding=(1, 1), count_include_pad=False)
    h = g.avgpool2d(h, (3, 2), (2, 1), padding=(1, 0), count_include_pad=True)
    g.output(h)
    path = g.save(str(tmp_path_factory.mktemp("pooled")))
    return path, kernel_checker.load_graph(path)


def test_pools_match_torch_agree_and_a_wrong_count_is_refused(pooled):
    import torch

    path, graph = pooled
    run = CpuRunner(plan(graph))
    xs = np.random.default_rng(2).uniform(-1, 1, (6, 200)).astype(np.float32)
    conv, av1 = run.plan.steps[1], run.plan.steps[4]
    h = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(xs.reshape(6, 2, 10, 10)),
                                              torch.from_numpy(conv.weight),
                                              torch.from_numpy(conv.bias), padding=1))
    h = torch.nn.functional.max_pool2d(h, 3, 2, 1, dilation=(1, 2))
    h = torch.nn.functional.avg_pool2d(h, 2, 1, 1, count_include_pad=False)
    h = torch.nn.functional.avg_pool2d(h, (3, 2), (2, 1), (1, 0), count_include_pad=True)
    ys = run.forward(xs)
    assert np.allclose(h.numpy().reshape(6, -1), ys, atol=1e-6)
    audit_rows(graph, graph.outputs[0], xs, ys, list(range(6)), "cpu", {})
    av1.geometry = (*av1.geometry[:-1], True)  # the padding counted where it must not be
    with pytest.raises(KernelError, match="outside the enclosure"):
        audit_rows(graph, graph.outputs[0], xs, run.forward(xs), list(range(6)), "cpu", {})


def test_the_shipped_digits_cnn_runs_and_agrees():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tl_dsl",
                        "data", "digits", "cnn", "graph.json")
    graph = kernel_checker.load_graph(path)
    run = CpuRunner(plan(graph))
    xs = np.random.default_rng(3).uniform(0, 1, (4, run.plan.n_in)).astype(np.float32)
    audit_rows(graph, graph.outputs[0], xs, run.forward(xs), list(range(4)), "cpu", {})
    one = run.forward(xs[:1])  # one input in the graph's shape, with or without its batch axis
    for shaped in (xs[0].reshape(8, 8), xs[0].reshape(1, 8, 8), xs[0].reshape(1, 1, 8, 8)):
        assert np.array_equal(run.forward(shaped), one)


def test_tl_run_takes_an_onnx_model_imported_beside_the_bundle(tmp_path):
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(8)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["H"], transB=1),
         helper.make_node("Relu", ["H"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", 1, [1, 4])],
        [helper.make_tensor_value_info("Y", 1, [1, 3])],
        [numpy_helper.from_array(randn(rng, 3, 4), "W"),
         numpy_helper.from_array(randn(rng, 3), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    bundle = tmp_path / "out" / "audit.json"
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "run", str(path), "--device", "cpu",
                        "--random", "100", "--audit", "3", "--bundle", str(bundle)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "audit.model" / "graph.json").is_file()
    thm, _ = kernel_checker.check_bundle(str(bundle))
    assert len(thm.claim.parts) == 3


def test_an_average_pool_scaled_term_by_term_in_the_subnormals_agrees(tmp_path):
    """Nine values 5 2^-149 averaged as a depthwise conv would (each times fl(1/9), then summed)
    give 9 2^-149: each underflowing product errs by up to 2^-150 (a review); the enclosure takes
    c 2^-149 for them, as the affine nodes do. Sum-then-divide gives 5 2^-149."""
    g = GraphBuilder()
    g.output(g.avgpool2d(g.input([1, 3, 3]), (3, 3)))
    graph = kernel_checker.load_graph(g.save(str(tmp_path)))
    x = np.full(9, 5 * 2.0**-149, np.float32)
    third = np.float32(1) / np.float32(9)
    scaled = np.float32(0)
    for v in x:
        scaled = np.float32(scaled + v * third)
    assert scaled == np.float32(9 * 2.0**-149)
    for y in (scaled, np.float32(5 * 2.0**-149)):
        proof.check(_claim(graph, x, np.array([y], np.float32)), CERT, graph)
