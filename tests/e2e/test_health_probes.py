"""Probes and the monitor against fake Whisper servers (in-process aiohttp, 127.0.0.1).

The fakes exist only to produce faults on demand (500, 503/429, garbage, hang, wrong
words, reset, nothing listening, /metrics that progress or stand still). Tests assert
behaviour by ordering and counts, never by wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

# Submodule imports: they work whether or not the editable install sees `health` as a
# regular package yet (it was installed before health/__init__.py existed).
from health.load import BackendLoad, fetch_load, judge, parse_load
from health.monitor import HealthMonitor
from health.probe import ProbeResult, probe_model, probe_target
from health.settings import HealthSettings, ProbeTarget
from health.state import HealthEvent, HealthStatus

FIXTURE_CLIP = Path(__file__).parents[1] / "fixtures" / "hello.wav"
TRANSCRIPT = " Hello world. The quick brown fox jumps over the lazy dog."
MODEL = "openai/whisper-tiny.en"
H, U = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY

pytestmark = pytest.mark.timeout(60)

# Small intervals: the suite runs in seconds. recheck == interval here.
FAST = HealthSettings(
    interval_s=0.05,
    timeout_s=1.0,
    healthy_threshold=2,
    unhealthy_threshold=3,
    jitter=0.1,
    fail_interval_s=0.05,
)


# --------------------------------------------------------------------------------------
# Fake Whisper servers
# --------------------------------------------------------------------------------------


@dataclass
class FakeWhisper:
    """A fake transcription server whose behaviour (`mode`) can be switched mid-test.

    Modes: ok, 500, 503, 429 (both "queue full" with Retry-After), garbage, no_text, empty_text,
    hang, wrong_text, reset. `models` limits the models it serves (404 for others);
    `require_key` demands that bearer token.

    `metrics` sets what GET /metrics shows: none (404), progress (finished-requests
    counter grows on every call, requests running and waiting), still (counter never
    moves, one request running), idle (counter grows, nothing in flight), hang (never
    answers).
    """

    mode: str = "ok"
    metrics: str = "none"
    finished: int = 0
    metrics_calls: int = 0
    models: tuple[str, ...] = (MODEL,)
    require_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        return len(self.requests)

    async def start(self) -> FakeWhisper:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self.handle)
        app.router.add_get("/metrics", self.handle_metrics)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])  # the random port picked by the OS
        return self

    async def stop(self) -> None:
        """Close the listening socket: afterwards connections are refused."""
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form.get("file")
        self.requests.append(
            {
                "authorization": request.headers.get("Authorization"),
                "model": form.get("model"),
                "response_format": form.get("response_format"),
                "language": form.get("language"),
                "file": upload.file.read() if isinstance(upload, web.FileField) else None,
                "filename": upload.filename if isinstance(upload, web.FileField) else None,
            }
        )
        self.received.set()
        if self.require_key and request.headers.get("Authorization") != (
            f"Bearer {self.require_key}"
        ):
            return web.json_response({"error": {"message": "bad key", "code": 401}}, status=401)
        if form.get("model") not in self.models:
            return web.json_response({"error": {"message": "no model", "code": 404}}, status=404)
        if self.mode == "ok":
            return web.json_response({"text": TRANSCRIPT, "usage": {"seconds": 4}})
        if self.mode == "500":
            return web.json_response({"error": {"message": "boom", "code": 500}}, status=500)
        if self.mode in ("503", "429"):
            status = int(self.mode)
            return web.json_response(
                {"error": {"message": "The server is busy, retry later.", "code": status}},
                status=status,
                headers={"Retry-After": "1"},
            )
        if self.mode == "garbage":
            return web.Response(body=b"\x00\xffnot json at all", content_type="text/plain")
        if self.mode == "no_text":
            return web.json_response({"usage": {"seconds": 4}})
        if self.mode == "empty_text":  # stock vLLM 0.32 on an English-only model
            return web.json_response({"text": "", "usage": {"type": "duration", "seconds": 4}})
        if self.mode == "wrong_text":
            return web.json_response({"text": " Thank you for watching."})
        if self.mode == "hang":
            await self.release.wait()
            return web.json_response({"text": TRANSCRIPT})
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.abort()  # RST / close without a response: the process "died"
            await asyncio.sleep(0.05)
            return web.Response()
        raise AssertionError(f"unknown fake mode {self.mode}")

    async def handle_metrics(self, request: web.Request) -> web.StreamResponse:
        self.metrics_calls += 1
        if self.metrics == "none":
            raise web.HTTPNotFound()
        if self.metrics == "hang":
            await self.release.wait()
            raise web.HTTPNotFound()
        running, waiting = {"progress": (2, 3), "still": (1, 0), "idle": (0, 0)}[self.metrics]
        if self.metrics != "still":
            self.finished += 1
        # Two label sets, split unevenly: the reader must sum them.
        a, b = self.finished // 2, self.finished - self.finished // 2
        text = f"""\
