"""The xDS translator: the intermediate model -> a versioned snapshot, by pure functions.

`translate` is the one entry point (one module per xDS type below it); `snapshot_of`
is the whole pipeline from the fleet's state, as the reconciler and the goldens run it.
"""

from __future__ import annotations

from control_plane.ir.fleet import FleetState, model_of
from control_plane.ir.model import GatewayModel
from control_plane.xds.cache.snapshot import Snapshot, make_snapshot
from control_plane.xds.translator.clusters import build_clusters
from control_plane.xds.translator.endpoints import build_load_assignments
from control_plane.xds.translator.listener import build_listener
from control_plane.xds.translator.lua import load_lua_template
from control_plane.xds.translator.routes import build_route_config
from control_plane.xds.translator.secrets import build_secrets

__all__ = ["load_lua_template", "snapshot_of", "translate"]


def translate(model: GatewayModel, lua_template: str) -> Snapshot:
    return make_snapshot(
        clusters=build_clusters(model),
        endpoints=build_load_assignments(model),
        listeners=[build_listener(model)],
        routes=[build_route_config(model, lua_template)],
        secrets=build_secrets(model),
    )


def snapshot_of(state: FleetState, lua_template: str) -> Snapshot:
    return translate(model_of(state), lua_template)
