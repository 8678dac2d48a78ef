"""Theorems, assumptions and levels: the LCF core (HOL Light's `thm`, Knuckledragger's `Proof`).

A Theorem is frozen and is made only by `_derive`, which only kernel rules call. Python cannot make
that unforgeable (anyone can import a private name), so the real anchor is replay: every theorem
comes with a bundle that `tl check` re-derives from scratch in a fresh process.
"""

import enum
from dataclasses import dataclass, field

from kernel_checker.claims import Claim
from kernel_checker.errors import refuse


class Level(enum.IntEnum):
    """How far an artifact's connection to its claim was checked (DESIGN.md, "Levels")."""

    LAUNCHED = 0
    PARSED = 1
    SHAPE_CHECKED = 2
    REPLAY_CHECKED = 3
    PROVED = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


# The registry of every assumption a theorem can carry. Nothing else may add a name; the `assume`
# rule refuses names not listed here, and TRUST_BOUNDARIES.md lists exactly these.
ASSUMPTIONS: dict[str, str] = {
    "user.hypothesis": "a claim the user states without proof, with the user's reason as evidence",
    "oracle.arb.enclosure": "an Arb (python-flint) ball encloses the true value of a function",
    "runtime.cuda.ieee_binary32": "the CUDA device computes binary32 operations as IEEE 754 says",
    "runtime.cuda.outputs": "an agreement's values are what the CUDA runtime named in its "
                            "provenance returned for its input",
    "runtime.cpu.outputs": "an agreement's values are what the CPU runtime named in its "
                           "provenance returned for its input",
    "producer.pytorch.export_agreement": "the exported graph computes what the PyTorch module does",
}
ASSUMABLE = ("user.hypothesis",)  # the names the `assume` rule takes; the others come only
# from the rules that check their oracle or runtime (enclosure, agreement), or are reserved


@dataclass(frozen=True, order=True)
class Assumption:
    """A named assumption with provenance (tool, version, command, input hash, reason ...)."""

    name: str
    provenance: tuple = ()  # sorted (key, value-text) pairs
    statement: str = ""  # spec sha256 of the assumed claim, so a proof of it can discharge it

    def to_json(self) -> dict:
        return {"name": self.name, "statement": self.statement,
                "provenance": dict(self.provenance)}


_KERNEL_TOKEN = object()


@dataclass(frozen=True)
class Theorem:
    claim: Claim
    assumptions: frozenset
    level: Level
    rule: str
    premises: tuple = ()
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self._token is not _KERNEL_TOKEN:
            raise refuse("theorem", "", "theorems are made only by kernel rules")

    def to_json(self) -> dict:
        return {"claim": self.claim.to_json(), "level": self.level.label, "rule": self.rule,
                "assumptions": [a.to_json() for a in sorted(self.assumptions)]}


def _derive(claim: Claim, rule: str, assumptions=frozenset(), premises: tuple = (),
            level: Level | None = None, discharged: str | None = None) -> Theorem:
    """The one constructor, for kernel rules only. Assumptions are the union of the premises'
    (less those whose statement is `discharged`). With none the level is `proved`; otherwise the
    minimum of the premises' levels and `level` (default replay-checked)."""
    assumptions = frozenset(assumptions)
    premises_for_level = premises
    if discharged is not None:  # premises = (theorem, proof of its assumption `discharged`)
        kept = frozenset(a for a in premises[0].assumptions if a.statement != discharged)
        assumptions |= kept | premises[1].assumptions  # the proof's own assumptions all stay
        premises_for_level = (premises[1],) + ((premises[0],) if kept else ())
    else:
        for p in premises:
            assumptions |= p.assumptions
    if not assumptions:
        lvl = Level.PROVED
    else:
        lvl = min([level if level is not None else Level.REPLAY_CHECKED]
                  + [p.level for p in premises_for_level])
    return Theorem(claim, assumptions, lvl, rule, tuple(premises), _KERNEL_TOKEN)
