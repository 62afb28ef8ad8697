"""The input model: one YAML file, validated at start.

Every error names the field (`backends[1].url`) and the reason, so a bad
config is refused before anything listens.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
POLICIES = ("least_request", "round_robin")
BACKEND_TYPES = ("transcription",)
LAUNCH_KINDS = ("cpu",)


class ConfigError(ValueError):
    """A config value that cannot be served; `field` is its dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"config error at {field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class HostPort:
    address: str
    port: int


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    interval_s: float = 5.0
    timeout_s: float = 10.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_word: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_5xx: int = 3
    consecutive_gateway_failure: int = 2
    interval_s: float = 1.0
    # Short: the probes decide for the long term; outlier ejection only bridges
    # the gap between probes, and a restarted backend must not wait it out.
    base_ejection_time_s: float = 3.0


@dataclass(frozen=True)
class LimitsConfig:
    max_upload_mb: float = 25.0
    request_headers_timeout_s: float = 10.0
    idle_timeout_s: float = 900.0
    connect_timeout_s: float = 2.0
    drain_time_s: float = 30.0


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "least_request"
    retries: int = 2


@dataclass(frozen=True)
class BackendConfig:
    url: str
    models: tuple[str, ...]
    type: str = "transcription"
    max_concurrency: int = 4
    api_key_env: str | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    launch: str | None = None  # "cpu": `make up` starts a whisper_backend for it

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class GatewayConfig:
    listener: HostPort = HostPort("127.0.0.1", 8000)
    envoy_admin: HostPort = HostPort("127.0.0.1", 9901)
    xds: HostPort = HostPort("127.0.0.1", 18000)
    admin: HostPort = HostPort("127.0.0.1", 19000)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    backends: tuple[BackendConfig, ...] = ()
    node_id: str = "gateway"
    dns_refresh_s: float = 30.0  # how often backend host names are re-resolved
    # Envoy --concurrency. Each worker may open one connection per host even past
    # the per-host limit, so max_concurrency is exact only with one worker.
    envoy_workers: int = 1

    @property
    def models(self) -> tuple[str, ...]:
        """Every served model, in first-seen order."""
        seen: dict[str, None] = {}
        for b in self.backends:
            for m in b.models:
                seen.setdefault(m, None)
        return tuple(seen)


# ---------------------------------------------------------------- parsing helpers


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _no_unknown(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _num(data: Mapping[str, Any], key: str, default: float, path: str, minimum: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}.{key}", f"must be a number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}.{key}", f"must be >= {minimum}, got {value!r}")
    return float(value)


def _int(data: Mapping[str, Any], key: str, default: int, path: str, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}.{key}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}.{key}", f"must be >= {minimum}, got {value!r}")
    return value


def _str(data: Mapping[str, Any], key: str, default: str | None, path: str) -> str | None:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        where = f"{path}.{key}" if path else key
        raise ConfigError(where, f"must be a non-empty string, got {value!r}")
    return value


