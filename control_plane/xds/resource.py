"""xDS resource types: their type URLs, the order of a push, their short names, and
which are asked for by name."""

from __future__ import annotations

from google.protobuf import message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


# Rule 9: within one push, clusters, endpoints and secrets go before what refers to them.
PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)


SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", SECRET: "SDS", LISTENER: "LDS", ROUTE: "RDS"}


# Rule 8: CDS and LDS are full state; EDS, SDS and RDS answer the names requested.
NAMED_TYPES = frozenset({ENDPOINT, SECRET, ROUTE})


def resource_name(msg: message.Message) -> str:
    name = getattr(msg, "cluster_name", "") or getattr(msg, "name", "")
    return str(name)
