"""Hostile multipart uploads through the real gateway (the parser part of the
hostile-input suite): each body of the corpus in testkit/multipart_forms.py
gets the status it should, in the OpenAI error shape when refused, while a
parallel stream of good uploads keeps succeeding.

The backend is a fake that parses with whisper_backend's own form reader and
echoes the model it read, so a routed case also shows what the backend served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.multipart_forms import CTYPE, HOSTILE, Case, audio, form, model
from testkit.procs import Proc, start_fake

MODELS = ("m/a", "m/b")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("hostile")
    fake: Proc
    fake, port = start_fake(logs, "echo_form")
    cfg = gateway_config(
        [{"url": f"http://127.0.0.1:{port}", "models": list(MODELS), "health": {"enabled": False}}]
    )
    g = start_gateway(logs, cfg)
    g.wait_synced()
    yield g
    g.stop()
    fake.stop()


def expected_status(case: Case) -> int:
    """The reader's refusal, else the route's answer: no model 400, unknown model 404,
    and the backend's 400 for a body aiohttp refuses."""
    if case.status is not None:
        return case.status
    if case.model is None:
        return 400
    if case.model.decode() not in MODELS:
        return 404
    return 400 if case.backend_refuses else 200


async def post(
    s: aiohttp.ClientSession, gw: Gateway, ctype: str, body: bytes
) -> tuple[int, str | None, Any]:
    async with s.post(
        f"{gw.url}/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype}
    ) as r:
        return r.status, r.headers.get("x-gateway-model"), json.loads(await r.read())


async def good_uploads(gw: Gateway, stop: asyncio.Event) -> tuple[int, list[str]]:
    """Valid uploads, one after another, until stopped: (successes, failures)."""
    ok, failures = 0, []
    body = form(model(b"m/b"), audio())
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            try:
                status, routed, answer = await post(s, gw, CTYPE, body)
            except (aiohttp.ClientError, ValueError) as e:
                failures.append(repr(e))
                continue
            if (status, routed, answer.get("model")) == (200, "m/b", "m/b"):
                ok += 1
            else:
                failures.append(f"{status} {routed} {answer}")
    return ok, failures


async def test_hostile_uploads_get_their_status_while_good_ones_flow(gw: Gateway) -> None:
    stop = asyncio.Event()
    good = asyncio.create_task(good_uploads(gw, stop))
    wrong = []
    try:
        async with aiohttp.ClientSession() as s:
            # Twice over, so the good stream overlaps the corpus however fast it runs.
            for case in HOSTILE * 2:
                status, routed, answer = await post(s, gw, case.ctype, case.body)
                want = expected_status(case)
                if status != want:
                    wrong.append(f"{case.id}: {status} (want {want}) {answer}")
                elif case.backend_refuses:
                    assert case.model is not None
                    if routed != case.model.decode():
                        wrong.append(f"{case.id}: routed by {routed}, not by the real model")
                elif status == 200:
                    assert case.model is not None
                    if not routed == answer["model"] == case.model.decode():
                        wrong.append(f"{case.id}: routed {routed}, served {answer['model']}")
                else:
                    err = answer["error"]
                    if set(err) != {"message", "type", "param", "code"} or err["code"] != status:
                        wrong.append(f"{case.id}: not the OpenAI error shape: {answer}")
                    elif case.message not in err["message"]:
                        wrong.append(f"{case.id}: message {err['message']!r}")
    finally:
        stop.set()
        ok, failures = await good
    assert not wrong, "\n".join(wrong)
    assert failures == []
    assert ok > 0


async def test_large_upload_is_walked_to_its_end(gw: Gateway) -> None:
    """LuaJIT in Envoy reads a 24 MB body in windows: a model after a file full of
    delimiter lookalikes routes by it, and a second model at the very end is found."""
    # Lookalikes aiohttp also reads as content (it refuses "\r\n--abcX").
    chunk = b"RIFF\n--abc\r\nx--abc--\r\n\r\n--ab\r\n" + bytes(range(256)) * 4
    file = audio(chunk * (24 * 2**20 // len(chunk)))
    async with aiohttp.ClientSession() as s:
        status, routed, answer = await post(s, gw, CTYPE, form(file, model(b"m/a")))
        assert (status, routed, answer.get("model")) == (200, "m/a", "m/a"), answer
        status, _, answer = await post(s, gw, CTYPE, form(model(b"m/a"), file, model(b"m/b")))
        assert status == 400
        assert answer["error"]["message"] == "duplicate 'model' field"
        assert answer["error"]["param"] == "model"
