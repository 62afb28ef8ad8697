"""What the reconciler's debounce costs and saves, against no debounce, same run.

Real Envoy, the control plane in this process, FAKE fast backends (what is
measured is the control plane). Two figures per debounce setting:
- one verdict -> Envoy's ACK of the EDS update (median, p99 of N flips);
- a burst of 50 verdicts spread over 50 ms (a probe round, a reload's lookups):
  pushes made and time from the first verdict to Envoy's ACK of the last state.

    .venv/bin/python -m bench.reconciler_push [--flips 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._harness import target, write_result
from control_plane.config.parse import parse_config
from control_plane.ir.fleet import target_key
from control_plane.ir.model import EndpointHealth
from control_plane.reconcile.events import Verdict
from control_plane.reconcile.reconciler import DEBOUNCE_S
from control_plane.runtime import ControlPlane
from control_plane.xds.resource import ENDPOINT
from testkit.gateway import Gateway, gateway_config, write_bootstrap
from testkit.procs import start_fake

MODEL = "fake/m"
BACKENDS = 50
QUIET = {"interval_s": 3600, "timeout_s": 5, "healthy_threshold": 1}


async def acked(cp: ControlPlane, since: int) -> float:
    """Until Envoy ACKed a snapshot newer than generation `since`; the time then."""
    assert cp.ads is not None
    while True:
        snap = cp.cache.snapshot
        if (
            snap is not None
            and cp.cache.generation > since
            and cp.ads.all_acked(ENDPOINT, snap.version(ENDPOINT))
            and cp.reconciler._queue.empty()
        ):
            return time.perf_counter()
        await asyncio.sleep(0.0005)


async def measure(cp: ControlPlane, keys: list[str], debounce: float, flips: int) -> dict[str, Any]:
    cp.reconciler._debounce_s = debounce
    post = cp.reconciler.post
    single = []
    hk = cp.reconciler.targets[keys[0]][0]
    for _ in range(flips):
        now = cp.state.health.get(hk)
        up = EndpointHealth.HEALTHY
        health = EndpointHealth.UNHEALTHY if now is up else up
        gen = cp.cache.generation
        t0 = time.perf_counter()
        post(Verdict(keys[0], health))
        single.append((await acked(cp, gen) - t0) * 1000)
        await asyncio.sleep(0.05)
    bursts = []
    for _ in range(5):
        now = cp.state.health.get(hk)
        up = EndpointHealth.HEALTHY
        health = EndpointHealth.UNHEALTHY if now is up else up
        pushes = cp.reconciler.stats.pushes
        gen = cp.cache.generation
        t0 = time.perf_counter()
        for k in keys:
            post(Verdict(k, health))
            await asyncio.sleep(0.001)
        done = await acked(cp, gen)
        await cp.reconciler.barrier()
        bursts.append({"pushes": cp.reconciler.stats.pushes - pushes, "ms": (done - t0) * 1000})
        await asyncio.sleep(0.2)
    single.sort()
    return {
        "debounce_ms": debounce * 1000,
        "verdict_to_eds_ack_ms": {
            "median": statistics.median(single),
            "p99": single[min(len(single) - 1, int(len(single) * 0.99))],
        },
        "burst_of_50_over_50ms": {
            "pushes_median": statistics.median(b["pushes"] for b in bursts),
            "to_last_ack_ms_median": statistics.median(b["ms"] for b in bursts),
        },
    }


async def run(flips: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-reconciler-"))
    fake, port = start_fake(work, "fast")
    backends = [
        {"url": f"http://127.0.0.{i + 1}:{port}", "models": [MODEL], "health": QUIET}
        for i in range(1)
    ]
    # 50 endpoints: one live fake, the rest addresses that only need a verdict.
    backends += [
        {"url": f"http://127.0.1.{i}:{port}", "models": [MODEL], "health": QUIET}
        for i in range(1, BACKENDS)
    ]
    doc = gateway_config(backends)
    cp = ControlPlane(parse_config(doc))
    gw = Gateway(work, doc)
    try:
        await cp.start()
        gw.start_envoy_with(write_bootstrap(gw), wait=False)
        await asyncio.to_thread(gw.wait_envoy_live)
        await asyncio.sleep(1.0)
        keys = [target_key(f"127.0.0.1:{port}", MODEL)] + [
            target_key(f"127.0.1.{i}:{port}", MODEL) for i in range(1, BACKENDS)
        ]
        baseline = await measure(cp, keys, 0.0, flips)
        debounced = await measure(cp, keys, DEBOUNCE_S, flips)
        return {"endpoints": BACKENDS, "no_debounce": baseline, "debounced": debounced}
    finally:
        await cp.stop()
        gw.stop()
        fake.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flips", type=int, default=40)
    p.add_argument("--smoke", action="store_true", help="5 flips: CI")
    args = p.parse_args(argv)
    result = asyncio.run(run(5 if args.smoke else args.flips))
    burst = result["debounced"]["burst_of_50_over_50ms"]["pushes_median"]
    result["command"] = "python -m bench.reconciler_push" + (" --smoke" if args.smoke else "")
    result["targets"] = [
        target("a burst of 50 verdicts in 50 ms, debounced: EDS pushes", "<= 5", burst, burst <= 5)
    ]
    path = write_result("reconciler_push", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
