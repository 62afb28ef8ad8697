"""Fault tests: real Envoy, real control plane, real tiny.en backends.

Fakes appear only where a fault must be produced on demand (500s, garbage).
Every test drives a bounded load and accounts for each request: none may hang
and none may vanish.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit import netns
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import LONG_CLIP, Outcomes, one_request, run_load
from testkit.procs import ROOT, Proc, free_port, start_backend, start_fake, wait_http

TINY = "openai/whisper-tiny.en"
# A probe is a real transcription: 6 s gives a busy 2-core machine room (a frozen backend
# still fails two probes within the tests' 30 s wait).
HEALTH = {"interval_s": 0.5, "timeout_s": 6.0, "healthy_threshold": 2, "unhealthy_threshold": 2}


class Fleet:
    """Two real tiny.en backends on fixed ports, killed and restarted by the tests: the
    first is whisper_backend as ours, the second its vLLM stand-in (--api-flavor vllm),
    so every fault here also meets vLLM's answers."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.ports = [free_port(), free_port()]
        self.procs: list[Proc | None] = [None, None]

    def start(self, i: int) -> None:
        extra = ("--api-flavor", "vllm") if i == 1 else ()
        proc, _ = start_backend(
            self.log_dir, port=self.ports[i], extra=extra, env={"HF_HUB_OFFLINE": "1"}
        )
        self.procs[i] = proc

    def ensure(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None and p.alive():
                p.signal(signal.SIGCONT)
            else:
                self.start(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        assert p is not None
        p.signal(sig)
        if sig == signal.SIGKILL:
            assert p.popen is not None
            p.popen.wait(10)

    def key(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def stop(self) -> None:
        for p in self.procs:
            if p is not None:
                p.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fault-fleet"))
    yield f
    f.stop()


def _backend(port: int) -> dict[str, Any]:
    return {
        "url": f"http://127.0.0.1:{port}",
        "models": [TINY],
        "max_concurrency": 2,
        "health": HEALTH,
    }


# A request stuck on a frozen or cut-off backend ends at the idle timeout: short where a
# test produces that fault, the default elsewhere, so a loaded machine's slow answer on a
# healthy backend is not mistaken for one.
SHORT_IDLE_S = 8


def _gateway(
    tmp_path: Path, backends: list[dict[str, Any]], idle_timeout_s: float | None = None
) -> Gateway:
    limits = {} if idle_timeout_s is None else {"idle_timeout_s": idle_timeout_s}
    return start_gateway(tmp_path, gateway_config(backends, limits=limits))


@pytest.fixture
def gw(request: pytest.FixtureRequest, tmp_path: Path, fleet: Fleet) -> Iterator[Gateway]:
    fleet.ensure()
    idle = SHORT_IDLE_S if request.node.get_closest_marker("short_idle") else None
    g = _gateway(tmp_path, [_backend(p) for p in fleet.ports], idle)
    try:
        g.wait_backends({fleet.key(0), fleet.key(1)})
        yield g
    finally:
        g.stop()


def health_of(gw: Gateway, key: str) -> str:
    return str(next(b["health"] for b in gw.backends() if b["endpoint"] == key))


def wait_health(gw: Gateway, key: str, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_of(gw, key) == want:
            gw.wait_synced()
            return
        time.sleep(0.05)
    raise TimeoutError(f"{key} not {want}: {gw.backends()}")


def assert_accounted(out: Outcomes, total: int) -> None:
    assert out.sent == total, out
    assert out.counts["hang"] == 0, out


def test_backend_killed_while_idle(gw: Gateway, fleet: Fleet) -> None:
    fleet.kill(0)
    # Sent at once, before any probe noticed: connect failures are retried elsewhere.
    out = asyncio.run(run_load(gw.url, TINY, total=12, concurrency=3))
    assert_accounted(out, 12)
    assert out.counts["ok"] == 12, out
    assert set(out.backends) == {fleet.key(1)}
    wait_health(gw, fleet.key(0), "UNHEALTHY")


def test_backend_killed_while_streaming(gw: Gateway, fleet: Fleet) -> None:
    async def scenario() -> tuple[Outcomes, Outcomes, str]:
        in_flight = Outcomes()
        async with aiohttp.ClientSession() as s:
            data = aiohttp.FormData()
            data.add_field("model", TINY)
            data.add_field("stream", "true")
            data.add_field("file", LONG_CLIP.read_bytes(), filename="long.ogg")
            outcome = "hang"
            async with (
                asyncio.timeout(60),
                s.post(gw.url + "/v1/audio/transcriptions", data=data) as r,
            ):
                victim = r.headers["x-gateway-backend"]
                await r.content.readline()  # the stream has started
                fleet.kill(fleet.ports.index(int(victim.rsplit(":", 1)[1])))
                try:
                    body = await r.read()
                    outcome = "ok" if body.rstrip().endswith(b"[DONE]") else "truncated"
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                    outcome = "truncated"
            in_flight.counts[outcome] += 1
        after = await run_load(gw.url, TINY, total=8, concurrency=2)
        return in_flight, after, victim

    in_flight, after, victim = asyncio.run(scenario())
    # The stream on the dead backend ends at once, visibly incomplete (no [DONE]).
    assert in_flight.counts == {"truncated": 1}
    assert_accounted(after, 8)
    assert after.counts["ok"] == 8, after
    assert victim not in after.backends


@pytest.mark.short_idle
def test_backend_frozen_with_sigstop(gw: Gateway, fleet: Fleet) -> None:
    fleet.kill(0, signal.SIGSTOP)
    out = asyncio.run(run_load(gw.url, TINY, total=8, concurrency=4, deadline_s=40))
    assert_accounted(out, 8)
    # A request that reached the frozen backend ends with the idle timeout's
    # clear 504; the rest succeed on the other backend.
    assert out.counts["ok"] + out.counts["clear_error"] == 8, out
    wait_health(gw, fleet.key(0), "UNHEALTHY")
    later = asyncio.run(run_load(gw.url, TINY, total=6, concurrency=2))
    assert later.counts["ok"] == 6, later
    fleet.kill(0, signal.SIGCONT)
    wait_health(gw, fleet.key(0), "HEALTHY")


@pytest.mark.parametrize("mode", ["error500", "garbage"])
def test_backend_answering_500_or_garbage_is_ejected(
    tmp_path: Path, fleet: Fleet, mode: str
) -> None:
    fleet.ensure()
    fake, port = start_fake(tmp_path, mode)
    g = _gateway(tmp_path / "gw", [_backend(fleet.ports[0]), _backend(port)])
    try:
        g.wait_backends({fleet.key(0)})
        wait_health(g, f"127.0.0.1:{port}", "UNHEALTHY")  # the probe checks status and body
        out = asyncio.run(run_load(g.url, TINY, total=10, concurrency=2))
        assert_accounted(out, 10)
        assert out.counts["ok"] == 10, out
        assert f"127.0.0.1:{port}" not in out.backends
    finally:
        g.stop()
        fake.stop()


def test_backend_restarted_rejoins_after_healthy_threshold(gw: Gateway, fleet: Fleet) -> None:
    fleet.kill(0)
    wait_health(gw, fleet.key(0), "UNHEALTHY")
    fleet.start(0)
    wait_health(gw, fleet.key(0), "HEALTHY")
    out = asyncio.run(run_load(gw.url, TINY, total=12, concurrency=4))
    assert out.counts["ok"] == 12, out
    assert fleet.key(0) in out.backends


def test_every_backend_down_then_one_back(gw: Gateway, fleet: Fleet) -> None:
    fleet.kill(0)
    fleet.kill(1)
    wait_health(gw, fleet.key(0), "UNHEALTHY")
    wait_health(gw, fleet.key(1), "UNHEALTHY")
    down = asyncio.run(run_load(gw.url, TINY, total=6, concurrency=2, deadline_s=10))
    assert_accounted(down, 6)
    assert down.counts["clear_error"] == 6, down
    assert all(e.startswith("503 no healthy backend") for e in down.errors), down.errors
    fleet.start(1)
    wait_health(gw, fleet.key(1), "HEALTHY")
    back = asyncio.run(run_load(gw.url, TINY, total=6, concurrency=2))
    assert back.counts["ok"] == 6, back
    assert set(back.backends) == {fleet.key(1)}


def test_draining_backend_finishes_its_stream_and_gets_no_new_requests(
    gw: Gateway, fleet: Fleet
) -> None:
    async def scenario() -> tuple[str, str, Outcomes]:
        async with aiohttp.ClientSession() as s:
            data = aiohttp.FormData()
            data.add_field("model", TINY)
            data.add_field("stream", "true")
            data.add_field("file", LONG_CLIP.read_bytes(), filename="long.ogg")
            async with s.post(gw.url + "/v1/audio/transcriptions", data=data) as r:
                victim = r.headers["x-gateway-backend"]
                await r.content.readline()
                async with s.post(f"{gw.admin_url}/backends/{victim}/drain") as d:
                    assert d.status == 200
                await asyncio.to_thread(gw.wait_synced)
                during = await run_load(gw.url, TINY, total=6, concurrency=2)
                body = (await r.read()).decode()
        return victim, body, during

    victim, body, during = asyncio.run(scenario())
    assert body.rstrip().endswith("data: [DONE]")  # the in-flight stream finished
    assert during.counts["ok"] == 6, during
    assert victim not in during.backends  # no new request went to the draining one
    assert health_of(gw, victim) == "DRAINING"


@pytest.mark.skipif(not netns.available(), reason="needs root and iproute2 for ip netns")
@pytest.mark.parametrize("fault", ["link_down", "drop_packets"])
def test_backend_cut_off_by_the_network(tmp_path: Path, fleet: Fleet, fault: str) -> None:
    """A backend in its own namespace; its link pulled, or its packets dropped."""
    fleet.ensure()
    with netns.netns_host(1 if fault == "link_down" else 2) as host:
        port = free_port()
        far = Proc(
            f"backend-ns-{port}",
            [
                *host.exec_prefix(),
                sys.executable,
                "-m",
                "whisper_backend",
                "--model",
                TINY,
                "--host",
                host.address,
                "--port",
                str(port),
            ],
            tmp_path / "backend-ns.log",
            env={"HF_HUB_OFFLINE": "1"},
        ).start()
        g = _gateway(
            tmp_path / "gw",
            [_backend(fleet.ports[0]), {**_backend(port), "url": f"http://{host.address}:{port}"}],
            SHORT_IDLE_S,
        )
        far_key = f"{host.address}:{port}"
        try:
            wait_http(f"http://{far_key}/health", 120, far)
            g.wait_backends({fleet.key(0), far_key})
            getattr(host, fault)()
            out = asyncio.run(run_load(g.url, TINY, total=12, concurrency=3, deadline_s=40))
            assert_accounted(out, 12)
            # Sent before the cut was noticed: retried, or a clear error (504 at the
            # idle timeout for a request stuck on the silent link); never a hang.
            assert out.counts["ok"] + out.counts["clear_error"] == 12, out
            wait_health(g, far_key, "UNHEALTHY")
            after = asyncio.run(run_load(g.url, TINY, total=6, concurrency=2))
            assert after.counts["ok"] == 6 and far_key not in after.backends, after
            getattr(host, "link_up" if fault == "link_down" else "restore_packets")()
            wait_health(g, far_key, "HEALTHY", timeout=60)
        finally:
            g.stop()
            far.stop()


def test_control_plane_killed_and_restarted_under_load(gw: Gateway, fleet: Fleet) -> None:
    """Envoy serves on its last config; the new control plane re-probes before it
    answers, so it never pushes 'every backend UNKNOWN' to a serving Envoy."""

    async def scenario() -> Outcomes:
        load = asyncio.create_task(run_load(gw.url, TINY, total=30, concurrency=2))
        await asyncio.sleep(1)
        assert gw.control_plane is not None
        gw.control_plane.signal(signal.SIGKILL)
        await asyncio.sleep(1)
        await asyncio.to_thread(gw.start_control_plane)
        await asyncio.to_thread(gw.wait_synced)
        return await load

    out = asyncio.run(scenario())
    assert_accounted(out, 30)
    assert out.counts["ok"] == 30, out
    assert set(out.backends) == {fleet.key(0), fleet.key(1)}
    assert gw.envoy_stat("listener_manager.listener_modified") == 0
    assert len(gw.status()["proxies"]) == 1
