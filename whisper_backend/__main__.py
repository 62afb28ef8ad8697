"""CLI: `python -m whisper_backend --model openai/whisper-tiny.en --port 8002`."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Sequence

from aiohttp import web

from .engine import EngineConfig
from .models import TINY_EN
from .server import ServerConfig, create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="whisper-backend", description="CPU Whisper server speaking vLLM's audio API."
    )
    p.add_argument("--model", default=TINY_EN, help="openai/whisper-tiny.en or openai/whisper-base")
    p.add_argument("--model-path", help="a local CTranslate2 Whisper folder (overrides --model)")
    p.add_argument("--served-model-name", help="name to serve the model under")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--num-workers", type=int, default=2, help="parallel decodes")
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="threads per decode (0: cores / num-workers, at least 1)",
    )
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond workers")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--max-audio-seconds", type=float, default=600.0)
    p.add_argument("--max-file-size-mb", type=float, default=25.0)
    p.add_argument(
        "--shutdown-grace", type=float, default=30.0, help="seconds in-flight requests get"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("WHISPER_BACKEND_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1/* (env WHISPER_BACKEND_API_KEY)",
    )
    p.add_argument(
        "--api-flavor",
        choices=("ours", "vllm"),
        default="ours",
        help="ours: this server's API (subtitles, text/plain, ...); vllm: answer as "
        "`vllm serve` does (checked against vLLM 0.32.0), for testing against vLLM's behaviour",
    )
    p.add_argument(
        "--stream-per-token",
        action="store_true",
        help="vllm flavor: one stream delta per token, as vLLM sends (default: one per "
        "segment; the tokens of a segment still leave together once it is decoded)",
    )
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (like vLLM's flag)")
    p.add_argument("--ssl-keyfile", help="the certificate's private key")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        p.error("--ssl-certfile and --ssl-keyfile go together")
    return args


def ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.ssl_certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    return ctx


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    workers = max(1, args.num_workers)
    threads = args.cpu_threads or max(1, (os.cpu_count() or 1) // workers)
    return ServerConfig(
        model=args.model,
        model_path=args.model_path,
        served_model_name=args.served_model_name,
        max_file_bytes=int(args.max_file_size_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        shutdown_grace=max(0.0, args.shutdown_grace),
        api_key=args.api_key or None,
        api_flavor=args.api_flavor,
        stream_per_token=args.stream_per_token,
        engine=EngineConfig(
            num_workers=workers,
            cpu_threads=threads,
            max_queue=max(0, args.max_queue),
            beam_size=max(1, args.beam_size),
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    config = config_from_args(args)
    web.run_app(
        create_app(config),
        host=args.host,
        port=args.port,
        ssl_context=ssl_context(args),
        shutdown_timeout=10.0,  # our on_shutdown already spent the grace period
        handler_cancellation=True,
        access_log=None,
        print=lambda *a: logging.getLogger("whisper_backend").info(" ".join(map(str, a))),
    )


if __name__ == "__main__":
    main()
