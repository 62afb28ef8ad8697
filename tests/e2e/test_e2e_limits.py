"""Stalls end with a clear error at the idle timeout; per-backend concurrency holds.

FAKE backends produce the faults (a hang, a stream that stops, a slow answer).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import start_fake

IDLE_S = 2


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("limits")
    procs = [
        start_fake(tmp, "hang"),
        start_fake(tmp, "trickle"),
        start_fake(tmp, "slow", "--delay", "0.5"),
    ]
    off = {"enabled": False}
    backends = [
        {"url": f"http://127.0.0.1:{procs[0][1]}", "models": ["fake/hang"], "health": off},
        {"url": f"http://127.0.0.1:{procs[1][1]}", "models": ["fake/trickle"], "health": off},
        {
            "url": f"http://127.0.0.1:{procs[2][1]}",
            "models": ["fake/one-at-a-time"],
            "health": off,
            "max_concurrency": 1,
        },
    ]
    g = start_gateway(tmp, gateway_config(backends, limits={"idle_timeout_s": IDLE_S}))
    g.wait_synced()
    g.fake_ports = [port for _, port in procs]  # type: ignore[attr-defined]
    yield g
    g.stop()
    for p, _ in procs:
        p.stop()


def form(model: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", model)
    data.add_field("file", b"RIFF0000WAVE", filename="a.wav")
    return data


async def test_stalled_backend_ends_with_504_in_openai_shape(gw: Gateway) -> None:
    async with (
        asyncio.timeout(30),
        aiohttp.ClientSession() as s,
        s.post(gw.url + "/v1/audio/transcriptions", data=form("fake/hang")) as r,
    ):
        assert r.status == 504
        err = (await r.json())["error"]
    assert err["code"] == 504 and "idle timeout" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


async def test_stream_that_stops_is_cut_at_the_idle_timeout(gw: Gateway) -> None:
    async with (
        asyncio.timeout(30),
        aiohttp.ClientSession() as s,
        s.post(gw.url + "/v1/audio/transcriptions", data=form("fake/trickle")) as r,
    ):
        assert r.status == 200
        first = await r.content.readline()
        assert first.startswith(b"data: ")
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # no [DONE]: the client sees the stream end incomplete


def test_stalled_upload_ends_with_a_clear_error(gw: Gateway) -> None:
    """A client that sends part of its body and stops gets an error, not a hang."""
    port = gw.config["listener"]["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake/hang\r\n'
        )
        t0 = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    err = json.loads(body[body.index(b"{") :])["error"]
    assert err["code"] == 408
    assert time.monotonic() - t0 < 25  # ended by the idle timeout, not by the test's guard


async def test_per_backend_concurrency_limit_queues_in_envoy(gw: Gateway) -> None:
    port = gw.fake_ports[2]  # type: ignore[attr-defined]

    async def one(s: aiohttp.ClientSession) -> int:
        async with s.post(
            gw.url + "/v1/audio/transcriptions", data=form("fake/one-at-a-time")
        ) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(one(s) for _ in range(3)))
        async with s.get(f"http://127.0.0.1:{port}/_fake/in_flight") as r:
            seen = await r.json()
    assert statuses == [200, 200, 200]  # all served, one at a time
    assert seen["max"] == 1
