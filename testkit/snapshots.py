"""Models and snapshots built the real way (config -> spec -> model -> translators)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.config.parse import parse_config
from control_plane.config.schema import GatewayConfig
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth, GatewayModel, HealthKey, build_model
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.translator import load_lua_template, translate

A, B = "model-a", "model-b"


def model_from(
    cfg: GatewayConfig,
    resolved: Mapping[str, tuple[str, ...]],
    health: Mapping[str | HealthKey, EndpointHealth],
    draining: Iterable[str] = (),
) -> GatewayModel:
    """build_model from a config; an endpoint key alone sets every model's health,
    and DRAINING on it means drained."""
    spec = spec_from_config(cfg)
    per_model: dict[HealthKey, EndpointHealth] = {}
    drained = set(draining)
    for key, h in health.items():
        if isinstance(key, tuple):
            per_model[key] = h
        elif h is EndpointHealth.DRAINING:
            drained.add(key)
        else:
            per_model.update({(key, m): h for m in spec.models})
    return build_model(spec, resolved, per_model, frozenset(drained))


def snap(
    models: tuple[str, ...] = (A, B),
    healthy: bool | tuple[bool, ...] = True,
    policy: str = "least_request",
    port: int = 8000,
) -> Snapshot:
    """One backend per model on 127.0.0.1:8100+i, all healthy, all unhealthy, or
    as listed per model."""
    doc: dict[str, Any] = {
        "listener": {"port": port},
        "routing": {"policy": policy},
        "backends": [
            {"url": f"http://127.0.0.1:{8100 + i}", "models": [m]} for i, m in enumerate(models)
        ],
    }
    cfg = parse_config(doc)
    resolved = {b.url: ("127.0.0.1",) for b in cfg.backends}
    flags = healthy if isinstance(healthy, tuple) else (healthy,) * len(models)
    health: dict[str | HealthKey, EndpointHealth] = {
        f"127.0.0.1:{8100 + i}": EndpointHealth.HEALTHY if ok else EndpointHealth.UNHEALTHY
        for i, ok in enumerate(flags)
    }
    return translate(model_from(cfg, resolved, health), load_lua_template())
