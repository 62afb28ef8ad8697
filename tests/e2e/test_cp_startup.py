"""The control plane serves xDS only once every endpoint's first probe has decided.

A restarted control plane must not tell a serving Envoy that every backend is
UNKNOWN (no traffic) while it re-probes. The FAKE backend answers probes after
a delay, so the verdict comes well after start() began.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from control_plane.config.parse import parse_config
from control_plane.ir.model import EndpointHealth
from control_plane.runtime import ControlPlane
from testkit.gateway import gateway_config
from testkit.procs import start_fake


async def test_xds_port_opens_after_the_first_verdicts(tmp_path: Path) -> None:
    fake, port = await asyncio.to_thread(start_fake, tmp_path, "slow", "--delay", "1.5")
    raw = gateway_config(
        [
            {
                "url": f"http://127.0.0.1:{port}",
                "models": ["fake/slow"],
                "health": {"interval_s": 5, "timeout_s": 5, "healthy_threshold": 1},
            }
        ]
    )
    cp = ControlPlane(parse_config(raw))
    xds_port = raw["xds"]["port"]
    try:
        starting = asyncio.create_task(cp.start())
        await asyncio.sleep(0.5)
        # Still probing: nothing listens for Envoy yet.
        assert not starting.done()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", xds_port)) != 0
        await asyncio.wait_for(starting, 15)
        key = f"127.0.0.1:{port}"
        assert (
            cp.state.health[(key, "fake/slow")] is EndpointHealth.HEALTHY
        )  # the first EDS will say so
        with socket.create_connection(("127.0.0.1", xds_port), timeout=2):
            pass
    finally:
        await cp.stop()
        fake.stop()