# HELP vllm:num_requests_running Requests being decoded now.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{MODEL}"}} {running}.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{MODEL}"}} {waiting}.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{le="1.0",model_name="a"}} {a}.0
vllm:e2e_request_latency_seconds_bucket{{le="+Inf",model_name="a"}} {a}.0
vllm:e2e_request_latency_seconds_count{{model_name="a"}} {a}.0
vllm:e2e_request_latency_seconds_sum{{model_name="a"}} {a * 0.5}
vllm:e2e_request_latency_seconds_count{{model_name="b"}} {b}.0
vllm:e2e_request_latency_seconds_sum{{model_name="b"}} {b * 0.5}
"""
        return web.Response(text=text, content_type="text/plain")


FakeFactory = Callable[..., Awaitable[FakeWhisper]]


@pytest.fixture
async def fake_whisper() -> AsyncIterator[FakeFactory]:
    """Factory: `await fake_whisper(mode=..., ...)` starts a fake; all are stopped at the end."""
    fakes: list[FakeWhisper] = []

    async def make(**kw: Any) -> FakeWhisper:
        fake = await FakeWhisper(**kw).start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()


@pytest.fixture
async def fake_whisper_ok(fake_whisper: FakeFactory) -> FakeWhisper:
    return await fake_whisper(mode="ok")


@pytest.fixture
async def fake_whisper_500(fake_whisper: FakeFactory) -> FakeWhisper:
    return await fake_whisper(mode="500")


@pytest.fixture
async def fake_whisper_garbage(fake_whisper: FakeFactory) -> FakeWhisper:
    return await fake_whisper(mode="garbage")


@pytest.fixture
async def fake_whisper_hang(fake_whisper: FakeFactory) -> FakeWhisper:
    return await fake_whisper(mode="hang")


@pytest.fixture
async def fake_whisper_wrong_text(fake_whisper: FakeFactory) -> FakeWhisper:
    return await fake_whisper(mode="wrong_text")


@pytest.fixture
async def fake_whisper_busy(fake_whisper: FakeFactory) -> FakeWhisper:
    """Answers probes after the timeout (queue of client work) but keeps finishing requests.

    Starts in mode "ok" so a test gets its HEALTHY first; switch `mode` to "hang".
    """
    return await fake_whisper(mode="ok", metrics="progress")


@pytest.fixture
async def fake_whisper_stuck(fake_whisper: FakeFactory) -> FakeWhisper:
    """A hung decoder behind a live event loop: /metrics answers, its counter never moves.

    Starts in mode "ok"; switch `mode` to "hang".
    """
    return await fake_whisper(mode="ok", metrics="still")


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens (port bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clip() -> bytes:
    return FIXTURE_CLIP.read_bytes()


# --------------------------------------------------------------------------------------
# Monitor helpers
# --------------------------------------------------------------------------------------


class Recorder:
    """on_event callback that queues events, for ordered assertions."""

    def __init__(self) -> None:
        self.events: list[HealthEvent] = []
        self.queue: asyncio.Queue[HealthEvent] = asyncio.Queue()

    def __call__(self, event: HealthEvent) -> None:
        self.events.append(event)
        self.queue.put_nowait(event)

    async def next(self, timeout: float = 10.0) -> HealthEvent:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def of(self, key: str) -> list[HealthStatus]:
        return [e.status for e in self.events if e.target == key]


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `pred` until true; fail after `timeout` (a guard, not a speed assertion)."""
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


