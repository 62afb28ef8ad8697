"""Fail closed: when the request-side Lua fails, the request ends in the gateway's own
error and never reaches a cluster a client header chose.

The control plane runs in this process with a Lua source that raises on every
request; the real Envoy runs it. Routing matches only dynamic metadata that the
script writes, and the client's `x-gateway-model` is removed before any route is
chosen, so the spoofed header must not route.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from control_plane.config.parse import parse_config
from control_plane.runtime import ControlPlane
from control_plane.xds.translator import load_lua_template
from testkit.gateway import Gateway, gateway_config, write_bootstrap
from testkit.load import HELLO
from testkit.procs import start_fake

MODEL = "m/fake"


def broken_lua() -> str:
    """The real source, made to raise at the top of envoy_on_request."""
    src = load_lua_template()
    marker = "function envoy_on_request(handle)\n"
    assert marker in src
    return src.replace(marker, marker + '  error("injected failure")\n', 1)


async def test_a_failing_script_never_routes_by_the_clients_header(tmp_path: Path) -> None:
    fake, port = await asyncio.to_thread(start_fake, tmp_path, "fast")
    doc = gateway_config(
        [{"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}]
    )
    cp = ControlPlane(parse_config(doc), lua_template=broken_lua())
    gw = Gateway(tmp_path, doc)
    try:
        await cp.start()
        gw.start_envoy_with(write_bootstrap(gw), wait=False)
        await asyncio.to_thread(gw.wait_envoy_live)
        data = aiohttp.FormData()
        data.add_field("model", MODEL)
        data.add_field("file", HELLO.read_bytes(), filename="hello.wav")
        async with aiohttp.ClientSession() as s:
            async with s.post(
                gw.url + "/v1/audio/transcriptions",
                data=data,
                headers={"x-gateway-model": MODEL, "x-gateway-convert": "1"},
            ) as r:
                body = await r.json()
                assert r.status == 500
                err = body["error"]
                assert set(err) == {"message", "type", "param", "code"}
                assert err["code"] == 500 and "nothing was sent to a backend" in err["message"]
            # Nothing reached the backend the spoofed header named.
            async with s.get(f"http://127.0.0.1:{port}/_fake/requests") as r:
                assert await r.json() == []
            # And the failure was the script's (Envoy counts it).
            async with s.get(f"{gw.envoy_admin_url}/stats?filter=lua.errors") as r:
                lines = (await r.text()).splitlines()
        stats = dict(line.split(": ") for line in lines if ": " in line)
        assert sum(int(v) for k, v in stats.items() if k.endswith("lua.errors")) >= 1, stats
    finally:
        gw.stop()
        await cp.stop()
        fake.stop()
