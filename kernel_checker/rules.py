"""The kernel's rules: each checks a certificate against a claim exactly and makes a Theorem.

Registry: `RULES[name](ctx, claim, certificate, path) -> Theorem`: `ibp`, `counterexample`,
`assume`, `agreement`, `crown`, `split` and the inference rules; a new rule plugs in with one
entry.
"""

from collections.abc import Callable

from flint import fmpq

from kernel_checker import crown, float32, inference
from kernel_checker.claims import Box, Claim, check_claim_shapes, parse_claim
from kernel_checker.errors import KernelError, refuse
from kernel_checker.exact import approx_text, common_denominator
from kernel_checker.graph import Graph
from kernel_checker.semantics import Interval, evaluate
from kernel_checker.tensor import lcm
from kernel_checker.theorem import ASSUMABLE, ASSUMPTIONS, Assumption, Level, Theorem, _derive


class Context:
    """The graphs a derivation may mention, by sha256 (all already well-formed)."""

    def __init__(self, graphs: list[Graph]):
        self.graphs = {g.sha256: g for g in graphs}

    def graph_for(self, claim: Claim, path: str) -> Graph:
        if claim.graph not in self.graphs:
            raise refuse("context", f"{path}.graph", f"no graph with sha256 {claim.graph} was "
                         f"loaded (loaded: {sorted(self.graphs)})")
        graph = self.graphs[claim.graph]
        check_claim_shapes(claim, graph, path)
        return graph


def _cert_keys(cert: object, rule: str, path: str, required: set, optional: set = frozenset()):
    if not isinstance(cert, dict):
        raise refuse(rule, path, "expected a certificate object")
    missing = required - set(cert)
    extra = set(cert) - required - set(optional) - {"rule"}
    if missing:
        raise refuse(rule, path, f"missing keys {sorted(missing)}")
    if extra:
        raise refuse(rule, path, f"unexpected keys {sorted(extra)}")
    return cert