def _choice(
    data: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...], path: str
) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise ConfigError(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _host_port(data: Any, path: str, default: HostPort) -> HostPort:
    d = _mapping(data, path)
    _no_unknown(d, {"address", "port"}, path)
    address = _str(d, "address", default.address, path) or default.address
    try:
        ipaddress.ip_address(address)
    except ValueError as e:
        raise ConfigError(f"{path}.address", f"must be an IP address, got {address!r}") from e
    port = _int(d, "port", default.port, path, 1)
    if port > 65535:
        raise ConfigError(f"{path}.port", f"must be <= 65535, got {port}")
    return HostPort(address, port)


def _health(data: Any, path: str, base: HealthConfig) -> HealthConfig:
    d = _mapping(data, path)
    _no_unknown(
        d,
        {
            "enabled",
            "interval_s",
            "timeout_s",
            "healthy_threshold",
            "unhealthy_threshold",
            "expected_word",
            "language",
        },
        path,
    )
    enabled = d.get("enabled", base.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}.enabled", f"must be true or false, got {enabled!r}")
    return HealthConfig(
        enabled=enabled,
        interval_s=_num(d, "interval_s", base.interval_s, path, 0.05),
        timeout_s=_num(d, "timeout_s", base.timeout_s, path, 0.05),
        healthy_threshold=_int(d, "healthy_threshold", base.healthy_threshold, path, 1),
        unhealthy_threshold=_int(d, "unhealthy_threshold", base.unhealthy_threshold, path, 1),
        expected_word=_str(d, "expected_word", base.expected_word, path),
        language=_str(d, "language", base.language, path),
    )


def _backend(data: Any, path: str, health_defaults: HealthConfig) -> BackendConfig:
    d = _mapping(data, path)
    _no_unknown(
        d, {"url", "models", "type", "max_concurrency", "api_key_env", "health", "launch"}, path
    )
    url = _str(d, "url", None, path)
    if url is None:
        raise ConfigError(f"{path}.url", "is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}.url", f"must be http(s)://host:port, got {url!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"{path}.url", f"must not carry a path, got {parts.path!r}")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"{path}.url", f"must be only scheme://host:port, got {url!r}")
    try:
        _ = parts.port
    except ValueError as e:
        raise ConfigError(f"{path}.url", f"bad port in {url!r}") from e
    models = d.get("models")
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path}.models", "must be a non-empty list of model names")
    for i, m in enumerate(models):
        # Printable ASCII only: the name travels as an HTTP header value and a Lua string.
        if not isinstance(m, str) or not m or any(not ("!" <= c <= "~") or c in '"\\' for c in m):
            raise ConfigError(f"{path}.models[{i}]", f"not a valid model name: {m!r}")
    if len(set(models)) != len(models):
        raise ConfigError(f"{path}.models", "lists a model twice")
    launch = d.get("launch")
    if launch is not None and launch not in LAUNCH_KINDS:
        raise ConfigError(f"{path}.launch", f"must be one of {', '.join(LAUNCH_KINDS)}")
    return BackendConfig(
        url=url.rstrip("/"),
        models=tuple(models),
        type=_choice(d, "type", "transcription", BACKEND_TYPES, path),
        max_concurrency=_int(d, "max_concurrency", 4, path, 1),
        api_key_env=_str(d, "api_key_env", None, path),
        health=_health(d.get("health"), f"{path}.health", health_defaults),
        launch=launch,
    )


def parse_config(data: Any) -> GatewayConfig:
    """Validate a decoded YAML document into a GatewayConfig (pure)."""
    d = _mapping(data, "config")
    _no_unknown(
        d,
        {
            "listener",
            "envoy_admin",
            "xds",
            "admin",
            "limits",
            "routing",
            "outlier",
            "health",
            "backends",
            "node_id",
            "dns_refresh_s",
            "envoy_workers",
        },
        "",
    )
    lim = _mapping(d.get("limits"), "limits")
    _no_unknown(
        lim,
        {
            "max_upload_mb",
            "request_headers_timeout_s",
            "idle_timeout_s",
            "connect_timeout_s",
            "drain_time_s",
        },
        "limits",
    )
    limits = LimitsConfig(
        max_upload_mb=_num(lim, "max_upload_mb", 25.0, "limits", 0.001),
        request_headers_timeout_s=_num(lim, "request_headers_timeout_s", 10.0, "limits", 0.1),
        idle_timeout_s=_num(lim, "idle_timeout_s", 900.0, "limits", 0.1),
        connect_timeout_s=_num(lim, "connect_timeout_s", 2.0, "limits", 0.01),
        drain_time_s=_num(lim, "drain_time_s", 30.0, "limits", 0.0),
    )
    if limits.max_upload_mb > 1024:
        raise ConfigError("limits.max_upload_mb", "must be <= 1024 (Envoy buffers the upload)")
    rt = _mapping(d.get("routing"), "routing")
    _no_unknown(rt, {"policy", "retries"}, "routing")
    routing = RoutingConfig(
        policy=_choice(rt, "policy", "least_request", POLICIES, "routing"),
        retries=_int(rt, "retries", 2, "routing", 0),
    )
    od = _mapping(d.get("outlier"), "outlier")
    _no_unknown(
        od,
        {"consecutive_5xx", "consecutive_gateway_failure", "interval_s", "base_ejection_time_s"},
        "outlier",
    )
    outlier = OutlierConfig(
        consecutive_5xx=_int(od, "consecutive_5xx", 3, "outlier", 1),
        consecutive_gateway_failure=_int(od, "consecutive_gateway_failure", 2, "outlier", 1),
        interval_s=_num(od, "interval_s", 1.0, "outlier", 0.1),
        base_ejection_time_s=_num(od, "base_ejection_time_s", 3.0, "outlier", 0.1),
    )
    health = _health(d.get("health"), "health", HealthConfig())
    raw_backends = d.get("backends")
    if not isinstance(raw_backends, list) or not raw_backends:
        raise ConfigError("backends", "must be a non-empty list")
    backends = tuple(_backend(b, f"backends[{i}]", health) for i, b in enumerate(raw_backends))
    seen: dict[tuple[str, int], int] = {}
    for i, b in enumerate(backends):
        key = (b.host, b.port)
        if key in seen:
            raise ConfigError(f"backends[{i}].url", f"duplicates backends[{seen[key]}].url")
        seen[key] = i
    # One cluster per model has one transport socket: all plain HTTP or all TLS.
    scheme_of: dict[str, tuple[bool, int]] = {}
    for i, b in enumerate(backends):
        for m in b.models:
            tls, first = scheme_of.setdefault(m, (b.tls, i))
            if tls != b.tls:
                raise ConfigError(
                    f"backends[{i}].url",
                    f"model {m!r} is served over both http and https (see backends[{first}])",
                )
    cfg = GatewayConfig(
        listener=_host_port(d.get("listener"), "listener", HostPort("127.0.0.1", 8000)),
        envoy_admin=_host_port(d.get("envoy_admin"), "envoy_admin", HostPort("127.0.0.1", 9901)),
        xds=_host_port(d.get("xds"), "xds", HostPort("127.0.0.1", 18000)),
        admin=_host_port(d.get("admin"), "admin", HostPort("127.0.0.1", 19000)),
        limits=limits,
        routing=routing,
        outlier=outlier,
        health=health,
        backends=backends,
        node_id=_str(d, "node_id", "gateway", "") or "gateway",
        dns_refresh_s=_top_num(d, "dns_refresh_s", 30.0, 1.0),
        envoy_workers=int(_top_num(d, "envoy_workers", 1, 1)),
    )
    ports = {
        "listener": cfg.listener,
        "envoy_admin": cfg.envoy_admin,
        "xds": cfg.xds,
        "admin": cfg.admin,
    }
    used: dict[tuple[str, int], str] = {}
    for name, hp in ports.items():
        if (hp.address, hp.port) in used:
            raise ConfigError(f"{name}.port", f"same address as {used[(hp.address, hp.port)]}")
        used[(hp.address, hp.port)] = name
    return cfg


def _top_num(d: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    try:
        return _num(d, key, default, "", minimum)
    except ConfigError as e:
        raise ConfigError(key, e.reason) from None


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("config", f"cannot read {p}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("config", f"{p} is not valid YAML: {e}") from e
    return parse_config(data)
