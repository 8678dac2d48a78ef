"""Graph well-formedness and shape inference (kernel_checker.graph): a graph that is not
well-formed is refused at parse time with the node, the field and what was expected."""

import hashlib
import json
import os

import numpy as np
import pytest

from kernel_checker.errors import KernelError
from kernel_checker.graph import load_graph
from kernel_checker.ops import OPS
from kernel_checker.semantics import evaluate
from tl_dsl.builder import GraphBuilder


def nd(nid, op, inputs=(), out_shape=(), **attrs) -> dict:
    return {"id": nid, "op": op, "inputs": list(inputs), "shape": list(out_shape),
            "attrs": attrs}


def gdoc(*nodes, outputs=None) -> dict:
    return {"format": "tl.graph.v1", "nodes": list(nodes),
            "outputs": outputs if outputs is not None else [nodes[-1]["id"]]}


X4 = nd("x", "input", out_shape=[4])
IMG = nd("x", "input", out_shape=[4, 5, 5])


def refused(kit, doc, params=None, *, rule="graph", path=None, contains=()):
    with pytest.raises(KernelError) as info:
        kit.parse(doc, params)
    err = info.value
    assert err.rule == rule, err
    if path is not None:
        assert err.path == path, err
    for fragment in (contains if isinstance(contains, tuple) else (contains,)):
        assert fragment in err.message, err
    return err


def f32(*shape, seed=0):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    w[w == 0] = 1
    return w


# ---------------------------------------------------------------- structure

def test_unknown_op_lists_supported_ops(kit):
    err = refused(kit, gdoc(X4, nd("h", "conv3d", ["x"], [4])), path="nodes[1] (id 'h').op",
                  contains="unknown op 'conv3d'; supported ops:")
    for op in OPS:
        assert repr(op) in err.message


def test_duplicate_id(kit):
    refused(kit, gdoc(X4, nd("h", "relu", ["x"], [4]), nd("h", "neg", ["x"], [4])),
            path="nodes[2] (id 'h').id", contains="duplicate node id 'h'")
    refused(kit, gdoc(X4, nd("x", "relu", ["x"], [4])), path="nodes[1] (id 'x').id",
            contains="duplicate")


def test_self_cycle(kit):
    refused(kit, gdoc(X4, nd("h", "relu", ["h"], [4])),
            path="nodes[1] (id 'h', op relu).inputs[0]",
            contains="input 'h' refers to itself (a cycle)")


def test_cycle_through_a_later_node(kit):
    refused(kit, gdoc(X4, nd("a", "add", ["x", "b"], [4]), nd("b", "relu", ["a"], [4])),
            path="nodes[1] (id 'a', op add).inputs[1]",
            contains="input 'b' refers to a later node")


def test_input_to_nowhere(kit):
    refused(kit, gdoc(X4, nd("h", "relu", ["ghost"], [4])),
            path="nodes[1] (id 'h', op relu).inputs[0]", contains="refers to no node")


def test_cycle_fixture_file(kit):
    with pytest.raises(KernelError) as info:
        load_graph(os.path.join(kit.fixtures, "cyclic_graph.json"))
    assert info.value.rule == "graph"
    assert info.value.path == "nodes[1] (id 'a', op relu).inputs[0]"
    assert "a later node" in info.value.message


@pytest.mark.parametrize("node, path, fragment", [
    (nd("h", "relu", ["x", "x"], [4]), "nodes[1] (id 'h', op relu).inputs",
     "expected 1 inputs, found 2"),
    (nd("h", "add", ["x"], [4]), "nodes[1] (id 'h', op add).inputs", "expected 2 inputs, found 1"),
    (nd("h", "concat", [], [4], axis=0), "nodes[1] (id 'h', op concat).inputs",
     "expected at least 1 inputs, found 0"),
    (nd("h", "input", ["x"], [4]), "nodes[1] (id 'h', op input).inputs",
     "expected 0 inputs, found 1"),
    (nd("h", "matmul", ["x", "x", "x"], [4]), "nodes[1] (id 'h', op matmul).inputs",
     "expected 2 inputs, found 3"),
])
def test_wrong_arity(kit, node, path, fragment):
    refused(kit, gdoc(X4, node), path=path, contains=fragment)


