"""The vLLM Production Stack router's flags, read into our config.

Its users switch by changing only the program name. Every flag of the
router's parser is here, in one of three tables: mapped onto our config,
accepted and ignored with the reason (logged at start), or refused with the
reason. `--log-level`, `--log-format` and `--version` belong to the process
and are read by the command line (control_plane.cli), not here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, NoReturn

from control_plane.config.parse import parse_config
from control_plane.config.schema import GatewayConfig

ROUTING = {
    "roundrobin": "round_robin",
    "least_request": "least_request",
    "leastrequest": "least_request",
}


#: The router's own defaults where ours differ, applied in router-flag mode.
ROUTER_HEALTH_INTERVAL_S = 60.0


ROUTER_HEALTH_TIMEOUT_S = 10.0


# Flags that take a value we accept and do not use, with why.
IGNORED = {
    "--root-path": "routes stay at /v1/...; a proxy in front that adds a prefix must strip it",
    "--kv-aware-threshold": "KV-aware routing does not apply to Whisper",
    "--prefix-min-match-length": "prefix-aware routing does not apply to Whisper",
    "--lmcache-controller-port": "KV-cache controller does not apply to Whisper",
    "--lmcache-controller-reply-port": "KV-cache controller does not apply to Whisper",
    "--lmcache-controller-heartbeat-port": "KV-cache controller does not apply to Whisper",
    "--lmcache-health-check-interval": "KV-cache controller does not apply to Whisper",
    "--lmcache-worker-timeout": "KV-cache controller does not apply to Whisper",
    "--k8s-watcher-timeout-seconds": "no Kubernetes API discovery: backends are DNS names",
    "--file-storage-class": "the batch API is not served",
    "--file-storage-path": "the batch API is not served",
    "--batch-processor": "the batch API is not served",
    "--feature-gates": "no feature gates here",
    "--sentry-dsn": "no Sentry reporting; errors are in the logs and /metrics",
    "--sentry-traces-sample-rate": "no Sentry reporting",
    "--sentry-profile-session-sample-rate": "no Sentry reporting",
    "--otel-endpoint": "no OpenTelemetry export yet; Envoy's access log has request ids",
    "--otel-service-name": "no OpenTelemetry export yet",
}


IGNORED_SWITCHES = {
    "--otel-secure": "no OpenTelemetry export yet",
}


# Flags refused whatever their value, with why.
REFUSED = {
    "--k8s-service-discovery-type": "Kubernetes API discovery is not supported: give the "
    "backends' headless Service DNS name in --static-backends (every pod address is an endpoint)",
    "--k8s-namespace": "Kubernetes API discovery is not supported: use a headless Service "
    "DNS name in --static-backends",
    "--k8s-port": "Kubernetes API discovery is not supported: use DNS names",
    "--k8s-label-selector": "Kubernetes API discovery is not supported: use DNS names",
    "--session-key": "session routing is not supported; use --routing-logic roundrobin",
    "--static-aliases": "model aliases are not supported: serve each model under its true name",
    "--static-model-labels": "model labels are not supported",
    "--prefill-model-labels": "prefill/decode disaggregation does not apply to Whisper",
    "--decode-model-labels": "prefill/decode disaggregation does not apply to Whisper",
    "--callbacks": "Python callbacks in the request path are not supported (Envoy moves the bytes)",
    "--enable-batch-api": "the batch API is not supported",
    "--dynamic-config-yaml": "use --config FILE (our YAML), reloaded on SIGHUP or "
    "POST /config/reload",
    "--dynamic-config-json": "use --config FILE (our YAML), reloaded on SIGHUP or "
    "POST /config/reload",
    "--external-providers-config": "external hosted providers are not supported",
}


REFUSED_SWITCHES = {"--enable-batch-api"}


class RouterFlagError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise RouterFlagError(message)


@dataclass(frozen=True)
class RouterFlags:
    config: GatewayConfig
    notes: tuple[str, ...]  # one line per flag accepted and ignored, with why


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _parser() -> _Parser:
    p = _Parser(prog="whisper-gateway (vllm-router flags)", add_help=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--service-discovery", default="static")
    p.add_argument("--static-backends")
    p.add_argument("--static-models")
    p.add_argument("--static-model-types")
    p.add_argument("--static-backend-health-checks", action="store_true")
    p.add_argument("--static-backend-health-check-interval", type=float)
    p.add_argument("--static-backend-health-check-timeout-seconds", type=float)
    p.add_argument("--backend-health-check-timeout-seconds", type=float)
    p.add_argument("--routing-logic", default="roundrobin")
    p.add_argument("--max-instance-failover-reroute-attempts", type=int)
    p.add_argument("--request-rewriter", default="noop")
    p.add_argument("--log-stats", action="store_true")
    p.add_argument("--log-stats-interval", type=float, default=10.0)
    p.add_argument("--request-stats-window", type=float, default=60.0)
    p.add_argument("--engine-stats-interval", type=float, default=30.0)
    p.add_argument("--max-upload-mb", type=float)  # ours: the router has no such limit
    # Ours: the router passes vLLM's chunks through, so that is the default here.
    p.add_argument("--stream-format", default="backend", choices=("openai", "backend", "text"))
    for flag in IGNORED:
        p.add_argument(flag)
    for flag in IGNORED_SWITCHES:
        p.add_argument(flag, action="store_true")
    return p


def read_router_flags(argv: list[str]) -> RouterFlags:
    """Map `vllm-router` flags onto a validated GatewayConfig, with notes on what was ignored."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in REFUSED:
            raise RouterFlagError(f"{flag} is refused: {REFUSED[flag]}")
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise RouterFlagError(f"unknown flag(s): {' '.join(unknown)}")
    notes = [
        f"{flag} ignored: {why}"
        for flag, why in {**IGNORED, **IGNORED_SWITCHES}.items()
        if getattr(args, flag.lstrip("-").replace("-", "_")) not in (None, False)
    ]
    if args.service_discovery != "static":
        raise RouterFlagError(
            f"--service-discovery {args.service_discovery} is refused: only static is "
            "supported (give DNS names in --static-backends for Kubernetes Services)"
        )
    if args.routing_logic not in ROUTING:
        raise RouterFlagError(
            f"--routing-logic {args.routing_logic} is refused: use roundrobin "
            "(or least_request, our default)"
        )
    if args.request_rewriter != "noop":
        raise RouterFlagError(
            f"--request-rewriter {args.request_rewriter} is refused: bodies are not rewritten"
        )
    backends = _split(args.static_backends)
    models = _split(args.static_models)
    if not backends:
        raise RouterFlagError("--static-backends is required")
    if len(models) != len(backends):
        raise RouterFlagError(
            f"--static-models lists {len(models)} models for {len(backends)} backends: "
            "give one model per backend, in the same order"
        )
    types = _split(args.static_model_types) or ["transcription"] * len(backends)
    if len(types) != len(backends):
        raise RouterFlagError("--static-model-types must list one type per backend")
    for t in types:
        if t != "transcription":
            raise RouterFlagError(
                f"--static-model-types {t} is refused: this gateway serves transcription models"
            )
    timeout = args.static_backend_health_check_timeout_seconds
    if timeout is None:
        timeout = args.backend_health_check_timeout_seconds
    interval = args.static_backend_health_check_interval
    health: dict[str, Any] = {
        "enabled": bool(args.static_backend_health_checks),
        "interval_s": ROUTER_HEALTH_INTERVAL_S if interval is None else interval,
        "timeout_s": ROUTER_HEALTH_TIMEOUT_S if timeout is None else timeout,
    }
    doc: dict[str, Any] = {
        "listener": {"address": args.host, "port": args.port},
        "routing": {"policy": ROUTING[args.routing_logic]},
        "health": health,
        "backends": [{"url": b, "models": [m]} for b, m in zip(backends, models, strict=True)],
        # The router serves /metrics and /engines on its listener; its users scrape them there.
        "public_router_endpoints": True,
        "stream_format": args.stream_format,
        "stats": {
            "window_s": args.request_stats_window,
            "log_interval_s": args.log_stats_interval if args.log_stats else 0.0,
            "engine_interval_s": args.engine_stats_interval,
        },
    }
    if args.max_instance_failover_reroute_attempts is not None:
        doc["routing"]["retries"] = args.max_instance_failover_reroute_attempts
        if args.max_instance_failover_reroute_attempts > 1:
            # More than one resend of a request that crashes backends is refused;
            # the router's count applies to connect failures only then.
            doc["routing"]["retry_on_reset"] = False
            notes.append(
                "--max-instance-failover-reroute-attempts > 1: retries on reset are off "
                "(routing.retry_on_reset: false)"
            )
    if args.max_upload_mb is not None:
        doc["limits"] = {"max_upload_mb": args.max_upload_mb}
    return RouterFlags(parse_config(doc), tuple(notes))


def config_from_router_flags(argv: list[str]) -> GatewayConfig:
    return read_router_flags(argv).config