def box_interval(box: Box, shape: tuple) -> Interval:
    lo, den_lo = common_denominator(list(box.lo))
    hi, den_hi = common_denominator(list(box.hi))
    den = lcm(den_lo, den_hi)
    return Interval(tuple(shape), [v * (den // den_lo) for v in lo],
                    [v * (den // den_hi) for v in hi], den)


def point_interval(values: tuple, shape: tuple) -> Interval:
    nums, den = common_denominator(list(values))
    return Interval(tuple(shape), nums, nums, den)


def row_min(row: tuple, y: Interval) -> fmpq:
    """min of row . v over the box y (exact)."""
    acc = 0
    for c, lo, hi in zip(row, y.lo, y.hi):
        if c > 0:
            acc += c * lo
        elif c < 0:
            acc += c * hi
    return fmpq(acc) / y.den


def row_max(row: tuple, y: Interval) -> fmpq:
    """max of row . v over the box y (exact): max(row . v) = -min((-row) . v)."""
    return -row_min(tuple(-c for c in row), y)


def check_output_box(claim: Claim, y: Interval, rule: str) -> None:
    """The claim follows from the output enclosure y (each spec row's minimum over the box)."""
    crown.conclude(claim, [row_min(r, y) for r in crown.spec_rows(claim, len(y.lo))], rule)


def _universal(claim: Claim, rule: str) -> None:
    if claim.kind not in ("bounds", "linear_bound", "unsat"):
        raise refuse(rule, "claim.kind", f"rule {rule} cannot conclude a {claim.kind} claim "
                     f"(it proves bounds, linear_bound or unsat claims)")


def rule_ibp(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """Interval bound propagation, computed by the kernel itself (nothing to carry)."""
    _universal(claim, "ibp")
    _cert_keys(cert, "ibp", path, set())
    graph = ctx.graph_for(claim, "claim")
    x = box_interval(claim.input_set.as_box(), graph.the_input("ibp", "claim").shape)
    y = evaluate(graph, x, upto=claim.node)[claim.node]
    check_output_box(claim, y, "ibp")
    return _derive(claim, "ibp")


def rule_counterexample(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """x* in S (exactly) and G(x*) inside one unsafe polytope (by exact evaluation)."""
    _cert_keys(cert, "counterexample", path, set())
    if claim.kind != "counterexample":
        raise refuse("counterexample", "claim.kind", f"expected 'counterexample', found "
                     f"{claim.kind!r}")
    graph = ctx.graph_for(claim, "claim")
    box = claim.input_set.as_box()
    for i, (v, lo, hi) in enumerate(zip(claim.point, box.lo, box.hi)):
        if not lo <= v <= hi:
            raise refuse("counterexample", f"claim.point[{i}]", f"the point is outside the input "
                         f"set: {v} not in [{lo}, {hi}]")
    shape = graph.the_input("counterexample", "claim").shape
    y = evaluate(graph, point_interval(claim.point, shape), upto=claim.node)[claim.node]
    reasons = []
    for k, poly in enumerate(claim.unsafe):
        for i, (row, b) in enumerate(zip(poly.a, poly.b)):
            m = row_max(row, y)
            if m > b:
                reasons.append(f"polytope {k} row {i}: A.y = {approx_text(m)} > b = {b}")
                break
        else:
            return _derive(claim, "counterexample")
    raise refuse("counterexample", "claim.unsafe", "the point's output lies in no unsafe "
                 "polytope: " + "; ".join(reasons))


def rule_agreement(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """The runtime's values lie in the kernel's enclosure of every binary32 evaluation
    (kernel_checker/float32.py); that they are what the runtime returned is the assumption
    runtime.<runtime>.outputs, with the certificate's provenance (device, sources, command)."""
    _cert_keys(cert, "agreement", path, {"provenance"})
    if claim.kind != "agreement":
        raise refuse("agreement", "claim.kind", f"expected 'agreement', found {claim.kind!r}")
    evidence = cert["provenance"]
    if not isinstance(evidence, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in evidence.items()):
        raise refuse("agreement", f"{path}.provenance", "expected an object of strings (device, "
                     "driver, sources' sha256, command)")
    if evidence.get("runtime") != claim.runtime:
        raise refuse("agreement", f"{path}.provenance.runtime", f"expected the claim's runtime "
                     f"{claim.runtime!r}, found {evidence.get('runtime')!r}")
    where = path[:-len("certificate")] + "claim"  # (a premise's claim, in a derivation)
    float32.check_agreement(ctx.graph_for(claim, where), claim, where)
    assumption = Assumption(f"runtime.{claim.runtime}.outputs", tuple(sorted(evidence.items())),
                            claim.spec_sha256())
    return _derive(claim, "agreement", {assumption})


def rule_assume(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """An explicit named assumption: the claim is shape-checked, not proved."""
    _cert_keys(cert, "assume", path, {"name", "evidence"})
    name = cert["name"]
    if not isinstance(name, str) or name not in ASSUMPTIONS:
        raise refuse("assume", f"{path}.name", f"expected a registered assumption name "
                     f"{sorted(ASSUMPTIONS)}, found {name!r}")
    if name not in ASSUMABLE:  # (else a permit for an oracle's or a runtime's name would admit
        # any claim a bundle's author chose to assume under it)
        raise refuse("assume", f"{path}.name", f"{name!r} is not assumed by hand: only the "
                     f"kernel rule that checks its oracle or runtime emits it (assume takes "
                     f"{list(ASSUMABLE)})")
    evidence = cert["evidence"]
    if not isinstance(evidence, dict) or not evidence or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in evidence.items()):
        raise refuse("assume", f"{path}.evidence", "expected a non-empty object of strings "
                     "(provenance: tool, version, command, input hash, the user's reason)")
    ctx.graph_for(claim, "claim")
    assumption = Assumption(name, tuple(sorted(evidence.items())), claim.spec_sha256())
    return _derive(claim, "assume", {assumption}, level=Level.SHAPE_CHECKED)


def rule_crown(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """Backward linear bounds with certified intermediate bounds (kernel_checker/crown.py)."""
    _universal(claim, "crown")
    graph = ctx.graph_for(claim, "claim")
    box = box_interval(claim.input_set.as_box(), graph.the_input("crown", "claim").shape)
    crown.check_crown(graph, claim, cert, crown.Domain(box), path)
    return _derive(claim, "crown")


def rule_split(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    """Branch and bound: children cover the domain exactly and each leaf holds on its piece."""
    _universal(claim, "split")
    graph = ctx.graph_for(claim, "claim")
    box = box_interval(claim.input_set.as_box(), graph.the_input("split", "claim").shape)
    crown.check_split(graph, claim, cert, crown.Domain(box), path, {"leaves": 0})
    return _derive(claim, "split")


def premise(ctx: Context, doc: object, path: str) -> Theorem:
    """A premise {"claim", "certificate"} inside a derivation, derived recursively."""
    if not isinstance(doc, dict) or set(doc) != {"claim", "certificate"}:
        raise refuse("derive", path, "expected a premise {claim, certificate}")
    return derive(ctx, parse_claim(doc["claim"], f"{path}.claim"), doc["certificate"],
                  f"{path}.certificate")


def _premise_list(ctx: Context, cert: dict, path: str) -> list[Theorem]:
    if not isinstance(cert.get("premises"), list) or not cert["premises"]:
        raise refuse(cert["rule"], f"{path}.premises", "expected a non-empty list of premises")
    return [premise(ctx, d, f"{path}.premises[{i}]") for i, d in enumerate(cert["premises"])]


def _one_premise(fn):
    def rule(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
        _cert_keys(cert, cert["rule"], path, {"premise"})
        return fn(premise(ctx, cert["premise"], f"{path}.premise"), claim)
    return rule


def rule_conjoin(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    _cert_keys(cert, "conjoin", path, {"premises"})
    return inference.conjoin(_premise_list(ctx, cert, path), claim)


def rule_cases(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    _cert_keys(cert, "cases", path, {"premises"})
    return inference.cases(_premise_list(ctx, cert, path), claim)


def rule_discharge(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    _cert_keys(cert, "discharge", path, {"premise", "proof"})
    thm = inference.discharge(premise(ctx, cert["premise"], f"{path}.premise"),
                              premise(ctx, cert["proof"], f"{path}.proof"))
    if thm.claim != claim:
        raise refuse("discharge", "claim", "the conclusion must be the premise's claim")
    return thm


def rule_compose(ctx: Context, claim: Claim, cert: dict, path: str) -> Theorem:
    _cert_keys(cert, "compose", path, {"first", "second"})
    ctx.graph_for(claim, "claim")
    return inference.compose(premise(ctx, cert["first"], f"{path}.first"),
                             premise(ctx, cert["second"], f"{path}.second"), claim, ctx.graphs)


RULES: dict[str, Callable[[Context, Claim, dict, str], Theorem]] = {
    "weaken": _one_premise(inference.weaken),
    "project": _one_premise(inference.project),
    "unsat_from_bounds": _one_premise(inference.unsat_from_bounds),
    "conjoin": rule_conjoin,
    "cases": rule_cases,
    "discharge": rule_discharge,
    "compose": rule_compose,
    "ibp": rule_ibp,
    "crown": rule_crown,
    "split": rule_split,
    "counterexample": rule_counterexample,
    "agreement": rule_agreement,
    "assume": rule_assume,
}


def derive(ctx: Context, claim: Claim, cert: object, path: str = "certificate") -> Theorem:
    """Check `cert` for `claim` with the rule it names."""
    if not isinstance(cert, dict) or not isinstance(cert.get("rule"), str) or (
            cert["rule"] not in RULES):
        found = cert.get("rule") if isinstance(cert, dict) else cert
        raise refuse("derive", f"{path}.rule", f"expected one of {sorted(RULES)}, found {found!r}")
    claim_path = path[:-len("certificate")] + "claim" if path.endswith("certificate") else "claim"
    ctx.graph_for(claim, claim_path)  # every conclusion is well-formed, shaped and exact
    if path != "certificate":  # a premise's: refusals of its claim's fields name them there
        try:
            return RULES[cert["rule"]](ctx, claim, cert, path)
        except KernelError as err:
            if err.path == "claim" or err.path.startswith(("claim.", "claim[")):
                raise refuse(err.rule, claim_path + err.path[len("claim"):], err.message) from None
            raise
    try:
        return RULES[cert["rule"]](ctx, claim, cert, path)
    except RecursionError:  # (premises nest by recursion: about five frames a level)
        raise refuse("derive", path, "the derivation nests deeper than Python's recursion "
                     "limit lets this checker follow (nest less: e.g. one split tree instead "
                     "of nested cases)") from None