def test_unknown_attribute(kit):
    refused(kit, gdoc(X4, nd("h", "relu", ["x"], [4], alpha=1)),
            path="nodes[1] (id 'h', op relu).attrs",
            contains="unknown attributes ['alpha']; relu takes []")
    err = refused(kit, gdoc(IMG, nd("p", "maxpool2d", ["x"], [4, 2, 2], kernel=[2, 2],
                                    ceil_mode=True)), path="nodes[1] (id 'p', op maxpool2d).attrs")
    assert "ceil_mode" in err.message and "'kernel'" in err.message


@pytest.mark.parametrize("node, attr", [
    (nd("h", "reshape", ["x"], [2, 2]), "shape"),
    (nd("h", "transpose", ["x"], [4]), "perm"),
    (nd("h", "concat", ["x"], [4]), "axis"),
    (nd("h", "linear", ["x"], [4]), "weight"),
    (nd("h", "const", [], [4]), "value"),
])
def test_missing_required_attribute(kit, node, attr):
    refused(kit, gdoc(X4, node), path=f"nodes[1] (id 'h', op {node['op']}).attrs.{attr}",
            contains="required attribute missing")


def test_missing_required_pool_kernel(kit):
    refused(kit, gdoc(IMG, nd("p", "avgpool2d", ["x"], [4, 2, 2])),
            path="nodes[1] (id 'p', op avgpool2d).attrs.kernel", contains="required")


def test_declared_shape_mismatch_names_the_inferred_shape(kit):
    refused(kit, gdoc(X4, nd("h", "relu", ["x"], [5])), path="nodes[1] (id 'h', op relu).shape",
            contains="expected shape [4] (inferred), found [5]")
    w = f32(3, 4, 3, 3)
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [3, 5, 5], weight="w")), {"w": w},
            path="nodes[1] (id 'c', op conv2d).shape",
            contains="expected shape [3, 3, 3] (inferred), found [3, 5, 5]")
    refused(kit, gdoc(IMG, nd("p", "maxpool2d", ["x"], [4, 3, 3], kernel=[2, 2])),
            path="nodes[1] (id 'p', op maxpool2d).shape",
            contains="expected shape [4, 2, 2] (inferred), found [4, 3, 3]")
    refused(kit, gdoc(nd("x", "input", out_shape=[2, 3]), nd("s", "sum", ["x"], [2], axes=[1],
                                                        keepdims=True)),
            path="nodes[1] (id 's', op sum).shape", contains="expected shape [2, 1] (inferred)")


@pytest.mark.parametrize("node, fragment", [
    (nd("h", "conv2d", ["x"], [1, 5, 5], weight="w", stride="2"), "a list of integers"),
    (nd("h", "conv2d", ["x"], [1, 5, 5], weight="w", stride=[1, 1, 1]), "a list of 2 integers"),
    (nd("h", "conv2d", ["x"], [1, 5, 5], weight="w", groups=True), "an integer"),
    (nd("h", "conv2d", ["x"], [1, 5, 5], weight="w", padding=[1.5, 1]), "a list of integers"),
    (nd("h", "conv2d", ["x"], [1, 5, 5], weight=7), "a parameter name"),
])
def test_attribute_types(kit, node, fragment):
    refused(kit, gdoc(IMG, node), {"w": f32(1, 4, 1, 1)}, contains=fragment)


