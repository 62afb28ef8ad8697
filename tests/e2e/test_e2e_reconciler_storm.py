"""A storm of control-plane events against the real Envoy while requests flow.

Reloads alternate between two configs (one adds model X and a backend, the other
removes them and adds model Y), probe verdicts flip, a host name's answer
changes, and an endpoint is drained and undrained, all at once, from four
tasks. Meanwhile a client keeps sending requests for the STABLE model, which
always has one healthy, undrained backend: none of them may fail. At the end
every Envoy is SYNCED on the final snapshot and nothing was NACKed.

The control plane runs in this process (the resolver is the test's); the
backends are FAKE fast ones, since what is tested is the control plane.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.config.parse import parse_config
from control_plane.ir.fleet import target_key
from control_plane.ir.model import EndpointHealth
from control_plane.reconcile.events import Verdict
from control_plane.runtime import ControlPlane
from control_plane.xds.resource import PUSH_ORDER, SHORT_NAMES
from testkit.gateway import Gateway, gateway_config, write_bootstrap
from testkit.load import Outcomes, one_request
from testkit.procs import free_port, start_fake

STABLE, X, Y = "fake/stable", "fake/x", "fake/y"
STORM_S = 6.0
CLIENTS = 4
FAST_PROBES = {"interval_s": 0.3, "timeout_s": 2, "healthy_threshold": 1}


def configs(ports: dict[str, int], base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    stable = [
        {"url": f"http://127.0.0.1:{ports['s1']}", "models": [STABLE], "health": FAST_PROBES},
        {"url": f"http://127.0.0.1:{ports['s2']}", "models": [STABLE], "health": FAST_PROBES},
        {"url": f"http://flex.test:{ports['flex']}", "models": [STABLE], "health": FAST_PROBES},
    ]
    with_x = [*stable, {"url": f"http://127.0.0.1:{ports['x']}", "models": [X]}]
    with_y = [*stable, {"url": f"http://127.0.0.1:{ports['y']}", "models": [Y]}]
    return {**base, "backends": with_x}, {**base, "backends": with_y}


async def client(url: str, out: Outcomes, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(5000):  # bounded in count; the storm's end stops it first
            if stop.is_set():
                return
            await one_request(s, url, STABLE, out, deadline_s=20)


def envoy_stat(gw: Gateway, prefix: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/stats?filter={prefix}", timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            if v.isdigit():
                out[k] = int(v)
        return out


@pytest.mark.parametrize("round_", [1, 2])
async def test_storm_of_events_loses_no_request(tmp_path: Path, round_: int) -> None:
    rng = random.Random(round_)
    flex_port = free_port("127.0.0.2")
    fakes = []
    ports: dict[str, int] = {}
    for name in ("s1", "s2", "x", "y"):
        p, ports[name] = await asyncio.to_thread(start_fake, tmp_path, "fast")
        fakes.append(p)
    for host in ("127.0.0.1", "127.0.0.2"):
        p, _ = await asyncio.to_thread(start_fake, tmp_path, "fast", host=host, port=flex_port)
        fakes.append(p)
    ports["flex"] = flex_port
    answers = {"flex.test": ("127.0.0.1", "127.0.0.2")}

    async def resolver(host: str, _port: int) -> tuple[str, ...]:
        return answers[host]

    base = gateway_config([])
    doc_x, doc_y = configs(ports, base)
    cp = ControlPlane(parse_config(doc_x), resolver=resolver)
    gw = Gateway(tmp_path, doc_x)
    stop = asyncio.Event()
    out = Outcomes()
    try:
        await cp.start()
        gw.start_envoy_with(write_bootstrap(gw), wait=False)
        await asyncio.to_thread(gw.wait_envoy_live)
        s1 = f"127.0.0.1:{ports['s1']}"
        s2 = f"127.0.0.1:{ports['s2']}"
        flex = [f"127.0.0.1:{flex_port}", f"127.0.0.2:{flex_port}"]

        async def reloads() -> None:
            for i in range(200):
                if stop.is_set():
                    return
                await cp.reload(parse_config(doc_y if i % 2 == 0 else doc_x))
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def flips() -> None:
            for _ in range(2000):
                if stop.is_set():
                    return
                key = rng.choice([s2, *flex])
                health = rng.choice([EndpointHealth.UNHEALTHY, EndpointHealth.HEALTHY])
                cp.reconciler.post(Verdict(target_key(key, STABLE), health))
                await asyncio.sleep(rng.uniform(0.0, 0.05))

        async def dns() -> None:
            choices = [("127.0.0.1",), ("127.0.0.2",), ("127.0.0.1", "127.0.0.2")]
            for _ in range(200):
                if stop.is_set():
                    return
                answers["flex.test"] = rng.choice(choices)
                await cp.refresh_addresses()
                await asyncio.sleep(rng.uniform(0.05, 0.2))

        async def drains() -> None:
            for _ in range(200):
                if stop.is_set():
                    return
                await cp.drain(s2)
                await asyncio.sleep(rng.uniform(0.02, 0.2))
                await cp.undrain(s2)

        # s1 is never flipped, drained or removed: STABLE always has it.
        await until_healthy(cp, s1)
        clients = [asyncio.create_task(client(gw.url, out, stop)) for _ in range(CLIENTS)]
        storm = [asyncio.create_task(f()) for f in (reloads, flips, dns, drains)]
        await asyncio.sleep(STORM_S)
        stop.set()
        await asyncio.gather(*storm, *clients)

        assert out.counts.get("ok", 0) >= 20, out
        assert set(out.counts) == {"ok"}, f"requests to a routed, healthy model failed: {out}"
        # Settle: the last events are published, then every Envoy ACKs them.
        await cp.reconciler.barrier()
        status = await until_synced(cp)
        final = cp.cache.snapshot
        assert final is not None
        assert not cp.reconciler.removal_pending
        (proxy,) = status["proxies"]
        for t in PUSH_ORDER:
            assert status["versions"][SHORT_NAMES[t]] == final.version(t)
        nacks = [ty for ty, ts in proxy["types"].items() if ts.get("nack_count", 0)]
        assert nacks == [], json.dumps(proxy)[:2000]
        stats = await asyncio.to_thread(envoy_stat, gw, "update_rejected")
        assert stats and all(v == 0 for v in stats.values()), stats
        assert cp.status()["reconciler"]["pushes"] > 10
        assert all(t["restarts"] == 0 for t in cp.status()["tasks"])
    finally:
        stop.set()
        await cp.stop()
        gw.stop()
        for p in fakes:
            p.stop()


async def until_synced(cp: ControlPlane, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            status = cp.status()
            proxies = status["proxies"]
            if proxies and all(
                t["state"] == "SYNCED" for p in proxies for t in p["types"].values()
            ):
                return status
            await asyncio.sleep(0.05)


async def until_healthy(cp: ControlPlane, key: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while cp.state.health.get((key, STABLE)) is not EndpointHealth.HEALTHY:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
