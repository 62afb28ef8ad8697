"""One SSE stream longer than the reference router's 300 s cut-off, through the gateway.

A FAKE backend sends one chunk a second for --seconds; the client counts what
arrives and checks the stream ends with [DONE]. Not part of `make bench` (it
takes over five minutes); run it by hand:

    .venv/bin/python -m bench.long_stream --seconds 310
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from bench._harness import write_result
from testkit.gateway import gateway_config, start_gateway
from testkit.procs import start_fake

MODEL = "fake/slow-stream"


async def stream(url: str) -> tuple[int, bool, float]:
    data = aiohttp.FormData()
    data.add_field("model", MODEL)
    data.add_field("stream", "true")
    data.add_field("file", b"RIFF", filename="a.wav")
    t0 = time.monotonic()
    chunks, done = 0, False
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.post(f"{url}/v1/audio/transcriptions", data=data) as r,
    ):
        async for line in r.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: "):
                chunks += 1
    return chunks, done, time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=310)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-long-"))
    fake, port = start_fake(work, "slow_stream", "--interval", "1", "--chunks", str(args.seconds))
    gw = start_gateway(
        work,
        gateway_config(
            [{"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}]
        ),
    )
    try:
        gw.wait_synced()
        chunks, done, took = asyncio.run(stream(gw.url))
    finally:
        gw.stop()
        fake.stop()
    result = {
        "seconds_asked": args.seconds,
        "chunks": chunks,
        "done": done,
        "duration_s": round(took, 1),
    }
    write_result("long_stream", result)
    print(result)


if __name__ == "__main__":
    main()
