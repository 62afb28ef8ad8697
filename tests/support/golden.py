"""Golden snapshots: a case folder in, the full snapshot as JSON out, and a static
Envoy bootstrap made from it so the real Envoy can validate what we would push."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from control_plane.admin.redact import snapshot_json
from control_plane.config.parse import load_config, parse_config
from control_plane.ir.fleet import fixed_addresses
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth, HealthKey, build_model
from control_plane.ir.security import load_security
from control_plane.xds.bootstrap import build_bootstrap
from control_plane.xds.cache.consistency import merge_for_removal
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
)
from control_plane.xds.translator import load_lua_template, translate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def cases() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "config.yaml").is_file())


def _snapshot(config_path: Path, state: dict[str, Any]) -> Snapshot:
    config = load_config(config_path)
    spec = spec_from_config(config)
    # Backend keys come from the environment; a case names its own in state.yaml.
    with mock.patch.dict(os.environ, state.get("env") or {}):
        security = load_security(config)
    given = {url: tuple(a) for url, a in (state.get("resolved") or {}).items()}
    resolved = {**fixed_addresses(spec), **given}
    health: dict[HealthKey, EndpointHealth] = {}
    for line in state.get("health") or []:
        endpoint, model, status = line.split()
        health[(endpoint, model)] = EndpointHealth(status)
    model = build_model(spec, resolved, health, frozenset(state.get("draining") or ()), security)
    return translate(model, load_lua_template())


def case_snapshot(case: str) -> Snapshot:
    """config.yaml with state.yaml (addresses, health lines, drains); with before.yaml,
    the first of the two pushes that remove what before.yaml had."""
    folder = GOLDEN / case
    state_file = folder / "state.yaml"
    state = yaml.safe_load(state_file.read_text()) if state_file.is_file() else {}
    snap = _snapshot(folder / "config.yaml", state or {})
    if (folder / "before.yaml").is_file():
        before = _snapshot(folder / "before.yaml", state or {})
        first = merge_for_removal(before, snap)
        assert first is not None, f"{case}: before.yaml removes no cluster"
        return first
    return snap


def to_json(snap: Snapshot) -> dict[str, Any]:
    return snapshot_json(snap)


def static_bootstrap(snap: Snapshot) -> dict[str, Any]:
    """The snapshot as static resources: EDS clusters carry their endpoints, the
    listener carries its routes, so `envoy --mode validate` checks every field."""
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = "golden"
    boot.node.cluster = "golden"
    addr = boot.admin.address.socket_address
    addr.address, addr.port_value = "127.0.0.1", 0
    for c in snap.select(CLUSTER, []):
        assert isinstance(c, cluster_pb2.Cluster)
        static = boot.static_resources.clusters.add()
        static.CopyFrom(c)
        if c.type == cluster_pb2.Cluster.DiscoveryType.EDS:
            cla = snap.items(ENDPOINT)[c.eds_cluster_config.service_name or c.name]
            assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
            static.ClearField("eds_cluster_config")
            static.type = cluster_pb2.Cluster.DiscoveryType.STATIC
            static.load_assignment.CopyFrom(cla)
    # The access log service is reached through the bootstrap's own xDS cluster.
    xds = build_bootstrap(
        parse_config({"backends": [{"url": "http://127.0.0.1:1", "models": ["m"]}]})
    )
    json_format.ParseDict(
        xds["static_resources"]["clusters"][0], boot.static_resources.clusters.add()
    )
    routes = snap.items(ROUTE)
    for lst in snap.select(LISTENER, []):
        static_lst = boot.static_resources.listeners.add()
        static_lst.CopyFrom(lst)
        for chain in static_lst.filter_chains:
            for f in chain.filters:
                manager = hcm.HttpConnectionManager()
                if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                    manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                    manager.ClearField("rds")
                    f.typed_config.Pack(manager)
            tls = tls_pb2.DownstreamTlsContext()
            if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(
                tls
            ):
                # SDS over ADS becomes a static secret of the same name.
                for sds in tls.common_tls_context.tls_certificate_sds_secret_configs:
                    sds.ClearField("sds_config")
                chain.transport_socket.typed_config.Pack(tls)
    for secret in snap.select(SECRET, []):
        boot.static_resources.secrets.add().CopyFrom(secret)
    return json_format.MessageToDict(boot, preserving_proto_field_name=True)


def write_case(case: str) -> None:
    path = GOLDEN / case / "snapshot.json"
    path.write_text(json.dumps(to_json(case_snapshot(case)), indent=1, sort_keys=True) + "\n")


__all__ = ["GOLDEN", "case_snapshot", "cases", "static_bootstrap", "to_json"]
