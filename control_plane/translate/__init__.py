"""Pure translators: intermediate model -> Envoy protos, one module per xDS type."""

from control_plane.translate.clusters import build_clusters
from control_plane.translate.endpoints import build_load_assignments
from control_plane.translate.listener import LISTENER_NAME, ROUTE_CONFIG_NAME, build_listener
from control_plane.translate.routes import build_route_config, render_lua

__all__ = [
    "LISTENER_NAME",
    "ROUTE_CONFIG_NAME",
    "build_clusters",
    "build_listener",
    "build_load_assignments",
    "build_route_config",
    "render_lua",
]
