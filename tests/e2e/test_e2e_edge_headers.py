"""Hostile headers and bodies at the edge, while good requests keep succeeding: a
client's `x-envoy-*` retry headers do not override our retry policy, a spoofed
`x-gateway-model` does not route, a forged `X-Forwarded-For` is not believed, a
chunked upload past the limit gets 413, too many headers get 431."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import Outcomes, one_request
from testkit.procs import Proc, start_fake

OK = "m/ok"
ERR = "m/err"
TRANSCRIBE = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    logs = tmp_path_factory.mktemp("fakes")
    procs: list[tuple[Proc, int]] = [start_fake(logs, "fast"), start_fake(logs, "error500")]
    yield {"ok": procs[0][1], "err": procs[1][1]}
    for p, _ in procs:
        p.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, int]) -> Iterator[Gateway]:
    off = {"enabled": False}
    gw = start_gateway(
        tmp_path_factory.mktemp("edge"),
        gateway_config(
            [
                {"url": f"http://127.0.0.1:{fakes['ok']}", "models": [OK], "health": off},
                {"url": f"http://127.0.0.1:{fakes['err']}", "models": [ERR], "health": off},
            ],
            limits={"max_upload_mb": 1},
            edge={},  # the defaults
        ),
    )
    gw.wait_synced()
    yield gw
    gw.stop()


async def seen(port: int) -> list[dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/_fake/requests") as r:
            got = await r.json()
    return [{k.lower(): v for k, v in h["headers"].items()} for h in got]


def form(model: str, size: int = 64) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", model)
    data.add_field("file", b"\0" * size, filename="a.wav", content_type="audio/wav")
    return data


@pytest.fixture
async def good_traffic(edge: Gateway) -> AsyncIterator[Outcomes]:
    """Good requests in a loop beside each hostile case; none may fail."""
    out = Outcomes()
    stop = asyncio.Event()

    async def loop() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                await one_request(s, edge.url, OK, out, deadline_s=30)

    task = asyncio.create_task(loop())
    yield out
    stop.set()
    await task
    assert out.sent > 0 and out.counts["ok"] == out.sent, str(out)


async def test_client_retry_headers_do_not_override_the_policy(
    edge: Gateway, fakes: dict[str, int], good_traffic: Outcomes
) -> None:
    before = len(await seen(fakes["err"]))
    headers = {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "5"}
    async with aiohttp.ClientSession() as s:
        async with s.post(edge.url + TRANSCRIBE, data=form(ERR), headers=headers) as r:
            assert r.status == 500  # the backend's own error, passed through
    # One attempt: a 500 is not retried by our policy, and the client's header is dropped.
    assert len(await seen(fakes["err"])) == before + 1


async def test_spoofed_routing_and_address_headers(
    edge: Gateway, fakes: dict[str, int], good_traffic: Outcomes
) -> None:
    spoof = {
        "x-gateway-model": ERR,
        "x-gateway-client": "admin",
        "X-Forwarded-For": "10.0.0.1",
        "x-envoy-external-address": "10.0.0.1",
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(edge.url + TRANSCRIBE, data=form(OK), headers=spoof) as r:
            assert r.status == 200  # routed by the body's model, not the header
            rid = r.headers["x-request-id"]
            assert "x-gateway-backend" not in r.headers
    (mine,) = [h for h in await seen(fakes["ok"]) if h.get("x-request-id") == rid]
    assert mine["x-gateway-model"] == OK
    assert "x-gateway-client" not in mine
    # The peer is the client (no trusted hop): the forged address is not believed.
    assert mine["x-envoy-external-address"] == "127.0.0.1"


async def test_chunked_upload_past_the_limit_is_413(edge: Gateway, good_traffic: Outcomes) -> None:
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{OK}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        for _ in range(24):  # 1.5 MB against a 1 MB limit, in 64 KiB chunks
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(edge.url + TRANSCRIBE, data=body(), headers=headers) as r:
            assert r.status == 413
            err: dict[str, Any] = (await r.json())["error"]
            assert err["code"] == 413 and err["param"] == "file"


async def test_too_many_headers_is_431(edge: Gateway, good_traffic: Outcomes) -> None:
    headers = {f"x-filler-{i}": "1" for i in range(150)}
    async with aiohttp.ClientSession() as s:
        async with s.post(edge.url + TRANSCRIBE, data=form(OK), headers=headers) as r:
            assert r.status == 431
            assert (await r.json())["error"]["code"] == 431


async def test_headers_with_underscores_are_dropped(
    edge: Gateway, fakes: dict[str, int], good_traffic: Outcomes
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            edge.url + TRANSCRIBE, data=form(OK), headers={"x_api_key": "sk-smuggled"}
        ) as r:
            assert r.status == 200
            rid = r.headers["x-request-id"]
    (mine,) = [h for h in await seen(fakes["ok"]) if h.get("x-request-id") == rid]
    assert "x_api_key" not in mine and "x-api-key" not in mine
