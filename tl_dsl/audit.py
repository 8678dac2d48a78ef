"""`tl audit`: what a bundle's theorem says, at which level, what it assumes, what it rests on."""

import fnmatch

import kernel_checker
from kernel_checker.tensor import sha256_hex
from tl_dsl.printing import derivation_to_json, format_derivation


def audit_bundle(path: str, permit: list[str] | None = None) -> dict:
    """Re-derive the bundle and describe it; `permitted` is False when an assumption matches
    none of the `permit` patterns (fnmatch, e.g. 'oracle.arb.*')."""
    theorem, doc = kernel_checker.check_bundle(path)
    with open(path, "rb") as f:
        bundle_sha = sha256_hex(f.read())
    patterns = permit or []
    assumptions = []
    for a in sorted(theorem.assumptions):
        ok = any(fnmatch.fnmatchcase(a.name, p) for p in patterns)
        assumptions.append({**a.to_json(), "permitted": ok})
    return {"bundle": path, "bundle_sha256": bundle_sha, "claim": theorem.claim.to_json(),
            "rule": theorem.rule, "level": theorem.level.label, "assumptions": assumptions,
            "permitted": all(a["permitted"] for a in assumptions), "permit": patterns,
            "artifacts": doc["artifacts"], "producer": doc.get("producer", {}),
            "trusted_base": kernel_checker.trusted_base(), "_theorem": theorem,
            "derivation": derivation_to_json(theorem)}


def _shown(text: object) -> str:
    """Text from a bundle as one printable line: control characters (a newline, an escape
    sequence that hides what follows in a terminal) written as escapes."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def format_audit(report: dict, tree: bool = False) -> str:
    from tl_dsl.printing import format_claim

    lines = [f"bundle     {_shown(report['bundle'])} (sha256 {report['bundle_sha256'][:16]})",
             f"claim      {format_claim(report['_theorem'].claim)}",
             f"rule       {report['rule']}",
             f"level      {report['level']}"]
    if report["assumptions"]:
        lines.append(f"assumptions ({len(report['assumptions'])}):")
        for a in report["assumptions"]:
            mark = "permitted" if a["permitted"] else "NOT PERMITTED"
            prov = ", ".join(f"{_shown(k)}={_shown(v)}" for k, v in a["provenance"].items())
            lines.append(f"  - {_shown(a['name'])} [{mark}] {prov}")
    else:
        lines.append("assumptions none")
    arts = report["artifacts"]
    lines.append(f"graph      {_shown(arts['graph']['path'])} sha256 "
                 f"{_shown(arts['graph']['sha256'][:16])}")
    if arts.get("weights"):
        lines.append(f"weights    sha256 {arts['weights']['sha256'][:16]}")
    lines.append(f"spec       sha256 {arts['spec']['sha256'][:16]}")
    tb = report["trusted_base"]
    lines.append(f"trusted    tl-verify kernel {tb['kernel_version']}, python-flint "
                 f"{tb['python_flint_version']}, Python {tb['python']} "
                 f"({tb['python_implementation']})")
    if tree:
        lines.append("derivation:")
        lines.append(format_derivation(report["_theorem"], "  "))
    return "\n".join(lines)