def target(
    fake_or_url: FakeWhisper | str,
    settings: HealthSettings = FAST,
    *,
    key: str | None = None,
    models: tuple[str, ...] = (MODEL,),
    api_key: str | None = None,
) -> ProbeTarget:
    url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.url
    return ProbeTarget(
        key=key or url.removeprefix("http://"),
        base_url=url,
        models=models,
        api_key=api_key,
        settings=settings,
    )


@pytest.fixture
async def monitor() -> AsyncIterator[tuple[HealthMonitor, Recorder]]:
    rec = Recorder()
    mon = HealthMonitor(on_event=rec)
    await mon.start()
    yield mon, rec
    await mon.close()


# --------------------------------------------------------------------------------------
# One probe
# --------------------------------------------------------------------------------------


async def test_probe_ok_sends_the_clip_as_multipart(
    session: aiohttp.ClientSession, fake_whisper_ok: FakeWhisper, clip: bytes
) -> None:
    r = await probe_model(session, fake_whisper_ok.url, MODEL, clip)
    assert r.ok and not r.hard and r.error is None
    assert r.text == TRANSCRIPT and r.model == MODEL and r.latency_ms > 0
    [req] = fake_whisper_ok.requests
    assert req["file"] == clip
    assert req["filename"].endswith(".wav")
    assert req["model"] == MODEL
    assert req["response_format"] == "json"
    assert req["language"] is None
    assert req["authorization"] is None  # no key, no header


async def test_probe_sends_bearer_key_and_language(
    session: aiohttp.ClientSession, fake_whisper: FakeFactory, clip: bytes
) -> None:
    fake = await fake_whisper(require_key="sk-test")
    r = await probe_model(session, fake.url, MODEL, clip, api_key="sk-test", language="en")
    assert r.ok, r.error
    assert fake.requests[0]["authorization"] == "Bearer sk-test"
    assert fake.requests[0]["language"] == "en"
    r = await probe_model(session, fake.url, MODEL, clip)
    assert not r.ok and not r.hard and "HTTP 401" in (r.error or "")


@pytest.mark.parametrize(
    "mode,needle",
    [
        ("500", "HTTP 500"),
        ("garbage", "not JSON"),
        ("no_text", "no string 'text'"),
        ("empty_text", "the transcript came back empty"),
    ],
)
async def test_probe_bad_answers_are_soft_failures(
    session: aiohttp.ClientSession, fake_whisper: FakeFactory, clip: bytes, mode: str, needle: str
) -> None:
    fake = await fake_whisper(mode=mode)
    r = await probe_model(session, fake.url, MODEL, clip)
    assert not r.ok and not r.hard
    assert needle in (r.error or "") and MODEL in (r.error or "")


async def test_probe_hang_is_a_soft_timeout(
    session: aiohttp.ClientSession, fake_whisper_hang: FakeWhisper, clip: bytes
) -> None:
    r = await probe_model(session, fake_whisper_hang.url, MODEL, clip, timeout_s=0.2)
    assert not r.ok and not r.hard
    assert "timeout" in (r.error or "")


async def test_probe_expected_word(
    session: aiohttp.ClientSession,
    fake_whisper_ok: FakeWhisper,
    fake_whisper_wrong_text: FakeWhisper,
    clip: bytes,
) -> None:
    for word in ("fox", "QUICK", "Lazy"):  # case-insensitive
        r = await probe_model(session, fake_whisper_ok.url, MODEL, clip, expected_word=word)
        assert r.ok, r.error
    r = await probe_model(session, fake_whisper_ok.url, MODEL, clip, expected_word="cat")
    assert not r.ok and not r.hard and r.text == TRANSCRIPT
    r = await probe_model(session, fake_whisper_wrong_text.url, MODEL, clip, expected_word="fox")
    assert not r.ok and not r.hard
    assert "'fox'" in (r.error or "")


async def test_probe_closed_port_is_hard(
    session: aiohttp.ClientSession, closed_port_url: str, clip: bytes
) -> None:
    r = await probe_model(session, closed_port_url, MODEL, clip)
    assert not r.ok and r.hard
    assert "hard" in (r.error or "")


