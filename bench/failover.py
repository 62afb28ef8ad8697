"""Failover figures under steady load: real Envoy, control plane, two tiny.en backends.

Measures, with the default health settings (interval 5 s, timeout 10 s, healthy 2,
unhealthy 3) so they compare with the reference router probing every 5 s:
- time from a backend's SIGKILL to the last request Envoy sent to it, to
  Envoy's outlier ejection and to the probes' verdict;
- client-visible failures while it dies under steady load;
- time from each health decision to Envoy's ACK of the EDS update;
- time from the backend's restart to its first served request.

    .venv/bin/python -m bench.failover
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from support.gateway import Gateway, gateway_config, start_gateway  # type: ignore[import-not-found]
from support.load import Outcomes, one_request  # type: ignore[import-not-found]
from support.procs import free_port, start_backend  # type: ignore[import-not-found]

from bench._harness import write_result

TINY = "openai/whisper-tiny.en"
SETTINGS = {"interval_s": 5.0, "timeout_s": 10.0, "healthy_threshold": 2, "unhealthy_threshold": 3}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def host_counters(gw: Gateway, key: str) -> tuple[int, str]:
    """Sum of the per-host request/connection counters in Envoy, and its health flags."""
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/clusters", timeout=5) as r:
        text = r.read().decode()
    total, flags = 0, ""
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[1] == key:
            if parts[2] in ("rq_total", "cx_total", "cx_connect_fail", "rq_error"):
                total += int(parts[3])
            elif parts[2] == "health_flags":
                flags = parts[3]
    return total, flags


async def steady_load(
    gw: Gateway, out: Outcomes, stop: asyncio.Event, log: list[tuple[float, str, str]]
) -> None:
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not stop.is_set():
                before = out.backends.copy()
                outcome = await one_request(session, gw.url, TINY, out, deadline_s=60)
                new = out.backends - before
                log.append((time.time(), next(iter(new), "-"), outcome))

        await asyncio.gather(*(worker() for _ in range(2)))


async def watch_host(gw: Gateway, key: str, stop: asyncio.Event) -> dict[str, float | None]:
    last_change: float | None = None
    ejected_at: float | None = None
    prev: int | None = None
    while not stop.is_set():
        total, flags = await asyncio.to_thread(host_counters, gw, key)
        now = time.time()
        if prev is not None and total != prev:
            last_change = now
        prev = total
        if ejected_at is None and flags and flags != "healthy":
            ejected_at = now
        await asyncio.sleep(0.02)
    return {"last_traffic_at": last_change, "envoy_flagged_at": ejected_at}


def decision_to_ack(gw: Gateway, key: str, deadline_s: float = 10) -> float | None:
    """ms from the control plane's health decision to Envoy's ACK of that EDS version."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status = get_json(f"{gw.admin_url}/status")
        eds = status["proxies"][0]["types"]["EDS"]
        backend = next(b for b in get_json(f"{gw.admin_url}/backends") if b["endpoint"] == key)
        changed = backend["probe"]["last_change_at"]
        if eds["acked"]["version"] == status["versions"]["EDS"] and eds["acked"]["at"]:
            return max(0.0, (eds["acked"]["at"] - changed) * 1000)
        time.sleep(0.01)
    return None


