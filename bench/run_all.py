"""`make bench`: every scenario in turn, each alone on the machine, then the report.

Each scenario is its own process (`python -m bench.X`, `--smoke` passed on), one
after the other, so no two loads share the cores. A module that does not exist, or
that fails or overruns its time, is reported as such and the others still run: the
report then shows what is missing instead of the run stopping half way. The run's
own record (which module ran, how long, its exit) goes to run_all.json beside the
results; the exit code is non-zero when any scenario did not complete.

    .venv/bin/python -m bench.run_all [--smoke] [--only throughput,uploads]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench._harness import SCENARIOS, write_result
from bench.report import write_report

# The scenarios (1-7) and the older benches; about 15 minutes in all.
MODULES = [f"bench.{name}" for name in SCENARIOS]
# A bound per scenario, far above its planned time: a hung run must not hold the bench.
TIMEOUT_S = {"full": 900.0, "smoke": 240.0}


def _stop_group(pid: int) -> None:
    """End a scenario that overran, and the processes it started (its own group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


def run_one(module: str, smoke: bool) -> dict[str, Any]:
    if importlib.util.find_spec(module) is None:
        print(f"== {module}: MISSING (no such module)", flush=True)
        return {"module": module, "status": "missing", "wall_s": 0.0, "returncode": None}
    argv = [sys.executable, "-m", module, *(["--smoke"] if smoke else [])]
    print(f"== {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    # Its own process group, so an overrun ends everything it started, by that id.
    proc = subprocess.Popen(argv, start_new_session=True)
    limit = TIMEOUT_S["smoke" if smoke else "full"]
    try:
        rc: int | None = proc.wait(limit)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        _stop_group(proc.pid)
        proc.wait(10)
        rc, status = None, f"timed out after {limit:.0f} s"
    wall = time.monotonic() - t0
    print(f"== {module}: {status} in {wall:.1f} s", flush=True)
    return {"module": module, "status": status, "wall_s": wall, "returncode": rc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--smoke", action="store_true", help="each scenario on tiny counts")
    ap.add_argument("--only", default="", help="comma-separated short names, e.g. throughput")
    ap.add_argument("--list", action="store_true", help="print the scenarios' names (JSON)")
    a = ap.parse_args(argv)
    if a.list:
        print(json.dumps(list(SCENARIOS)))
        return 0
    chosen = MODULES
    if a.only:
        want = {f"bench.{n.strip()}" for n in a.only.split(",") if n.strip()}
        chosen = [m for m in MODULES if m in want] + sorted(want - set(MODULES))
    t0 = time.monotonic()
    runs = [run_one(m, a.smoke) for m in chosen]
    total = time.monotonic() - t0
    write_result(
        "run_all",
        {
            "command": ".venv/bin/python -m bench.run_all" + (" --smoke" if a.smoke else ""),
            "smoke": a.smoke,
            "wall_s": total,
            "runs": runs,
        },
    )
    report = write_report()
    bad = [r for r in runs if r["status"] != "ok"]
    for r in runs:
        print(f"{r['status']:>10}  {r['wall_s']:6.1f} s  {r['module']}")
    print(f"total {total:.0f} s; report: {report}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
