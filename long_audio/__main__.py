"""`python -m long_audio --config gateway.yaml`: the splitter, as the supervisor (and the
gateway pod) runs it. Everything comes from the gateway's own config: where to listen
(long_audio.splitter), where to send the pieces (the listener), how to cut."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from aiohttp import web

from control_plane.config.parse import load_config
from control_plane.config.schema import ConfigError, GatewayConfig
from control_plane.config.sockets import local_url
from long_audio.server import Settings, Splitter


def settings_of(config: GatewayConfig, spool_dir: str | None = None) -> Settings:
    la = config.long_audio
    if la is None:
        raise ConfigError("long_audio", "the config has no long_audio section: nothing to split")
    return Settings(
        upstream=local_url("https" if config.tls else "http", config.listener),
        piece_s=la.piece_s,
        pieces_per_request=la.pieces_per_request,
        pieces_in_flight=la.pieces_in_flight,
        max_upload_bytes=int(config.limits.max_upload_mb * 1024 * 1024),
        ca_file=config.tls.cert_file if config.tls else None,
        spool_dir=spool_dir,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m long_audio", description=__doc__)
    p.add_argument("--config", required=True, help="the gateway's YAML config")
    p.add_argument(
        "--spool-dir",
        help="where uploads are spooled, this splitter's alone: what a killed splitter left "
        "there is removed at start (default: the system's temporary folder)",
    )
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(a.config)
        settings = settings_of(config, a.spool_dir)
    except ConfigError as e:
        print(f"long_audio: {e}", file=sys.stderr)
        return 2
    assert config.long_audio is not None
    if a.spool_dir:
        spool = Path(a.spool_dir)
        spool.mkdir(parents=True, exist_ok=True)
        for leftover in spool.glob("whisper-split-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    where = config.long_audio.splitter
    web.run_app(
        Splitter(settings).app(),
        host=where.address,
        port=where.port,
        print=None,
        access_log=None,
        handler_cancellation=True,  # a client that goes away cancels its pieces
        shutdown_timeout=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
