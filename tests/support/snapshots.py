"""A snapshot built the real way (config -> model -> translators) for protocol tests."""

from __future__ import annotations

from typing import Any

from control_plane.config import parse_config
from control_plane.model import EndpointHealth, build_model
from control_plane.resources import build_snapshot, load_lua_template
from control_plane.snapshot import Snapshot

A, B = "model-a", "model-b"


def snap(
    models: tuple[str, ...] = (A, B),
    healthy: bool = True,
    policy: str = "least_request",
    port: int = 8000,
) -> Snapshot:
    """One backend per model on 127.0.0.1:8100+i, all healthy or all unhealthy."""
    doc: dict[str, Any] = {
        "listener": {"port": port},
        "routing": {"policy": policy},
        "backends": [
            {"url": f"http://127.0.0.1:{8100 + i}", "models": [m]} for i, m in enumerate(models)
        ],
    }
    cfg = parse_config(doc)
    resolved = {b.url: ("127.0.0.1",) for b in cfg.backends}
    state = EndpointHealth.HEALTHY if healthy else EndpointHealth.UNHEALTHY
    health = {f"127.0.0.1:{8100 + i}": state for i in range(len(models))}
    return build_snapshot(build_model(cfg, resolved, health), load_lua_template())
