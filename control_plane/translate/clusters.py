"""CDS: one EDS cluster per model, plus the never-used catch-all cluster."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from control_plane.model import ADMIN_CLUSTER, UNROUTED_CLUSTER, GatewayModel, ModelCluster
from control_plane.translate.common import ads_source, any_of, seconds

_POLICY = {
    "least_request": cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST,
    "round_robin": cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN,
}


def _model_cluster(model: GatewayModel, c: ModelCluster) -> cluster_pb2.Cluster:
    u32 = wrappers_pb2.UInt32Value
    cluster = cluster_pb2.Cluster(
        name=c.cluster_name,
        type=cluster_pb2.Cluster.DiscoveryType.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=seconds(model.limits.connect_timeout_s),
        lb_policy=_POLICY[model.policy],
        # 0 %: with no healthy host the client gets an immediate 503, never a
        # request to a host our probes found dead (Envoy's default is 50 %).
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(value=0.0)
        ),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.RoutingPriority.DEFAULT,
                    max_connections=u32(value=100_000),
                    max_pending_requests=u32(value=100_000),
                    max_requests=u32(value=100_000),
                    max_retries=u32(value=1_000),
                    # Retries in flight stay within 20 % of active requests (at least
                    # 3): a burst of crashes cannot double the load on the survivors.
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=20.0),
                        min_retry_concurrency=u32(value=3),
                    ),
                )
            ],
            # HTTP/1.1 upstreams: one connection is one request in flight, so
            # this caps each backend's concurrency; the rest wait in Envoy.
            per_host_thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.RoutingPriority.DEFAULT,
                    max_connections=u32(value=c.max_concurrency_per_host),
                )
            ],
        ),
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=u32(value=model.outlier.consecutive_5xx),
            consecutive_gateway_failure=u32(value=model.outlier.consecutive_gateway_failure),
            enforcing_consecutive_gateway_failure=u32(value=100),
            enforcing_success_rate=u32(value=0),
            interval=seconds(model.outlier.interval_s),
            base_ejection_time=seconds(model.outlier.base_ejection_time_s),
            max_ejection_percent=u32(value=100),
        ),
    )
    if c.tls:
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(any_of(tls_pb2.UpstreamTlsContext()))
    return cluster


def _unrouted_cluster(model: GatewayModel) -> cluster_pb2.Cluster:
    """Target of the route matched before Lua runs; Lua always re-routes or replies."""
    return cluster_pb2.Cluster(
        name=UNROUTED_CLUSTER,
        type=cluster_pb2.Cluster.DiscoveryType.STATIC,
        connect_timeout=seconds(model.limits.connect_timeout_s),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=UNROUTED_CLUSTER),
    )


def _admin_cluster(model: GatewayModel) -> cluster_pb2.Cluster:
    """The control plane's admin API, for the router's /metrics and /engines."""
    address = "127.0.0.1" if model.admin_api.address == "0.0.0.0" else model.admin_api.address
    return cluster_pb2.Cluster(
        name=ADMIN_CLUSTER,
        type=cluster_pb2.Cluster.DiscoveryType.STATIC,
        connect_timeout=seconds(model.limits.connect_timeout_s),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=ADMIN_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=address_pb2.Address(
                                    socket_address=address_pb2.SocketAddress(
                                        address=address, port_value=model.admin_api.port
                                    )
                                )
                            )
                        )
                    ]
                )
            ],
        ),
    )


def build_clusters(model: GatewayModel) -> list[cluster_pb2.Cluster]:
    head = [_unrouted_cluster(model)]
    if model.public_router_endpoints:
        head.append(_admin_cluster(model))
    return head + [_model_cluster(model, c) for c in model.clusters]
