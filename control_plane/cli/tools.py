"""The commands that run and exit (`bootstrap`, `check`, `status`, `backends`, `--dry-run`),
shared by `python -m control_plane` and `whisper-gateway`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from control_plane.admin.exposure import exposure_warnings
from control_plane.cli.options import Options, emit
from control_plane.config.advice import backend_warnings
from control_plane.config.parse import dump_config
from control_plane.config.schema import ConfigError
from control_plane.ir.security import load_security
from control_plane.xds.bootstrap import build_bootstrap


def ask_admin(opts: Options) -> int:
    """`status` and `backends`: GET the admin API, print a table (or its JSON)."""
    import aiohttp

    from control_plane.cli.admin_client import admin_target, fetch
    from control_plane.cli.tables import render

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
        for warning in exposure_warnings(opts.config) + backend_warnings(opts.config):
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
