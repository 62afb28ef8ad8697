"""Model -> snapshot: the four translators run together (pure)."""

from __future__ import annotations

from control_plane.model import GatewayModel
from control_plane.snapshot import Snapshot, make_snapshot
from control_plane.translate import (
    build_clusters,
    build_listener,
    build_load_assignments,
    build_route_config,
)
from control_plane.translate.routes import LUA_TEMPLATE
from control_plane.translate.secrets import build_secrets


def load_lua_template() -> str:
    return LUA_TEMPLATE.read_text()


def build_snapshot(model: GatewayModel, lua_template: str) -> Snapshot:
    return make_snapshot(
        clusters=build_clusters(model),
        endpoints=build_load_assignments(model),
        listeners=[build_listener(model)],
        routes=[build_route_config(model, lua_template)],
        secrets=build_secrets(model),
    )
