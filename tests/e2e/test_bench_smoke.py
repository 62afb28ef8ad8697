"""The bench's smoke run: every scenario's own code on tiny counts, as CI runs it.

LiteLLM, the peer, is left out (BENCH_PEER=0): its install alone would take 1-2 of
CI's 15 minutes; every scenario says so in its result, and `make bench` runs it.
It asserts only that each scenario ran and produced numbers, and that the report
and its plots were written: a smoke run's figures mean nothing (no timed assertion
here; speed is judged in bench/, as ratios, by `make bench`). Results go to a
temporary BENCH_RESULTS, never over the figures the README quotes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.procs import ROOT

# vllm_real, vllm_long_audio and vllm_scheduling start a real vLLM (4.3 GB, a minute to
# load) beside the one the real-vLLM tier (tests/e2e/test_vllm_real.py) already runs:
# left out of this smoke run (that tier serves a split long clip through vLLM too).
NOT_IN_CI = {"vllm_real", "vllm_long_audio", "vllm_scheduling"}
# The bench's own list, asked as a user would (the tests import nothing of bench/).
SCENARIOS = [
    name
    for name in json.loads(
        subprocess.run(
            [sys.executable, "-m", "bench.run_all", "--list"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    if name not in NOT_IN_CI
]


def _numbers(data: Any) -> Iterator[float]:
    if isinstance(data, bool):
        return
    if isinstance(data, int | float):
        yield float(data)
    elif isinstance(data, dict):
        for k, v in data.items():
            if k not in ("machine", "measured_at"):
                yield from _numbers(v)
    elif isinstance(data, list):
        for v in data:
            yield from _numbers(v)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    results = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--smoke", "--only", ",".join(SCENARIOS)],
        cwd=ROOT,
        # LiteLLM is left out here (its install alone takes 1-2 minutes of CI's 15):
        # each scenario states it was not run; `make bench` always runs it.
        env={**os.environ, "BENCH_RESULTS": str(results), "BENCH_PEER": "0"},
        capture_output=True,
        text=True,
        timeout=900,  # each scenario is bounded too
    )
    return results, proc.stdout[-6000:] + proc.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.timeout(1600)
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_ran_and_gave_numbers(smoke_run: tuple[Path, str], name: str) -> None:
    results, log = smoke_run
    run_log = json.loads((results / "run_all.json").read_text())
    status = {r["module"]: r["status"] for r in run_log["runs"]}
    assert status.get(f"bench.{name}") == "ok", f"{name}: {status.get(f'bench.{name}')}\n{log}"
    path = results / f"{name}.json"
    assert path.exists(), f"{name} wrote no {path.name}\n{log}"
    data = json.loads(path.read_text())
    targets = data.get("targets")
    numbers = list(_numbers({k: v for k, v in data.items() if k != "targets"}))
    if targets:
        assert all("met" in t and "name" in t for t in targets), targets
    else:
        assert numbers, f"{name}: neither targets nor figures"
    assert any(math.isfinite(n) for n in numbers), f"{name}: no finite figure"


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_report_and_plots_written(smoke_run: tuple[Path, str]) -> None:
    results, log = smoke_run
    report = results / "report.md"
    assert report.exists(), log
    text = report.read_text()
    assert "## Every target" in text
    pngs = list((results / "plots").glob("*.png"))
    assert pngs, f"no plot written\n{log}"
    assert all(p.stat().st_size > 0 for p in pngs)
