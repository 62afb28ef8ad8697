"""A snapshot: the full set of xDS resources, versioned per type by content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format, message

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


def content_version(items: Mapping[str, message.Message]) -> str:
    """Same content, same version: an unchanged type is never re-sent."""
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(items[name].SerializeToString(deterministic=True))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TypeResources:
    version: str
    items: Mapping[str, message.Message]


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeResources] = field(default_factory=dict)

    def version(self, type_url: str) -> str:
        t = self.types.get(type_url)
        return t.version if t else ""

    def items(self, type_url: str) -> Mapping[str, message.Message]:
        t = self.types.get(type_url)
        return t.items if t else {}

    def select(self, type_url: str, names: Iterable[str]) -> list[message.Message]:
        """Full state for CDS/LDS (or an empty name list); the named subset otherwise."""
        items = self.items(type_url)
        wanted = frozenset(names)
        if type_url not in NAMED_TYPES or not wanted:
            return [items[n] for n in sorted(items)]
        return [items[n] for n in sorted(wanted) if n in items]

    def versions(self) -> dict[str, str]:
        return {SHORT_NAMES[t]: self.version(t) for t in PUSH_ORDER}


REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """Private keys, client API keys and injected Authorization headers masked: the
    admin API and files show what Envoy holds, never a secret."""
    if isinstance(value, list):
        return [redact(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "private_key":
            out[k] = REDACTED
        elif k == "credentials" and isinstance(v, list):
            out[k] = [{**c, "key": REDACTED} if isinstance(c, dict) else c for c in v]
        else:
            out[k] = redact(v)
    if str(out.get("key", "")).lower() in ("authorization", "x-api-key") and "value" in out:
        out["value"] = REDACTED
    return out


def snapshot_json(snap: Snapshot) -> dict[str, dict[str, object]]:
    """Every type's version and resources as JSON, secrets redacted (the admin API's
    /snapshot, golden files)."""
    return {
        SHORT_NAMES[t]: {
            "version": snap.version(t),
            "resources": [
                redact(json_format.MessageToDict(m, preserving_proto_field_name=True))
                for m in snap.select(t, [])
            ],
        }
        for t in PUSH_ORDER
    }


def make_snapshot(
    clusters: Iterable[message.Message],
    endpoints: Iterable[message.Message],
    listeners: Iterable[message.Message],
    routes: Iterable[message.Message],
    secrets: Iterable[message.Message] = (),
) -> Snapshot:
    types: dict[str, TypeResources] = {}
    for type_url, msgs in (
        (CLUSTER, clusters),
        (ENDPOINT, endpoints),
        (SECRET, secrets),
        (LISTENER, listeners),
        (ROUTE, routes),
    ):
        items = {resource_name(m): m for m in msgs}
        types[type_url] = TypeResources(content_version(items), items)
    return Snapshot(types)


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
