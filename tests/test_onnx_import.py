"""ONNX -> tl.graph.v1: the VNN-COMP 2021 networks import (every ACAS Xu network, MNIST-FC),
attributes are read exactly, and anything unsupported fails closed naming the node, the op and
the supported set."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

import kernel_checker
from kernel_checker.crown import ancestors

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from oracles.onnx_import import ONNX_OPS, import_onnx  # noqa: E402
from oracles.torch_export import ExportError  # noqa: E402

VNN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                   "benchmarks", "vnncomp2021")
ACAS = sorted(glob.glob(os.path.join(VNN, "acasxu", "*.onnx")))
MNIST = sorted(glob.glob(os.path.join(VNN, "mnistfc", "*.onnx")))


def model(nodes, in_shape, inits=(), opset=13, out_shape=None):
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("X", 1, list(in_shape))],
        [helper.make_tensor_value_info("Y", 1, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def node(op, ins, out="Y", **attrs):
    return helper.make_node(op, ins, [out], name=f"n_{op}", **attrs)


def refusal(m, tmp_path) -> ExportError:
    with pytest.raises(ExportError) as info:
        import_onnx(m, str(tmp_path))
    assert not os.path.exists(tmp_path / "graph.json")
    return info.value


def test_every_acas_xu_network_imports_as_a_crown_chain(tmp_path):
    assert len(ACAS) == 45, f"expected the 45 ACAS Xu networks under {VNN}"
    for path in ACAS:
        r = import_onnx(path, str(tmp_path / os.path.basename(path)))
        g = r.graph
        assert [n.shape for n in g.input_nodes] == [(1, 1, 5)]  # ONNX [1, 1, 1, 5] minus batch
        assert g.by_id[g.outputs[0]].shape == (5,)
        chain = ancestors(g, g.outputs[0], "crown")  # the zero mean image folded away
        assert [n.op for n in chain] == ["flatten"] + ["linear", "relu"] * 6 + ["linear"]
        assert all(n.attrs["bias"] for n in chain if n.op == "linear")
        assert g.parameter_count() == 13305


def test_mnist_fc_imports_with_initializer_names_and_dtypes(tmp_path):
    assert MNIST, f"no MNIST-FC networks under {VNN}"
    for path in MNIST:
        r = import_onnx(path, str(tmp_path / os.path.basename(path)))
        g = r.graph
        assert [n.shape for n in g.input_nodes] == [(784, 1)]
        assert g.by_id[g.outputs[0]].shape == (10,)
        manifest = json.load(open(r.manifest_path))
        init = {i.name: i for i in onnx.load(path).graph.initializer}
        assert {t["name"] for t in manifest["tensors"]} == set(init)
        assert {t["dtype"] for t in manifest["tensors"]} == {"F32"}
        assert kernel_checker.load_graph(r.graph_path).sha256 == g.sha256


def test_unsupported_op_fails_closed_with_node_op_and_supported_set(tmp_path):
    err = refusal(model([node("MatMul", ["X", "W"], "H"), node("LogSoftmax", ["H"])], (1, 3),
                        [("W", np.ones((3, 3), np.float32))]), tmp_path)
    assert err.node == "n_LogSoftmax" and err.op == "LogSoftmax"
    for op in ONNX_OPS:
        assert op in str(err)


def test_every_unsupported_node_is_listed(tmp_path):
    m = model([node("Sin", ["X"], "A"), node("Expand", ["A", "S"])], (1, 3),
              [("S", np.int64([1, 3]))])
    err = refusal(m, tmp_path)
    assert err.op == "Sin" and "'Expand'" in str(err)


def test_custom_domain_is_refused(tmp_path):
    n = helper.make_node("Relu", ["X"], ["Y"], name="custom", domain="com.example")
    err = refusal(model([n], (1, 3)), tmp_path)
    assert err.op == "com.example.Relu"


@pytest.mark.parametrize("nodes, shape, inits, message", [
    ([node("Conv", ["X", "W"], pads=[1, 1, 0, 0])], (1, 1, 4, 4),
     [("W", np.ones((1, 1, 3, 3), np.float32))], "asymmetric"),
    ([node("Conv", ["X", "W"], auto_pad="SAME_UPPER")], (1, 1, 4, 4),
     [("W", np.ones((1, 1, 2, 2), np.float32))], "asymmetric"),
    ([node("MaxPool", ["X"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], (1, 1, 5, 5),
     [], "ceil_mode"),
    ([node("AveragePool", ["X"], kernel_shape=[2, 2], dilations=[2, 2])], (1, 1, 5, 5), [],
     "dilations"),
    ([node("Gemm", ["X", "W"])], (1, 2, 3), [("W", np.ones((3, 2), np.float32))],
     "expected A of rank 2, found shape [1, 2, 3]"),
    ([node("Div", ["X", "X"])], (1, 3), [], "computed tensor"),
    ([node("Relu", ["X"], alpha=0.1)], (1, 3), [], "unsupported attributes ['alpha']"),
    ([node("Softmax", ["X"], axis=1)], (1, 2, 3), [], "only the last axis"),
    ([node("Cast", ["C"], "D", to=1), node("Add", ["X", "D"])], (1, 1),
     [("C", np.float64([0.1]))], "changes a value"),
    ([node("Div", ["X", "Z"])], (1, 2), [("Z", np.float32([1, 0]))], "zero"),
])
def test_attributes_the_ir_cannot_express_are_refused(nodes, shape, inits, message, tmp_path):
    opset = 11 if "Softmax" in str(nodes) else 13
    err = refusal(model(nodes, shape, inits, opset=opset), tmp_path)
    assert message in str(err)


def test_conv_pads_are_read_begin_then_end(tmp_path):
    """ONNX pads are [h_begin, w_begin, h_end, w_end]: [1, 2, 1, 2] is the IR's [1, 2]."""
    m = model([node("Conv", ["X", "W"], pads=[1, 2, 1, 2], strides=[1, 2], dilations=[2, 1],
                    group=2)], (1, 2, 6, 6), [("W", np.ones((4, 1, 3, 3), np.float32))])
    g = import_onnx(m, str(tmp_path)).graph
    conv = next(n for n in g.nodes if n.op == "conv2d")
    assert conv.attrs["padding"] == [1, 2] and conv.attrs["stride"] == [1, 2]
    assert conv.attrs["dilation"] == [2, 1] and conv.attrs["groups"] == 2
    assert conv.shape == (4, 4, 4)


