"""`python -m control_plane`: the control plane alone (xDS + admin API), or its tools.

    python -m control_plane [--config FILE | router flags]     serve xDS and the admin API
    python -m control_plane bootstrap [--xds-host H] [--output F]   Envoy's bootstrap JSON
    python -m control_plane check (or --dry-run)               print the config it would run
    python -m control_plane status|backends [--json] [--admin URL]   ask a running one

`whisper-gateway` (gateway_supervisor) runs this and Envoy together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

from control_plane.bootstrap import build_bootstrap
from control_plane.cli import Options, UsageError, emit, parse, setup_logging
from control_plane.config import ConfigError, GatewayConfig, dump_config, load_config
from control_plane.planes import exposure_warnings, where
from control_plane.secrets import load_security

log = logging.getLogger("control_plane")


async def _serve(config: GatewayConfig, config_path: str | None) -> None:
    from control_plane.admin import start_admin, stop_admin
    from control_plane.app import ControlPlane

    for warning in exposure_warnings(config):
        log.warning("%s", warning)
    runtime = ControlPlane(config, config_path=config_path)
    await runtime.start()
    admin = config.admin
    runner = await start_admin(runtime, admin.address, admin.port, admin.unix_socket)
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


def ask_admin(opts: Options) -> int:
    """`status` and `backends`: GET the admin API, print a table (or its JSON)."""
    import aiohttp

    from control_plane.ctl import admin_target, fetch, render

    base, sock = admin_target(opts.config.admin, opts.admin)
    try:
        data = asyncio.run(fetch(base, f"/{opts.command}", sock))
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        where_ = f"unix:{sock}" if sock else base
        print(f"cannot read the admin API at {where_}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    print(render(opts.command, data, opts.as_json))
    return 0


def run_tool(opts: Options) -> int | None:
    """`bootstrap`, `check`, `status`, `backends` and --dry-run; None for `serve`."""
    if opts.command in ("status", "backends"):
        return ask_admin(opts)
    if opts.command == "bootstrap":
        boot = build_bootstrap(opts.config, opts.node_id, opts.xds_host)
        emit(json.dumps(boot, indent=2), opts.output)
        return 0
    if opts.command == "check" or opts.dry_run:
        for note in opts.notes:
            print(f"# {note}", file=sys.stderr)
        for warning in exposure_warnings(opts.config):
            print(f"# WARNING {warning}", file=sys.stderr)
        tls = opts.config.tls
        if tls is not None and tls.self_signed and not Path(tls.cert_file).exists():
            print(f"# a self-signed certificate will be made at {tls.cert_file}", file=sys.stderr)
            config = dataclasses.replace(opts.config, tls=None)
        else:
            config = opts.config
        try:
            load_security(config)  # key files, certificates, backend keys: as at start
        except ConfigError as e:
            print(f"control_plane: {e}", file=sys.stderr)
            return 2
        emit(dump_config(opts.config), opts.output)
        return 0
    return None


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