def test_bool_and_rational_attribute_types(kit):
    refused(kit, gdoc(IMG, nd("p", "avgpool2d", ["x"], [4, 2, 2], kernel=[2, 2],
                              count_include_pad=1)),
            path="nodes[1] (id 'p', op avgpool2d).attrs.count_include_pad",
            contains="true or false")
    params = {k: np.ones(4, np.float32) for k in ("g", "b", "m", "v")}
    refused(kit, gdoc(X4, nd("n", "batchnorm", ["x"], [4], weight="g", bias="b",
                             running_mean="m", running_var="v", eps="nan")), params,
            path="nodes[1] (id 'n', op batchnorm).attrs.eps", contains="finite")
    refused(kit, gdoc(X4, nd("n", "batchnorm", ["x"], [4], weight="g", bias="b",
                             running_mean="m", running_var="v", eps="0")), params,
            contains="eps must be positive")


# ---------------------------------------------------------------- weights

def _mlp_builder(w2_transposed=False, bad_bias=False) -> GraphBuilder:
    g = GraphBuilder()
    x = g.input([6])
    h = g.relu(g.linear(x, f32(4, 6), f32(4, seed=1), name="fc1"))
    w2 = f32(3, 4, seed=2)
    b2 = f32(4 if bad_bias else 3, seed=3)
    g.output(g.linear(h, w2.T.copy() if w2_transposed else w2, b2, name="fc2"))
    return g


def test_linear_weight_transposed_names_node_and_shape(kit):
    path = _mlp_builder(w2_transposed=True).save(kit.folder("bad_w"))
    with pytest.raises(KernelError) as info:
        load_graph(path)
    err = info.value
    assert err.rule == "graph"
    assert err.path == "nodes[3] (id 'fc2', op linear)"
    assert "input shape [4] does not end in weight's in-features 3" in err.message


def test_linear_bias_wrong_shape(kit):
    path = _mlp_builder(bad_bias=True).save(kit.folder("bad_b"))
    with pytest.raises(KernelError) as info:
        load_graph(path)
    assert info.value.path == "nodes[3] (id 'fc2', op linear)"
    assert "expected bias shape [3], found [4]" in info.value.message


def test_weights_file_bit_flip_is_a_sha_mismatch(kit):
    folder = kit.folder("flip")
    path = _mlp_builder().save(folder)
    load_graph(path)  # fine before the flip
    wpath = os.path.join(folder, "weights.safetensors")
    data = bytearray(open(wpath, "rb").read())
    data[-3] ^= 0x10
    with open(wpath, "wb") as f:
        f.write(data)
    with pytest.raises(KernelError) as info:
        load_graph(path)
    err = info.value
    assert (err.rule, err.path) == ("graph", "weights.sha256")
    assert "sha256 mismatch" in err.message
    assert hashlib.sha256(bytes(data)).hexdigest() in err.message


def test_missing_parameter_name(kit):
    folder = kit.folder("missing_param")
    path = _mlp_builder().save(folder)
    doc = json.load(open(path))
    doc["nodes"][1]["attrs"]["weight"] = "fc1.nope"
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(KernelError) as info:
        load_graph(path)
    assert info.value.path == "nodes[1] (id 'fc1', op linear).attrs.weight"
    assert "parameter 'fc1.nope' not found in the weights file" in info.value.message


def test_parameter_without_weights_file(kit):
    refused(kit, gdoc(X4, nd("h", "linear", ["x"], [2], weight="w")),
            path="nodes[1] (id 'h', op linear).attrs.weight", contains="not found")


def test_weights_file_missing_or_malformed_binding(kit):
    folder = kit.folder("wmiss")
    path = _mlp_builder().save(folder)
    os.remove(os.path.join(folder, "weights.safetensors"))
    with pytest.raises(KernelError) as info:
        load_graph(path)
    assert (info.value.rule, info.value.path) == ("graph", "weights.path")
    doc = json.load(open(path))
    doc["weights"] = {"path": "weights.safetensors"}
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(KernelError) as info:
        load_graph(path)
    assert info.value.path == "weights"


def test_graph_file_unreadable_or_not_json(kit):
    missing = os.path.join(kit.folder("nofile"), "graph.json")
    with pytest.raises(KernelError) as info:
        load_graph(missing)
    assert (info.value.rule, info.value.path) == ("graph", missing)
    assert "cannot read graph file" in info.value.message
    with open(missing, "w") as f:
        f.write('{"format": "tl.graph.v1", "nodes": [NaN]}')
    with pytest.raises(KernelError) as info:
        load_graph(missing)
    assert info.value.rule == "graph" and "non-finite" in info.value.message


