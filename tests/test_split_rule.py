"""Rule `split` (branch and bound over input pieces and ReLU phases, kernel_checker/crown.py,
docs/crown_certificate.md): certificates from the branch-and-bound producer (`oracles.bab`) for
claims plain CROWN and alpha-CROWN cannot prove are accepted, and so are hand-built input splits
and relu splits with an empty child; pieces that leave a single dyadic point uncovered, reach
outside the parent or miss its end, leaves raised one 2^-40 step past the kernel's exact bound,
leaves made for another piece or spec, and relu splits on the wrong node or index are rejected
naming the rule and the certificate field. Split bundles re-check in a fresh process. A split's
`intermediate` bound lets ibp leaves below it hold, serves its own subtree only, and is rejected
one 2^-40 step past the kernel's bound."""

import copy
import json
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from flint import fmpq
from hypothesis import given, settings
from hypothesis import strategies as st
from rule_helpers import build_mlp, enc, fr, q, randn, rejected, set_bound, side_value  # noqa: E402

from kernel_checker import check_bundle, crown
from kernel_checker.claims import Box
from kernel_checker.errors import KernelError
from kernel_checker.graph import load_graph
from kernel_checker.rules import box_interval
from kernel_checker.tensor import numel
from kernel_checker.theorem import Level
from oracles.bab import prove_with_bab
from oracles.bounds_torch import crown_certificate
from stdlib import robustness
from tl_dsl import claims, proof
from tl_dsl.builder import GraphBuilder

torch.set_num_threads(1)

ULP = Fraction(1, 2**40)
X0 = [Fraction(1, 2)] * 3
EPS_ALPHA = Fraction(1, 2)  # CROWN fails, alpha-CROWN proves; CROWN proves thirds along dim 1
EPS_BAB = Fraction(3, 4)  # CROWN and alpha-CROWN fail; branch and bound proves










def accepted(claim, cert, graph):
    thm = proof.check(claim, cert, graph)
    assert (thm.rule, thm.level, thm.assumptions) == ("split", Level.PROVED, frozenset())
    return thm






class Net:
    def __init__(self, built):
        self.path, self.folder, self.graph = built.path, built.folder, built.graph
        self.alpha_claim = robustness.robust(self.graph, X0, EPS_ALPHA, 0, clamp=None)
        self.bab_claim = robustness.robust(self.graph, X0, EPS_BAB, 0, clamp=None)
        self.bab = {s: prove_with_bab(self.path, self.bab_claim, 30, strategy=s)
                    for s in ("input", "relu")}

    def box(self, claim):
        return claim.input_set.as_box()

    def leaf(self, claim, lo, hi, method="crown", phases=None):
        """A producer crown certificate for `claim` on the box [lo, hi] (exact dyadics)."""
        dom = {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi]}
        if phases:
            dom["relu"] = phases
        cert, _ = crown_certificate(self.path, claim, method, domain=dom)
        return cert

    def input_split(self, claim, dim, cuts, method="crown", pieces=None):
        """An input split of `claim` along `dim` at `cuts` (inner points), leaves by the
        producer on each piece; `pieces` overrides the pieces written (not the leaves)."""
        box = self.box(claim)
        lo, hi = [fr(v) for v in box.lo], [fr(v) for v in box.hi]
        ends = [lo[dim], *cuts, hi[dim]]
        made = list(zip(ends, ends[1:]))
        children = []
        for a, b in made:
            plo, phi = list(lo), list(hi)
            plo[dim], phi[dim] = a, b
            children.append(self.leaf(claim, plo, phi, method))
        written = pieces if pieces is not None else made
        return {"rule": "split", "split": {"kind": "input", "dim": dim,
                                           "pieces": [[enc(a), enc(b)] for a, b in written]},
                "children": children}


@pytest.fixture(scope="module")
def net(kit):
    return Net(kit.save(build_mlp(), "split_mlp"))


