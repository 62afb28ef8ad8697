"""Shared bench plumbing: the tests' process helpers, results files, targets.

Every scenario module has `main(argv)` with `--smoke` (the same code on tiny
counts, for CI: it proves the scenario runs and yields numbers, nothing more)
and writes one JSON file through `write_result`. `BENCH_RESULTS` (an env var)
moves the results elsewhere, so a smoke run never overwrites the figures the
docs quote. A scenario states each target it has with `target()`: met or
missed, never hidden.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))
#: Every scenario (its module bench.<name> and its results file <name>.json), in the
#: order `make bench` runs them: issue 11's seven, then the older crash and push benches,
#: then issue 17's real-vLLM bench, then long audio split across the fleet, a file
#: past real vLLM's 600 s served split, and scheduling on a fleet of vLLM beside a CPU
#: backend.
SCENARIOS = (
    "backend_rtf",
    "throughput",
    "uploads",
    "failover",
    "scheduling",
    "formats",
    "cp_scale",
    "crash",
    "reconciler_push",
    "vllm_real",
    "long_audio",
    "vllm_long_audio",
    "vllm_scheduling",
)


def machine() -> dict[str, Any]:
    """Where a figure came from: quoted beside it in the report."""
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def target(name: str, wanted: str, value: float | None, met: bool) -> dict[str, Any]:
    """One stated target: `wanted` in words ("<= 1.1x the bodies"), the value seen."""
    return {"name": name, "target": wanted, "value": value, "met": bool(met)}


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
