"""The vLLM Production Stack router's flags, read into our config.

Its users switch by changing only the command. Flags that map get mapped;
flags that make no sense behind Envoy are refused with the reason.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from control_plane.config import GatewayConfig, parse_config

ROUTING = {
    "roundrobin": "round_robin",
    "least_request": "least_request",
    "leastrequest": "least_request",
}

# Flags we accept for compatibility but that change nothing here, with why.
IGNORED = {
    "--engine-stats-interval": "Envoy's stats replace the router's engine scraping",
    "--request-stats-window": "Envoy's stats replace the router's request stats",
    "--log-stats-interval": "see the admin API /metrics and Envoy's /stats",
    "--dynamic-config-json": "use --config YAML",
}
IGNORED_SWITCHES = {"--log-stats": "see the admin API /metrics and Envoy's /stats"}
REFUSED = {
    "--session-key": "session routing is not supported; use --routing-logic roundrobin",
    "--k8s-namespace": "k8s discovery: list the backends' Service DNS names in "
    "--static-backends (one endpoint per resolved address)",
    "--k8s-port": "k8s discovery is not supported; use DNS names in --static-backends",
    "--k8s-label-selector": "k8s discovery is not supported; use DNS names",
    "--static-aliases": "model aliases are not supported: serve each model under its true name",
    "--static-model-labels": "model labels are not supported",
    "--prefill-model-labels": "prefill/decode disaggregation does not apply to Whisper",
    "--decode-model-labels": "prefill/decode disaggregation does not apply to Whisper",
    "--callbacks": "Python callbacks in the request path are not supported (Envoy moves the bytes)",
    "--enable-batch-api": "the batch API is not supported",
    "--file-storage-class": "the batch API is not supported",
    "--file-storage-path": "the batch API is not supported",
    "--lmcache-controller-port": "KV-cache-aware routing does not apply to Whisper",
}


class RouterFlagError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise RouterFlagError(message)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def config_from_router_flags(argv: list[str]) -> GatewayConfig:
    """Map `vllm-router` flags onto a validated GatewayConfig."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in REFUSED:
            raise RouterFlagError(f"{flag} is refused: {REFUSED[flag]}")
    p = _Parser(prog="whisper-gateway (vllm-router flags)", add_help=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--service-discovery", default="static")
    p.add_argument("--static-backends")
    p.add_argument("--static-models")
    p.add_argument("--static-model-types")
    p.add_argument("--static-backend-health-checks", action="store_true")
    p.add_argument("--health-check-interval", type=float)
    p.add_argument("--routing-logic", default="roundrobin")
    p.add_argument("--max-upload-mb", type=float)
    for flag in IGNORED:
        p.add_argument(flag)
    for flag in IGNORED_SWITCHES:
        p.add_argument(flag, action="store_true")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        raise RouterFlagError(f"unknown flag(s): {' '.join(unknown)}")
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
    health: dict[str, Any] = {"enabled": bool(args.static_backend_health_checks)}
    if args.health_check_interval is not None:
        health["interval_s"] = args.health_check_interval
    doc: dict[str, Any] = {
        "listener": {"address": args.host, "port": args.port},
        "routing": {"policy": ROUTING[args.routing_logic]},
        "health": health,
        "backends": [{"url": b, "models": [m]} for b, m in zip(backends, models, strict=True)],
    }
    if args.max_upload_mb is not None:
        doc["limits"] = {"max_upload_mb": args.max_upload_mb}
    return parse_config(doc)
