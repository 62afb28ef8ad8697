"""Backend host names -> addresses, off the event loop: the DNS event source."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from control_plane.config.sockets import is_ip

Resolver = Callable[[str, int], Awaitable[tuple[str, ...]]]


async def resolve(host: str, port: int) -> tuple[str, ...]:
    """All addresses of `host`, sorted so an unchanged answer is an unchanged EDS."""
    if is_ip(host):
        return (host,)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(sorted({str(info[4][0]) for info in infos}))
