"""Golden snapshots: a case folder in, the full snapshot as JSON out, and a static
Envoy bootstrap made from it so the real Envoy can validate what we would push."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import types
import typing
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

# Registers HttpProtocolOptions for json_format (the static bootstrap parses it).
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from control_plane.admin.redact import snapshot_json
from control_plane.config.parse import load_config, parse_config
from control_plane.ir.fleet import FleetState, fixed_addresses
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth, GatewayModel, HealthKey
from control_plane.ir.security import load_security
from control_plane.xds.bootstrap import build_bootstrap
from control_plane.xds.cache.consistency import merge_for_removal
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
)
from control_plane.xds.translator import load_lua_template, snapshot_of, translate

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"
#: One expected file per xDS type, named as CSDS and /snapshot name the types.
TYPE_FILES = {short: f"{short.lower()}.json" for short in SHORT_NAMES.values()}
_LUA_HEAD = "-- whisper-gateway"


def cases() -> list[str]:
    """`config/<name>` (config.yaml in) and `ir/<name>` (model.yaml, the translators'
    own input, in)."""
    found = [f"config/{p.parent.name}" for p in GOLDEN.glob("config/*/config.yaml")]
    found += [f"ir/{p.parent.name}" for p in GOLDEN.glob("ir/*/model.yaml")]
    return sorted(found)


def _state(config_path: Path, state: dict[str, Any]) -> FleetState:
    config = load_config(config_path)
    spec = spec_from_config(config)
    # Backend keys come from the environment; a case names its own in state.yaml.
    with mock.patch.dict(os.environ, state.get("env") or {}):
        security = load_security(config)
    given = {url: tuple(a) for url, a in (state.get("resolved") or {}).items()}
    health: dict[HealthKey, EndpointHealth] = {}
    for line in state.get("health") or []:
        endpoint, model, status = line.split()
        health[(endpoint, model)] = EndpointHealth(status)
    return FleetState(
        spec,
        resolved={**fixed_addresses(spec), **given},
        health=health,
        draining=frozenset(state.get("draining") or ()),
        security=security,
    )


def case_snapshot(case: str) -> Snapshot:
    """config/: config.yaml with state.yaml (addresses, health lines, drains) through the
    reconciler's own pipeline (snapshot_of); with before.yaml, the first of the two
    pushes that remove what before.yaml had. ir/: model.yaml (a GatewayModel) through
    the translator alone."""
    folder = GOLDEN / case
    lua = load_lua_template()
    if case.startswith("ir/"):
        data = yaml.safe_load((folder / "model.yaml").read_text())
        return translate(from_plain(GatewayModel, data), lua)
    state_file = folder / "state.yaml"
    state = (yaml.safe_load(state_file.read_text()) if state_file.is_file() else None) or {}
    snap = snapshot_of(_state(folder / "config.yaml", state), lua)
    if (folder / "before.yaml").is_file():
        before = snapshot_of(_state(folder / "before.yaml", state), lua)
        first = merge_for_removal(before, snap)
        assert first is not None, f"{case}: before.yaml removes no cluster"
        return first
    return snap


def lua_digest(source: str) -> str:
    data = source.encode()
    return f"<lua source: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}>"


def _digest_lua(value: Any) -> Any:
    """The filters' source as its digest: the Lua has tests of its own, and an edit of
    it should not rewrite every golden."""
    if isinstance(value, dict):
        return {k: _digest_lua(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_digest_lua(v) for v in value]
    if isinstance(value, str) and value.startswith(_LUA_HEAD):
        return lua_digest(value)
    return value


def to_json(snap: Snapshot) -> dict[str, Any]:
    """Per xDS type (CDS, EDS, ...): its version and resources, secrets redacted and the
    Lua source digested. The RDS version hashes the real source, so it is left out."""
    out = _digest_lua(snapshot_json(snap))
    out["RDS"] = {k: v for k, v in out["RDS"].items() if k != "version"}
    return dict(json.loads(json.dumps(out, sort_keys=True)))


def read_case(case: str) -> dict[str, Any]:
    folder = GOLDEN / case
    return {short: json.loads((folder / name).read_text()) for short, name in TYPE_FILES.items()}


def write_case(case: str) -> None:
    folder = GOLDEN / case
    for short, doc in to_json(case_snapshot(case)).items():
        (folder / TYPE_FILES[short]).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


_NONE = type(None)


def from_plain(cls: Any, data: Any) -> Any:
    """A frozen dataclass tree (the IR) from YAML's plain values, by the field types:
    dataclasses, tuples, unions with None, enums, bytes (as text) and scalars."""
    origin = typing.get_origin(cls)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(cls) if a is not _NONE]
        return None if data is None else from_plain(inner, data)
    if origin is tuple:
        args = typing.get_args(cls)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], d) for d in data)
        return tuple(from_plain(a, d) for a, d in zip(args, data, strict=True))
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        unknown = set(data) - set(hints)
        assert not unknown, f"{cls.__name__}: no field {sorted(unknown)}"
        return cls(**{k: from_plain(hints[k], v) for k, v in data.items()})
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return cls(data)
    if cls is bytes:
        return data.encode()
    if cls is float:
        return float(data)
    return data


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


__all__ = [
    "GOLDEN",
    "case_snapshot",
    "cases",
    "from_plain",
    "read_case",
    "static_bootstrap",
    "to_json",
    "write_case",
]