def walk(graph, cert, dom, path="certificate"):
    """(leaf certificate, its domain, its path) for every non-empty leaf, as the kernel splits."""
    if cert["rule"] != "split":
        yield cert, dom, path
        return
    sp = cert["split"]
    if sp["kind"] == "input":
        for i, (a, b) in enumerate(sp["pieces"]):
            box = crown._with_dim(dom.box, sp["dim"], q(Fraction(a)), q(Fraction(b)))
            yield from walk(graph, cert["children"][i], crown.Domain(box, dom.phases),
                            f"{path}.children[{i}]")
        return
    for i, sign in enumerate((-1, 1)):
        phases = {k: dict(v) for k, v in dom.phases.items()}
        if phases.setdefault(sp["node"], {}).get(sp["index"], sign) != sign:
            continue
        phases[sp["node"]][sp["index"]] = sign
        yield from walk(graph, cert["children"][i], crown.Domain(dom.box, phases),
                        f"{path}.children[{i}]")


def root_domain(graph, claim):
    return crown.Domain(box_interval(claim.input_set.as_box(), graph.the_input("t", "t").shape))


def exact_entry_lows(graph, entry, dom):
    """The kernel's exact bounds (lo list, hi list) for a leaf's first intermediate entry."""
    chain = crown.ancestors(graph, entry["node"], "crown")
    n = numel(graph.by_id[entry["node"]].shape)
    idx = entry.get("indices", list(range(n)))
    rows = [[fmpq(1) if i == j else fmpq(0) for i in range(n)] for j in idx]
    rows += [[-v for v in r] for r in rows]
    values = crown.forward(graph, chain, dom, {})
    lows = crown.lower_bounds(graph, chain, values, dom, rows, entry, "crown", "t")
    m = len(idx)
    return [fr(v) for v in lows[:m]], [-fr(v) for v in lows[m:]]


# ---------------------------------------------------------------------------------------------
# must accept


@pytest.mark.parametrize("strategy", ["input", "relu"])
def test_branch_and_bound_certificates_prove_what_crown_cannot(net, strategy):
    g, claim = net.graph, net.bab_claim
    for method in ("crown", "alpha"):
        cert, _ = crown_certificate(net.path, claim, method)
        rejected(claim, cert, g, rule="crown", path="claim.unsafe[0]", contains="not excluded")
    res = net.bab[strategy]
    assert res.status == "proved", res.stats
    cert = res.certificate
    json.dumps(cert)
    assert cert["rule"] == "split" and cert["split"]["kind"] == strategy
    accepted(claim, cert, g)
    leaves = list(walk(g, cert, root_domain(g, claim)))
    assert len(leaves) == res.stats["leaves"] >= 2
    assert all(leaf["rule"] == "crown" for leaf, _, _ in leaves)


def test_hand_built_input_split_into_three_pieces(net):
    g, claim = net.graph, net.alpha_claim
    plain, _ = crown_certificate(net.path, claim, "crown")
    rejected(claim, plain, g, rule="crown", path="claim.unsafe[0]")
    cert = net.input_split(claim, 1, [Fraction(1, 4), Fraction(5, 8)])
    assert len(cert["split"]["pieces"]) == 3
    accepted(claim, cert, g)
    # overlapping pieces that still cover are fine too (each leaf holds on a larger piece)
    wide = copy.deepcopy(cert)
    wide["split"]["pieces"][1] = ["3/16", "5/8"]
    wide["children"][1] = net.leaf(claim, [0, Fraction(3, 16), 0], [1, Fraction(5, 8), 1],
                                   "alpha")
    accepted(claim, wide, g)


@pytest.mark.parametrize("extra", [{"sign": 1}, {"pieces": []}])
def test_split_specs_with_keys_of_no_kind_are_refused(net, extra):
    """An input or relu split ignored keys it does not read ({"kind": "relu", ..., "sign": 1}
    was accepted with sign unread), where a polytope split refused them (a review)."""
    g, claim = net.graph, net.alpha_claim
    cert = net.input_split(claim, 1, [Fraction(1, 4), Fraction(5, 8)])
    for spec in (dict(cert["split"], **extra), {"kind": "relu", "node": "fc1", "index": 0,
                                                **extra}):
        if spec["kind"] == "input" and "pieces" in extra:
            spec = {k: v for k, v in spec.items() if k != "dim"}  # (a missing key instead)
        bad = dict(cert, split=spec)
        rejected(claim, bad, g, rule="split", path="certificate.split",
                 contains=f"keys for a {spec['kind']} split")


