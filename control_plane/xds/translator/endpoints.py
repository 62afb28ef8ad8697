"""EDS: one ClusterLoadAssignment per model cluster, health from our probes."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from control_plane.ir.model import EndpointHealth, GatewayModel
from control_plane.names import SNI_KEY, TRANSPORT_SOCKET_MATCH
from control_plane.xds.translator.common import tls_host

_HEALTH = {
    # UNKNOWN must not be Envoy's UNKNOWN: Envoy treats that as healthy, and a
    # backend gets no traffic before its first probe passes.
    EndpointHealth.UNKNOWN: health_check_pb2.HealthStatus.UNHEALTHY,
    EndpointHealth.HEALTHY: health_check_pb2.HealthStatus.HEALTHY,
    EndpointHealth.UNHEALTHY: health_check_pb2.HealthStatus.UNHEALTHY,
    EndpointHealth.DRAINING: health_check_pb2.HealthStatus.DRAINING,
}


def _sni(backend_url: str) -> base_pb2.Metadata:
    """Picks the cluster's transport socket for this backend's host (clusters.py)."""
    meta = base_pb2.Metadata()
    meta.filter_metadata[TRANSPORT_SOCKET_MATCH].update({SNI_KEY: tls_host(backend_url)})
    return meta


def build_load_assignments(model: GatewayModel) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out = []
    for cluster in model.clusters:
        lb_endpoints = [
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(
                            address=ep.address, port_value=ep.port
                        )
                    ),
                    hostname=ep.key,
                ),
                health_status=_HEALTH[ep.health],
                metadata=_sni(ep.backend_url) if cluster.tls else None,
            )
            for ep in cluster.endpoints
        ]
        out.append(
            endpoint_pb2.ClusterLoadAssignment(
                cluster_name=cluster.cluster_name,
                endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
            )
        )
    return out
