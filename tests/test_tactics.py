"""`prove_robust` (stdlib/tactics.py) on the shipped digits MLP: certified at radius 1/200 on a
correctly classified test image, and a kernel-checked counterexample at radius 1/2. The outcome's
theorem is a kernel theorem whose claim and certificate re-derive independently."""

import json
import os
from fractions import Fraction

import pytest
import torch

from kernel_checker import KernelError, load_graph
from kernel_checker.exact import decode_rational
from kernel_checker.rules import point_interval
from kernel_checker.semantics import evaluate
from kernel_checker.theorem import Level
from stdlib import robustness
from stdlib.tactics import prove_robust
from tl_dsl import proof

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(REPO, "tl_dsl", "data", "digits", "mlp", "graph.json")
TEST_SET = os.path.join(REPO, "tl_dsl", "data", "digits", "test_set.json")


def exact_logits(graph, x):
    shape = graph.the_input("test", "input").shape
    iv = evaluate(graph, point_interval(tuple(x), shape))[graph.outputs[0]]
    return [Fraction(v, iv.den) for v in iv.lo]


@pytest.fixture(scope="module")
def digits():
    graph = load_graph(MLP)
    with open(TEST_SET) as f:
        doc = json.load(f)
    for image, label in zip(doc["images"], doc["labels"]):
        x = [decode_rational(v, "image") for v in image]
        y = exact_logits(graph, x)
        best = max(range(10), key=lambda i: y[i])
        others = sorted(y)[-2]
        if best == label and y[best] - others > 1:  # correctly classified, clear margin
            return graph, x, [float(v) for v in image], label
    raise AssertionError("no clearly classified test image")


def test_certified_at_radius_one_two_hundredth(digits):
    graph, x, image, label = digits
    out = prove_robust(graph, MLP, image, "1/200", label)
    assert out.status == "certified", out
    assert out.method in ("ibp", "crown", "alpha", "bab")
    thm = out.theorem
    assert (thm.level, thm.assumptions) == (Level.PROVED, frozenset())
    assert thm.claim == out.claim == robustness.robust(graph, image, "1/200", label)
    assert thm.claim.kind == "unsat" and len(thm.claim.unsafe) == 9
    box = thm.claim.input_set.as_box()
    assert all(lo >= 0 and hi <= 1 for lo, hi in zip(box.lo, box.hi))  # clamped to [0, 1]
    again = proof.check(out.claim, out.certificate, graph)
    assert again.rule == thm.rule and again.level == Level.PROVED


def test_counterexample_at_radius_one_half_is_checked(digits):
    graph, x, image, label = digits
    out = prove_robust(graph, MLP, image, "1/2", label)
    assert out.status == "counterexample", out
    thm = out.theorem
    assert thm.rule == "counterexample" and thm.level == Level.PROVED
    cex = out.claim
    assert cex.kind == "counterexample"
    robust = robustness.robust(graph, image, "1/2", label)
    assert (cex.input_set, cex.unsafe, cex.node) == (robust.input_set, robust.unsafe, robust.node)
    # the point lies in the ball (clamped) and is misclassified, exactly
    box = cex.input_set.as_box()
    assert all(lo <= v <= hi for v, lo, hi in zip(cex.point, box.lo, box.hi))
    y = exact_logits(graph, cex.point)
    assert max(y[j] for j in range(10) if j != label) >= y[label]
    again = proof.check(cex, out.certificate, graph)
    assert again.rule == "counterexample"
    # the robustness claim itself is refused by every proof method at this radius
    for cert in ({"rule": "ibp"}, {"rule": "crown"}):
        with pytest.raises(KernelError):
            proof.check(robust, cert, graph)


@pytest.mark.parametrize("kw, error, match", [
    ({"x0": "short"}, KernelError, r"center: expected \d+ numbers \(the input size\)"),
    ({"eps": Fraction(-1, 100)}, KernelError, "eps: expected eps >= 0"),
    ({"clamp": (1, 0)}, KernelError, "clamp: expected lo <= hi"),
    ({"x0": "outside"}, KernelError, "misses the clamp domain"),
    ({"methods": ("ibb",)}, ValueError, r"methods: expected names among .* found \['ibb'\]"),
    ({"methods": "ibp"}, ValueError, "methods: expected names among"),
])
def test_a_claim_that_cannot_be_proved_or_an_unknown_method_raises(digits, kw, error, match):
    """A review found these answered `unknown` with `proved_by {'ibp': False}` (the kernel's
    refusal swallowed as a failed method, a misspelled method skipped): they raise, naming
    the field."""
    graph, _, image, label = digits
    args = {"x0": image, "eps": Fraction(1, 200), "methods": ("ibp",)} | kw
    if args["x0"] == "short":
        args["x0"] = image[:-1]
    if args["x0"] == "outside":
        args["x0"] = [3.0] * len(image)
    with pytest.raises(error, match=match):
        prove_robust(graph, MLP, args["x0"], args["eps"], label, clamp=args.get("clamp", (0, 1)),
                     methods=args["methods"])


def test_a_graph_the_bound_producers_cannot_take_is_unknown_with_the_reason(tmp_path):
    """On a tanh network the CROWN producer raises ValueError (tanh is outside its set); the
    tactic crashed there instead of going on: it now records the reason and answers unknown
    (a new user's trial found it)."""
    import numpy as np

    from tl_dsl.builder import GraphBuilder

    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input([4])
    h = g._add("tanh", [g.linear(x, rng.normal(0, 1, (16, 4)).astype(np.float32), name="a")],
               (16,))
    g.output(g.linear(h, rng.normal(0, 1, (3, 16)).astype(np.float32), name="b"))
    path = g.save(str(tmp_path / "tanh"))
    graph = load_graph(path)
    out = prove_robust(graph, path, ["0.5"] * 4, "1/5", 1, methods=("ibp", "crown", "alpha"))
    assert out.status == "unknown" and out.proved_by == {"ibp": False, "crown": False,
                                                         "alpha": False}
    assert any(n.startswith("crown: ") and "tanh" in n for n in out.notes), out.notes


def test_a_graph_path_of_another_graph_or_none_is_refused(digits, tmp_path):
    """The producers read graph_path: another graph's gave a StopIteration traceback or a silent
    `unknown` (a review); it must be the graph given."""
    graph, _, image, label = digits
    other = str(tmp_path / "other.json")
    with open(MLP) as f:
        doc = json.load(f)
    doc["nodes"][-1]["id"] += "_renamed"
    doc["outputs"] = [doc["nodes"][-1]["id"]]
    with open(other, "w") as f:
        json.dump(doc, f)
    for path, match in ((other, "is not the graph given"), (str(tmp_path / "nope.json"),
                                                              "cannot read graph")):
        with pytest.raises(ValueError, match=f"graph_path: .*{match}"):
            prove_robust(graph, path, image, Fraction(1, 200), label, methods=("ibp",))
