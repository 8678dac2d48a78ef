"""gpu/: the plan, NATIVE_SOURCES, and (where a CUDA device is) the PyCUDA kernels against the
kernel: every audited binary32 output inside its enclosure, every interval forward holding the
kernel's exact interval, NaN kept. The CUDA tests run on the lent GPU machine; CI has none and
skips them (test_kernel_float32.py covers the CPU runtime and the rule)."""

import math
import os
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from flint import fmpq
from rule_helpers import build_mlp, build_residual, randn

import kernel_checker
from gpu import SUPPORTED, CudaRunner, cuda_status, native_sources, plan, runner
from gpu.audit import audit_rows
from gpu.runtime import HERE
from kernel_checker.semantics import Interval, evaluate
from tl_dsl.builder import GraphBuilder

CUDA, WHY = cuda_status()
needs_cuda = pytest.mark.skipif(not CUDA, reason=f"no CUDA device: {WHY}")
ONNX = [p for p in os.environ.get("TL_GPU_ONNX", "").split(os.pathsep) if p]
DIGITS_CNN = os.path.join(os.path.dirname(HERE), "tl_dsl", "data", "digits", "cnn", "graph.json")


def test_native_sources_name_a_kernel_of_their_source_for_every_op():
    srcs = native_sources()
    assert set(srcs) == set(SUPPORTED) - {"input"}
    for op, entry in srcs.items():
        if op in ("flatten", "reshape"):  # the same row-major numbers: nothing runs
            assert entry == {"source": None, "float32": None, "interval": None}
            continue
        with open(os.path.join(HERE, entry["source"])) as f:
            text = f.read()
        for kind in ("float32", "interval"):
            assert re.search(rf'extern "C" __global__ void {entry[kind]}\(', text), (op, kind)


def test_without_cuda_the_package_imports_and_says_why(tmp_path):
    if CUDA:
        pytest.skip("a CUDA device is here")
    graph = kernel_checker.load_graph(build_mlp().save(str(tmp_path)))
    with pytest.raises(Exception, match="no CUDA device: ") as info:
        runner(graph, "cuda")
    assert type(info.value).__name__ == "NoDeviceError"


def _nets(tmp_path) -> list:
    rng = np.random.default_rng(3)
    g = build_residual(3, (2, 5), 33, 7)
    c = GraphBuilder()
    x = c.input([3, 12, 12])
    h = c.relu(c.conv2d(x, randn(rng, 8, 3, 3, 3), randn(rng, 8, scale=0.1), stride=(2, 2),
                        padding=(1, 1)))
    h = c.relu(c.conv2d(h, randn(rng, 8, 2, 3, 3), None, dilation=(2, 1), groups=4))
    c.output(c.linear(c.flatten(h), randn(rng, 6, 8 * 2 * 4, scale=0.2), randn(rng, 6)))
    p = GraphBuilder()
    x = p.input([2, 10, 10])
    h = p.relu(p.conv2d(x, randn(rng, 4, 2, 3, 3), randn(rng, 4, scale=0.1), padding=(1, 1)))
    h = p.maxpool2d(h, (3, 3), (2, 2), padding=(1, 1), dilation=(1, 2))
    h = p.avgpool2d(h, (2, 2), (1, 1), padding=(1, 1), count_include_pad=False)
    p.output(p.avgpool2d(h, (3, 2), (2, 1), padding=(1, 0), count_include_pad=True))
    paths = [build_mlp(5, (20, 100, 100, 5)).save(str(tmp_path / "mlp")),
             g.save(str(tmp_path / "res")), c.save(str(tmp_path / "cnn")),
             p.save(str(tmp_path / "pooled")), DIGITS_CNN]
    for i, onnx_path in enumerate(ONNX):
        import onnx

        from oracles.onnx_import import import_onnx

        folder = tmp_path / f"onnx{i}"
        import_onnx(onnx.load(onnx_path), str(folder))
        paths.append(str(folder / "graph.json"))
    return [(p, kernel_checker.load_graph(p)) for p in paths]