def test_nested_splits_and_ibp_leaves(net):
    """An input split whose second piece is split again along another dim; some leaves ibp."""
    g, claim = net.graph, net.alpha_claim
    inner = net.input_split(claim, 1, [Fraction(1, 2)], method="alpha")
    # the right half of dim 1, then halves of dim 0 on it
    right = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": [["0", "1/2"],
                                                                               ["1/2", "1"]]},
             "children": [net.leaf(claim, [0, Fraction(1, 2), 0], [Fraction(1, 2), 1, 1],
                                   "alpha"),
                          net.leaf(claim, [Fraction(1, 2), Fraction(1, 2), 0], [1, 1, 1],
                                   "alpha")]}
    inner["children"][1] = right
    accepted(claim, inner, g)
    # a small claim ibp proves: leaves "ibp"
    tiny = robustness.robust(g, X0, Fraction(1, 64), 0, clamp=None)
    cert = {"rule": "split", "split": {"kind": "input", "dim": 2, "pieces": [
        ["31/64", "1/2"], ["1/2", "33/64"]]}, "children": [{"rule": "ibp"}, {"rule": "ibp"}]}
    accepted(tiny, cert, g)


def _stable(net, claim):
    """A pre-activation neuron (node, index, sign) that is stable on the claim's box."""
    g = net.graph
    dom = root_domain(g, claim)
    chain = crown.ancestors(g, "fc3", "crown")
    values = crown.forward(g, chain, dom, {})
    for node in ("fc1", "fc2"):
        iv = values[node]
        for j, (a, b) in enumerate(zip(iv.lo, iv.hi)):
            if a > 0:
                return node, j, 1
            if b < 0:
                return node, j, -1
    raise AssertionError("no stable neuron")


def test_relu_split_with_an_empty_child_holds_vacuously(net):
    g = net.graph
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    node, j, sign = _stable(net, claim)
    proved, _ = crown_certificate(net.path, claim, "crown")
    rejected(claim, {"rule": "ibp"}, g, rule="ibp", path="claim.unsafe[0]")
    empty = {"rule": "ibp"}  # would fail if its piece held any point
    children = [empty, proved] if sign > 0 else [proved, empty]
    cert = {"rule": "split", "split": {"kind": "relu", "node": node, "index": j},
            "children": children}
    accepted(claim, cert, g)
    # the other way round the ibp leaf is on the whole box again: refused
    cert["children"] = children[::-1]
    rejected(claim, cert, g, rule="ibp", path="claim.unsafe[0]")


def test_interval_replay_finds_a_domain_emptied_by_bounds_or_phases(net):
    """Only certified bounds and phases can empty an interval (exact interval steps keep boxes
    nonempty): the replay finds either, on any neuron, and nothing else."""
    g = net.graph
    claim = robustness.robust(g, X0, Fraction(3, 8), 0, clamp=None)
    dom = root_domain(g, claim)
    chain = crown.ancestors(g, "fc3", "crown")
    values = crown.forward(g, chain, dom, {})
    assert values is not None
    iv = values["fc2"]
    for j in (0, len(iv.lo) - 1):
        lo, hi = list(iv.lo), list(iv.hi)
        lo[j] = hi[j] + 1  # a bound above the interval: no point left
        g._cache.clear()
        assert crown.forward(g, chain, dom, {"fc2": (lo, hi, iv.den)}) is None
        g._cache.clear()
        assert crown.forward(g, chain, dom, {"fc2": (list(iv.lo), hi, iv.den)}) is not None
    node, j, sign = _stable(net, claim)
    for s, empty in ((sign, False), (-sign, True)):
        g._cache.clear()
        phased = crown.Domain(dom.box, {node: {j: s}})
        assert (crown.forward(g, chain, phased, {}) is None) == empty