async def scenario(gw: Gateway, keys: list[str], restart: Any, kill: Any) -> dict[str, Any]:
    victim = keys[0]
    out = Outcomes()
    log: list[tuple[float, str, str]] = []
    stop_load, stop_watch = asyncio.Event(), asyncio.Event()
    load = asyncio.create_task(steady_load(gw, out, stop_load, log))
    await asyncio.sleep(4)
    watcher = asyncio.create_task(watch_host(gw, victim, stop_watch))
    await asyncio.sleep(0.5)
    t_kill = time.time()
    kill()
    # Until the probes decide, then a little more load.
    while True:
        b = next(
            x
            for x in await asyncio.to_thread(get_json, f"{gw.admin_url}/backends")
            if x["endpoint"] == victim
        )
        if b["health"] == "UNHEALTHY":
            t_unhealthy = b["probe"]["last_change_at"]
            break
        await asyncio.sleep(0.05)
    ack_down = await asyncio.to_thread(decision_to_ack, gw, victim)
    await asyncio.sleep(2)
    stop_watch.set()
    watched = await watcher
    kill_window = Outcomes(counts=out.counts.copy(), errors=list(out.errors))
    t_restart = time.time()
    await asyncio.to_thread(restart)
    t_ready = time.time()
    while not any(t > t_restart and b == victim for t, b, _ in log):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    t_served = min(t for t, b, _ in log if t > t_restart and b == victim)
    b = next(
        x
        for x in await asyncio.to_thread(get_json, f"{gw.admin_url}/backends")
        if x["endpoint"] == victim
    )
    ack_up = await asyncio.to_thread(decision_to_ack, gw, victim)
    stop_load.set()
    await load

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - t_kill, 3)

    return {
        "kill_to_last_request_sent_s": since(watched["last_traffic_at"]),
        "kill_to_envoy_flagged_s": since(watched["envoy_flagged_at"]),
        "kill_to_probe_verdict_s": since(t_unhealthy),
        "client_outcomes_during_kill": dict(kill_window.counts),
        "client_errors": kill_window.errors[:5],
        "decision_to_eds_ack_ms": {"down": ack_down, "up": ack_up},
        "restart_to_first_served_s": round(t_served - t_restart, 3),
        "backend_ready_to_first_served_s": round(t_served - t_ready, 3),
        "readmitted_at_probe_s": round(b["probe"]["last_change_at"] - t_ready, 3),
        "requests_total": out.sent,
        "outcomes_total": dict(out.counts),
    }


def one_run(work: Path) -> dict[str, Any]:
    ports = [free_port(), free_port()]
    procs = [start_backend(work, port=p, env={"HF_HUB_OFFLINE": "1"})[0] for p in ports]
    backends = [
        {"url": f"http://127.0.0.1:{p}", "models": [TINY], "max_concurrency": 2} for p in ports
    ]
    cfg = gateway_config(backends, health=dict(SETTINGS))
    gw = start_gateway(work / f"gw-{ports[0]}", cfg)
    keys = [f"127.0.0.1:{p}" for p in ports]

    def kill() -> None:
        procs[0].signal(signal.SIGKILL)

    def restart() -> None:
        procs[0] = start_backend(work, port=ports[0], env={"HF_HUB_OFFLINE": "1"})[0]

    try:
        gw.wait_backends(set(keys))
        return asyncio.run(scenario(gw, keys, restart, kill))
    finally:
        gw.stop()
        for p in procs:
            p.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    runs = [one_run(work) for _ in range(args.runs)]
    keys = [
        "kill_to_last_request_sent_s",
        "kill_to_envoy_flagged_s",
        "kill_to_probe_verdict_s",
        "restart_to_first_served_s",
        "backend_ready_to_first_served_s",
        "readmitted_at_probe_s",
    ]
    median = {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in keys}
    acks = [v for r in runs for v in r["decision_to_eds_ack_ms"].values() if v is not None]
    median["decision_to_eds_ack_ms"] = statistics.median(acks) if acks else None
    failed = sum(n for r in runs for k, n in r["client_outcomes_during_kill"].items() if k != "ok")
    result = {
        "runs": runs,
        "median": median,
        "client_failures_during_kill_total": failed,
        "requests_during_kill_total": sum(
            sum(r["client_outcomes_during_kill"].values()) for r in runs
        ),
        "settings": SETTINGS,
        "reference_router": {"remove_killed_s": 5.2, "readmit_s": 4.3, "interval_s": 5},
    }
    path = write_result("failover", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
