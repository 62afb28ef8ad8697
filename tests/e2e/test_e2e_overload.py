"""Envoy under floods, on the real stack: the overload manager (heap, connections) and
the HTTP limits (header timeout, idle timeout, header size and count).

A FAKE backend (`fast`) answers every upload at once: what is tested is Envoy's edge,
not transcription. Every flood is bounded in count and time, and every socket opened
here is closed here.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import start_fake

MODEL = "fake/fast"
PATH = "/v1/audio/transcriptions"
MiB = 1024 * 1024
FLOOD_UPLOADS = 16  # x 8 MiB: twice the 64 MiB heap limit below
IDLE_CONNECTIONS = 2000
CONNECTION_LIMIT = 50
HEADERS_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
Result = tuple[int | str, Any]  # (status, parsed body) or ("cut", error name)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> None:
    """Room for the idle connections on both ends (Envoy inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * IDLE_CONNECTIONS + 1024
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"ulimit -n hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    logs = tmp_path_factory.mktemp("overload")
    proc, port = start_fake(logs, "fast")
    yield logs, port
    proc.stop()


def _gateway(backend: tuple[Path, int], name: str, **overrides: Any) -> Iterator[Gateway]:
    logs, port = backend
    backends = [
        {"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}
    ]
    gw = start_gateway(logs / name, gateway_config(backends, **overrides))
    try:
        asyncio.run(wait_serving(gw))
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def small_heap(backend: tuple[Path, int]) -> Iterator[Gateway]:
    yield from _gateway(backend, "heap", edge={"max_heap_mb": 64})


@pytest.fixture(scope="module")
def few_connections(backend: tuple[Path, int]) -> Iterator[Gateway]:
    yield from _gateway(backend, "connections", edge={"max_connections": CONNECTION_LIMIT})


@pytest.fixture(scope="module")
def defaults(backend: tuple[Path, int]) -> Iterator[Gateway]:
    """Default edge limits; short header and idle timeouts so slow clients end soon."""
    limits = {"request_headers_timeout_s": HEADERS_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S}
    yield from _gateway(backend, "defaults", limits=limits)


# ---------------------------------------------------------------- clients


def _form(size: int = 16) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", MODEL)
    data.add_field("file", b"\0" * size, filename="a.wav")
    return data


async def upload(s: aiohttp.ClientSession, url: str, size: int = 16) -> Result:
    """One transcription request; a connection Envoy cuts is a result, not an error."""
    try:
        async with s.post(url + PATH, data=_form(size)) as r:
            body = await r.read()
            try:
                return r.status, json.loads(body)
            except ValueError:
                return r.status, body.decode(errors="replace")
    except aiohttp.ClientError as e:
        return "cut", type(e).__name__


async def good_request(url: str) -> Result:
    async with aiohttp.ClientSession() as s:
        return await upload(s, url)


async def wait_serving(gw: Gateway, timeout: float = 30) -> None:
    """Until a normal request gets its transcript (Envoy may still be loading, or
    giving memory back after a flood)."""
    last: Result | None = None
    async with asyncio.timeout(timeout):
        while True:
            last = await good_request(gw.url)
            if last[0] == 200:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"never served: {last}")  # pragma: no cover


async def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    """Until `check()` holds (a state Envoy reaches on its own time, not a deadline)."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


def assert_openai_error(body: Any, status: int, words: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status and words in err["message"], err


@asynccontextmanager
async def idle_connections(
    port: int, count: int
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """`count` TCP connections to the listener that send nothing; closed on exit."""
    gate = asyncio.Semaphore(200)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with gate:
            opened.append(await asyncio.open_connection("127.0.0.1", port))

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(one() for _ in range(count)))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in opened), return_exceptions=True)


async def raw_exchange(port: int, parts: list[bytes], pause_s: float = 0.0) -> Result:
    """Send `parts` on one connection, `pause_s` apart, while reading: Envoy may answer
    and close before the last part. (status, parsed body), or ("cut", why) when it
    closed without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(30):
            answer = asyncio.create_task(_read_response(reader))
            for i, part in enumerate(parts):
                if i:
                    await asyncio.wait([answer], timeout=pause_s)
                if answer.done():
                    break
                try:
                    writer.write(part)
                    await writer.drain()
                except ConnectionError:
                    break
            data = await answer
    except ConnectionError as e:
        return "cut", type(e).__name__
    finally:
        writer.close()
    if not data:
        return "cut", "closed"
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.strip() else None


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One response: its head, then Content-Length bytes, or until EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        return e.partial
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    body = await (reader.readexactly(length) if length is not None else reader.read())
    return head + body


def _listener_stat(gw: Gateway, name: str) -> int:
    port = gw.config["listener"]["port"]
    return gw.envoy_stat(f"listener.127.0.0.1_{port}.{name}") or 0


# ---------------------------------------------------------------- heap


async def test_a_flood_of_large_uploads_gets_503s_and_envoy_lives(small_heap: Gateway) -> None:
    """16 x 8 MiB at once against a 64 MiB heap limit: past 95 % new requests get 503,
    past 98 % uploads still arriving are ended with a 503; the rest are served."""
    gw = small_heap
    async with asyncio.timeout(60), aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(upload(s, gw.url, 8 * MiB) for _ in range(FLOOD_UPLOADS)))
    overloaded = [body for status, body in results if status == 503]
    assert overloaded, results
    for body in overloaded:
        assert_openai_error(body, 503, "overloaded")
    # Nothing else: served, refused in the OpenAI shape, or cut while still uploading.
    assert {status for status, _ in results} <= {200, 503, "cut"}, results
    assert gw.envoy is not None and gw.envoy.alive()
    shed = sum(
        gw.envoy_stat(f"overload.envoy.load_shed_points.{point}.shed_load_count") or 0
        for point in ("http1_server_abort_dispatch", "http_connection_manager_decode_headers")
    )
    assert shed >= 1
    # The buffers are given back: a normal request is served again.
    await wait_serving(gw)