def test_relu_split_repeated_on_the_same_neuron_skips_the_contradictory_child(net):
    g, claim = net.graph, net.bab_claim
    res = net.bab["relu"]
    top = res.certificate["split"]
    # split again on the same neuron inside child 0 (z <= 0): its child 1 (z >= 0) is empty
    again = {"rule": "split", "split": dict(top),
             "children": [res.certificate["children"][0], {"rule": "ibp"}]}
    cert = {"rule": "split", "split": dict(top),
            "children": [again, res.certificate["children"][1]]}
    accepted(claim, cert, g)


# ---------------------------------------------------------------------------------------------
# must reject: pieces


def _halves(net):
    """A valid split of the alpha claim at dim 1 = 1/2 (leaves alpha-CROWN on each half)."""
    return net.input_split(net.alpha_claim, 1, [Fraction(1, 2)], method="alpha")


def test_two_halves_accepted(net):
    accepted(net.alpha_claim, _halves(net), net.graph)


def test_a_single_dyadic_point_left_uncovered_is_rejected(net):
    cert = _halves(net)
    cert["split"]["pieces"][1] = [enc(Fraction(1, 2) + ULP), "1"]
    err = rejected(net.alpha_claim, cert, net.graph, rule="split",
                   path="certificate.split.pieces[1]", contains="gap")
    assert "1/2" in err.message and enc(Fraction(1, 2) + ULP) in err.message


def test_pieces_that_only_overlap_and_miss_the_end_are_rejected(net):
    cert = _halves(net)
    cert["split"]["pieces"][1] = ["0", "1/2"]
    cert["children"][1] = cert["children"][0]
    rejected(net.alpha_claim, cert, net.graph, rule="split", path="certificate.split.pieces",
             contains=("gap", "1/2", "1]"))
    cert = _halves(net)
    cert["split"]["pieces"][1] = ["1/2", enc(1 - ULP)]
    rejected(net.alpha_claim, cert, net.graph, rule="split", path="certificate.split.pieces",
             contains="gap")


@pytest.mark.parametrize("pieces,bad", [
    ([["-1/8", "1/2"], ["1/2", "1"]], 0),
    ([["0", "1/2"], ["1/2", "1099511627777/1099511627776"]], 1),
    ([["0", "1/2"], ["1/2", "2"]], 1),
    ([["1/2", "1/4"], ["1/4", "1"]], 0),  # lo > hi
])
def test_a_piece_outside_the_parent_is_rejected(net, pieces, bad):
    cert = _halves(net)
    cert["split"]["pieces"] = pieces
    rejected(net.alpha_claim, cert, net.graph, rule="split",
             path=f"certificate.split.pieces[{bad}]", contains="is not inside the parent")


def test_unsorted_pieces_and_a_late_start_are_rejected(net):
    cert = _halves(net)
    cert["split"]["pieces"] = cert["split"]["pieces"][::-1]
    cert["children"] = cert["children"][::-1]
    rejected(net.alpha_claim, cert, net.graph, rule="split", path="certificate.split.pieces[0]",
             contains="gap")
    cert = _halves(net)
    cert["split"]["pieces"][0] = [enc(ULP), "1/2"]
    rejected(net.alpha_claim, cert, net.graph, rule="split", path="certificate.split.pieces[0]",
             contains="gap")


