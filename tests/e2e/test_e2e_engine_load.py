"""`routing.policy: engine_load` on the real stack: a backend kept busy by clients the
gateway does not see reports its queue on /metrics, the control plane turns that into
a lower EDS weight, Envoy holds it, and the gateway's own requests go to the idle one.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from control_plane.ir.model import LOAD_WEIGHT
from control_plane.names import cluster_name
from testkit.clips import make_clip
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import HELLO
from testkit.procs import Proc, start_backend

TINY = "openai/whisper-tiny.en"
ONE_WORKER = ("--num-workers", "1", "--cpu-threads", "1")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str, str]]:
    work = tmp_path_factory.mktemp("engine-load")
    procs: list[Proc] = []
    gw = None
    try:
        keys = []
        for _ in range(2):
            proc, port = start_backend(work, extra=ONE_WORKER)
            procs.append(proc)
            keys.append(f"127.0.0.1:{port}")
        cfg = gateway_config(
            [{"url": f"http://{k}", "models": [TINY]} for k in keys],
            routing={"policy": "engine_load", "load_interval_s": 0.5},
            health={"interval_s": 5.0, "timeout_s": 30.0, "healthy_threshold": 1},
        )
        gw = start_gateway(work / "gw", cfg)
        gw.wait_backends(set(keys))
        yield gw, keys[0], keys[1]
    finally:
        if gw is not None:
            gw.stop()
        for p in procs:
            p.stop()


def envoy_weights(gw: Gateway) -> dict[str, int]:
    """Envoy's own view: /clusters lists `cluster::host::weight::N` per host."""
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/clusters", timeout=5) as r:
        text = r.read().decode()
    pattern = re.escape(cluster_name(TINY)) + r"::([\d.]+:\d+)::weight::(\d+)"
    return {host: int(w) for host, w in re.findall(pattern, text)}


def wait_weights(gw: Gateway, ok: object, timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = envoy_weights(gw)
        if ok(got):  # type: ignore[operator]
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"weights stayed {got}")
        time.sleep(0.2)


async def transcribe(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("model", TINY)
    form.add_field("file", body, filename="clip.wav", content_type="audio/wav")
    async with session.post(f"{url}/v1/audio/transcriptions", data=form) as r:
        assert r.status == 200, await r.text()
        return r.headers.get("x-gateway-backend", url)


async def test_a_backend_busy_with_unseen_work_gets_less_of_the_gateways(
    fleet: tuple[Gateway, str, str], tmp_path: Path
) -> None:
    gw, busy, idle = fleet
    assert wait_weights(gw, lambda w: w == {busy: LOAD_WEIGHT, idle: LOAD_WEIGHT})
    long_clip = make_clip(tmp_path / "long.wav", 30.0).read_bytes()
    short = HELLO.read_bytes()
    stop = asyncio.Event()

    async def elsewhere(session: aiohttp.ClientSession) -> None:
        """Another client of the busy backend, straight to it: the gateway never sees it."""
        while not stop.is_set():
            await transcribe(session, f"http://{busy}", long_clip)

    async with aiohttp.ClientSession() as session:
        others = [asyncio.create_task(elsewhere(session)) for _ in range(4)]
        try:
            seen = await asyncio.to_thread(
                wait_weights, gw, lambda w: w.get(busy, LOAD_WEIGHT) < w.get(idle, 0)
            )
            assert seen[idle] == LOAD_WEIGHT and seen[busy] <= LOAD_WEIGHT // 2, seen
            served = Counter([await transcribe(session, gw.url, short) for _ in range(12)])
        finally:
            stop.set()
            await asyncio.gather(*others)
    # Envoy's least_request on equal weights would split these about evenly.
    assert served[idle] > 2 * served[busy], served
    # The queue drained: both weigh the same again.
    await asyncio.to_thread(wait_weights, gw, lambda w: w == {busy: 100, idle: 100})
