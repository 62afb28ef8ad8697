"""The command line shared by `whisper-gateway` and `python -m control_plane`.

    [serve|bootstrap|check|status|backends] [--config FILE | vllm-router flags] [our flags]

The command, when given, comes first; anything else on the line is a flag, so
the router's own command line (`--host 0.0.0.0 --port 8001 ...`) reads as-is.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from control_plane.config.parse import load_config
from control_plane.config.router_flags import RouterFlagError, read_router_flags
from control_plane.config.schema import DEFAULT_CONFIG, ConfigError, GatewayConfig
from control_plane.ir.from_config import version

COMMANDS = ("serve", "bootstrap", "check", "status", "backends")


LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,  # the router's finest level; ours stops at debug
}


@dataclass(frozen=True)
class Options:
    command: str
    config: GatewayConfig
    config_path: Path | None  # None in router-flag mode
    notes: tuple[str, ...]
    node_id: str | None
    xds_host: str | None
    output: Path | None
    dry_run: bool
    run_dir: Path | None
    log_level: str
    log_format: str
    admin: str | None = None  # `status`/`backends`: the admin API, else the config's
    as_json: bool = False

    @property
    def router_mode(self) -> bool:
        return self.config_path is None


class UsageError(ValueError):
    pass


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Flags this parser does not know are read as vLLM Production Stack "
        "router flags (--static-backends ...).",
    )
    p.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--node-id", help="Envoy node id for `bootstrap`")
    p.add_argument("--xds-host", help="`bootstrap`: where Envoy dials the control plane")
    p.add_argument("--output", type=Path, help="`bootstrap`/`check`: write to this file")
    p.add_argument("--dry-run", action="store_true", help="print the config, then exit")
    p.add_argument(
        "--admin", help="`status`/`backends`: the admin API (http://HOST:PORT or unix:/PATH)"
    )
    p.add_argument("--json", action="store_true", help="`status`/`backends`: JSON, for scripts")
    p.add_argument("--run-dir", type=Path, help="whisper-gateway: logs and run files here")
    p.add_argument("--log-level", default="info", type=str.lower, choices=sorted(LOG_LEVELS))
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines and Envoy's access log (default: the config's log_format, text)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p


def parse(argv: list[str], prog: str) -> Options:
    """Read the line; raise UsageError naming what is wrong."""
    command = "serve"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    args, rest = _parser(prog).parse_known_args(argv)
    notes: tuple[str, ...] = ()
    try:
        if rest:
            if args.config:
                raise UsageError("give either --config or vllm-router flags, not both")
            flags = read_router_flags(rest)
            config, path, notes = flags.config, None, flags.notes
        else:
            path = Path(args.config or DEFAULT_CONFIG)
            config = load_config(path)
    except (ConfigError, RouterFlagError) as e:
        raise UsageError(str(e)) from e
    if args.log_format is not None:
        config = dataclasses.replace(config, log_format=args.log_format)
    return Options(
        command=command,
        config=config,
        config_path=path,
        notes=notes,
        node_id=args.node_id,
        xds_host=args.xds_host,
        output=args.output,
        dry_run=args.dry_run,
        run_dir=args.run_dir,
        log_level=args.log_level,
        log_format=config.log_format,
        admin=args.admin,
        as_json=args.json,
    )


def emit(text: str, output: Path | None) -> None:
    """To the file if one is named (written whole, then renamed), else to stdout."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(output)