def test_graph_sha256_is_the_file_hash(mlp):
    data = open(mlp.path, "rb").read()
    assert mlp.graph.sha256 == hashlib.sha256(data).hexdigest()
    wdata = open(mlp.weights_path, "rb").read()
    assert mlp.graph.weights_sha256 == hashlib.sha256(wdata).hexdigest()


def test_parameter_count(mlp, kit):
    assert mlp.graph.parameter_count() == sum(a.size for a in mlp.weights.values())
    g = kit.parse(gdoc(X4, nd("c", "const", [], [2, 3], value={"shape": [2, 3],
                                                             "values": [1, 2, 3, 4, 5, 6]})))
    assert g.parameter_count() in (0, 6)  # inline consts: counted or not, but no crash


# ---------------------------------------------------------------- op-specific shape checks

def test_conv2d_groups_inconsistent(kit):
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [6, 3, 3], weight="w", groups=3)),
            {"w": f32(6, 2, 3, 3)}, path="nodes[1] (id 'c', op conv2d)",
            contains="groups 3 inconsistent with input channels 4 and weight [6, 2, 3, 3]")
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [6, 3, 3], weight="w", groups=0)),
            {"w": f32(6, 2, 3, 3)}, contains="groups 0 inconsistent")
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [3, 3, 3], weight="w", groups=2)),
            {"w": f32(3, 2, 3, 3)}, contains="groups 2 inconsistent")


def test_conv2d_geometry(kit):
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [1, 1, 1], weight="w")),
            {"w": f32(1, 4, 7, 7)}, contains="window span 7 exceeds padded size 5")
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [1, 1, 1], weight="w", stride=[0, 1])),
            {"w": f32(1, 4, 3, 3)}, contains="stride")
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [1, 1, 1], weight="w", padding=[-1, 0])),
            {"w": f32(1, 4, 3, 3)}, contains="padding")
    refused(kit, gdoc(IMG, nd("c", "conv2d", ["x"], [1, 1, 1], weight="w")),
            {"w": f32(1, 4, 3)}, contains="expected weight [O, C/groups, kh, kw]")
    refused(kit, gdoc(X4, nd("c", "conv2d", ["x"], [1, 1, 1], weight="w")),
            {"w": f32(1, 4, 3, 3)}, contains="expected input [C, H, W], found [4]")


def test_pool_padding_at_most_half_the_kernel(kit):
    refused(kit, gdoc(IMG, nd("p", "maxpool2d", ["x"], [4, 4, 4], kernel=[2, 2],
                              padding=[2, 2])), contains="padding must be at most half")


@pytest.mark.parametrize("target, fragment", [
    ([4], "cannot reshape [6] to [4]"),
    ([-1, 4], "cannot reshape [6] to [-1, 4]"),
    ([-1, -1], "at most one -1"),
    ([-2, -3], "no other negatives"),
    ([7], "cannot reshape [6] to [7]"),
])
def test_reshape_impossible(kit, target, fragment):
    refused(kit, gdoc(nd("x", "input", out_shape=[6]),
                      nd("r", "reshape", ["x"], [6], shape=target)),
            path="nodes[1] (id 'r', op reshape)", contains=fragment)


def test_reshape_minus_one_resolves(kit):
    g = kit.parse(gdoc(nd("x", "input", out_shape=[6]), nd("r", "reshape", ["x"], [2, 3],
                                                      shape=[-1, 3])))
    assert g.by_id["r"].shape == (2, 3)


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 1], [1, 2, 3], [0, 1, 2, 3], [-1, 0, 1]])
def test_transpose_bad_perm(kit, perm):
    refused(kit, gdoc(nd("x", "input", out_shape=[2, 3, 4]),
                      nd("t", "transpose", ["x"], [2, 3, 4], perm=perm)),
            path="nodes[1] (id 't', op transpose)",
            contains=f"perm {perm} is not a permutation of rank 3")


