"""YAML -> GatewayConfig: every value checked against its field's type and bounds, every
error naming the field's path (`backends[1].url`); and back to YAML for `check`."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from control_plane.config.schema import (
    BACKEND_TYPES,
    LAUNCH_KINDS,
    LOG_FORMATS,
    POLICIES,
    STREAM_FORMATS,
    UNIX_PATH_MAX,
    UNIX_PLANES,
    ApiKeysConfig,
    BackendConfig,
    ConfigError,
    EdgeConfig,
    GatewayConfig,
    HealthConfig,
    HostPort,
    LimitsConfig,
    LongAudioConfig,
    OutlierConfig,
    PlaneTlsConfig,
    RateLimitConfig,
    RoutingConfig,
    StatsConfig,
    TlsConfig,
    UpstreamTlsConfig,
)

T = TypeVar("T")


_FIELDS = {f.name: f for cls in (GatewayConfig,) for f in dataclasses.fields(cls)}


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _no_unknown(data: Mapping[str, Any], allowed: set[str] | frozenset[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(
                _where(path, str(key)), f"unknown field (allowed: {', '.join(sorted(allowed))})"
            )


def _value(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    """Check one scalar against its field's type and bounds."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {value!r}")
        return value
    if kind.startswith("str"):
        if value is None and "None" in kind:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(where, f"must be a non-empty string, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be an integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, f"must be a number, got {value!r}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and value < lo:
        raise ConfigError(where, f"must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(where, f"must be <= {hi}, got {value!r}")
    return value if kind == "int" else float(value)


def _section(cls: type[T], data: Any, path: str, base: T | None = None) -> T:
    """A flat section: every field from `data`, else from `base`, else its default."""
    d = _mapping(data, path)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _no_unknown(d, set(fields), path)
    defaults = base if base is not None else cls()
    values = {
        name: _value(f, d[name], _where(path, name)) if name in d else getattr(defaults, name)
        for name, f in fields.items()
    }
    return cls(**values)


def _unix_socket(value: Any, where: str, base: Path) -> str:
    """A socket path, absolute, short enough for the kernel's sockaddr_un."""
    path = _path(value, where, base)
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ConfigError(
            where, f"a Unix socket path is at most {UNIX_PATH_MAX} bytes, got {path!r}"
        )
    return path


def _host_port(data: Any, path: str, base: Path, default: HostPort | None = None) -> HostPort:
    base_default = _FIELDS[path].default if default is None else default
    assert isinstance(base_default, HostPort)
    default = base_default
    d = _mapping(data, path)
    allowed = {"address", "port"}
    allowed |= {"unix_socket"} if path in UNIX_PLANES else set()
    allowed |= {"tls"} if path == "xds" else set()
    _no_unknown(d, allowed, path)
    unix = d.get("unix_socket")
    unix_socket = None if unix is None else _unix_socket(unix, f"{path}.unix_socket", base)
    tls = None if d.get("tls") is None else _plane_tls(d["tls"], f"{path}.tls", base)
    address = d.get("address", default.address)
    if not isinstance(address, str):
        raise ConfigError(f"{path}.address", f"must be an IP address, got {address!r}")
    try:
        ipaddress.ip_address(address)
    except ValueError as e:
        raise ConfigError(f"{path}.address", f"must be an IP address, got {address!r}") from e
    port = d.get("port", default.port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ConfigError(f"{path}.port", f"must be an integer, got {port!r}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}.port", f"must be in 1..65535, got {port}")
    return HostPort(address, port, unix_socket, tls)


def _url(d: Mapping[str, Any], path: str) -> str:
    url = d.get("url")
    if url is None:
        raise ConfigError(f"{path}.url", "is required")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{path}.url", f"must be a non-empty string, got {url!r}")
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
    return url.rstrip("/")


def _models(d: Mapping[str, Any], path: str) -> tuple[str, ...]:
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
    return tuple(models)


def _backend(data: Any, path: str, health_defaults: HealthConfig) -> BackendConfig:
    d = _mapping(data, path)
    fields = {f.name: f for f in dataclasses.fields(BackendConfig)}
    _no_unknown(d, set(fields), path)
    url = _url(d, path)
    models = _models(d, path)
    for name in ("type", "launch"):
        allowed = BACKEND_TYPES if name == "type" else LAUNCH_KINDS
        if name in d and d[name] not in allowed:
            raise ConfigError(f"{path}.{name}", f"must be one of {', '.join(allowed)}")
    default = BackendConfig(url, models)
    scalar = {
        n: _value(fields[n], d[n], f"{path}.{n}")
        for n in ("max_concurrency", "api_key_env")
        if n in d
    }
    backend = dataclasses.replace(
        default,
        type=d.get("type", default.type),
        launch=d.get("launch"),
        health=_section(HealthConfig, d.get("health"), f"{path}.health", health_defaults),
        **scalar,
    )
    if backend.launch is not None and len(models) > 1:
        raise ConfigError(
            f"{path}.launch",
            "a launched server serves one model: give each model its own backend "
            "entry on its own port",
        )
    if backend.max_concurrency < len(models):
        raise ConfigError(
            f"{path}.max_concurrency",
            f"must be >= the number of models ({len(models)}): the limit is split between them",
        )
    return backend


def _check_backends(backends: tuple[BackendConfig, ...]) -> None:
    seen: dict[tuple[str, int], int] = {}
    for i, b in enumerate(backends):
        key = (b.host, b.port)
        if key in seen:
            raise ConfigError(f"backends[{i}].url", f"duplicates backends[{seen[key]}].url")
        seen[key] = i
    # Envoy adds a model's backend key on the model's route: one key per model.
    key_of: dict[str, tuple[str | None, int]] = {}
    for i, b in enumerate(backends):
        for m in b.models:
            env, first = key_of.setdefault(m, (b.api_key_env, i))
            if env != b.api_key_env:
                raise ConfigError(
                    f"backends[{i}].api_key_env",
                    f"model {m!r} is served by backends with different keys (see "
                    f"backends[{first}]): give them one api_key_env",
                )
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


def _path(value: Any, where: str, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"must be a file path, got {value!r}")
    return str((base / value).resolve()) if not Path(value).is_absolute() else value


def _paths(
    data: Any, path: str, base: Path, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, str]:
    d = _mapping(data, path)
    for name in required:
        if name not in d:
            raise ConfigError(f"{path}.{name}", "is required")
    return {
        name: _path(d[name], f"{path}.{name}", base)
        for name in required + optional
        if d.get(name) is not None
    }


def _plane_tls(data: Any, path: str, base: Path) -> PlaneTlsConfig:
    names = tuple(f.name for f in dataclasses.fields(PlaneTlsConfig))
    _no_unknown(_mapping(data, path), set(names), path)
    return PlaneTlsConfig(**_paths(data, path, base, names, ()))


def _tls(data: Any, base: Path) -> TlsConfig | None:
    if data is None:
        return None
    d = _mapping(data, "tls")
    _no_unknown(d, {"cert_file", "key_file", "self_signed"}, "tls")
    files = _paths(d, "tls", base, ("cert_file", "key_file"), ())
    self_signed = d.get("self_signed", False)
    if not isinstance(self_signed, bool):
        raise ConfigError("tls.self_signed", f"must be true or false, got {self_signed!r}")
    return TlsConfig(self_signed=self_signed, **files)


def _api_keys(data: Any, base: Path) -> ApiKeysConfig | None:
    if data is None:
        return None
    d = _mapping(data, "api_keys")
    _no_unknown(d, {"file", "env"}, "api_keys")
    env = _mapping(d.get("env"), "api_keys.env")
    for name, var in env.items():
        if not isinstance(var, str) or not var.strip():
            raise ConfigError(
                f"api_keys.env.{name}", f"must name an environment variable, got {var!r}"
            )
    if "file" not in d and not env:
        raise ConfigError("api_keys", "needs a file or env (or remove the section: keys off)")
    file = _path(d["file"], "api_keys.file", base) if "file" in d else None
    return ApiKeysConfig(file=file, env=tuple(sorted((str(k), v) for k, v in env.items())))


def _upstream_tls(data: Any, base: Path) -> UpstreamTlsConfig:
    d = _mapping(data, "upstream_tls")
    _no_unknown(d, {"ca_file", "cert_file", "key_file"}, "upstream_tls")
    files = _paths(d, "upstream_tls", base, (), ("ca_file", "cert_file", "key_file"))
    if ("cert_file" in files) != ("key_file" in files):
        raise ConfigError(
            "upstream_tls.key_file", "a client certificate needs both cert_file and key_file"
        )
    return UpstreamTlsConfig(**files)


def _long_audio(data: Any, models: set[str], base: Path) -> LongAudioConfig | None:
    if data is None:
        return None
    d = _mapping(data, "long_audio")
    listed = d.get("models")
    if not isinstance(listed, list) or not listed or not all(isinstance(m, str) for m in listed):
        raise ConfigError("long_audio.models", "must be a non-empty list of served model names")
    for i, m in enumerate(listed):
        if m not in models:
            raise ConfigError(f"long_audio.models[{i}]", f"names no model of any backend: {m!r}")
    flat = _section(
        LongAudioConfig,
        {k: v for k, v in d.items() if k not in ("models", "splitter")},
        "long_audio",
    )
    splitter = _host_port(
        d.get("splitter"), "long_audio.splitter", base, LongAudioConfig().splitter
    )
    return dataclasses.replace(flat, models=tuple(dict.fromkeys(listed)), splitter=splitter)


def parse_config(data: Any, base_dir: str | Path | None = None) -> GatewayConfig:
    """Validate a decoded YAML document into a GatewayConfig (pure). Relative file
    paths are relative to `base_dir` (the config file's folder), else to the cwd."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    d = _mapping(data, "config")
    _no_unknown(d, set(_FIELDS), "")
    routing = _section(RoutingConfig, d.get("routing"), "routing")
    if routing.policy not in POLICIES:
        raise ConfigError(
            "routing.policy", f"must be one of {', '.join(POLICIES)}, got {routing.policy!r}"
        )
    if routing.retry_on_reset and routing.retries > 1:
        raise ConfigError(
            "routing.retries",
            f"must be <= 1 while routing.retry_on_reset is on, got {routing.retries}: a request "
            "that crashes backends would take down retries + 1 of them (set retry_on_reset: "
            "false for more retries on connect failures only)",
        )
    health = _section(HealthConfig, d.get("health"), "health")
    raw_backends = d.get("backends")
    if not isinstance(raw_backends, list) or not raw_backends:
        raise ConfigError("backends", "must be a non-empty list")
    backends = tuple(_backend(b, f"backends[{i}]", health) for i, b in enumerate(raw_backends))
    _check_backends(backends)
    stream_format = d.get("stream_format", "openai")
    if stream_format not in STREAM_FORMATS:
        raise ConfigError("stream_format", f"must be one of {', '.join(STREAM_FORMATS)}")
    overrides = _mapping(d.get("stream_formats"), "stream_formats")
    models = {m for b in backends for m in b.models}
    for m, f in overrides.items():
        if m not in models:
            raise ConfigError(f"stream_formats.{m}", "names no model of any backend")
        if f not in STREAM_FORMATS:
            raise ConfigError(f"stream_formats.{m}", f"must be one of {', '.join(STREAM_FORMATS)}")
    log_format = d.get("log_format", "text")
    if log_format not in LOG_FORMATS:
        raise ConfigError("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    top = {
        n: _value(_FIELDS[n], d[n], n)
        for n in ("node_id", "dns_refresh_s", "envoy_workers", "public_router_endpoints")
        if n in d
    }
    cfg = GatewayConfig(
        listener=_host_port(d.get("listener"), "listener", base),
        envoy_admin=_host_port(d.get("envoy_admin"), "envoy_admin", base),
        xds=_host_port(d.get("xds"), "xds", base),
        admin=_host_port(d.get("admin"), "admin", base),
        limits=_section(LimitsConfig, d.get("limits"), "limits"),
        routing=routing,
        outlier=_section(OutlierConfig, d.get("outlier"), "outlier"),
        health=health,
        backends=backends,
        stream_format=stream_format,
        stream_formats=tuple(sorted(overrides.items())),
        edge=_section(EdgeConfig, d.get("edge"), "edge"),
        rate_limit=_section(RateLimitConfig, d.get("rate_limit"), "rate_limit"),
        tls=_tls(d.get("tls"), base),
        api_keys=_api_keys(d.get("api_keys"), base),
        upstream_tls=_upstream_tls(d.get("upstream_tls"), base),
        stats=_section(StatsConfig, d.get("stats"), "stats"),
        log_format=log_format,
        long_audio=_long_audio(d.get("long_audio"), models, base),
        **top,
    )
    used: dict[tuple[str, int] | str, str] = {}
    planes = [(name, getattr(cfg, name)) for name in ("listener", "envoy_admin", "xds", "admin")]
    if cfg.long_audio is not None:
        planes.append(("long_audio.splitter", cfg.long_audio.splitter))
    for name, hp in planes:
        # A plane on a Unix socket opens no port: only its path must be its own.
        key: tuple[str, int] | str = hp.unix_socket or (hp.address, hp.port)
        where = "unix_socket" if hp.unix_socket else "port"
        if key in used:
            raise ConfigError(f"{name}.{where}", f"same address as {used[key]}")
        used[key] = name
    return cfg


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: GatewayConfig) -> dict[str, Any]:
    """The config as the YAML document that parses back to it (for --dry-run, files)."""
    doc = _plain(config)
    assert isinstance(doc, dict)
    doc["stream_formats"] = dict(config.stream_formats)
    if config.api_keys is not None:
        doc["api_keys"]["env"] = dict(config.api_keys.env)
    for b in doc["backends"]:
        if b.get("health") == doc["health"]:
            del b["health"]  # inherited from the top level
    return doc


def dump_config(config: GatewayConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


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
    return parse_config(data, p.parent)