@pytest.mark.parametrize("change,path,fragment", [
    (lambda c: c["children"].append(c["children"][0]), "certificate.split.pieces",
     "expected one [lo, hi] per child (at least 2)"),
    (lambda c: c["children"].pop(), "certificate.split.pieces", "for 1 children"),
    (lambda c: (c["children"].pop(), c["split"]["pieces"].pop()), "certificate.split.pieces",
     "at least 2"),
    (lambda c: c["split"].update(dim=3), "certificate.split.dim", "expected an input index < 3"),
    (lambda c: c["split"].update(dim=True), "certificate.split.dim", ""),
    (lambda c: c["split"].update(dim=-1), "certificate.split.dim", ""),
    (lambda c: c["split"].update(kind="box"), "certificate.split.kind",
     "'input', 'relu' or 'polytope'"),
    (lambda c: c["split"]["pieces"].__setitem__(0, ["0"]), "certificate.split.pieces[0]",
     "expected 2 numbers"),
    (lambda c: c.update(extra=1), "certificate", "unexpected keys ['extra']"),
    (lambda c: c.update(split=[]), "certificate", "expected {split: {...}, children: [...]}"),
    (lambda c: c["children"].__setitem__(0, {"rule": "weaken"}), "certificate.children[0].rule",
     "expected split, crown or ibp, found 'weaken'"),
    (lambda c: c["children"].__setitem__(1, {"rule": "ibp", "x": 1}), "certificate.children[1]",
     "unexpected keys"),
])
def test_malformed_input_splits_are_rejected(net, change, path, fragment):
    cert = _halves(net)
    change(cert)
    with pytest.raises(KernelError) as info:
        proof.check(net.alpha_claim, cert, net.graph)
    assert info.value.path == path and fragment in info.value.message, info.value
    assert info.value.rule in ("split", "ibp"), info.value


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=2, max_size=4))
def test_input_pieces_are_accepted_only_when_they_cover(net, kit, pieces):
    """Pieces on a 1/8 grid of dim 0 (ibp leaves, which hold on any piece for the whole box's
    interval bounds): accepted only if every point of the 1/16 grid is covered (a point in
    every cell between breakpoints); and every sorted covering is accepted."""
    g = net.graph
    box = claims.box([0, 0, 0], [1, 1, 1])
    lo, hi = kit.ibp(g, [0] * 3, [1] * 3)["fc3"]
    claim = claims.bounds(g, box, lo, hi)
    pieces = [(min(a, b), max(a, b)) for a, b in pieces]
    cert = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": [
        [enc(Fraction(a, 8)), enc(Fraction(b, 8))] for a, b in pieces]},
        "children": [{"rule": "ibp"}] * len(pieces)}
    covered = all(any(2 * a <= i <= 2 * b for a, b in pieces) for i in range(17))
    try:
        proof.check(claim, cert, g)
        ok = True
    except KernelError as err:
        assert err.rule == "split" and err.path.startswith("certificate.split.pieces"), err
        ok = False
    if ok:
        assert covered, pieces
    if covered and pieces == sorted(pieces):
        assert ok, pieces


# ---------------------------------------------------------------------------------------------
# must reject: leaves


@pytest.mark.parametrize("strategy", ["input", "relu"])
def test_one_leaf_bound_raised_one_step_is_rejected(net, strategy):
    g, claim = net.graph, net.bab_claim
    cert = copy.deepcopy(net.bab[strategy].certificate)
    leaves = [(leaf, dom, path) for leaf, dom, path in walk(g, cert, root_domain(g, claim))
              if leaf.get("intermediate")]
    leaf, dom, path = leaves[-1]
    entry = leaf["intermediate"][0]
    lo, hi = exact_entry_lows(g, entry, dom)
    k = len(lo) // 2
    assert fr(side_value(entry, "lo", k)) <= lo[k]
    set_bound(entry, "lo", k, lo[k])  # the kernel's exact bound: still accepted
    set_bound(entry, "hi", k, hi[k])
    accepted(claim, cert, g)
    set_bound(entry, "lo", k, lo[k] + ULP)
    rejected(claim, cert, g, rule="crown", path=f"{path}.intermediate[0].lo[{k}]",
             contains="above the kernel's bound")
    set_bound(entry, "lo", k, lo[k])
    set_bound(entry, "hi", k, hi[k] - ULP)
    rejected(claim, cert, g, rule="crown", path=f"{path}.intermediate[0].hi[{k}]",
             contains="below the kernel's bound")


def _refused_in_a_leaf(claim, cert, graph, leaf_path):
    """The kernel refuses; at the leaf's own field, or at the claim field the leaf fails to
    prove (the crown rule's conclusion names the claim, not the leaf)."""
    with pytest.raises(KernelError) as info:
        proof.check(claim, cert, graph)
    err = info.value
    assert err.rule == "crown", err
    assert err.path.startswith(leaf_path + ".") or err.path.startswith("claim.unsafe["), err
    return err