def test_concat_mismatch(kit):
    a = nd("x", "input", out_shape=[2, 3])
    c = {"shape": [2, 4], "values": ["1"] * 8}
    refused(kit, gdoc(a, nd("c", "const", [], [2, 4], value=c),
                      nd("k", "concat", ["x", "c"], [4, 3], axis=0)),
            path="nodes[2] (id 'k', op concat)", contains="input shapes [[2, 3], [2, 4]] differ "
            "off axis 0")
    refused(kit, gdoc(a, nd("k", "concat", ["x", "x"], [2, 6], axis=2)),
            contains="axis 2 out of range for rank 2")
    refused(kit, gdoc(a, nd("r", "reshape", ["x"], [6], shape=[6]),
                      nd("k", "concat", ["x", "r"], [2, 9], axis=1)), contains="differ off axis 1")


def test_concat_negative_axis_normalised(kit):
    g = kit.parse(gdoc(nd("x", "input", out_shape=[2, 3]), nd("k", "concat", ["x", "x"], [2, 6],
                                                          axis=-1)))
    assert g.by_id["k"].attrs["axis"] == 1


def test_matmul_and_linear_shape_errors(kit):
    c = {"shape": [3, 2], "values": ["1"] * 6}
    refused(kit, gdoc(X4, nd("c", "const", [], [3, 2], value=c),
                      nd("m", "matmul", ["x", "c"], [2])), contains="inner dimensions differ")
    refused(kit, gdoc(X4, nd("h", "linear", ["x"], [2], weight="w")), {"w": f32(2, 4, 1)},
            contains="weight must be 2-D")


def test_broadcast_mismatch(kit):
    c = {"shape": [3], "values": ["1", "2", "3"]}
    refused(kit, gdoc(X4, nd("c", "const", [], [3], value=c), nd("a", "add", ["x", "c"], [4])),
            path="nodes[2] (id 'a', op add)", contains="shapes [4] and [3] do not broadcast")


def test_reduce_axes(kit):
    x = nd("x", "input", out_shape=[2, 3])
    refused(kit, gdoc(x, nd("s", "sum", ["x"], [2], axes=[2])),
            contains="axis 2 out of range for rank 2")
    refused(kit, gdoc(x, nd("s", "mean", ["x"], [2], axes=[1, -1])), contains="repeated axis")
    g = kit.parse(gdoc(x, nd("s", "mean", ["x"], [3], axes=[-2])))
    assert g.by_id["s"].attrs["axes"] == [0]


def test_empty_tensors_are_refused(kit):
    """No node may have a zero dimension: a mean over no values is NaN in torch, and the kernel
    would otherwise prove it 0 (so an input, and every node, is at least one value wide)."""
    refused(kit, gdoc(nd("x", "input", out_shape=[0]), nd("m", "mean", ["x"], [])),
            path="nodes[0] (id 'x', op input).shape", contains="no empty tensors")
    refused(kit, gdoc(nd("x", "input", out_shape=[2, 0]), nd("r", "relu", ["x"], [2, 0])),
            path="nodes[0] (id 'x', op input).shape", contains="no empty tensors")


def test_average_pooling_has_no_dilation(kit):
    """Dilated average pooling is not in the IR (nor in torch); with it a window could lie in the
    padding alone. Dilation 1 is accepted; maxpool keeps its dilation."""
    x = nd("x", "input", out_shape=[1, 4, 4])
    pool = dict(kernel=[2, 2], padding=[1, 1])
    refused(kit, gdoc(x, nd("p", "avgpool2d", ["x"], [1, 2, 2], dilation=[3, 3], **pool)),
            path="nodes[1] (id 'p', op avgpool2d)", contains="average pooling has no dilation")
    kit.parse(gdoc(x, nd("p", "avgpool2d", ["x"], [1, 3, 3], dilation=[1, 1], **pool)))
    kit.parse(gdoc(x, nd("p", "maxpool2d", ["x"], [1, 2, 2], dilation=[2, 2], **pool)))


