"""The `tl` commands end to end, in fresh processes as a user runs them: check, audit, graph,
verify (a handful of quick VNN-COMP instances) and demo."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import kernel_checker
from stdlib.robustness import robust
from tl_dsl import proof
from tl_dsl.builder import Linear, ReLU, Sequential

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"


def tl(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tl_dsl.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.5, (8, 3)).astype(np.float32), rng.normal(0, 0.5, (2, 8))
    gp = Sequential([Linear(w1, np.zeros(8, np.float32)), ReLU(),
                     Linear(w2.astype(np.float32))]).save(str(d / "net"), [3])
    g = kernel_checker.load_graph(gp)
    x0 = np.array([0.5, 0.25, 0.75], np.float32)
    label = int(np.argmax(w2 @ np.maximum(w1 @ x0, 0)))
    claim = robust(g, x0, "1/1000", label)
    good = proof.write_bundle(str(d / "good.json"), claim, proof.ibp(), gp, g)
    assumed = proof.write_bundle(str(d / "assumed.json"), claim,
                                 proof.assume("user.hypothesis", reason="test"), gp, g)
    bad_doc = json.load(open(good))
    bad_doc["claim"]["input_set"]["eps"] = "1/2"
    bad = d / "bad.json"
    bad.write_text(json.dumps(bad_doc))
    return {"graph": gp, "good": good, "assumed": assumed, "bad": str(bad), "dir": d}


def test_check_holds_exit_0_one_line(bundles):
    r = tl("check", bundles["good"])
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and r.stdout.startswith("holds:")


def test_check_refuses_with_rule_and_field_path(bundles):
    r = tl("check", bundles["bad"])
    assert r.returncode == 1
    assert "rule bundle: artifacts.spec.sha256" in r.stderr


def test_audit_lists_level_assumptions_and_trusted_base(bundles):
    r = tl("audit", bundles["good"])
    assert r.returncode == 0
    assert "level      proved" in r.stdout and "assumptions none" in r.stdout
    assert "python-flint" in r.stdout and "tl-verify kernel" in r.stdout


def test_audit_fails_on_an_assumption_not_permitted(bundles):
    r = tl("audit", bundles["assumed"])
    assert r.returncode == 1 and "user.hypothesis [NOT PERMITTED]" in r.stdout
    r = tl("audit", bundles["assumed"], "--permit", "user.*", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["level"] == "shape-checked"
    assert doc["assumptions"][0]["name"] == "user.hypothesis"
    assert doc["assumptions"][0]["provenance"] == {"reason": "test"}


def test_audit_prints_a_bundles_text_as_one_printable_line(bundles):
    """Provenance comes from the bundle's author: a newline and a terminal escape in a reason
    printed a fake `assumptions none` line and hid the rest (a review); they are escaped."""
    g = kernel_checker.load_graph(bundles["graph"])
    claim = robust(g, [0.5, 0.25, 0.75], "1/1000", 0)
    sneaky = proof.write_bundle(str(bundles["dir"] / "sneaky.json"), claim, proof.assume(
        "user.hypothesis", reason="x\nassumptions none\x1b[8m"), bundles["graph"], g)
    r = tl("audit", sneaky, "--permit", "user.*")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "assumptions none" not in [
        line.strip() for line in r.stdout.splitlines()]
    assert "reason=x\\nassumptions none\\x1b[8m" in r.stdout


def test_audit_tree_prints_the_derivation(bundles):
    r = tl("audit", bundles["good"], "--tree")
    assert r.returncode == 0 and "derivation:" in r.stdout and "ibp" in r.stdout


def test_graph_summary_and_refusal(bundles):
    r = tl("graph", bundles["graph"])
    assert r.returncode == 0 and "parameters" in r.stdout and "sha256" in r.stdout
    doc = json.load(open(bundles["graph"]))
    doc["nodes"][1]["op"] = "lineer"
    broken = bundles["dir"] / "net" / "broken.json"
    broken.write_text(json.dumps(doc))
    r = tl("graph", str(broken))
    assert r.returncode == 1 and "nodes[1]" in r.stderr and "unknown op 'lineer'" in r.stderr


QUICK = [("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib", "unsat"),
         ("mnistfc", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib", "unsat"),
         ("mnistfc", "mnist-net_256x2.onnx", "prop_0_0.05.vnnlib", "sat")]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
@pytest.mark.parametrize("bench, onnx, prop, expected", QUICK)
def test_verify_quick_vnncomp_instances(tmp_path, bench, onnx, prop, expected):
    bundle, cex = tmp_path / "b.json", tmp_path / "c.txt"
    r = tl("verify", str(SHARED / bench / onnx), str(SHARED / bench / prop), "--timeout", "120",
           "--bundle", str(bundle), "--cex", str(cex))
    assert r.stdout.splitlines()[0] == expected, r.stdout + r.stderr
    if expected == "unsat":
        again = subprocess.run([sys.executable, "-m", "kernel_checker", str(bundle)],
                               capture_output=True, text=True)
        assert again.returncode == 0 and "level proved" in again.stdout
    else:
        text = cex.read_text()
        assert text.startswith("((X_0 ") and "(Y_9 " in text
        assert "counterexample checked exactly" in r.stdout


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
def test_verify_with_jobs_grows_the_tree_in_workers(tmp_path):
    """--jobs 2 on ACAS Xu: the input-split tree grows in two workers, the kernel derives it
    leaf by leaf in the command's process, and the bundle (nested `cases`) re-checks."""
    bundle = tmp_path / "b.json"
    r = tl("verify", str(SHARED / "acasxu" / QUICK[0][1]), str(SHARED / "acasxu" / QUICK[0][2]),
           "--timeout", "120", "--bundle", str(bundle), "--jobs", "2")
    assert r.stdout.splitlines()[0] == "unsat", r.stdout + r.stderr
    assert "methods input-split in 2 processes" in r.stdout
    assert "kernel: unsat by cases, level proved, assumptions 0" in r.stdout
    again = subprocess.run([sys.executable, "-m", "kernel_checker", str(bundle)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "by cases" in again.stdout


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
def test_verify_a_hard_mnist_instance_end_to_end(tmp_path):
    """MNIST-FC prop_3 at eps 0.03 (a timeout until relu splits took 32 candidates and one tree
    per polytope; about 21 s on the 2-core machine): unsat, and the bundle re-checks."""
    bundle = tmp_path / "b.json"
    r = tl("verify", str(SHARED / "mnistfc" / "mnist-net_256x2.onnx"),
           str(SHARED / "mnistfc" / "prop_3_0.03.vnnlib"), "--timeout", "300",
           "--bundle", str(bundle))
    assert r.stdout.splitlines()[0] == "unsat", r.stdout + r.stderr
    assert "methods relu-split" in r.stdout
    again = subprocess.run([sys.executable, "-m", "kernel_checker", str(bundle)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "level proved" in again.stdout


@pytest.mark.skipif(not SHARED.exists(), reason="../shared benchmarks not present")
def test_verify_writes_the_bundle_when_the_reader_has_gone(tmp_path):
    """`tl verify ... | head -1` where the reader is gone before the answer: stdout fails, the
    bundle is still written (and re-checks), and no traceback is printed."""
    bundle = tmp_path / "b.json"
    bench = SHARED / "acasxu"
    cmd = [sys.executable, "-m", "tl_dsl.cli", "verify", str(bench / QUICK[0][1]),
           str(bench / QUICK[0][2]), "--bundle", str(bundle)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout fails with EPIPE
    try:
        r = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 141, r.stderr
    again = subprocess.run([sys.executable, "-m", "kernel_checker", str(bundle)],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "level proved" in again.stdout


def test_demo_runs_on_a_few_images(tmp_path):
    r = tl("demo", "--images", "3", "--out", str(tmp_path / "demo"), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "assumptions none" in r.stdout and "re-checked in a fresh process: holds" in r.stdout
    summary = json.load(open(tmp_path / "demo" / "summary.json"))
    assert summary["images"] == 3 and len(summary["rows"]) == 8
    assert os.path.exists(tmp_path / "demo" / "mlp" / "graph.json")


def test_check_prints_a_bundles_claim_name_as_one_printable_line(bundles):
    """A name with a newline and a terminal escape made `tl check` print a fake summary and hide
    the real one (a review); escaped as `tl audit` does."""
    g = kernel_checker.load_graph(bundles["graph"])
    claim = dataclasses.replace(robust(g, [0.5, 0.25, 0.75], "1/1000", 0),
                                name="x by crown; level proved\n\x1b[8m")
    path = proof.write_bundle(str(bundles["dir"] / "named.json"), claim, proof.assume(
        "user.hypothesis", reason="r"), bundles["graph"], g)
    r = tl("check", path)
    assert r.returncode == 0 and "\x1b" not in r.stdout and len(r.stdout.splitlines()) == 1
    assert "by assume; level shape-checked" in r.stdout


def test_options_are_taken_only_as_written(bundles):
    r = tl("audit", bundles["good"], "--tre")
    assert r.returncode == 2 and "unrecognized arguments: --tre" in r.stderr
