"""torch.export capture -> tl.graph.v1: the exact ATen table, signature-based inputs and
parameters, batch stripping, fail-closed refusals, and the `tl export` command."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

import kernel_checker

torch = pytest.importorskip("torch")
nn = torch.nn

from oracles.torch_export import ATEN_OPS, ExportError, export_module  # noqa: E402
from tl_dsl import cli  # noqa: E402


class Lambda(nn.Module):
    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            setattr(self, k, nn.Parameter(v))

    def forward(self, *xs):
        return self.fn(self, *xs)


def refusal(module, shape, tmp_path) -> ExportError:
    with pytest.raises(ExportError) as info:
        export_module(module, torch.randn(*shape), str(tmp_path))
    return info.value


def test_table_keys_are_full_op_names():
    for name in ATEN_OPS:
        assert re.fullmatch(r"aten\.[a-z_0-9]+\.[A-Za-z_0-9]+", name) or name == \
            "_operator.getitem", name


@pytest.mark.parametrize("fn, op", [
    (lambda m, x: torch.log_softmax(x, -1), "aten.log_softmax.int"),
    (lambda m, x: torch.sinh(x), "aten.sinh.default"),
    (lambda m, x: x.expand(2, 4), "aten.expand.default"),
    (lambda m, x: torch.sort(x, -1).values, "aten.sort.default"),
    (lambda m, x: torch.logsumexp(x, -1), "aten.logsumexp.default"),
    (lambda m, x: torch.exp2(x), "aten.exp2.default"),
])
def test_lookalike_ops_are_refused_never_matched_by_prefix(fn, op, tmp_path):
    """log_softmax is not log, sinh is not sin, expand is not exp, exp2 is not exp."""
    err = refusal(Lambda(fn), (1, 4), tmp_path)
    assert err.op == op
    assert f"(op {op})" in str(err) and "supported: " in str(err)
    assert "aten.relu.default" in str(err)  # the supported set is listed
    assert not os.path.exists(tmp_path / "graph.json")


def test_sort_values_refusal_names_the_node(tmp_path):
    err = refusal(nn.Sequential(nn.Linear(4, 4), Lambda(lambda m, x: torch.sort(x).values)),
                  (1, 4), tmp_path)
    assert err.node == "sort" and err.op == "aten.sort.default"


def test_two_head_attention_fails_closed_listing_every_unsupported_op(tmp_path):
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    err = refusal(Attention(), (1, 3, 8), tmp_path)
    assert err.op == "aten.select.int"
    assert "aten.scaled_dot_product_attention.default" in str(err)


@pytest.mark.parametrize("conv, message", [
    (nn.Conv2d(4, 4, 4, padding="same", groups=2), "pads asymmetrically"),
    (nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="circular"), "aten.pad.default"),
    (nn.ConvTranspose2d(4, 4, 3, groups=2), "aten.conv_transpose2d.input"),
    (nn.Conv1d(4, 4, 3, groups=2), "aten.conv1d.default"),
])
def test_grouped_conv_where_the_ir_cannot_express_it(conv, message, tmp_path):
    shape = (1, 4, 6) if isinstance(conv, nn.Conv1d) else (1, 4, 6, 6)
    assert message in str(refusal(conv, shape, tmp_path))


def test_grouped_conv_reads_every_argument(tmp_path):
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    graph = export_module(conv, torch.randn(1, 4, 7, 7), str(tmp_path)).graph
    node = next(n for n in graph.nodes if n.op == "conv2d")
    assert node.attrs["stride"] == [2, 1] and node.attrs["padding"] == [1, 0]
    assert node.attrs["dilation"] == [1, 2] and node.attrs["groups"] == 2
    assert node.shape == tuple(conv(torch.randn(1, 4, 7, 7)).shape[1:])


@pytest.mark.parametrize("module, shape, message", [
    (nn.MaxPool2d(2, ceil_mode=True), (1, 1, 5, 5), "ceil_mode"),
    (nn.AvgPool2d(2, divisor_override=3), (1, 1, 4, 4), "divisor_override"),
    (nn.AdaptiveAvgPool2d(3), (1, 1, 5, 5), "uneven windows"),
    (Lambda(lambda m, x: x / x), (1, 3), "division by a computed tensor"),
    (Lambda(lambda m, x: torch.bmm(x, x.transpose(1, 2))), (1, 3, 3), "aten.bmm.default"),
])
def test_arguments_the_ir_cannot_express_are_refused(module, shape, message, tmp_path):
    assert message in str(refusal(module, shape, tmp_path))


def test_training_mode_batchnorm_is_refused(tmp_path):
    class Train(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return torch.nn.functional.batch_norm(x, self.bn.running_mean, self.bn.running_var,
                                                  training=True)

    with pytest.raises(ExportError, match="mutates state|training"):
        export_module(Train(), torch.randn(2, 3), str(tmp_path), batch=False)


def test_inputs_and_parameters_come_from_the_signature(tmp_path):
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("offset", torch.arange(3.0))
            self.scale = torch.tensor([2.0, 4.0, 8.0])  # a lifted constant tensor
            self.fc = nn.Linear(5, 3)

        def forward(self, features, bias):
            return self.fc(features) * self.scale + bias - self.offset

    r = export_module(TwoInputs(), (torch.randn(1, 5), torch.randn(1, 3)), str(tmp_path))
    graph = r.graph
    assert [(n.id, n.shape) for n in graph.input_nodes] == [("features", (5,)), ("bias", (3,))]
    assert r.inputs == ["features", "bias"]
    linear = next(n for n in graph.nodes if n.op == "linear")
    assert (linear.attrs["weight"], linear.attrs["bias"]) == ("fc.weight", "fc.bias")
    manifest = json.load(open(r.manifest_path))
    assert {"fc.weight", "fc.bias", "offset"} <= {t["name"] for t in manifest["tensors"]}


def test_batch_dimension_is_stripped_and_recorded(tmp_path):
    r = export_module(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 4),
                      str(tmp_path))
    assert [n.shape for n in r.graph.input_nodes] == [(3, 4)]
    assert r.graph.by_id[r.graph.outputs[0]].shape == (2,)
    doc = json.load(open(r.graph_path))
    assert doc["metadata"]["example_shapes"] == [[1, 3, 4]]
    with pytest.raises(ExportError, match="batch dimension of size 1"):
        export_module(nn.Linear(4, 2), torch.randn(2, 4), str(tmp_path / "b2"))
    r = export_module(nn.Linear(4, 2), torch.randn(4), str(tmp_path / "nb"), batch=False)
    assert [n.shape for n in r.graph.input_nodes] == [(4,)]


def test_strip_module_prefix_renames_parameters(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Sequential(nn.Linear(3, 2))

        def forward(self, x):
            return self.module(x)

    r = export_module(Wrapper(), torch.randn(1, 3), str(tmp_path), strip_module_prefix=True)
    names = {t["name"] for t in json.load(open(r.manifest_path))["tensors"]}
    assert names == {"0.weight", "0.bias"}


def test_exported_files_validate_with_the_kernel_and_tl_graph(tmp_path, capsys):
    r = export_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(1, 4),
                      str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["graph.json", "manifest.json", "weights.safetensors"]
    graph = kernel_checker.load_graph(r.graph_path)
    assert graph.weights_sha256 == json.load(open(r.manifest_path))["weights"]["sha256"]
    assert cli.main(["graph", r.graph_path]) == 0
    assert "linear" in capsys.readouterr().out


def _parser():
    return cli.build_parser()  # `tl export` is registered by the CLI itself


def test_tl_export_command(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text("import torch.nn as nn\n\ndef make():\n    return nn.Sequential("
                     "nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))\n")
    out = tmp_path / "out"
    args = _parser().parse_args(["export", f"{model}:make", "--example-shape", "1,784", "-o",
                                 str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "inputs [[784]] -> outputs [[10]]" in text and "tl graph" in text
    assert cli.main(["graph", str(out / "graph.json")]) == 0


def test_tl_export_reports_refusals_and_bad_targets(tmp_path, capsys):
    model = tmp_path / "m.py"
    model.write_text("import torch, torch.nn as nn\n\nclass S(nn.Module):\n    def forward(self,"
                     " x):\n        return torch.log_softmax(x, -1)\n")
    p = _parser()
    args = p.parse_args(["export", f"{model}:S", "--example-shape", "1,4", "-o",
                         str(tmp_path / "o")])
    assert args.func(args) == 1
    assert "export refused: node 'log_softmax' (op aten.log_softmax.int)" in capsys.readouterr(
        ).err
    args = p.parse_args(["export", f"{model}:Missing", "--example-shape", "1,4", "-o",
                         str(tmp_path / "o")])
    assert args.func(args) == 1
    with pytest.raises(SystemExit):
        p.parse_args(["export", f"{model}:S", "--example-shape", "1,x", "-o", "o"])


def test_tl_export_without_torch_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    args = _parser().parse_args(["export", "m.py:C", "--example-shape", "1,4", "-o",
                                 str(tmp_path)])
    assert args.func(args) == 2
    assert "pip install" in capsys.readouterr().err


def test_tl_export_loads_a_checkpoint_through_the_bridge(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text("import torch.nn as nn\n\ndef make():\n    return nn.Linear(3, 2)\n")
    torch.manual_seed(0)
    trained = nn.Linear(3, 2)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}},
               tmp_path / "ck.pt")
    args = _parser().parse_args(["export", f"{model}:make", "--example-shape", "1,3", "-o",
                                 str(tmp_path / "o"), "--checkpoint", str(tmp_path / "ck.pt"),
                                 "--strip-module-prefix"])
    assert args.func(args) == 0, capsys.readouterr().err
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "o" / "weights.safetensors"))
    assert torch.equal(w["weight"], trained.weight.detach())


def test_tl_export_checkpoint_is_loaded_bit_for_bit_or_refused(tmp_path, capsys):
    """A review found two ways to a graph whose weights are not the checkpoint's with exit 0:
    `--checkpoint ""` (an unset variable) exported the constructor's random weights, and tied
    parameters given two values in the checkpoint kept one of them. Both are refused now; a
    {"model": state_dict, ...} checkpoint says which option takes it (--checkpoint-key), and
    the graph records the checkpoint's path and sha256."""
    import hashlib

    model = tmp_path / "model.py"
    model.write_text("import torch.nn as nn\n\ndef make():\n    return nn.Linear(3, 2)\n\n"
                     "class Tied(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     "        self.a, self.b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, "
                     "bias=False)\n        self.b.weight = self.a.weight\n\n"
                     "    def forward(self, x):\n        return self.b(self.a(x))\n")

    def export(target, shape, *extra):
        args = _parser().parse_args(["export", f"{model}:{target}", "--example-shape", shape,
                                     "-o", str(tmp_path / "o"), *extra])
        code = args.func(args)
        return code, capsys.readouterr()

    code, out = export("make", "1,3", "--checkpoint", "")
    assert code == 1 and "--checkpoint: expected a checkpoint file, found '' (an empty path)" \
        in out.err
    torch.save({"a.weight": torch.eye(2), "b.weight": 2 * torch.eye(2)}, tmp_path / "tied.pt")
    code, out = export("Tied", "1,2", "--checkpoint", str(tmp_path / "tied.pt"))
    assert code == 1 and "the module's a.weight differs from the checkpoint's" in out.err
    torch.manual_seed(0)
    trained = nn.Linear(3, 2)
    torch.save({"model": trained.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "ck.pt")
    code, out = export("make", "1,3", "--checkpoint", str(tmp_path / "ck.pt"))
    assert code == 1 and "pass --checkpoint-key model" in out.err and "hint:" not in out.err
    code, out = export("make", "1,3", "--checkpoint", str(tmp_path / "ck.pt"),
                       "--checkpoint-key", "model")
    assert code == 0, out.err
    digest = hashlib.sha256((tmp_path / "ck.pt").read_bytes()).hexdigest()
    meta = json.load(open(tmp_path / "o" / "graph.json"))["metadata"]
    assert meta["weights_from"] == {"checkpoint": "ck.pt", "sha256": digest, "key": "model"}
    sha = kernel_checker.load_graph(str(tmp_path / "o" / "graph.json")).sha256
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ck.pt").write_bytes((tmp_path / "ck.pt").read_bytes())
    code, out = export("make", "1,3", "--checkpoint", str(tmp_path / "elsewhere" / "ck.pt"),
                       "--checkpoint-key", "model")  # (the same file elsewhere: the same graph)
    assert code == 0 and kernel_checker.load_graph(str(tmp_path / "o" / "graph.json")).sha256 == sha
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "o" / "weights.safetensors"))
    assert torch.equal(w["weight"], trained.weight.detach())


class _ReluOnAView(torch.nn.Module):
    """h = fc(x); relu_ on a view of h; h read again: in torch h is changed too."""

    def __init__(self, flatten: bool):
        super().__init__()
        self.fc, self.flatten = torch.nn.Linear(3, 4), flatten

    def forward(self, x):
        h = self.fc(x)
        if self.flatten:
            torch.nn.ReLU(inplace=True)(h.flatten(1))
            return h.flatten(1) * 2
        h.view(1, 4).relu_()
        return h


@pytest.mark.parametrize("flatten", [True, False])
def test_an_in_place_relu_on_a_view_is_refused(flatten, tmp_path):
    """torch.export keeps relu_ on the view while the base's other readers read the base as it
    was: the graph would compute without the relu (a review found relative errors up to 1.2).
    In-place on a fresh tensor stays accepted (an MLP with ReLU(inplace=True))."""
    err = refusal(_ReluOnAView(flatten).eval(), (1, 3), tmp_path / "view")
    assert "in-place op on a view" in str(err) and "relu_" in str(err)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(inplace=True),
                              torch.nn.Linear(4, 2)).eval()
    export_module(mlp, torch.randn(1, 3), str(tmp_path / "mlp"))