def test_average_pool_keeps_the_onnx_default_count_include_pad_0(tmp_path):
    m = model([node("AveragePool", ["X"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
              (1, 1, 4, 4))
    g = import_onnx(m, str(tmp_path)).graph
    assert next(n for n in g.nodes if n.op == "avgpool2d").attrs["count_include_pad"] is False


def test_division_by_a_constant_is_multiplication_by_the_exact_reciprocal(tmp_path):
    m = model([node("Div", ["X", "C"])], (1, 2), [("C", np.float32([3, 0.5]))])
    r = import_onnx(m, str(tmp_path))
    doc = json.load(open(r.graph_path))
    const = next(n for n in doc["nodes"] if n["op"] == "const")
    assert const["attrs"]["value"] == {"shape": [2], "values": ["1/3", "2"]}
    assert [n["op"] for n in doc["nodes"]] == ["input", "const", "mul"]


def test_gemm_alpha_folds_into_the_weight_only_when_exact(tmp_path):
    w = np.float32([[1.5, -2.0], [0.25, 3.0]])
    m = model([node("Gemm", ["X", "W", "B"], alpha=0.5, beta=2.0, transB=1)], (1, 2),
              [("W", w), ("B", np.float32([1, 2]))])
    r = import_onnx(m, str(tmp_path / "a"))
    g = r.graph
    assert [n.op for n in g.nodes] == ["input", "linear"]
    lin = g.nodes[1]
    assert [float(v) for v in g.param(lin.attrs["weight"]).values()] == [0.75, -1, 0.125, 1.5]
    assert [int(v) for v in g.param(lin.attrs["bias"]).values()] == [2, 4]
    w64 = (np.arange(4, dtype=np.float64).reshape(2, 2) + 1) / 3
    graph = helper.make_graph(
        [node("Gemm", ["X", "W"], alpha=0.1)], "t",
        [helper.make_tensor_value_info("X", 11, [1, 2])],
        [helper.make_tensor_value_info("Y", 11, None)], [numpy_helper.from_array(w64, "W")])
    m64 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = import_onnx(m64, str(tmp_path / "b")).graph
    assert [n.op for n in g.nodes] == ["input", "linear", "const", "mul"]


def test_torch_style_shape_arithmetic_folds(tmp_path):
    m = model([node("Shape", ["X"], "s"), node("Gather", ["s", "i"], "b", axis=0),
               node("Unsqueeze", ["b", "ax"], "bu"), node("Concat", ["bu", "m"], "shp", axis=0),
               node("Reshape", ["X", "shp"])], (1, 2, 3),
              [("i", np.int64(0)), ("ax", np.int64([0])), ("m", np.int64([-1]))])
    g = import_onnx(m, str(tmp_path)).graph
    assert [(n.op, n.shape) for n in g.nodes] == [("input", (2, 3)), ("flatten", (6,))]


def test_symbolic_batch_dimension_is_batch_one(tmp_path):
    graph = helper.make_graph([node("Relu", ["X"])], "t",
                              [helper.make_tensor_value_info("X", 1, ["N", 3])],
                              [helper.make_tensor_value_info("Y", 1, ["N", 3])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert [n.shape for n in import_onnx(m, str(tmp_path)).graph.input_nodes] == [(3,)]


@pytest.mark.parametrize("alias", [
    ("Identity", ["m"], []),
    ("Reshape", ["m", "S"], [("S", np.int64([1, 2]))]),  # to the shape it has: no node
    ("Add", ["m", "Z"], [("Z", np.float32([0, 0]))]),  # + 0: no node either
], ids=["identity", "noop-reshape", "add-zeros"])
def test_a_bias_is_fused_only_into_a_linear_no_other_node_reads(alias, kit, tmp_path):
    """y = relu(m + b) + m with m = X W: an op that hands m on under another name made the
    Add's input look read once, and the bias was fused into m for its other reader too (a
    review found `tl verify` answering unsat where onnxruntime reaches the unsafe set)."""
    op, ins, extra = alias
    w, b = np.float32([[1, 2], [3, -1]]), np.float32([1, -2])
    m = model([node("MatMul", ["X", "W"], "m"), helper.make_node(op, ins, ["z"], name="alias"),
               node("Add", ["z", "B"], "a"), node("Relu", ["a"], "r"), node("Add", ["r", "m"])],
              (1, 2), [("W", w), ("B", b), *extra], out_shape=[1, 2])
    r = import_onnx(m, str(tmp_path))
    x = np.float32([0.5, -1.0])
    mm = x.astype(np.float64) @ w
    want = np.maximum(mm + b, 0) + mm
    got = kit.point(r.graph, [float(v) for v in x])[r.graph.outputs[0]]
    assert [float(v) for v in got] == list(want)


@pytest.mark.parametrize("axis, shape", [(-1, [2, 3]), (-2, [1, 6]), (1, [2, 3]), (0, [1, 6])])
def test_flatten_reads_a_negative_axis_from_the_rank(axis, shape, tmp_path):
    """ONNX Flatten's axis -k counts from the rank (axis -1 of a [2, 3] tensor is 1): the
    importer read it modulo rank + 1, so -1 flattened [2, 3] to [6, 1] (a review found a wrong
    unsat through a following Concat)."""
    m = model([node("Flatten", ["X"], axis=axis)], (2, 3), out_shape=shape)
    g = import_onnx(m, str(tmp_path / "ok"), batch=False).graph
    assert list(g.by_id[g.outputs[0]].shape) == shape
    with pytest.raises(ExportError) as info:
        import_onnx(model([node("Flatten", ["X"], axis=-3)], (2, 3)), str(tmp_path / "no"),
                    batch=False)
    assert "axis -3 out of range for rank 2" in str(info.value)
