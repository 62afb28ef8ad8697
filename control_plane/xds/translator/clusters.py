"""CDS: one EDS cluster per model, plus the never-used catch-all cluster."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from control_plane.config.sockets import is_ip
from control_plane.ir.model import GatewayModel, Listen, ModelCluster, UpstreamTls
from control_plane.names import ADMIN_CLUSTER, SNI_KEY, SPLITTER_CLUSTER, UNROUTED_CLUSTER
from control_plane.xds.translator.common import ads_source, any_of, seconds, tls_host

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
                    # Retries in flight stay within 20 % of active requests, but never
                    # below twice what one backend holds (its per-host limit): every
                    # request a single crash resets is resent, with room for the
                    # connections Envoy had opening to it (a bench run saw 6 resets
                    # on a 4-request host); a burst of crashes cannot double the load.
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=20.0),
                        min_retry_concurrency=u32(value=max(3, 2 * c.max_concurrency_per_host)),
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
        # One transport socket per backend host, picked by the endpoint's metadata
        # (endpoints.py): each gets its own SNI and its certificate checked against it.
        cluster.transport_socket.CopyFrom(upstream_tls(model.security.upstream_tls, None))
        for host in sorted({tls_host(ep.backend_url) for ep in c.endpoints}):
            cluster.transport_socket_matches.append(
                cluster_pb2.Cluster.TransportSocketMatch(
                    name=f"sni:{host}",
                    match=_struct({SNI_KEY: host}),
                    transport_socket=upstream_tls(model.security.upstream_tls, host),
                )
            )
    return cluster


#: The system's roots (Debian, Ubuntu, Alpine and our images), read by Envoy.
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def upstream_tls(tls: UpstreamTls, sni: str | None) -> base_pb2.TransportSocket:
    """TLS to an https backend: its host name as SNI and as the name its certificate
    must carry, the configured CA (else the system's roots, SYSTEM_CA), an optional client cert."""
    # SNI carries names only (RFC 6066); an address is still checked as an IP SAN.
    ctx = tls_pb2.UpstreamTlsContext(sni=sni if sni and not is_ip(sni) else "")
    common = ctx.common_tls_context
    common.alpn_protocols.append("http/1.1")
    if tls.ca_pem is not None:
        common.validation_context.trusted_ca.inline_bytes = tls.ca_pem
    else:
        common.validation_context.trusted_ca.filename = SYSTEM_CA
    if sni is not None:
        san = common_pb2.SubjectAltNameMatcher.SanType
        common.validation_context.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=san.IP_ADDRESS if is_ip(sni) else san.DNS,
                matcher=string_pb2.StringMatcher(exact=sni),
            )
        )
    if tls.cert_pem is not None and tls.key_pem is not None:
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=tls.cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=tls.key_pem),
            )
        )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=any_of(ctx))


def _struct(value: dict[str, str]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _unrouted_cluster(model: GatewayModel) -> cluster_pb2.Cluster:
    """Target of the route matched before Lua runs; Lua always re-routes or replies."""
    return cluster_pb2.Cluster(
        name=UNROUTED_CLUSTER,
        type=cluster_pb2.Cluster.DiscoveryType.STATIC,
        connect_timeout=seconds(model.limits.connect_timeout_s),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=UNROUTED_CLUSTER),
    )


def _admin_address(api: Listen) -> address_pb2.Address:
    """Where Envoy reaches the admin API: its Unix socket, else its address and port."""
    if api.unix_socket is not None:
        return address_pb2.Address(pipe=address_pb2.Pipe(path=api.unix_socket))
    address = "127.0.0.1" if api.address == "0.0.0.0" else api.address
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=api.port)
    )


def _static_cluster(model: GatewayModel, name: str, api: Listen) -> cluster_pb2.Cluster:
    """One of the gateway's own services: the control plane's admin API (the router's
    /metrics and /engines) or the long-audio splitter."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.DiscoveryType.STATIC,
        connect_timeout=seconds(model.limits.connect_timeout_s),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_admin_address(api))
                        )
                    ]
                )
            ],
        ),
    )


def build_clusters(model: GatewayModel) -> list[cluster_pb2.Cluster]:
    head = [_unrouted_cluster(model)]
    if model.public_router_endpoints:
        head.append(_static_cluster(model, ADMIN_CLUSTER, model.admin_api))
    if model.long_audio is not None:
        head.append(_static_cluster(model, SPLITTER_CLUSTER, model.long_audio.splitter))
    return head + [_model_cluster(model, c) for c in model.clusters]
