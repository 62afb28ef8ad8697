"""The secrets files as an event source: polled, and each good load posted to the
reconciler; a bad edit is logged and the last good secrets stay."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from control_plane.config.schema import ConfigError, GatewayConfig
from control_plane.ir.model import Security
from control_plane.ir.security import load_security

WATCH_INTERVAL_S = 1.0

log = logging.getLogger("control_plane.secrets")


def watched_files(config: GatewayConfig) -> tuple[str, ...]:
    files = []
    if config.tls is not None:
        files += [config.tls.cert_file, config.tls.key_file]
    if config.api_keys is not None and config.api_keys.file is not None:
        files.append(config.api_keys.file)
    up = config.upstream_tls
    files += [f for f in (up.ca_file, up.cert_file, up.key_file) if f]
    return tuple(files)


def _stamp(files: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


async def watch(
    current: Callable[[], GatewayConfig],
    publish: Callable[[Security], None],
    interval_s: float = WATCH_INTERVAL_S,
) -> None:
    """Re-read the secrets whenever a watched file changes (or the config names other
    files); a load that fails keeps the last good secrets and says why."""
    last: tuple[tuple[str, ...], tuple[tuple[int, int] | None, ...]] | None = None
    while True:
        config = current()
        files = watched_files(config)
        now = (files, _stamp(files))
        if last is not None and now != last:
            try:
                publish(load_security(config))
                log.info("secrets reloaded from %s", ", ".join(files))
            except ConfigError as e:
                log.error("secrets not reloaded, the last good ones stay: %s", e)
        last = now
        await asyncio.sleep(interval_s)
