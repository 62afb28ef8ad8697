"""The control plane's admin HTTP API: what every Envoy was sent, ACKed and NACKed,
the published snapshot, and each backend endpoint's health. It asks no credentials: bind
it to loopback or a Unix socket (see exposure.py)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane.admin.redact import snapshot_json
from control_plane.config.parse import load_config
from control_plane.config.schema import ConfigError, GatewayConfig
from control_plane.config.sockets import restrict_socket
from control_plane.ir.fleet import server_url
from control_plane.observe.host_usage import HostUsage
from control_plane.observe.prometheus import make_registry
from control_plane.observe.read_model import FleetReader
from control_plane.observe.router_metrics import read_live, render


class Operator(Protocol):
    """The admin API's writes: each one an event for the reconciler, through the runtime."""

    @property
    def config_path(self) -> str | None: ...

    async def drain(self, key: str) -> bool: ...

    async def undrain(self, key: str) -> bool: ...

    async def reload(self, new: GatewayConfig) -> None:
        """Raises ValueError, keeping the running config, for a change it refuses."""
        ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, default=str),
        status=status,
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    return _json(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": status,
            }
        },
        status,
    )


def make_admin_app(reader: FleetReader, ops: Operator) -> web.Application:
    async def status(_: web.Request) -> web.Response:
        return _json(reader.status())

    async def snapshot(_: web.Request) -> web.Response:
        snap = reader.snapshot()
        if snap is None:
            return _error(503, "no snapshot published yet")
        return _json(snapshot_json(snap))

    async def backends(_: web.Request) -> web.Response:
        return _json(await reader.backends())

    async def drain(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not await ops.drain(key):
            return _error(404, f"no endpoint {key!r}")
        return _json({"endpoint": key, "draining": True})

    async def undrain(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not await ops.undrain(key):
            return _error(404, f"endpoint {key!r} is not draining")
        return _json({"endpoint": key, "draining": False})

    async def reload(_: web.Request) -> web.Response:
        """Re-read the config file; a bad one is refused and the running one kept."""
        if ops.config_path is None:
            return _error(409, "the control plane was not started from a config file")
        try:
            new = load_config(ops.config_path)
            await ops.reload(new)
        except (ConfigError, ValueError) as e:
            return _error(400, f"reload refused, running config kept: {e}")
        return _json({"reloaded": True, "models": list(new.models), **reader.status()["versions"]})

    registry = make_registry(reader)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST}
        )

    usage = HostUsage()

    async def router_metrics(_: web.Request) -> web.Response:
        """The router's /metrics names (see router_metrics); Envoy's /metrics route ends here."""
        views = reader.endpoints()
        live = await read_live(reader.envoy_admin_url, views)
        # The router's names, then ours under our own prefix (whisper_gateway_*).
        body = render(views, reader.request_stats, live, usage) + generate_latest(registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def router_engines(_: web.Request) -> web.Response:
        """The router's /engines: one entry per backend endpoint with its models."""
        created = int(reader.started_at)
        return _json(
            [
                {"engine_id": server_url(v), "serving_models": list(v.models), "created": created}
                for v in reader.endpoints()
            ]
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/snapshot", snapshot)
    app.router.add_get("/backends", backends)
    app.router.add_post("/backends/{key}/drain", drain)
    app.router.add_post("/backends/{key}/undrain", undrain)
    app.router.add_post("/config/reload", reload)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/router/metrics", router_metrics)
    app.router.add_get("/router/engines", router_engines)
    return app


async def start_admin(
    reader: FleetReader,
    ops: Operator,
    address: str,
    port: int,
    unix_socket: str | None = None,
) -> web.AppRunner:
    """The admin API on address:port, or only on `unix_socket` when given."""
    runner = web.AppRunner(make_admin_app(reader, ops), access_log=None)
    await runner.setup()
    if unix_socket is None:
        await web.TCPSite(runner, address, port).start()
        return runner
    await web.UnixSite(runner, unix_socket).start()
    restrict_socket(unix_socket)
    return runner


async def stop_admin(runner: web.AppRunner, unix_socket: str | None = None) -> None:
    """Stop serving; a Unix socket's file goes too (asyncio leaves it behind)."""
    await runner.cleanup()
    if unix_socket is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix_socket)
