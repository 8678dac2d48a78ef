"""TRUST_BOUNDARIES.md and the code must agree: assumption names, oracles, native sources, and
the kernel's size."""

import json
import pathlib
import re

from kernel_checker.theorem import ASSUMPTIONS

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = (ROOT / "TRUST_BOUNDARIES.md").read_text()


def kernel_lines_of_code() -> int:
    """Non-blank lines that are not only a comment, over kernel_checker/*.py (docstrings count),
    measured as tests/test_kernel_boundary.py measures them."""
    from test_kernel_boundary import _code_lines

    return sum(_code_lines(p.read_text()) for p in (ROOT / "kernel_checker").glob("*.py"))


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"TRUST_BOUNDARIES.md has no section '## {title}'"
    return m.group(1)


def first_column_names(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def test_every_assumption_name_is_listed_and_nothing_else():
    assert first_column_names(section("Assumption names")) == set(ASSUMPTIONS)


def test_every_oracle_module_is_listed():
    modules = {f"oracles/{p.name}" for p in (ROOT / "oracles").glob("*.py")
               if p.name != "__init__.py"}
    assert first_column_names(section("Oracles and producers")) == modules


def test_native_sources_match_the_gpu_source_map():
    listed = first_column_names(section("Native sources"))
    sources = {f"gpu/{p.relative_to(ROOT / 'gpu')}" for p in (ROOT / "gpu").rglob("*.cu")}
    assert listed == sources
    mapped = {f"gpu/{v['source']}" for v in json.loads(
        (ROOT / "gpu" / "NATIVE_SOURCES").read_text())["ops"].values() if v["source"]}
    assert mapped == sources  # every source is one NATIVE_SOURCES names, and no other


def test_kernel_size_is_stated_correctly():
    m = re.search(r"kernel_checker/ is (\d+) lines of code", DOC)
    assert m, "TRUST_BOUNDARIES.md must state 'kernel_checker/ is N lines of code'"
    assert int(m.group(1)) == kernel_lines_of_code()


if __name__ == "__main__":  # python tests/test_trust_boundaries.py: restate the kernel's size
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    text = re.sub(r"kernel_checker/ is \d+ lines of code",
                  f"kernel_checker/ is {kernel_lines_of_code()} lines of code", DOC)
    (ROOT / "TRUST_BOUNDARIES.md").write_text(text)
    print(f"kernel_checker/ is {kernel_lines_of_code()} lines of code")