# ---------------------------------------------------------------- document level

@pytest.mark.parametrize("mutate, path, fragment", [
    (lambda d: d.update(format="tl.graph.v2"), "format", "expected 'tl.graph.v1'"),
    (lambda d: d.update(extra=1), "<graph>", "unexpected keys ['extra']"),
    (lambda d: d.update(nodes=[]), "nodes", "non-empty list"),
    (lambda d: d.update(outputs=["ghost"]), "outputs", "non-empty list of node ids"),
    (lambda d: d.update(outputs=[]), "outputs", "non-empty list of node ids"),
    (lambda d: d["nodes"][1].update(id="1abc"), "nodes[1].id", "expected an identifier"),
    (lambda d: d["nodes"][1].update(colour="red"), "nodes[1]", "unexpected keys ['colour']"),
    (lambda d: d["nodes"][1].update(shape=[-4]), "nodes[1] (id 'h', op relu).shape",
     "positive integers"),
    (lambda d: d["nodes"][1].update(shape=[True]), "nodes[1] (id 'h', op relu).shape",
     "positive integers"),
    (lambda d: d["nodes"][1].update(attrs=[]), "nodes[1] (id 'h', op relu).attrs",
     "expected an object"),
    (lambda d: d["nodes"][1].update(inputs="x"), "nodes[1] (id 'h', op relu).inputs",
     "list of node ids"),
    (lambda d: d["nodes"].append(7), "nodes[2]", "expected a node object"),
])
def test_document_level_errors(kit, mutate, path, fragment):
    doc = gdoc(X4, nd("h", "relu", ["x"], [4]))
    mutate(doc)
    refused(kit, doc, path=path, contains=fragment)


@pytest.mark.parametrize("mutate", [
    lambda d: d["nodes"][1].update(op=["relu"]),
    lambda d: d["nodes"][1].update(op={"name": "relu"}),
    lambda d: d.update(outputs=[["h"]]),
    lambda d: d.update(outputs=[{"id": "h"}]),
], ids=["op-list", "op-object", "outputs-list", "outputs-object"])
def test_unhashable_values_are_kernel_errors(kit, mutate):
    """JSON lists/objects where a name is expected must be refused, not crash with TypeError."""
    doc = gdoc(X4, nd("h", "relu", ["x"], [4]))
    mutate(doc)
    refused(kit, doc)


def test_two_input_nodes_parse_but_claims_need_one(kit):
    g = kit.parse(gdoc(X4, nd("y", "input", out_shape=[4]), nd("a", "add", ["x", "y"], [4])))
    with pytest.raises(KernelError) as info:
        kit.point(g, [0, 0, 0, 0])
    assert "exactly one input node, found 2" in info.value.message


# ---------------------------------------------------------------- every op has shape inference