# ---------------------------------------------------------------- connections


async def test_connections_past_the_limit_are_refused_until_some_close(
    few_connections: Gateway,
) -> None:
    gw = few_connections
    port = gw.config["listener"]["port"]
    overflow_before = _listener_stat(gw, "downstream_global_cx_overflow")
    async with idle_connections(port, IDLE_CONNECTIONS):
        # Envoy accepts each connection and closes the ones past the limit at once.
        refused = IDLE_CONNECTIONS - CONNECTION_LIMIT
        await eventually(
            lambda: _listener_stat(gw, "downstream_global_cx_overflow") - overflow_before >= refused
        )
        # The admin endpoint opts out of the limit, so these reads work at all.
        assert _listener_stat(gw, "downstream_cx_active") <= CONNECTION_LIMIT
        status, _ = await good_request(gw.url)
        assert status == "cut"  # refused: the limit holds for good clients too
    # The idle ones are gone: the next request is served.
    await wait_serving(gw)


async def test_thousands_of_idle_connections_do_not_stop_good_requests(
    defaults: Gateway,
) -> None:
    """2000 idle connections under the default limit (10000): a steady client, running
    while they open and while they are all held, gets every answer."""
    gw = defaults
    port = gw.config["listener"]["port"]
    results: list[Result] = []
    stop = asyncio.Event()

    async def steady() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                results.append(await upload(s, gw.url))

    async with asyncio.timeout(60):
        worker = asyncio.create_task(steady())
        async with idle_connections(port, IDLE_CONNECTIONS):
            # Accepted by Envoy, not only by the kernel.
            await eventually(lambda: _listener_stat(gw, "downstream_cx_active") >= IDLE_CONNECTIONS)
            while_held = len(results)
            await eventually(lambda: len(results) >= while_held + 20)
            stop.set()
            await worker
    assert _listener_stat(gw, "downstream_global_cx_overflow") == 0
    assert [status for status, _ in results] == [200] * len(results), results


# ---------------------------------------------------------------- slow clients

HEAD = (
    f"POST {PATH} HTTP/1.1\r\nHost: gateway\r\n"
    "Content-Type: multipart/form-data; boundary=b\r\n"
    "Content-Length: 100000\r\n"
).encode()
FIELD = f'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'.encode()


async def test_slow_headers_and_stalled_bodies_end_while_good_requests_pass(
    defaults: Gateway,
) -> None:
    """Slow-loris clients: headers that never finish (a header line every 0.3 s, past
    the 1 s header timeout) and bodies that stop (past the 2 s idle timeout)."""
    gw = defaults
    port = gw.config["listener"]["port"]
    slow_headers = [HEAD, *(f"x-slow-{i}: y\r\n".encode() for i in range(20))]
    stalled_body = [HEAD + b"\r\n", FIELD, FIELD[:10]]  # then nothing
    slow = [raw_exchange(port, slow_headers, 0.3) for _ in range(20)]
    slow += [raw_exchange(port, stalled_body, 0.3) for _ in range(20)]
    good: list[Result] = []

    async def steady(done: asyncio.Future[Any]) -> None:
        while not done.done() or len(good) < 10:
            good.append(await good_request(gw.url))

    async with asyncio.timeout(60):
        ended = asyncio.gather(*slow)
        await steady(ended)
        results = await ended
    assert [status for status, _ in good] == [200] * len(good), good
    assert_ended(results[:20], "not received in time")  # request_headers_timeout
    assert_ended(results[20:], "idle timeout")  # stream idle timeout


def assert_ended(results: list[Result], words: str) -> None:
    """Each slow client was ended: a 408 in the OpenAI shape, or its connection closed."""
    for status, body in results:
        assert status in (408, "cut"), (status, body)
        if status == 408:
            assert_openai_error(body, 408, words)
    assert any(status == 408 for status, _ in results), results


async def test_too_many_headers_get_431_in_the_openai_shape(defaults: Gateway) -> None:
    port = defaults.config["listener"]["port"]
    many = b"".join(f"x-h-{i}: v\r\n".encode() for i in range(150))  # limit: 100
    status, body = await raw_exchange(port, [HEAD + many + b"\r\n"])
    assert status == 431
    assert_openai_error(body, 431, "headers are too large or too many")


async def test_headers_past_the_size_limit_get_431(defaults: Gateway) -> None:
    port = defaults.config["listener"]["port"]
    big = b"x-big: " + b"a" * (70 * 1024) + b"\r\n"  # limit: 60 KiB
    status, body = await raw_exchange(port, [HEAD + big + b"\r\n"])
    assert status == 431
    assert_openai_error(body, 431, "headers are too large or too many")