@needs_cuda
def test_cuda_forward_agrees_with_the_kernel(tmp_path):
    for path, graph in _nets(tmp_path):
        with CudaRunner(plan(graph)) as run:
            xs = np.random.default_rng(1).uniform(-1, 1, (4096, run.plan.n_in)).astype(np.float32)
            ys = run.forward(xs)
            prov = run.provenance()
        rows = list(range(0, 4096, 128))
        _, _, thm = audit_rows(graph, graph.outputs[0], xs, ys, rows, "cuda", prov)
        assert {a.name for a in thm.assumptions} == {"runtime.cuda.outputs"}, path
        cpu = runner(graph, "cpu").forward(xs)
        assert np.allclose(ys, cpu, rtol=1e-4, atol=1e-4), path


@needs_cuda
def test_cuda_interval_forward_holds_the_kernels_exact_intervals(tmp_path):
    rng = np.random.default_rng(2)
    for _path, graph in _nets(tmp_path):
        with CudaRunner(plan(graph)) as run:
            n = run.plan.n_in
            centre = rng.uniform(-1, 1, (24, n)).astype(np.float32)
            rad = (rng.uniform(0, 1, (24, 1)) * np.logspace(-6, 0, 24)[:, None]).astype(np.float32)
            lo, hi = centre - rad, centre + rad
            glo, ghi = run.interval(lo, hi)
        shape = graph.the_input("t", "t").shape
        for r in range(0, 24, 3):
            nums = [Fraction(float(v)) for v in lo[r]] + [Fraction(float(v)) for v in hi[r]]
            den = math.lcm(*(v.denominator for v in nums))
            ints = [int(v * den) for v in nums]
            box = Interval(tuple(shape), ints[:n], ints[n:], den)
            exact = evaluate(graph, box, upto=graph.outputs[0])[graph.outputs[0]]
            for j in range(len(exact.lo)):
                a, b = exact.bounds(j)
                assert fmpq(*Fraction(float(glo[r, j])).as_integer_ratio()) <= a
                assert b <= fmpq(*Fraction(float(ghi[r, j])).as_integer_ratio())


@needs_cuda
def test_cuda_keeps_nan_and_the_audit_refuses_it(tmp_path):
    path, graph = _nets(tmp_path)[0]
    with CudaRunner(plan(graph)) as run:
        xs = np.zeros((3, 20), np.float32)
        xs[1, 4] = np.nan
        ys = run.forward(xs)
    assert np.isnan(ys[1]).all() and not np.isnan(ys[[0, 2]]).any()
    with pytest.raises(ValueError, match="not a number"):
        audit_rows(graph, graph.outputs[0], xs, ys, [1], "cuda", {})


@needs_cuda
def test_tl_run_on_cuda_writes_a_bundle_tl_check_rederives(tmp_path):
    path, _ = _nets(tmp_path)[1]
    bundle = tmp_path / "cuda_audit.json"
    r = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "run", path, "--device", "cuda",
                        "--random", "100000", "--audit", "16", "--bundle", str(bundle)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    thm, doc = kernel_checker.check_bundle(str(bundle))
    assert {a.name for a in thm.assumptions} == {"runtime.cuda.outputs"}
    assert doc["producer"]["runtime"] == "cuda" and doc["producer"]["sources_sha256"]
    assert doc["producer"]["device"] == WHY  # the device's name


@needs_cuda
def test_cuda_runs_batches_past_the_grid_limit_of_one_axis(tmp_path):
    """Over 65,535 x 16 rows (a grid's y limit): rows go on the grid's x axis."""
    path, graph = _nets(tmp_path)[1]
    with CudaRunner(plan(graph)) as run:
        xs = np.random.default_rng(4).uniform(-1, 1, (1_100_000, run.plan.n_in)).astype(
            np.float32)
        ys = run.forward(xs)
        prov = run.provenance()
    audit_rows(graph, graph.outputs[0], xs, ys, [0, 1_048_576, 1_099_999], "cuda", prov)


@needs_cuda
def test_cuda_batches_run_in_chunks_with_the_same_results(tmp_path, monkeypatch):
    from gpu import runtime

    _path, graph = _nets(tmp_path)[2]
    xs = np.random.default_rng(6).uniform(-1, 1, (3000, 3 * 12 * 12)).astype(np.float32)
    with CudaRunner(plan(graph)) as run:
        whole, box = run.forward(xs), run.interval(xs - 0.01, xs + 0.01)
        monkeypatch.setattr(runtime, "CHUNK_BYTES", 1 << 20)  # 1 MiB: several chunks
        assert np.array_equal(run.forward(xs), whole)
        lo, hi = run.interval(xs - 0.01, xs + 0.01)
    assert np.array_equal(lo, box[0]) and np.array_equal(hi, box[1])
