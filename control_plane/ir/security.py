"""Secrets from files and the environment, read into the IR: the listener's certificate,
client API keys, backend keys and the CA for https backends.

Read by the control plane (never by Envoy), so a rotated certificate or an edited key
file reaches Envoy over xDS without a restart (reconcile/secrets_watch.py). A bad value
is refused naming its field. Nothing here ever logs a key."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from control_plane.config.schema import ApiKeysConfig, ConfigError, GatewayConfig
from control_plane.ir.model import Client, ListenerTls, Security, UpstreamTls

log = logging.getLogger("control_plane.secrets")


MAX_KEYS = 10_000


def _read(path: str, where: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(where, f"cannot read {path}: {e.strerror}") from e


def _pem(path: str, where: str, marker: bytes) -> bytes:
    data = _read(path, where)
    if b"-----BEGIN " not in data or marker not in data:
        raise ConfigError(where, f"{path} is not a PEM file with a {marker.decode()}")
    return data


def _client(item: Any, where: str, models: set[str]) -> Client:
    if not isinstance(item, dict):
        raise ConfigError(where, "must be a mapping with name and key (or key_env)")
    unknown = set(item) - {"name", "key", "key_env", "models", "requests_per_s", "burst"}
    if unknown:
        raise ConfigError(
            f"{where}.{sorted(unknown)[0]}",
            "unknown field (allowed: burst, key, key_env, models, name, requests_per_s)",
        )
    name = item.get("name")
    if not isinstance(name, str) or not name or any(not ("!" <= c <= "~") for c in name):
        raise ConfigError(f"{where}.name", "must be a printable name without spaces")
    if ("key" in item) == ("key_env" in item):
        raise ConfigError(where, "needs exactly one of key and key_env")
    key = item.get("key")
    if "key_env" in item:
        key = os.environ.get(str(item["key_env"]))
        if not key:
            raise ConfigError(
                f"{where}.key_env", f"environment variable {item['key_env']} is not set"
            )
    rate, burst = item.get("requests_per_s"), item.get("burst")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
    ):
        raise ConfigError(f"{where}.requests_per_s", f"must be a number > 0, got {rate!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ConfigError(f"{where}.burst", f"must be an integer >= 1, got {burst!r}")
    return Client(
        name,
        _check_key(key, f"{where}.key"),
        _client_models(item.get("models"), where, models),
        None if rate is None else float(rate),
        burst,
    )


def _check_key(key: Any, where: str) -> str:
    # The value is never echoed: an error names only where it is.
    if not isinstance(key, str) or len(key) < 8 or any(not ("!" <= c <= "~") for c in key):
        raise ConfigError(where, "must be at least 8 printable characters without spaces")
    return key


def _client_models(value: Any, where: str, models: set[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ConfigError(f"{where}.models", "must be a list of model names")
    for m in value:
        if m not in models:
            raise ConfigError(f"{where}.models", f"names no served model: {m!r}")
    return tuple(value)


def load_clients(keys: ApiKeysConfig, models: set[str]) -> tuple[Client, ...]:
    """Every client from the key file and the environment; names and keys unique."""
    clients: list[Client] = []
    if keys.file is not None:
        try:
            doc = yaml.safe_load(_read(keys.file, "api_keys.file"))
        except yaml.YAMLError as e:
            raise ConfigError("api_keys.file", f"{keys.file} is not valid YAML: {e}") from e
        items = doc.get("clients") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ConfigError("api_keys.file", f"{keys.file} must hold `clients:`, a list")
        clients += [_client(c, f"{keys.file}: clients[{i}]", models) for i, c in enumerate(items)]
    for name, var in keys.env:
        value = os.environ.get(var)
        if not value:
            raise ConfigError(f"api_keys.env.{name}", f"environment variable {var} is not set")
        clients.append(Client(name, _check_key(value, f"api_keys.env.{name}")))
    if len(clients) > MAX_KEYS:
        raise ConfigError("api_keys", f"at most {MAX_KEYS} keys")
    names, seen = set(), set()
    for c in clients:
        if c.name in names:
            raise ConfigError("api_keys", f"client {c.name!r} is listed twice")
        if c.key in seen:
            raise ConfigError("api_keys", f"client {c.name!r} has the same key as another client")
        names.add(c.name)
        seen.add(c.key)
    return tuple(clients)


def load_security(config: GatewayConfig) -> Security:
    """Read every secret the config names (raises ConfigError naming the field)."""
    listener = None
    if config.tls is not None:
        listener = ListenerTls(
            cert_pem=_pem(config.tls.cert_file, "tls.cert_file", b"CERTIFICATE"),
            key_pem=_pem(config.tls.key_file, "tls.key_file", b"PRIVATE KEY"),
        )
    clients = None
    if config.api_keys is not None:
        clients = load_clients(config.api_keys, set(config.models))
    up = config.upstream_tls
    upstream = UpstreamTls(
        ca_pem=_pem(up.ca_file, "upstream_tls.ca_file", b"CERTIFICATE") if up.ca_file else None,
        cert_pem=_pem(up.cert_file, "upstream_tls.cert_file", b"CERTIFICATE")
        if up.cert_file
        else None,
        key_pem=_pem(up.key_file, "upstream_tls.key_file", b"PRIVATE KEY") if up.key_file else None,
    )
    backend_keys = {}
    for i, b in enumerate(config.backends):
        if b.api_key_env:
            key = os.environ.get(b.api_key_env)
            if not key:
                raise ConfigError(
                    f"backends[{i}].api_key_env", f"environment variable {b.api_key_env} is not set"
                )
            for m in b.models:
                backend_keys[m] = key
    return Security(listener, clients, upstream, tuple(sorted(backend_keys.items())))
