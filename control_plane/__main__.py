"""`python -m control_plane`: serve xDS and the admin API, or print Envoy's bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from control_plane.bootstrap import build_bootstrap
from control_plane.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, load_config
from control_plane.router_flags import RouterFlagError, config_from_router_flags


def _config(args: argparse.Namespace, rest: list[str]) -> GatewayConfig:
    if rest:
        if args.config:
            raise RouterFlagError("give either --config or vllm-router flags, not both")
        return config_from_router_flags(rest)
    return load_config(args.config or DEFAULT_CONFIG)


async def _serve(config: GatewayConfig, config_path: str | None) -> None:
    from control_plane.admin import start_admin
    from control_plane.app import ControlPlane

    runtime = ControlPlane(config, config_path=config_path)
    await runtime.start()
    runner = await start_admin(runtime, config.admin.address, config.admin.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload()))

    async def _reload() -> None:
        assert config_path is not None
        try:
            await runtime.reload(load_config(config_path))
        except (ConfigError, ValueError) as e:
            logging.getLogger("control_plane").error("reload refused, config kept: %s", e)

    await stop.wait()
    await runner.cleanup()
    await runtime.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisper-gateway",
        description="xDS control plane for the Whisper gateway. Unknown flags are read as "
        "vLLM Production Stack router flags (--static-backends ...).",
    )
    parser.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "bootstrap", "check"]
    )
    parser.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--node-id", help="Envoy node id for `bootstrap`")
    parser.add_argument("--log-level", default="INFO")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = _config(args, rest)
    except (ConfigError, RouterFlagError) as e:
        print(f"whisper-gateway: {e}", file=sys.stderr)
        return 2
    if args.command == "bootstrap":
        print(json.dumps(build_bootstrap(config, args.node_id), indent=2))
        return 0
    if args.command == "check":
        print(f"config OK: {len(config.backends)} backends, models {', '.join(config.models)}")
        return 0
    path = None if rest else str(args.config or DEFAULT_CONFIG)
    asyncio.run(_serve(config, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
