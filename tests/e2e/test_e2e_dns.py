"""A backend given by a host name: one endpoint per address, each probed, re-resolved.

The control plane runs in this process with a resolver the test controls (no
name server here); Envoy is the real binary; the backends are FAKE fast ones on
two loopback addresses, since what is tested is discovery, not Whisper.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from control_plane.config.parse import parse_config
from control_plane.ir.fleet import target_key
from control_plane.ir.model import EndpointHealth
from control_plane.runtime import ControlPlane
from testkit.gateway import Gateway, gateway_config, write_bootstrap
from testkit.load import Outcomes, one_request
from testkit.procs import free_port, start_fake

MODEL = "fake/fast"


async def until(cond: object, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def send(url: str, n: int) -> Outcomes:
    out = Outcomes()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            await one_request(s, url, MODEL, out, deadline_s=20)
    return out


async def test_host_name_resolving_to_several_addresses(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    fakes = []
    for host in ("127.0.0.1", "127.0.0.2"):
        p, _ = await asyncio.to_thread(start_fake, tmp_path, "fast", host=host, port=port)
        fakes.append(p)
    answers = {"fleet.test": ("127.0.0.1", "127.0.0.2")}

    async def resolver(host: str, _port: int) -> tuple[str, ...]:
        return answers[host]

    raw = gateway_config(
        [
            {
                "url": f"http://fleet.test:{port}",
                "models": [MODEL],
                "health": {
                    "interval_s": 0.2,
                    "timeout_s": 2,
                    "healthy_threshold": 1,
                    "unhealthy_threshold": 1,
                },
            }
        ]
    )
    cp = ControlPlane(parse_config(raw), resolver=resolver)
    gw = Gateway(tmp_path, raw)
    one, two = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    try:
        await cp.start()
        assert {t.key for t in cp.probe_targets()} == {target_key(k, MODEL) for k in (one, two)}
        gw.start_envoy_with(write_bootstrap(gw), wait=False)
        await asyncio.to_thread(gw.wait_envoy_live)
        await until(
            lambda: all(
                cp.state.health.get((k, MODEL)) is EndpointHealth.HEALTHY for k in (one, two)
            )
        )
        out = await send(gw.url, 16)
        assert out.counts["ok"] == 16, out
        assert set(out.backends) == {one, two}
        # The name now answers one address: that endpoint alone stays, probed and routed.
        answers["fleet.test"] = ("127.0.0.2",)
        assert await cp.refresh_addresses()
        assert {t.key for t in cp.probe_targets()} == {target_key(two, MODEL)}
        assert set(cp.health_monitor.snapshot()) == {target_key(two, MODEL)}
        assert cp.ads is not None
        assert await cp.ads.wait_acked(
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            cp.cache.snapshot.version(  # type: ignore[union-attr]
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            ),
            timeout=10,
        )
        after = await send(gw.url, 8)
        assert after.counts["ok"] == 8 and set(after.backends) == {two}, after
    finally:
        await cp.stop()
        gw.stop()
        for p in fakes:
            p.stop()