async def test_probe_connection_reset_is_hard(
    session: aiohttp.ClientSession, fake_whisper: FakeFactory, clip: bytes
) -> None:
    fake = await fake_whisper(mode="reset")
    r = await probe_model(session, fake.url, MODEL, clip)
    assert not r.ok and r.hard, r.error


async def test_probe_dns_failure_is_hard(session: aiohttp.ClientSession, clip: bytes) -> None:
    r = await probe_model(session, "http://no-such-host.invalid:8002", MODEL, clip, timeout_s=5)
    assert not r.ok and r.hard, r.error


async def test_probe_target_needs_every_model_and_names_the_failing_one(
    session: aiohttp.ClientSession, fake_whisper: FakeFactory, clip: bytes
) -> None:
    fake = await fake_whisper(models=("a", "b"))
    r = await probe_target(session, target(fake, models=("a", "b")), clip)
    assert r.ok and [q["model"] for q in fake.requests] == ["a", "b"]
    r = await probe_target(session, target(fake, models=("a", "c", "b")), clip)
    assert not r.ok and not r.hard and r.model == "c"
    assert (r.error or "").startswith("c: HTTP 404")


async def test_probe_target_reads_default_packaged_clip(
    session: aiohttp.ClientSession, fake_whisper_ok: FakeWhisper, clip: bytes
) -> None:
    r = await probe_target(session, target(fake_whisper_ok, HealthSettings()))
    assert r.ok, r.error
    assert fake_whisper_ok.requests[0]["file"] == clip  # the package ships the fixture


# --------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------


async def test_healthy_after_first_pass_and_events_only_on_transitions(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_ok)
    await mon.set_targets([t])
    assert mon.snapshot()[t.key].status is HealthStatus.UNKNOWN or rec.events
    ev = await rec.next()
    assert (ev.target, ev.status, ev.reason) == (t.key, H, "first probe passed")
    assert mon.snapshot()[t.key].probes_total == 1
    await wait_until(lambda: mon.snapshot()[t.key].probes_total >= 6)
    assert rec.events == [ev]  # five more passes, no more events
    st = mon.snapshot()[t.key]
    assert st.last_transcript == TRANSCRIPT and st.failures_total == 0
    assert st.to_dict()["status"] == "HEALTHY"


@pytest.mark.parametrize("bad_mode", ["500", "garbage", "no_text", "hang", "wrong_text"])
async def test_soft_failures_eject_after_threshold(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper: FakeFactory, bad_mode: str
) -> None:
    mon, rec = monitor
    fake = await fake_whisper(mode="ok")
    settings = replace(FAST, timeout_s=0.3, expected_word="fox")
    t = target(fake, settings)
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    before = mon.snapshot()[t.key].probes_total
    fake.mode = bad_mode
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("3 consecutive failures"), ev.reason
    st = mon.snapshot()[t.key]
    assert st.consecutive_fails == 3 and st.failures_total == 3
    assert st.probes_total <= before + 4  # at most one pass raced the mode switch
    assert rec.of(t.key) == [H, U]


async def test_bad_from_the_start_goes_unhealthy_after_threshold(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_500: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_500)
    await mon.set_targets([t])
    ev = await rec.next()
    assert ev.status is U
    assert mon.snapshot()[t.key].probes_total == 3
    assert fake_whisper_500.count == 3


async def test_closed_port_ejects_at_once(
    monitor: tuple[HealthMonitor, Recorder], closed_port_url: str
) -> None:
    mon, rec = monitor
    t = target(closed_port_url)
    await mon.set_targets([t])
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("hard failure")
    assert mon.snapshot()[t.key].probes_total == 1


