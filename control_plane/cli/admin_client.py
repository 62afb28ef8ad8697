"""A client of the control plane's admin API for `status` and `backends`: where it
listens (the config's address, a Unix socket, or `--admin`) and one GET."""

from __future__ import annotations

from typing import Any

import aiohttp

from control_plane.config.schema import HostPort

FETCH_TIMEOUT_S = 10.0


def admin_target(admin: HostPort, override: str | None) -> tuple[str, str | None]:
    """(base URL, Unix socket or None) of the admin API: `--admin` wins over the config.
    `--admin` is a URL (http://host:port) or unix:/path."""
    if override:
        if override.startswith("unix:"):
            return "http://localhost", override.removeprefix("unix:")
        return override.rstrip("/"), None
    if admin.unix_socket:
        return "http://localhost", admin.unix_socket
    host = f"[{admin.address}]" if ":" in admin.address else admin.address
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{admin.port}", None


async def fetch(base: str, path: str, unix_socket: str | None) -> Any:
    connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as s,
        s.get(base + path) as r,
    ):
        r.raise_for_status()
        return await r.json()