def _minimal(op: str):
    """A minimal well-formed use of every op: (nodes after the input [4,5,5], params)."""
    w = {"w": f32(2, 4, 3, 3)}
    bn = {k: np.ones(4, np.float32) for k in ("g", "b", "m", "v")}
    c = {"shape": [5], "values": ["1", "2", "3", "4", "5"]}
    table = {
        "input": ([], {}),
        "const": ([nd("h", "const", [], [5], value=c)], {}),
        "linear": ([nd("h", "linear", ["x"], [4, 5, 2], weight="w")], {"w": f32(2, 5)}),
        "matmul": ([nd("c", "const", [], [5], value=c), nd("h", "matmul", ["x", "c"], [4, 5])],
                   {}),
        "conv2d": ([nd("h", "conv2d", ["x"], [2, 3, 3], weight="w")], w),
        "maxpool2d": ([nd("h", "maxpool2d", ["x"], [4, 2, 2], kernel=[2, 2])], {}),
        "avgpool2d": ([nd("h", "avgpool2d", ["x"], [4, 2, 2], kernel=[2, 2])], {}),
        "flatten": ([nd("h", "flatten", ["x"], [100])], {}),
        "reshape": ([nd("h", "reshape", ["x"], [20, 5], shape=[20, 5])], {}),
        "transpose": ([nd("h", "transpose", ["x"], [5, 4, 5], perm=[1, 0, 2])], {}),
        "concat": ([nd("h", "concat", ["x", "x"], [8, 5, 5], axis=0)], {}),
        "batchnorm": ([nd("h", "batchnorm", ["x"], [4, 5, 5], weight="g", bias="b",
                          running_mean="m", running_var="v", eps="1e-5")], bn),
        "sum": ([nd("h", "sum", ["x"], [4], axes=[1, 2])], {}),
        "mean": ([nd("h", "mean", ["x"], [])], {}),
        "softmax": ([nd("h", "softmax", ["x"], [4, 5, 5])], {}),
    }
    for binary in ("add", "sub", "mul"):
        table[binary] = ([nd("h", binary, ["x", "x"], [4, 5, 5])], {})
    for unary in ("neg", "relu", "abs", "tanh", "sigmoid", "exp", "log", "sin", "cos"):
        table[unary] = ([nd("h", unary, ["x"], [4, 5, 5])], {})
    return table.get(op)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_shape_inference(kit, op):
    case = _minimal(op)
    assert case is not None, f"op {op!r} has no shape-inference test"
    nodes, params = case
    g = kit.parse(gdoc(IMG, *nodes), params)
    assert g.nodes[-1].op == op


@pytest.mark.parametrize("op", sorted(o for o, s in OPS.items() if not s.evaluated))
def test_non_evaluated_op_parses_but_evaluation_refuses(kit, op):
    g = kit.parse(gdoc(X4, nd("r", "relu", ["x"], [4]), nd("t", op, ["r"], [4])))
    assert kit.point(g, [1, -2, 3, 0], upto="r")["r"] == [1, 0, 3, 0]  # before it: fine
    with pytest.raises(KernelError) as info:
        kit.point(g, [1, -2, 3, 0])
    err = info.value
    assert (err.rule, err.path) == ("semantics", "node 't'")
    assert f"op {op!r} is not yet supported by the kernel" in err.message


def test_softmax_builder_graph_refused_by_ibp(kit):
    """A softmax graph written to disk loads, but an ibp claim through it is refused by name."""
    from tl_dsl import claims, proof

    g = GraphBuilder()
    x = g.input([3])
    h = g.linear(x, f32(2, 3), name="fc")
    t = g._add("softmax", [h], h.shape, {"axis": -1}, name="act")
    g.output(t)
    built = kit.save(g, "tanh")
    claim = claims.bounds(built.graph, claims.box([0] * 3, [1] * 3), [-1] * 2, [1] * 2)
    with pytest.raises(KernelError) as info:
        proof.check(claim, proof.ibp(), built.graph)
    assert info.value.path == "node 'act'"
    assert "'softmax' is not yet supported by the kernel" in info.value.message


def test_evaluate_checks_the_input_shape(mlp):
    from kernel_checker.semantics import Interval

    with pytest.raises(KernelError) as info:
        evaluate(mlp.graph, Interval((5,), [0] * 5, [0] * 5, 1))
    assert (info.value.rule, info.value.path) == ("semantics", "input")
    assert "expected shape [6], found [5]" in info.value.message


def test_weights_parameter_named_like_an_inline_const_is_not_shadowed(kit):
    """A weights-file tensor named 'const:c' and an inline const node 'c': the linear layer
    must use the sha256-bound file tensor it names (or the graph must be refused)."""
    w = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    doc = gdoc(nd("x", "input", out_shape=[3]),
               nd("c", "const", [], [2, 3], value={"shape": [2, 3],
                                                   "values": ["100", 0, 0, 0, 0, 0]}),
               nd("lin", "linear", ["x"], [2], weight="const:c"), outputs=["lin"])
    try:
        graph = kit.parse(doc, {"const:c": w})
    except KernelError as err:
        assert "const:c" in err.message
        return
    assert kit.point(graph, [1, 1, 1])["lin"] == [6, 15]


