"""What a snapshot must satisfy before it is published (its references close), and the
first of the two pushes that remove clusters (docs/architecture.md, xDS rules 9 and 11)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control_plane.xds.cache.snapshot import Snapshot, make_snapshot
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET


def consistency_errors(snap: Snapshot) -> list[str]:
    """Rule 11: every reference must close before a snapshot is published."""
    errors: list[str] = []
    clusters = snap.items(CLUSTER)
    endpoints = snap.items(ENDPOINT)
    routes = snap.items(ROUTE)
    for name, c in clusters.items():
        assert isinstance(c, cluster_pb2.Cluster)
        if c.type == cluster_pb2.Cluster.DiscoveryType.EDS:
            eds_name = c.eds_cluster_config.service_name or name
            if eds_name not in endpoints:
                errors.append(f"cluster {name!r} has no endpoints resource {eds_name!r}")
    for name, lst in snap.items(LISTENER).items():
        assert isinstance(lst, listener_pb2.Listener)
        for chain in lst.filter_chains:
            tls = tls_pb2.DownstreamTlsContext()
            if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(
                tls
            ):
                for sds in tls.common_tls_context.tls_certificate_sds_secret_configs:
                    if sds.name not in snap.items(SECRET):
                        errors.append(f"listener {name!r} refers to missing secret {sds.name!r}")
            for f in chain.filters:
                manager = hcm.HttpConnectionManager()
                if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                    rds_name = manager.rds.route_config_name
                    if rds_name not in routes:
                        errors.append(f"listener {name!r} refers to missing routes {rds_name!r}")
    for name, rcfg in routes.items():
        assert isinstance(rcfg, route_pb2.RouteConfiguration)
        for vh in rcfg.virtual_hosts:
            for r in vh.routes:
                if r.HasField("route") and r.route.cluster and r.route.cluster not in clusters:
                    errors.append(
                        f"route {r.name!r} in {name!r} refers to unknown cluster "
                        f"{r.route.cluster!r}"
                    )
    return errors


def merge_for_removal(old: Snapshot, new: Snapshot) -> Snapshot | None:
    """Rule 9: the first of two pushes when clusters go away.

    New routes and listeners, but the old clusters (and their endpoints) kept,
    so nothing routes to a cluster Envoy has already dropped. None when no
    cluster is removed.
    """
    removed = set(old.items(CLUSTER)) - set(new.items(CLUSTER))
    if not removed:
        return None
    clusters = {**old.items(CLUSTER), **new.items(CLUSTER)}
    endpoints = {**old.items(ENDPOINT), **new.items(ENDPOINT)}
    return make_snapshot(
        clusters.values(),
        endpoints.values(),
        new.items(LISTENER).values(),
        new.items(ROUTE).values(),
        new.items(SECRET).values(),
    )
