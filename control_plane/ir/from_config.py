"""The YAML front end: a validated GatewayConfig becomes the model's GatewaySpec (pure).

The only module that knows both the input schema and the intermediate model;
another input (router flags, Kubernetes) writes a function like this one.
"""

from __future__ import annotations

from dataclasses import asdict
from importlib import metadata

from control_plane.config.schema import BackendConfig, GatewayConfig
from control_plane.ir.model import (
    BackendSpec,
    Edge,
    GatewaySpec,
    Limits,
    Listen,
    LongAudio,
    Outlier,
    ProbeSpec,
    RateLimit,
)


def _backend(b: BackendConfig) -> BackendSpec:
    h = b.health
    probe = (
        ProbeSpec(
            interval_s=h.interval_s,
            timeout_s=h.timeout_s,
            healthy_threshold=h.healthy_threshold,
            unhealthy_threshold=h.unhealthy_threshold,
            expected_word=h.expected_word,
            language=h.language,
        )
        if h.enabled
        else None
    )
    return BackendSpec(
        url=b.url,
        host=b.host,
        port=b.port,
        tls=b.tls,
        models=b.models,
        max_concurrency=b.max_concurrency,
        probe=probe,
        api_key_env=b.api_key_env,
    )


def version() -> str:
    try:
        return metadata.version("whisper-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def spec_from_config(config: GatewayConfig) -> GatewaySpec:
    return GatewaySpec(
        listener=Listen(config.listener.address, config.listener.port),
        limits=Limits(**asdict(config.limits)),
        outlier=Outlier(**asdict(config.outlier)),
        policy=config.routing.policy,
        retries=config.routing.retries,
        retry_on_reset=config.routing.retry_on_reset,
        backends=tuple(_backend(b) for b in config.backends),
        dns_refresh_s=config.dns_refresh_s,
        admin_api=Listen(config.admin.address, config.admin.port, config.admin.unix_socket),
        public_router_endpoints=config.public_router_endpoints,
        version=version(),
        stream_formats=config.stream_formats,
        stream_format=config.stream_format,
        edge=Edge(
            trusted_hops=config.edge.trusted_hops,
            backend_header=config.edge.backend_header,
            forward_client_key=config.edge.forward_client_key,
            max_request_headers_kb=config.edge.max_request_headers_kb,
            max_headers_count=config.edge.max_headers_count,
        ),
        rate_limit=RateLimit(**asdict(config.rate_limit)),
        access_log_format=config.log_format,
        long_audio=_long_audio(config),
    )


def _long_audio(config: GatewayConfig) -> LongAudio | None:
    la = config.long_audio
    if la is None:
        return None
    return LongAudio(
        models=la.models,
        splitter=Listen(la.splitter.address, la.splitter.port),
        min_upload_bytes=int(la.min_upload_mb * 1024 * 1024),
    )