async def test_backend_that_dies_is_ejected_on_first_hard_failure(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    # Long interval: the fast recheck is not even needed, the first probe after death ejects.
    t = target(fake_whisper_ok, replace(FAST, interval_s=30.0, jitter=0.0))
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    await fake_whisper_ok.stop()
    mon.probe_now(t.key)
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("hard failure")
    st = mon.snapshot()[t.key]
    assert st.probes_total == 2 and st.consecutive_fails == 1


async def test_failure_while_healthy_is_rechecked_sooner(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    # interval 30 s, recheck 0.05 s: without the fast recheck this test would time out.
    t = target(fake_whisper_ok, replace(FAST, interval_s=30.0, jitter=0.0, fail_interval_s=0.05))
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake_whisper_ok.mode = "500"
    mon.probe_now(t.key)  # one failure; the next two come from the fast recheck
    ev = await rec.next(timeout=10)
    assert ev.status is U
    assert mon.snapshot()[t.key].probes_total == 4


async def test_recovered_backend_is_readmitted_after_healthy_threshold(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_ok, replace(FAST, healthy_threshold=3))
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake_whisper_ok.mode = "500"
    assert (await rec.next()).status is U
    fails_seen = fake_whisper_ok.count
    fake_whisper_ok.mode = "ok"
    ev = await rec.next()
    assert ev.status is H and ev.reason == "3 consecutive passes"
    st = mon.snapshot()[t.key]
    assert st.consecutive_passes == 3
    # Every pass after the switch was needed: probes since the last failure == threshold.
    assert fake_whisper_ok.count - fails_seen <= 3 + 1
    assert rec.of(t.key) == [H, U, H]


async def test_monitor_sends_authorization_when_key_set(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper: FakeFactory
) -> None:
    mon, rec = monitor
    fake = await fake_whisper(require_key="sk-secret")
    with_key = target(fake, key="with-key", api_key="sk-secret")
    without = target(fake, key="without-key")
    await mon.set_targets([with_key, without])
    # The two first events, whatever their order.
    got = {e.target: e.status for e in [await rec.next(), await rec.next()]}
    assert got == {"with-key": H, "without-key": U}
    auths = {q["authorization"] for q in fake.requests}
    assert "Bearer sk-secret" in auths and None in auths
    assert "sk-secret" not in repr(with_key)  # the key never lands in logs


async def test_set_targets_adds_and_removes(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper: FakeFactory
) -> None:
    mon, rec = monitor
    a, b = await fake_whisper(), await fake_whisper()
    ta, tb = target(a), target(b)
    await mon.set_targets([ta])
    assert (await rec.next()).target == ta.key
    assert set(mon.snapshot()) == {ta.key}
    assert b.count == 0

    await mon.set_targets([ta, tb])
    ev = await rec.next()
    assert (ev.target, ev.status) == (tb.key, H)
    assert set(mon.snapshot()) == {ta.key, tb.key}

    await mon.set_targets([tb])
    assert set(mon.snapshot()) == {tb.key}
    a_count = a.count
    b_probes = mon.snapshot()[tb.key].probes_total
    await wait_until(lambda: mon.snapshot()[tb.key].probes_total >= b_probes + 5)
    assert a.count == a_count  # removed: no more probes
    assert not mon.probe_now(ta.key)
    assert rec.of(ta.key) == [H]  # removal is not a health event

    # Re-adding starts from UNKNOWN again (state was dropped).
    await mon.set_targets([ta, tb])
    ev = await rec.next()
    assert (ev.target, ev.status, ev.reason) == (ta.key, H, "first probe passed")


async def test_changed_settings_restart_loop_keeping_status(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_ok, replace(FAST, interval_s=30.0, jitter=0.0))
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    probes = mon.snapshot()[t.key].probes_total
    # Same target again: nothing restarts (a restart would probe at once: jitter 0).
    await mon.set_targets([t])
    await asyncio.sleep(0.2)
    assert mon.snapshot()[t.key].probes_total == probes
    # New settings: loop restarts with the new (short) interval, status kept, no event.
    await mon.set_targets([replace(t, settings=FAST)])
    assert mon.snapshot()[t.key].status is H
    await wait_until(lambda: mon.snapshot()[t.key].probes_total >= probes + 4)
    assert rec.events[1:] == []
    # And a bad word in the new settings ejects it, proving the new settings are live.
    await mon.set_targets([replace(t, settings=replace(FAST, expected_word="zebra"))])
    ev = await rec.next()
    assert ev.status is U and "zebra" in ev.reason


async def test_hanging_target_does_not_delay_the_others(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper: FakeFactory
) -> None:
    mon, rec = monitor
    hang = await fake_whisper(mode="hang")
    oks = [await fake_whisper() for _ in range(3)]
    # The hanging target's probe can only end by a 30 s timeout; the test never waits that long.
    t_hang = target(hang, replace(FAST, timeout_s=30.0), key="hang")
    t_oks = [target(f, key=f"ok{i}") for i, f in enumerate(oks)]
    await mon.set_targets([t_hang, *t_oks])
    await asyncio.wait_for(hang.received.wait(), 10)  # its probe is in flight...
    seen: set[str] = set()
    while seen != {"ok0", "ok1", "ok2"}:
        ev = await rec.next()
        assert ev.status is H
        seen.add(ev.target)
    # ...and the others keep probing while it hangs.
    await wait_until(lambda: all(mon.snapshot()[t.key].probes_total >= 5 for t in t_oks))
    hang_state = mon.snapshot()["hang"]
    assert hang_state.status is HealthStatus.UNKNOWN and hang_state.probes_total == 0
    assert hang.count == 1
    assert rec.of("hang") == []


async def test_probe_now_and_unknown_key(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_ok, replace(FAST, interval_s=30.0, jitter=0.0))
    await mon.set_targets([t])
    await rec.next()
    assert mon.probe_now(t.key)
    await wait_until(lambda: mon.snapshot()[t.key].probes_total == 2)
    assert not mon.probe_now("nope")


async def test_callback_errors_do_not_stop_probing(fake_whisper_ok: FakeWhisper) -> None:
    calls: list[HealthEvent] = []

    def bad_callback(ev: HealthEvent) -> None:
        calls.append(ev)
        raise RuntimeError("control plane bug")

    async with HealthMonitor(on_event=bad_callback) as mon:
        t = target(fake_whisper_ok)
        await mon.set_targets([t])
        await wait_until(lambda: t.key in mon.snapshot() and mon.snapshot()[t.key].probes_total > 3)
        assert [c.status for c in calls] == [H]


async def test_targets_set_before_start_and_close_stops_probing(
    fake_whisper_ok: FakeWhisper,
) -> None:
    rec = Recorder()
    mon = HealthMonitor(on_event=rec)
    t = target(fake_whisper_ok)
    await mon.set_targets([t])
    await asyncio.sleep(0.2)
    assert fake_whisper_ok.count == 0  # nothing runs before start()
    await mon.start()
    assert (await rec.next()).status is H
    await mon.close()
    count = fake_whisper_ok.count
    await asyncio.sleep(0.3)
    assert fake_whisper_ok.count == count
    await mon.close()  # idempotent
    with pytest.raises(RuntimeError):
        await mon.set_targets([t])


async def test_given_session_is_used_and_not_closed(
    session: aiohttp.ClientSession, fake_whisper_ok: FakeWhisper
) -> None:
    rec = Recorder()
    async with HealthMonitor(on_event=rec, session=session) as mon:
        await mon.set_targets([target(fake_whisper_ok)])
        assert (await rec.next()).status is H
    assert not session.closed


def test_probe_result_is_frozen() -> None:
    r = ProbeResult(ok=True, hard=False, latency_ms=1.0)
    with pytest.raises(AttributeError):
        r.ok = False  # type: ignore[misc]


def test_jitter_spreads_intervals() -> None:
    mon = HealthMonitor(on_event=lambda ev: None, rng=random.Random(7))
    delays = [mon._jittered(1.0, 0.1) for _ in range(200)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert len(set(delays)) > 100  # not aligned
    assert mon._jittered(1.0, 0.0) == 1.0


# --------------------------------------------------------------------------------------
# Busy or stuck: /metrics progress turns a slow answer into BUSY, not a failure
# --------------------------------------------------------------------------------------

# Probes time out fast here; /metrics gets min(2 s, timeout_s).
SLOW = replace(FAST, timeout_s=0.15)


def busy_target(fake: FakeWhisper) -> ProbeTarget:
    return target(fake, SLOW)


@pytest.mark.parametrize(
    "mode,overload", [("hang", True), ("503", True), ("429", True), ("500", False)]
)
async def test_probe_flags_overload_like_failures(
    session: aiohttp.ClientSession,
    fake_whisper: FakeFactory,
    clip: bytes,
    mode: str,
    overload: bool,
) -> None:
    fake = await fake_whisper(mode=mode)
    r = await probe_target(session, target(fake, SLOW), clip)
    assert not r.ok and not r.hard and not r.busy
    assert r.overload is overload, r.error


async def test_probe_ok_and_hard_are_not_overload(
    session: aiohttp.ClientSession, fake_whisper_ok: FakeWhisper, closed_port_url: str, clip: bytes
) -> None:
    assert not (await probe_model(session, fake_whisper_ok.url, MODEL, clip)).overload
    r = await probe_model(session, closed_port_url, MODEL, clip)
    assert r.hard and not r.overload


def test_parse_load_sums_label_sets_and_falls_back() -> None:
    text = """\
# HELP vllm:e2e_request_latency_seconds_count is not a sample
vllm:e2e_request_latency_seconds_count{model_name="a"} 3.0
vllm:e2e_request_latency_seconds_count{model_name="b",x="odd } \\" label"} 4 1700000000
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a"} 3.0
vllm:e2e_request_latency_seconds_sum{model_name="a"} 99
vllm:request_success_total{finished_reason="stop"} 1000
vllm:num_requests_running{model_name="a"} 2
vllm:num_requests_running{model_name="b"} 1
vllm:num_requests_waiting{model_name="a"} NaN
vllm:num_requests_waiting{model_name="b"} 4
"""
    assert parse_load(text) == BackendLoad(finished=7.0, in_flight=7.0)
    with pytest.raises(ValueError):
        parse_load(text + "garbage line {\n")  # not the format: fetch_load reads no load
    vllm_only = 'vllm:request_success_total{finished_reason="stop"} 5\n' + (
        'vllm:request_success_total{finished_reason="length"} 2\n'
    )
    assert parse_load(vllm_only) == BackendLoad(finished=7.0, in_flight=0.0)
    assert parse_load("# nothing\nother_metric 1\n") == BackendLoad(finished=None, in_flight=0.0)


def test_judge_busy_only_with_progress_and_work_in_flight() -> None:
    timeout = ProbeResult(
        ok=False,
        hard=False,
        latency_ms=150.0,
        error="m: timeout after 0.15s",
        model="m",
        overload=True,
    )
    load = BackendLoad(finished=12.0, in_flight=5.0)
    busy = judge(timeout, 10.0, load)
    assert busy.busy and not busy.ok
    assert busy.error == (
        "busy: timeout after 0.15s while 5 requests in flight and 2 finished since last probe"
    )
    assert not judge(timeout, None, load).busy  # no baseline yet
    assert not judge(timeout, 12.0, load).busy  # counter still
    assert not judge(timeout, 20.0, load).busy  # counter went down: restarted, not progress
    assert not judge(timeout, 10.0, None).busy  # /metrics unreachable
    assert not judge(timeout, 10.0, BackendLoad(finished=12.0, in_flight=0.0)).busy
    assert not judge(timeout, 10.0, BackendLoad(finished=None, in_flight=5.0)).busy
    not_overload = replace(timeout, overload=False, error="m: HTTP 500: boom")
    assert judge(not_overload, 10.0, load) == not_overload
    hard = replace(timeout, hard=True)
    assert judge(hard, 10.0, load) == hard


@pytest.mark.parametrize("metrics", ["progress", "none", "hang"])
async def test_fetch_load(
    session: aiohttp.ClientSession, fake_whisper: FakeFactory, metrics: str
) -> None:
    fake = await fake_whisper(metrics=metrics)
    load = await fetch_load(session, fake.url, timeout_s=0.15)
    if metrics == "progress":
        assert load == BackendLoad(finished=1.0, in_flight=5.0)
    else:
        assert load is None
    assert fake.metrics_calls == 1


async def test_fetch_load_nothing_listening(
    session: aiohttp.ClientSession, closed_port_url: str
) -> None:
    assert await fetch_load(session, closed_port_url) is None


async def test_busy_backend_stays_healthy_until_it_stops_progressing(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_busy: FakeWhisper
) -> None:
    mon, rec = monitor
    fake = fake_whisper_busy
    t = busy_target(fake)
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake.mode = "hang"  # every probe now times out, but requests keep finishing
    await wait_until(lambda: mon.snapshot()[t.key].busy_total >= 2 * SLOW.unhealthy_threshold)
    st = mon.snapshot()[t.key]
    assert st.status is H and rec.events[1:] == []
    assert st.consecutive_fails == 0 and st.failures_total == 0
    assert (st.last_error or "").startswith("busy: timeout after 0.15s while 5 requests")
    assert st.to_dict()["busy_total"] == st.busy_total
    # Progress stops (decoder hung, event loop alive): ejected after the threshold.
    fake.metrics = "still"
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("3 consecutive failures"), ev.reason
    assert "timeout" in ev.reason
    assert rec.of(t.key) == [H, U]


async def test_stuck_backend_is_ejected_after_threshold(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_stuck: FakeWhisper
) -> None:
    mon, rec = monitor
    t = busy_target(fake_whisper_stuck)
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake_whisper_stuck.mode = "hang"
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("3 consecutive failures"), ev.reason
    st = mon.snapshot()[t.key]
    assert st.busy_total == 0 and st.failures_total == 3


@pytest.mark.parametrize(
    "mode,metrics,busy",
    [
        ("503", "progress", True),  # queue full, Retry-After, requests finishing: busy
        ("429", "progress", True),
        ("503", "still", False),  # queue full and nothing finishes: failing
        ("hang", "idle", False),  # counter moves but nothing in flight: not busy
        ("hang", "none", False),  # no /metrics (404): ordinary failure
        ("hang", "hang", False),  # /metrics unreachable (times out): ordinary failure
        ("500", "progress", False),  # a 500 is broken, whatever the metrics say
    ],
)
async def test_busy_or_failing(
    monitor: tuple[HealthMonitor, Recorder],
    fake_whisper: FakeFactory,
    mode: str,
    metrics: str,
    busy: bool,
) -> None:
    mon, rec = monitor
    fake = await fake_whisper(mode="ok", metrics=metrics)
    t = busy_target(fake)
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake.mode = mode
    if busy:
        await wait_until(lambda: mon.snapshot()[t.key].busy_total >= 5)
        st = mon.snapshot()[t.key]
        assert st.status is H and st.failures_total == 0 and rec.of(t.key) == [H]
        assert (st.last_error or "").startswith(f"busy: HTTP {mode}")
    else:
        ev = await rec.next()
        assert ev.status is U and ev.reason.startswith("3 consecutive failures"), ev.reason
        assert mon.snapshot()[t.key].busy_total == 0


async def test_busy_backend_that_dies_is_ejected_at_once(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_busy: FakeWhisper
) -> None:
    mon, rec = monitor
    t = target(fake_whisper_busy, replace(SLOW, interval_s=30.0, jitter=0.0))
    await mon.set_targets([t])
    assert (await rec.next()).status is H
    fake_whisper_busy.mode = "hang"
    mon.probe_now(t.key)
    await wait_until(lambda: mon.snapshot()[t.key].busy_total == 1)
    await fake_whisper_busy.stop()
    mon.probe_now(t.key)
    ev = await rec.next()
    assert ev.status is U and ev.reason.startswith("hard failure")


async def test_recovery_is_confirmed_at_the_recheck_pace_not_the_interval(
    monitor: tuple[HealthMonitor, Recorder], fake_whisper_ok: FakeWhisper
) -> None:
    """After a first pass while UNHEALTHY the next probe comes after fail_interval_s,
    not interval_s: with a 30 s interval, readmission inside the guard proves it."""
    slow = replace(FAST, interval_s=30.0, fail_interval_s=0.05, healthy_threshold=3)
    mon, rec = monitor
    fake_whisper_ok.mode = "500"
    t = target(fake_whisper_ok, replace(slow, unhealthy_threshold=1))
    await mon.set_targets([t])
    assert (await rec.next()).status is U
    fake_whisper_ok.mode = "ok"
    assert mon.probe_now(t.key)  # the first pass; the two confirming ones must follow fast
    ev = await rec.next(timeout=10)
    assert ev.status is H and ev.reason == "3 consecutive passes"