def test_a_leaf_made_for_another_piece_is_rejected(net):
    g, claim = net.graph, net.alpha_claim
    cert = net.input_split(claim, 1, [Fraction(1, 4), Fraction(5, 8)])
    cert["children"][2] = copy.deepcopy(cert["children"][0])
    _refused_in_a_leaf(claim, cert, g, "certificate.children[2]")


def test_a_leaf_made_for_another_spec_is_rejected(net):
    """A leaf made for the claim on a smaller ball (its intermediate bounds are too tight for
    this piece), and a whole tree made for the ball moved by 1/8."""
    g, claim = net.graph, net.alpha_claim
    small = robustness.robust(g, X0, Fraction(1, 4), 0, clamp=None)
    cert = _halves(net)
    made = net.leaf(small, [Fraction(1, 4), Fraction(1, 2), Fraction(1, 4)], [Fraction(3, 4)] * 3,
                    "alpha")
    cert["children"][1] = made
    err = _refused_in_a_leaf(claim, cert, g, "certificate.children[1]")
    assert err.path.startswith("certificate.children[1].intermediate[0]."), err
    # and a whole tree made for a wider ball does not transfer to a shifted ball
    shifted = robustness.robust(g, [Fraction(5, 8)] * 3, EPS_BAB, 0, clamp=None)
    with pytest.raises(KernelError) as info:
        proof.check(shifted, net.bab["input"].certificate, g)
    assert info.value.rule in ("crown", "split"), info.value


# ---------------------------------------------------------------------------------------------
# must reject: relu splits


@pytest.mark.parametrize("node", ["relu1", "fc3", "x", "nope", 3])
def test_relu_split_on_a_node_that_is_no_relu_input_is_rejected(net, node):
    cert = copy.deepcopy(net.bab["relu"].certificate)
    cert["split"]["node"] = node
    rejected(net.bab_claim, cert, net.graph, rule="split", path="certificate.split.node",
             contains=("expected the input node of a relu (not the graph's input) among "
                       "['fc1', 'fc2']",
                       repr(node)))


@pytest.mark.parametrize("index", [8, -1, True, "0", None, 2.0])
def test_relu_split_index_out_of_range_is_rejected(net, index):
    cert = copy.deepcopy(net.bab["relu"].certificate)
    cert["split"]["index"] = index
    rejected(net.bab_claim, cert, net.graph, rule="split", path="certificate.split.index",
             contains="expected a neuron index < 8")


@pytest.mark.parametrize("n", [1, 3])
def test_relu_split_with_the_wrong_number_of_children_is_rejected(net, n):
    cert = copy.deepcopy(net.bab["relu"].certificate)
    cert["children"] = (cert["children"] * 2)[:n]
    rejected(net.bab_claim, cert, net.graph, rule="split", path="certificate.children",
             contains=f"exactly 2 children (z <= 0, z >= 0), found {n}")


def test_relu_split_children_swapped_is_rejected(net):
    """The children are in phase order (z <= 0, then z >= 0); leaves proved for one phase do not
    hold for the other."""
    cert = copy.deepcopy(net.bab["relu"].certificate)
    cert["children"] = cert["children"][::-1]
    _refused_in_a_leaf(net.bab_claim, cert, net.graph, "certificate.children")


def test_split_on_a_graph_with_an_unsupported_op_is_rejected(kit):
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    x = g.input([1, 4, 4])
    h = g.abs(g.relu(g.conv2d(x, randn(rng, 2, 1, 3, 3), None, padding=(1, 1), name="conv")))
    g.output(g.linear(g.flatten(h), randn(rng, 2, 32), None, name="fc"))
    built = kit.save(g, "split_abs")
    bad = next(n.id for n in built.graph.nodes if n.op == "abs")
    box = Box(tuple([fmpq(0)] * 16), tuple([fmpq(1, 8)] * 16))
    claim = claims.bounds(built.graph, box, [-100, -100], [100, 100])
    cert = {"rule": "split", "split": {"kind": "relu", "node": "conv", "index": 0},
            "children": [{"rule": "crown"}, {"rule": "crown"}]}
    rejected(claim, cert, built.graph, rule="split", path=f"node {bad!r}",
             contains=("op 'abs' is not supported", "'maxpool2d'"))


