"""Proof bundles (kernel_checker.bundle, python -m kernel_checker): a bundle written by
tl_dsl.proof.write_bundle re-checks in this process and in a fresh one; any tampering with the
graph, its weights, the claim or the certificate is refused naming the rule and the field."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import pytest
from safetensors.numpy import load as load_safetensors

from kernel_checker import check_bundle, load_graph
from kernel_checker.errors import KernelError
from kernel_checker.theorem import Level
from stdlib import robustness
from tl_dsl import claims, proof


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kernel_checker", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def refused(bundle_path, rule, path, contains=()):
    with pytest.raises(KernelError) as info:
        check_bundle(bundle_path)
    err = info.value
    assert (err.rule, err.path) == (rule, path), err
    for fragment in (contains if isinstance(contains, tuple) else (contains,)):
        assert fragment in err.message, err
    return err


class Setup:
    """A fresh MLP on disk with a robustness bundle in a subfolder (paths relative: ../)."""

    def __init__(self, kit, builders):
        self.folder = kit.folder("bundle")
        self.graph_path = builders["mlp"]().save(self.folder)
        self.graph = load_graph(self.graph_path)
        self.x0 = [Fraction(k, 8) for k in (1, 3, 5, 7, 2, 4)]
        out = kit.point(self.graph, self.x0)[self.graph.outputs[0]]
        self.label = max(range(len(out)), key=lambda i: out[i])
        self.claim = robustness.robust(self.graph, self.x0, "1/1048576", self.label,
                                       name="tiny robustness")
        self.bundle = proof.write_bundle(os.path.join(self.folder, "proof", "bundle.json"),
                                         self.claim, proof.ibp(), self.graph_path, self.graph)
        self.weights_path = os.path.join(self.folder, "weights.safetensors")

    def doc(self) -> dict:
        with open(self.bundle) as f:
            return json.load(f)

    def write(self, doc: dict) -> None:
        with open(self.bundle, "w") as f:
            json.dump(doc, f, indent=1)

    def flip_weight_bit(self, tensor="fc2.weight", byte=5, bit=3) -> bytes:
        """Flip one bit inside one weight's payload (not the header)."""
        data = bytearray(open(self.weights_path, "rb").read())
        hlen = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + hlen])
        begin = 8 + hlen + header[tensor]["data_offsets"][0]
        data[begin + byte] ^= 1 << bit
        with open(self.weights_path, "wb") as f:
            f.write(data)
        return bytes(data)

    def rebind_graph_to_weights(self, data: bytes) -> str:
        """Update graph.json's weights sha256 (as a forger would); return the new graph sha."""
        gdoc = json.load(open(self.graph_path))
        gdoc["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
        with open(self.graph_path, "w") as f:
            json.dump(gdoc, f, indent=1)
        return hashlib.sha256(open(self.graph_path, "rb").read()).hexdigest()


@pytest.fixture
def setup(kit, builders):
    return Setup(kit, builders)


# ---------------------------------------------------------------- accepted

def test_bundle_written_is_accepted(setup):
    thm, doc = check_bundle(setup.bundle)
    assert thm.level is Level.PROVED and thm.rule == "ibp" and thm.assumptions == frozenset()
    assert thm.claim == setup.claim
    art = doc["artifacts"]
    assert art["graph"]["path"] == os.path.join("..", "graph.json")
    assert art["graph"]["sha256"] == setup.graph.sha256
    assert art["weights"]["sha256"] == hashlib.sha256(
        open(setup.weights_path, "rb").read()).hexdigest()
    assert art["spec"]["sha256"] == setup.claim.spec_sha256()


def test_cli_accepts_in_a_fresh_process(setup, kit):
    proc = run_cli(setup.bundle, cwd=kit.repo)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "holds: unsat by ibp, level proved, 0 assumption(s)"
    ok, text = proof.recheck_in_fresh_process(setup.bundle)
    assert ok and "holds" in text


def test_cli_rejects_a_tampered_bundle_with_rule_and_path(setup, kit):
    setup.flip_weight_bit()
    proc = run_cli(setup.bundle, cwd=kit.repo)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("rejected: graph: weights.sha256: sha256 mismatch")
    ok, text = proof.recheck_in_fresh_process(setup.bundle)
    assert not ok and "weights.sha256" in text


def test_cli_usage(kit):
    proc = run_cli(cwd=kit.repo)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.parametrize("kind", ["bounds", "linear_bound", "counterexample", "assume"])
def test_bundles_for_every_rule(setup, kit, kind):
    g = setup.graph
    s = claims.ball(setup.x0, "1/64", clamp=(0, 1))
    if kind == "bounds":
        lo, hi = kit.ibp(g, [v - Fraction(1, 64) for v in setup.x0],
                         [v + Fraction(1, 64) for v in setup.x0])[g.outputs[0]]
        claim, cert, level = claims.bounds(g, s, lo, hi), proof.ibp(), Level.PROVED
    elif kind == "linear_bound":
        claim = robustness.margin(g, setup.x0, "1/1048576", setup.label, "1/1000")
        cert, level = proof.ibp(), Level.PROVED
    elif kind == "counterexample":
        wrong = (setup.label + 1) % 3  # the point's own output is in 'y_wrong - y_j <= 0'?
        unsat = robustness.robust(g, setup.x0, "1/64", wrong)
        claim, cert, level = claims.counterexample(unsat, setup.x0), \
            proof.counterexample_cert(), Level.PROVED
    else:
        claim = robustness.robust(g, setup.x0, "1/2", setup.label)
        cert = proof.assume("user.hypothesis", reason="trust me", tool="pytest")
        level = Level.SHAPE_CHECKED
    path = proof.write_bundle(os.path.join(setup.folder, f"{kind}.json"), claim, cert,
                              setup.graph_path, g)
    thm, _ = check_bundle(path)
    assert thm.level is level and thm.claim == claim
    if kind == "assume":
        proc = run_cli(path, cwd=kit.repo)
        assert proc.returncode == 0
        assert proc.stdout.strip() == "holds: unsat by assume, level shape-checked, " \
                                      "1 assumption(s)"


def test_golden_bundle_fixture(kit):
    """A bundle written once and kept on disk: the format and the hashes stay checkable."""
    folder = os.path.join(kit.fixtures, "golden")
    thm, doc = check_bundle(os.path.join(folder, "bundle.json"))
    assert thm.level is Level.PROVED and thm.claim.kind == "bounds"
    assert [str(v) for v in thm.claim.lo] == ["-49/16", "-15/16"]
    assert [str(v) for v in thm.claim.hi] == ["47/16", "67/64"]
    data = open(os.path.join(folder, "graph.json"), "rb").read()
    assert doc["artifacts"]["graph"]["sha256"] == hashlib.sha256(data).hexdigest()
    refused(os.path.join(folder, "bundle_shrunk.json"), "ibp", "claim.hi[0]",
            contains="is below the kernel's bound")


def test_golden_bounds_equal_hand_interval_arithmetic(kit):
    """The golden claim's bounds, recomputed by hand-written interval arithmetic."""
    folder = os.path.join(kit.fixtures, "golden")
    w = {k: v for k, v in load_safetensors(open(os.path.join(folder, "weights.safetensors"),
                                                 "rb").read()).items()}
    lo = [Fraction(0), Fraction(-1, 2), Fraction(1, 4)]
    hi = [Fraction(1), Fraction(1, 2), Fraction(3, 4)]

    def layer(lo, hi, weight, bias):
        out_lo, out_hi = [], []
        for row, b in zip(weight, bias):
            a = Fraction(float(b)) + sum(min(Fraction(float(c)) * x, Fraction(float(c)) * y)
                                         for c, x, y in zip(row, lo, hi))
            z = Fraction(float(b)) + sum(max(Fraction(float(c)) * x, Fraction(float(c)) * y)
                                         for c, x, y in zip(row, lo, hi))
            out_lo.append(a)
            out_hi.append(z)
        return out_lo, out_hi

    h_lo, h_hi = layer(lo, hi, w["fc1.weight"], w["fc1.bias"])
    h_lo, h_hi = [max(v, 0) for v in h_lo], [max(v, 0) for v in h_hi]
    y_lo, y_hi = layer(h_lo, h_hi, w["fc2.weight"], w["fc2.bias"])
    assert y_lo == [Fraction(-49, 16), Fraction(-15, 16)]
    assert y_hi == [Fraction(47, 16), Fraction(67, 64)]


# ---------------------------------------------------------------- tampering

def test_weight_bit_flip(setup):
    data = setup.flip_weight_bit()
    err = refused(setup.bundle, "graph", "weights.sha256", contains="sha256 mismatch")
    assert hashlib.sha256(data).hexdigest() in err.message


def test_weight_bit_flip_with_graph_rebound(setup):
    """The forger also updates graph.json's weights hash: now the graph hash is wrong."""
    data = setup.flip_weight_bit()
    setup.rebind_graph_to_weights(data)
    refused(setup.bundle, "bundle", "artifacts.graph.sha256", contains="sha256 mismatch")


def test_weight_bit_flip_with_graph_and_bundle_graph_hash_rebound(setup):
    data = setup.flip_weight_bit()
    new_graph_sha = setup.rebind_graph_to_weights(data)
    doc = setup.doc()
    doc["artifacts"]["graph"]["sha256"] = new_graph_sha
    setup.write(doc)
    refused(setup.bundle, "bundle", "artifacts.weights.sha256", contains="sha256 mismatch")
    doc["artifacts"]["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    setup.write(doc)
    # (the claim still names the old graph: refused before any rule runs)
    refused(setup.bundle, "bundle", "claim.graph", contains="about artifacts.graph")


def test_graph_json_edited(setup):
    gdoc = json.load(open(setup.graph_path))
    with open(setup.graph_path, "w") as f:
        json.dump(gdoc, f, indent=2)  # the same graph, other bytes
    refused(setup.bundle, "bundle", "artifacts.graph.sha256", contains="sha256 mismatch")
    gdoc["nodes"][1]["attrs"]["bias"] = None  # a real edit: drop the first bias
    with open(setup.graph_path, "w") as f:
        json.dump(gdoc, f, indent=1)
    refused(setup.bundle, "bundle", "artifacts.graph.sha256")


def test_claim_changed_without_updating_spec(setup):
    doc = setup.doc()
    doc["claim"]["input_set"]["eps"] = "1/2"
    setup.write(doc)
    err = refused(setup.bundle, "bundle", "artifacts.spec.sha256", contains="sha256 mismatch")
    assert doc["artifacts"]["spec"]["sha256"] in err.message


def test_claim_changed_with_spec_updated_is_checked_on_its_merits(setup):
    doc = setup.doc()
    claim = robustness.robust(setup.graph, setup.x0, 1, setup.label, name="tiny robustness")
    doc["claim"] = claim.to_json()
    doc["artifacts"]["spec"]["sha256"] = claim.spec_sha256()
    setup.write(doc)
    with pytest.raises(KernelError) as info:
        check_bundle(setup.bundle)
    assert info.value.rule == "ibp" and info.value.path.startswith("claim.unsafe[")


def test_claim_name_is_part_of_the_spec(setup):
    doc = setup.doc()
    doc["claim"]["name"] = "something else"
    setup.write(doc)
    refused(setup.bundle, "bundle", "artifacts.spec.sha256")


@pytest.mark.parametrize("mutate, rule, path, fragment", [
    (lambda d: d.update(format="tl.bundle.v2"), "bundle", "format", "expected 'tl.bundle.v1'"),
    (lambda d: d.pop("format"), "bundle", "format", "found None"),
    (lambda d: d["certificate"].update(rule="ibp2"), "derive", "certificate.rule",
     "expected one of"),
    (lambda d: d.update(certificate={"rule": "crown_magic"}), "derive", "certificate.rule",
     "'crown_magic'"),
    (lambda d: d.update(extra=1), "bundle", "<bundle>", "unexpected keys ['extra']"),
    (lambda d: d.pop("artifacts"), "bundle", "<bundle>", "missing ['artifacts']"),
    (lambda d: d.update(artifacts=[]), "bundle", "artifacts", "expected an object"),
    (lambda d: d["artifacts"].update(graph={"sha256": "0" * 64}), "bundle", "artifacts.graph",
     "path"),
    (lambda d: d["artifacts"]["graph"].pop("sha256"), "bundle", "artifacts.graph",
     "expected an object with a sha256"),
    (lambda d: d["artifacts"].update(weights=None), "bundle", "artifacts.weights",
     "disagree on whether there is a weights file"),
    (lambda d: d["artifacts"].update(spec={}), "bundle", "artifacts.spec",
     "expected an object with a sha256"),
    (lambda d: d.update(producer=[]), "bundle", "producer", "expected an object"),
    (lambda d: d["claim"].update(semantics="float32"), "claim", "claim.semantics",
     "expected 'real' for a claim of kind"),
])
def test_malformed_bundles(setup, mutate, rule, path, fragment):
    doc = setup.doc()
    mutate(doc)
    setup.write(doc)
    refused(setup.bundle, rule, path, contains=fragment)


def test_bundle_with_nan_token_or_unreadable(setup, kit):
    text = open(setup.bundle).read().replace('"1/1048576"', "NaN", 1)
    with open(setup.bundle, "w") as f:
        f.write(text)
    err = refused(setup.bundle, "bundle", setup.bundle, contains="non-finite")
    assert "NaN" in err.message
    missing = os.path.join(kit.folder("nobundle"), "bundle.json")
    refused(missing, "bundle", missing, contains="cannot read bundle")
    proc = run_cli(missing, cwd=kit.repo)
    assert proc.returncode == 1 and proc.stderr.startswith("rejected: bundle: ")


def test_bundle_paths_must_name_regular_files(setup):
    """Content is bound by sha256, but a path to a device (/dev/zero) would be read without end:
    refused before reading."""
    doc = setup.doc()
    doc["artifacts"]["graph"]["path"] = "/dev/zero"
    setup.write(doc)
    refused(setup.bundle, "graph", "/dev/zero", contains="not a regular file")


def test_bundle_graph_file_missing(setup):
    os.remove(setup.graph_path)
    with pytest.raises(KernelError) as info:
        check_bundle(setup.bundle)
    assert info.value.rule == "graph" and "cannot read graph file" in info.value.message


def test_bundle_moved_with_its_files_still_checks(setup, kit):
    target = os.path.join(kit.folder("moved"), "copy")
    shutil.copytree(setup.folder, target)
    thm, _ = check_bundle(os.path.join(target, "proof", "bundle.json"))
    assert thm.level is Level.PROVED
