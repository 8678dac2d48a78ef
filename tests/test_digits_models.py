"""The shipped digits models (tl_dsl/data/digits, made by examples/digits/train.py): the kernel
loads both graphs, evaluates the first shipped test images exactly, classifies them well, and
agrees with the float64 numpy forward on every argmax. Needs neither torch nor scikit-learn."""

import json
import os

import numpy as np
import pytest

from kernel_checker import load_graph
from kernel_checker.exact import decode_rational
from kernel_checker.rules import point_interval
from kernel_checker.semantics import evaluate
from oracles.numpy_forward import NumpyGraph

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tl_dsl", "data", "digits")
N = 20


@pytest.fixture(scope="module")
def test_set():
    with open(os.path.join(DATA, "test_set.json")) as f:
        doc = json.load(f)
    assert len(doc["images"]) == len(doc["labels"]) >= N
    assert all(len(img) == 64 for img in doc["images"])
    return doc


def _exact_argmax(graph, image: list[str]) -> int:
    shape = graph.the_input("test", "input").shape
    x = point_interval(tuple(decode_rational(v, "image") for v in image), shape)
    out = evaluate(graph, x)[graph.outputs[0]]
    assert out.is_point and out.shape == (10,)
    best = max(out.lo)  # one common positive denominator: compare numerators
    return out.lo.index(best)


@pytest.mark.parametrize("name,input_shape", [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_shipped_model_exact_accuracy_and_numpy_agreement(test_set, name, input_shape):
    path = os.path.join(DATA, name, "graph.json")
    graph = load_graph(path)
    assert graph.the_input("test", "input").shape == input_shape
    assert graph.by_id[graph.outputs[0]].shape == (10,)

    images, labels = test_set["images"][:N], test_set["labels"][:N]
    exact = [_exact_argmax(graph, img) for img in images]

    x = np.array([[float(v) for v in img] for img in images]).reshape((N,) + input_shape)
    approx = NumpyGraph(path).forward(x).argmax(axis=1).tolist()

    assert exact == approx
    accuracy = sum(p == y for p, y in zip(exact, labels)) / N
    assert accuracy >= 0.9, f"{name}: exact accuracy {accuracy} on the first {N} test images"
