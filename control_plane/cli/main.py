"""`python -m control_plane`: serve xDS and the admin API, or run one of its tools.

    python -m control_plane [--config FILE | router flags]     serve xDS and the admin API
    python -m control_plane bootstrap [--xds-host H] [--output F]   Envoy's bootstrap JSON
    python -m control_plane check (or --dry-run)               print the config it would run
    python -m control_plane status|backends [--json] [--admin URL]   ask a running one

`whisper-gateway` (gateway_supervisor) runs this and Envoy together."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from control_plane.admin.exposure import exposure_warnings
from control_plane.cli.logs import setup_logging
from control_plane.cli.options import UsageError, parse
from control_plane.cli.tools import run_tool
from control_plane.config.parse import load_config
from control_plane.config.schema import ConfigError, GatewayConfig
from control_plane.config.sockets import where

log = logging.getLogger("control_plane")


async def _serve(config: GatewayConfig, config_path: str | None) -> None:
    from control_plane.admin.api import start_admin, stop_admin
    from control_plane.runtime import ControlPlane

    for warning in exposure_warnings(config):
        log.warning("%s", warning)
    runtime = ControlPlane(config, config_path=config_path)
    await runtime.start()
    admin = config.admin
    runner = await start_admin(
        runtime.reader, runtime, admin.address, admin.port, admin.unix_socket
    )
    log.info("admin API on %s", where(admin))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    async def _reload() -> None:
        assert config_path is not None
        try:
            await runtime.reload(load_config(config_path))
        except (ConfigError, ValueError) as e:
            log.error("reload refused, config kept: %s", e)

    def _on_hup() -> None:
        task = asyncio.create_task(_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, _on_hup)
    await stop.wait()
    await stop_admin(runner, admin.unix_socket)
    await runtime.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(sys.argv[1:] if argv is None else argv, "python -m control_plane")
    except UsageError as e:
        print(f"control_plane: {e}", file=sys.stderr)
        return 2
    done = run_tool(opts)
    if done is not None:
        return done
    setup_logging(opts.log_level, opts.log_format)
    for note in opts.notes:
        log.info("%s", note)
    path = str(opts.config_path) if opts.config_path is not None else None
    try:
        asyncio.run(_serve(opts.config, path))
    except ConfigError as e:  # a secret the config names cannot be read
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
