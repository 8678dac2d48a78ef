"""Shared fixtures for the kernel tests: small graphs built with GraphBuilder into temporary
folders, and a `kit` of helpers to parse documents and evaluate graphs with the kernel.

Everything here is a fixture (tests never import this module); session-scoped ones are safe to
use from Hypothesis tests."""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import rule_helpers
from flint import fmpq
from rule_helpers import fr, q, randn
from safetensors.numpy import save as save_safetensors

from kernel_checker.graph import Graph, load_graph, parse_graph
from kernel_checker.rules import box_interval, point_interval
from kernel_checker.semantics import evaluate
from kernel_checker.tensor import SafetensorsFile
from tl_dsl.builder import GraphBuilder

EXIT_WATCHDOG_S = 300  # the whole suite takes about 5 minutes; its exit, well under a second


@pytest.hookimpl(trylast=True)  # (after pytest's own teardown of the fixtures left)
def pytest_sessionfinish(session, exitstatus):
    """Child processes still running (a test's leftovers) are named and killed;
    a process that has not exited EXIT_WATCHDOG_S after the summary (a thread or child it
    waits for at exit) prints every thread's stack and exits with status 1: CI fails with the
    reason instead of running into its time limit (what 1218d99's run did, every test
    passed). (So a process that runs pytest.main() and goes on is ended after that time.)"""
    for pid in _children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
        print(f"\nconftest: killed child process {pid} left running: {cmd[:200]}",
              file=sys.stderr)
    faulthandler.dump_traceback_later(EXIT_WATCHDOG_S, exit=True)


def _children() -> list[int]:
    """This process's children, from /proc (none where there is no /proc)."""
    out = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if int(ppid) == os.getpid() and state != "Z":  # (a zombie is done, not running)
                out.append(int(name))
    return out


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "kernel")


@dataclass
class Built:
    """A graph saved by GraphBuilder and loaded back by the kernel."""

    path: str  # graph.json
    folder: str
    graph: Graph
    doc: dict  # graph.json as written
    weights: dict  # parameter name -> ndarray (what the builder wrote)

    @property
    def weights_path(self) -> str:
        return os.path.join(self.folder, "weights.safetensors")


class Kit:
    """Helpers shared by the kernel tests."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self.repo = REPO
        self.fixtures = FIXTURES

    to_fmpq = staticmethod(q)
    to_frac = staticmethod(fr)

    def folder(self, name: str = "g") -> str:
        return str(self._tmp.mktemp(name))

    def save(self, builder: GraphBuilder, name: str = "g") -> Built:
        """Save with the builder into a fresh folder and load it back with the kernel."""
        folder = self.folder(name)
        path = builder.save(folder)
        graph = load_graph(path)
        with open(path) as f:
            doc = json.load(f)
        return Built(path, folder, graph, doc, dict(builder.params))

    @staticmethod
    def parse(doc: dict, params: dict | None = None) -> Graph:
        """Parse a graph document in memory, with `params` (name -> ndarray) as its weights."""
        weights = None
        wsha = None
        if params:
            data = save_safetensors({k: np.ascontiguousarray(v) for k, v in params.items()})
            weights = SafetensorsFile(data, "graph", "weights")
            wsha = hashlib.sha256(data).hexdigest()
        text = json.dumps(doc, sort_keys=True).encode()
        return parse_graph(doc, weights, hashlib.sha256(text).hexdigest(), wsha)

    @staticmethod
    def point(graph: Graph, x, upto: str | None = None) -> dict:
        """Exact kernel values of every node at the point x (flat): id -> list of fmpq.
        Asserts that the kernel kept the value a point (lo is hi)."""
        shape = graph.the_input("test", "input").shape
        vals = evaluate(graph, point_interval(tuple(q(v) for v in x), shape), upto)
        out = {}
        for nid, iv in vals.items():
            assert iv.is_point, f"point evaluation of {nid} is not a point"
            out[nid] = [fmpq(n, iv.den) for n in iv.lo]
        return out

    @staticmethod
    def enclosure(graph: Graph, x, upto: str | None = None) -> dict:
        """Kernel enclosures at a point x (for ops like batchnorm): id -> (lo list, hi list)."""
        shape = graph.the_input("test", "input").shape
        vals = evaluate(graph, point_interval(tuple(q(v) for v in x), shape), upto)
        return {nid: ([fmpq(n, iv.den) for n in iv.lo], [fmpq(n, iv.den) for n in iv.hi])
                for nid, iv in vals.items()}

    @staticmethod
    def ibp(graph: Graph, lo, hi, upto: str | None = None) -> dict:
        """Kernel interval bounds of every node over the box [lo, hi]: id -> (lo, hi) lists."""
        from kernel_checker.claims import Box

        shape = graph.the_input("test", "input").shape
        box = Box(tuple(q(v) for v in lo), tuple(q(v) for v in hi))
        vals = evaluate(graph, box_interval(box, shape), upto)
        return {nid: ([fmpq(n, iv.den) for n in iv.lo], [fmpq(n, iv.den) for n in iv.hi])
                for nid, iv in vals.items()}


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Kit:
    return Kit(tmp_path_factory)


def build_mlp(seed: int = 0, sizes=(6, 10, 8, 3)) -> GraphBuilder:
    """The `mlp` fixture's network: a 6-10-8-3 ReLU MLP with float32 weights."""
    return rule_helpers.build_mlp(seed, sizes)


def build_cnn(seed: int = 1) -> GraphBuilder:
    """conv(pad) -> relu -> maxpool -> grouped conv (stride 2, dilation) -> avgpool -> flatten
    -> linear."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input([2, 8, 8])
    h = g.relu(g.conv2d(x, randn(rng, 4, 2, 3, 3), randn(rng, 4, scale=0.1), padding=(1, 1),
                        name="conv1"))
    h = g.maxpool2d(h, (2, 2))
    h = g.conv2d(h, randn(rng, 4, 2, 2, 2), randn(rng, 4, scale=0.1), stride=(1, 1),
                 padding=(1, 1), dilation=(2, 2), groups=2, name="conv2")
    h = g.avgpool2d(h, (2, 2), stride=(1, 1), padding=(1, 1), count_include_pad=False)
    h = g.flatten(g.relu(h))
    h = g.linear(h, randn(rng, 3, h.shape[0], scale=0.2), randn(rng, 3, scale=0.1), name="fc")
    g.output(h)
    return g


@pytest.fixture(scope="session")
def mlp(kit) -> Built:
    return kit.save(build_mlp(), "mlp")


@pytest.fixture(scope="session")
def cnn(kit) -> Built:
    return kit.save(build_cnn(), "cnn")


@pytest.fixture(scope="session")
def builders():
    """The graph-builder recipes, for tests that need a fresh copy on disk (e.g. to tamper)."""
    return {"mlp": build_mlp, "cnn": build_cnn}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: torch's intra-op threads only add overhead (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mlp12(kit):
    """A 12-24-24-3 relu MLP (build_mlp seed 3), a chain of it, an input point and its label."""
    import torch

    from oracles import bounds_torch as bt

    built = kit.save(rule_helpers.build_mlp(3, sizes=(12, 24, 24, 3)), "mlp12")
    chain = bt.load_chain(built.path)
    x0 = np.random.default_rng(1).uniform(0.2, 0.8, size=12)
    with torch.no_grad():
        label = int(torch.argmax(chain.forward(chain.tensor(x0)[None])[0]))
    return built, chain, x0, label