# ---------------------------------------------------------------------------------------------
# bundles


def test_split_bundle_rechecks_in_a_fresh_process_and_tampering_is_refused(net, kit):
    folder = kit.folder("split_bundle")
    for name in ("graph.json", "weights.safetensors"):
        shutil.copy(os.path.join(net.folder, name), folder)
    gpath = os.path.join(folder, "graph.json")
    g = load_graph(gpath)
    assert g.sha256 == net.graph.sha256
    cert = net.bab["relu"].certificate
    bundle = proof.write_bundle(os.path.join(folder, "b", "split.json"), net.bab_claim, cert,
                                gpath, g, producer={"tool": "oracles.bab"})
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert ok, text
    assert text == "holds: unsat by split, level proved, 0 assumption(s)"
    with open(bundle) as f:
        doc = json.load(f)
    # a leaf raised inside the bundle: the fresh process names the leaf's field
    bad = copy.deepcopy(doc)
    leaf = bad["certificate"]["children"][1]
    leaf["intermediate"][0]["lo"][0] = leaf["intermediate"][0]["hi"][0]
    with open(bundle, "w") as f:
        json.dump(bad, f)
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert not ok and "certificate.children[1].intermediate[0].lo[0]" in text, text
    # the graph or the weights hash differs
    for key, path in (("graph", "artifacts.graph.sha256"),
                      ("weights", "artifacts.weights.sha256")):
        bad = copy.deepcopy(doc)
        bad["artifacts"][key]["sha256"] = "f" * 64
        with open(bundle, "w") as f:
            json.dump(bad, f)
        with pytest.raises(KernelError) as info:
            check_bundle(bundle)
        assert (info.value.rule, info.value.path) == ("bundle", path), info.value
    ok, text = proof.recheck_in_fresh_process(bundle)
    assert not ok and "rejected: bundle: artifacts.weights.sha256: sha256 mismatch" in text
    # a different weights file on disk (the graph binds its hash): refused when loading
    with open(bundle, "w") as f:
        json.dump(doc, f)
    wpath = os.path.join(folder, "weights.safetensors")
    data = bytearray(open(wpath, "rb").read())
    data[-1] ^= 1
    with open(wpath, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(KernelError) as info:
        check_bundle(bundle)
    assert (info.value.rule, info.value.path) == ("graph", "weights.sha256"), info.value


# ---------------------------------------------------------------------------------------------
# kernel bugs: crashes instead of KernelError


def test_relu_split_on_an_unhashable_node_is_a_kernel_error(net):
    cert = copy.deepcopy(net.bab["relu"].certificate)
    cert["split"]["node"] = ["fc2"]
    with pytest.raises(KernelError) as info:
        proof.check(net.bab_claim, cert, net.graph)
    assert (info.value.rule, info.value.path) == ("split", "certificate.split.node"), info.value


def test_a_deep_but_valid_split_tree_is_accepted_or_refused_never_a_crash(net):
    """1200 nested relu splits on one neuron (each inner split's second child is empty, so the
    tree has just the producer's two leaves): a valid certificate; the kernel must accept it or
    refuse it with a KernelError."""
    g, claim = net.graph, net.bab_claim
    top = net.bab["relu"].certificate
    cert = top["children"][0]
    for _ in range(1200):
        cert = {"rule": "split", "split": dict(top["split"]), "children": [cert, {"rule": "ibp"}]}
    cert = {"rule": "split", "split": dict(top["split"]), "children": [cert, top["children"][1]]}
    try:
        thm = proof.check(claim, cert, g)
    except KernelError:
        return
    assert thm.level == Level.PROVED


def test_split_of_a_claim_about_the_input_node_is_a_kernel_error(net):
    g = net.graph
    claim = claims.bounds(g, claims.box([0] * 3, [1] * 3), [0] * 3, [1] * 3, node="x")
    cert = {"rule": "split", "split": {"kind": "input", "dim": 0, "pieces": [["0", "1/2"],
                                                                           ["1/2", "1"]]},
            "children": [{"rule": "crown"}, {"rule": "ibp"}]}
    try:
        thm = proof.check(claim, cert, g)
    except KernelError as err:
        assert err.rule in ("crown", "split"), err
        return
    assert thm.level == Level.PROVED


# ---------------------------------------------------------------------------------------------
# a split's `intermediate` entries: proved on the split's domain, handed down to its subtree


@pytest.fixture(scope="module")
def absdiff(kit):
    """y = relu(s_0), s_i = relu(x0 - x1) + relu(x1 - x0) = |x0 - x1| on [0, 1]^2: interval
    replay gives y <= 2, while CROWN proves s_0 <= 1 (exactly: a chain the block route takes)."""
    g = GraphBuilder()
    h = g.input([2])
    h = g.linear(h, np.array([[1, -1], [-1, 1]], dtype=np.float32),
                 np.zeros(2, dtype=np.float32), name="d")
    h = g.relu(h)
    h = g.linear(h, np.ones((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32), name="s")
    h = g.relu(h)
    h = g.linear(h, np.array([[1, 0]], dtype=np.float32), np.zeros(1, dtype=np.float32),
                 name="y")
    g.output(h)
    built = kit.save(g, "absdiff")
    claim = claims.bounds(built.graph, claims.box([0, 0], [1, 1]), [-1], [1], node="y")
    return built.graph, claim


def _ibp_pair(inter=None, pieces=(("0", "1/2"), ("1/2", "1"))):
    """An input split of dim 0 into two pieces (by default halves), both leaves ibp."""
    cert = {"rule": "split", "split": {"kind": "input", "dim": 0,
                                       "pieces": [list(p) for p in pieces]},
            "children": [{"rule": "ibp"}, {"rule": "ibp"}]}
    if inter is not None:
        cert["intermediate"] = inter
    return cert


WHOLE = (("0", "1"), ("0", "1"))  # two pieces, each the whole box (they cover it)


S_LE_1 = [{"node": "s", "indices": [0], "lo": [None], "hi": ["1"]}]


def test_ibp_leaves_hold_by_the_bound_their_split_proves(absdiff):
    g, claim = absdiff
    rejected(claim, _ibp_pair(), g, rule="ibp", path="claim.hi[0]")
    accepted(claim, _ibp_pair(S_LE_1), g)
    # the same bound proved in one child serves that child's subtree only
    cert = _ibp_pair(pieces=WHOLE)
    cert["children"][0] = _ibp_pair(S_LE_1, WHOLE)
    rejected(claim, cert, g, rule="ibp", path="claim.hi[0]")
    cert["children"][1] = _ibp_pair(S_LE_1, WHOLE)
    accepted(claim, cert, g)


def test_a_split_bound_one_step_too_tight_is_rejected(absdiff):
    g, claim = absdiff
    tight = [{"node": "s", "indices": [0], "lo": [None], "hi": [enc(1 - ULP)]}]
    rejected(claim, _ibp_pair(tight), g, rule="crown",
             path="certificate.intermediate[0].hi[0]", contains="below the kernel's bound")


def test_relu_split_children_share_the_box_but_each_replays_its_own_phase(absdiff):
    """The kernel reuses a node's interval when its inputs are equal (relu-split children share
    their parent's box); each child still clips by its own phase: with d[0] <= 0
    interval replay proves y <= 1, with d[0] >= 0 it cannot (CROWN's s_0 <= 1 is needed)."""
    g, claim = absdiff
    ibp, crown_leaf = {"rule": "ibp"}, {"rule": "crown", "intermediate": S_LE_1}
    split = {"kind": "relu", "node": "d", "index": 0}  # children: d[0] <= 0, then d[0] >= 0
    for kids, ok in (([ibp, ibp], False), ([ibp, crown_leaf], True), ([crown_leaf, ibp], False),
                     ([crown_leaf, crown_leaf], True)):
        cert = {"rule": "split", "split": split, "children": copy.deepcopy(kids)}
        if ok:
            accepted(claim, cert, g)
        else:
            rejected(claim, cert, g, rule="ibp", path="claim.hi[0]")