def test_the_builder_stores_parameters_exactly_or_refuses_them():
    """GraphBuilder rounded what it was given to float32: decimal strings ("0.1"), fractions,
    16777217 (stored as 16777216) and complex numbers (imaginary part dropped), and `const`
    made Python floats float32 where `linear` kept them float64 (found by a review). Floats
    are now stored as given, integers exactly (float32, else float64), anything else refused."""
    from fractions import Fraction

    g = GraphBuilder()
    x = g.input([1])
    for bad, what in (([["0.1"]], "dtype <U3"), ([[Fraction(1, 3)]], "dtype object"),
                      ([[1 + 2j]], "dtype complex128"), ([[2**70]], "dtype object")):
        with pytest.raises(ValueError, match=f"expected an array of real floats or integers, "
                                             f"found {what}"):
            g.linear(x, bad)
    with pytest.raises(ValueError, match="integers beyond float64's exact range"):
        g.linear(x, np.array([[2**62 + 1]], dtype=np.int64))
    g.linear(x, [[16777217]], name="big")
    g.linear(x, [[3]], name="small")
    c = g.const([0.1], name="c")
    assert g.params["big.weight"].dtype == np.float64 and g.params["big.weight"][0, 0] == 16777217
    assert g.params["small.weight"].dtype == np.float32
    assert g.params["c.value"].dtype == np.float64 and g.params["c.value"][0] == 0.1
    assert c.shape == (1,)


def test_an_empty_parameter_name_is_refused(tmp_path):
    """A bias named "" (a legal safetensors key) was falsy to crown's reader and truthy to the
    exact semantics: crown proved x + 1000 in [-3, 3] on [-1, 1] at level proved (a review).
    Parameter names are non-empty; the same graph with the bias named "b" holds its bias."""
    from safetensors.numpy import save as st_save

    for name in ("b", ""):
        data = st_save({"w": np.array([[1.0]], np.float32),
                        name: np.array([1000.0], np.float32)})
        (tmp_path / "w.safetensors").write_bytes(data)
        doc = {"format": "tl.graph.v1",
               "weights": {"path": "w.safetensors", "sha256": hashlib.sha256(data).hexdigest()},
               "nodes": [{"id": "x", "op": "input", "inputs": [], "shape": [1], "attrs": {}},
                         {"id": "fc", "op": "linear", "inputs": ["x"], "shape": [1],
                          "attrs": {"weight": "w", "bias": name}}],
               "outputs": ["fc"]}
        (tmp_path / "graph.json").write_text(json.dumps(doc))
        if name:
            assert load_graph(str(tmp_path / "graph.json")).by_id["fc"].attrs["bias"] == "b"
            continue
        with pytest.raises(KernelError) as info:
            load_graph(str(tmp_path / "graph.json"))
        assert info.value.path == "nodes[1] (id 'fc', op linear).attrs.bias"
        assert "non-empty" in info.value.message


def test_the_builder_writes_the_smooth_ops(tmp_path):
    """tanh, sigmoid, exp, log, sin and cos had no builder methods (an example used the private
    _add); each writes its op and the kernel evaluates the chain at a point."""
    from flint import fmpq

    from kernel_checker.rules import point_interval

    g = GraphBuilder()
    x = g.input([1])
    g.output(g.cos(g.sin(g.log(g.exp(g.sigmoid(g.tanh(x)))))))
    graph = load_graph(g.save(str(tmp_path)))
    assert [n.op for n in graph.nodes][1:] == ["tanh", "sigmoid", "exp", "log", "sin", "cos"]
    y = evaluate(graph, point_interval((fmpq(1, 2),), (1,)))[graph.outputs[0]]
    v = np.cos(np.sin(np.log(np.exp(1 / (1 + np.exp(-np.tanh(0.5)))))))
    lo, hi = y.bounds(0)
    assert float(lo) - 1e-12 <= v <= float(hi) + 1e-12
