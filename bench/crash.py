"""A backend SIGKILLed under steady load: which requests does the client lose?

Two real tiny.en whisper_backend processes behind the real gateway (control plane and
Envoy), the gateway's default health and routing settings; closed-loop load at
concurrency 4 and 8, every other request streamed. Once Envoy holds a request on the
first backend whose response has not started, that backend is SIGKILLed by its pid;
the load goes on for a few seconds, then every request is counted. Each setting runs
with `routing.retry_on_reset` on and off in the same run, so the difference is the
retry's alone. Two edge cases follow, nothing streamed: concurrency 8 with the kill
waiting until the victim holds its full share (4) of requests, none started (the
retry budget must cover them all); and concurrency 2, one request per backend (a lone
reset does not get the dead host ejected before the retry picks a host, and
least_request prefers the dead host's empty slot).

Figures per setting: requests sent, client-visible failures, failures whose response
had started (a stream cut by the crash after its headers reached the client: no retry
can help), requests Envoy retried, connections the crash reset with a request on them,
retries the retry budget refused.

    .venv/bin/python -m bench.crash [--runs 3] [--smoke]

tests/e2e/test_e2e_crash.py asserts on the same scenario (`crash_once`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench._harness import target, write_result
from testkit.crash import PER_HOST, CrashRun, Pair, Setting, crash_once

SETTINGS = (
    [Setting(c, 2, reset) for c in (4, 8) for reset in (True, False)]
    + [Setting(8, 0, reset, want_unstarted=PER_HOST) for reset in (True, False)]
    + [Setting(2, 0, reset) for reset in (True, False)]
)


def _total(runs: list[CrashRun]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "requests": sum(len(r.traces) for r in runs),
        "client_failures": sum(len(r.failures) for r in runs),
        "failures_response_started": sum(len(r.started_failures) for r in runs),
        "failures_response_not_started": sum(len(r.unstarted_failures) for r in runs),
        "envoy_retries": sum(r.stats["upstream_rq_retry"] for r in runs),
        "envoy_retry_overflow": sum(r.stats["upstream_rq_retry_overflow"] for r in runs),
        "requests_reset_by_crash": sum(r.resets for r in runs),
    }


def table(totals: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| setting | requests | client failures | of them response started | "
        "not started | Envoy retries | reset by the crash | retries over budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in totals.items():
        cells = (
            name,
            t["requests"],
            t["client_failures"],
            t["failures_response_started"],
            t["failures_response_not_started"],
            t["envoy_retries"],
            t["requests_reset_by_crash"],
            t["envoy_retry_overflow"],
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="kills per setting")
    parser.add_argument(
        "--smoke", action="store_true", help="one kill at c=4 with the retry on and off, for CI"
    )
    args = parser.parse_args(argv)
    settings = SETTINGS[:2] if args.smoke else SETTINGS
    if args.smoke:
        args.runs = 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    load_before = os.getloadavg()
    pair = Pair(work)
    runs: dict[str, list[CrashRun]] = {s.name: [] for s in settings}
    try:
        for i in range(args.runs):  # settings interleaved: on and off share conditions
            for s in settings:
                run = crash_once(work / f"gw-{i}-{s.name}", pair, s)
                runs[s.name].append(run)
                print(json.dumps({k: v for k, v in run.summary().items() if k != "failed"}))
    finally:
        pair.stop()
    totals = {name: _total(rs) for name, rs in runs.items()}
    result = {
        "command": ".venv/bin/python -m bench.crash"
        + (" --smoke" if args.smoke else f" --runs {args.runs}"),
        "smoke": args.smoke,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "scenario": {
            "backends": "2 x whisper_backend openai/whisper-tiny.en, defaults (2 workers)",
            "gateway": "defaults (max_concurrency 4 per backend, health interval 5 s, "
            "retries 1) but retry_on_reset as named",
            "clip": "tests/fixtures/hello.wav",
            "load_before_kill_s": 1.5,
            "load_after_kill_s": 4.0,
        },
        "totals": totals,
        "targets": [
            target(
                f"{name}: client failures of unstarted requests",
                "== 0",
                t["failures_response_not_started"],
                t["failures_response_not_started"] == 0,
            )
            for name, t in totals.items()
            if name.endswith("retry_on_reset_on")
        ],
        "runs": {name: [r.summary() for r in rs] for name, rs in runs.items()},
    }
    path = write_result("crash", result)
    print(table(totals))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
