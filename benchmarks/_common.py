"""What every benchmark records beside its numbers: the machine it ran on, the time, and the
result file itself. Each benchmark names the machine fields it has always written, so the keys
of its JSON stay what earlier results (benchmarks/results/*.json) have."""

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# What the first benchmarks recorded (crown, digits demo, VNN-COMP); "cpus" is the older name of
# "cpu_count".
BASIC_FIELDS = ("platform", "processor", "cpus", "python")


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        None)
    except OSError:
        return None


def _cpus_available() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


MACHINE_FIELDS: dict[str, Callable[[], object]] = {
    "platform": platform.platform,
    "processor": lambda: platform.processor() or cpu_model() or "",
    "cpu_model": cpu_model,
    "cpu_count": os.cpu_count,
    "cpus": os.cpu_count,
    "cpus_available": _cpus_available,
    "python": platform.python_version,
}


def machine_info(fields: Sequence[str], **versions: str) -> dict:
    """The machine a benchmark ran on: `fields` (names from MACHINE_FIELDS) in that order, then
    the package versions given, e.g. machine_info(BASIC_FIELDS, torch=torch.__version__)."""
    return {**{name: MACHINE_FIELDS[name]() for name in fields}, **versions}


def utc_now() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_result(path: str | os.PathLike, result: dict) -> None:
    """Write a benchmark's result document as indented JSON, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The median seconds of `repeats` calls of fn, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def wall_totals(walls: Sequence[float]) -> dict:
    """Total, median and the 14 slowest of a benchmark's wall times (s): how the issue's peers
    were timed (issue 5: 14 ACAS Xu instances)."""
    return {"total_wall_s": sum(walls),
            "median_wall_s": statistics.median(walls) if walls else None,
            "slowest_14_wall_s": sum(sorted(walls)[-14:])}
