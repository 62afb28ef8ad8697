"""Snapshots: consistency (rule 11), the cache keeping the last good one, removal pushes."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from control_plane.config.parse import parse_config
from control_plane.ir.model import EndpointHealth
from control_plane.names import ROUTE_CONFIG_NAME, cluster_name
from control_plane.xds.cache.consistency import consistency_errors, merge_for_removal
from control_plane.xds.cache.snapshot import Snapshot, make_snapshot
from control_plane.xds.cache.snapshot_cache import SnapshotCache
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.translator import load_lua_template, translate
from testkit.snapshots import A, B, model_from, snap


def parts(s: Snapshot) -> dict[str, list[Any]]:
    return {t: list(s.items(t).values()) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}


def test_built_snapshot_is_consistent() -> None:
    assert consistency_errors(snap()) == []


def test_cluster_without_endpoints() -> None:
    p = parts(snap())
    p[ENDPOINT] = [e for e in p[ENDPOINT] if e.cluster_name != cluster_name(B)]
    errors = consistency_errors(make_snapshot(p[CLUSTER], p[ENDPOINT], p[LISTENER], p[ROUTE]))
    assert len(errors) == 1
    assert cluster_name(B) in errors[0] and "no endpoints" in errors[0]


def test_eds_service_name_is_what_counts() -> None:
    p = parts(snap((A,)))
    c = cluster_pb2.Cluster()
    c.CopyFrom(p[CLUSTER][1])
    c.eds_cluster_config.service_name = "elsewhere"
    p[CLUSTER][1] = c
    errors = consistency_errors(make_snapshot(p[CLUSTER], p[ENDPOINT], p[LISTENER], p[ROUTE]))
    assert errors and "'elsewhere'" in errors[0]
    p[ENDPOINT].append(endpoint_pb2.ClusterLoadAssignment(cluster_name="elsewhere"))
    s = make_snapshot(p[CLUSTER], p[ENDPOINT], p[LISTENER], p[ROUTE])
    assert consistency_errors(s) == []


def test_listener_without_its_routes() -> None:
    p = parts(snap())
    errors = consistency_errors(make_snapshot(p[CLUSTER], p[ENDPOINT], p[LISTENER], []))
    assert len(errors) == 1
    assert "missing routes" in errors[0] and ROUTE_CONFIG_NAME in errors[0]


def test_route_to_unknown_cluster() -> None:
    p = parts(snap())
    clusters = [c for c in p[CLUSTER] if c.name != cluster_name(B)]
    errors = consistency_errors(make_snapshot(clusters, p[ENDPOINT], p[LISTENER], p[ROUTE]))
    assert len(errors) == 2  # B's two routes (plain and :convert)
    assert all(f"model:{B}" in e and "unknown cluster" in e for e in errors)


def test_cache_refuses_and_keeps_last_good() -> None:
    cache = SnapshotCache()
    good = snap()
    assert cache.set(good)
    assert cache.snapshot is good and cache.generation == 1
    assert cache.last_refusal is None
    ev = cache.subscribe()
    p = parts(snap((A, B, "model-c")))
    bad = make_snapshot(p[CLUSTER], p[ENDPOINT], p[LISTENER], [])
    assert not cache.set(bad)
    assert cache.snapshot is good
    assert cache.generation == 1
    assert not ev.is_set()
    assert cache.last_refusal is not None
    assert any("missing routes" in e for e in cache.last_refusal.errors)


def test_cache_first_snapshot_refused_leaves_none() -> None:
    cache = SnapshotCache()
    p = parts(snap())
    assert not cache.set(make_snapshot([], p[ENDPOINT], p[LISTENER], p[ROUTE]))
    assert cache.snapshot is None


def test_cache_wakes_subscribers_only_on_change() -> None:
    cache = SnapshotCache()
    ev = cache.subscribe()
    assert cache.set(snap())
    assert ev.is_set()
    ev.clear()
    assert cache.set(snap())  # same content, same versions
    assert not ev.is_set()
    assert cache.generation == 1
    assert cache.set(snap(healthy=False))
    assert ev.is_set() and cache.generation == 2
    cache.unsubscribe(ev)
    ev.clear()
    assert cache.set(snap())
    assert not ev.is_set()


def test_merge_for_removal_keeps_removed_clusters_first() -> None:
    old, new = snap((A, B)), snap((A,))
    assert set(new.items(CLUSTER)) < set(old.items(CLUSTER))
    first = merge_for_removal(old, new)
    assert first is not None
    assert set(first.items(CLUSTER)) == set(old.items(CLUSTER))
    assert set(first.items(ENDPOINT)) == set(old.items(ENDPOINT))
    # Routes and listeners are the new ones: nothing routes to B any more.
    assert first.version(ROUTE) == new.version(ROUTE)
    assert first.version(LISTENER) == new.version(LISTENER)
    assert consistency_errors(first) == []
    # The second push is `new` itself, also consistent.
    assert consistency_errors(new) == []


def test_merge_for_removal_none_when_nothing_removed() -> None:
    assert merge_for_removal(snap((A,)), snap((A, B))) is None
    assert merge_for_removal(snap(), snap(healthy=False)) is None


def test_select_full_state_and_named_subset() -> None:
    s = snap()
    all_clusters = s.select(CLUSTER, [])
    assert len(all_clusters) == 3
    # CDS and LDS ignore names: always full state.
    assert len(s.select(CLUSTER, [cluster_name(A)])) == 3
    assert len(s.select(LISTENER, ["whatever"])) == 1
    eds = s.select(ENDPOINT, [cluster_name(B), "not-there"])
    assert [e.cluster_name for e in eds] == [cluster_name(B)]
    assert len(s.select(ENDPOINT, [])) == 2
    assert [r.name for r in s.select(ROUTE, [ROUTE_CONFIG_NAME])] == [ROUTE_CONFIG_NAME]
    assert s.select(ROUTE, ["other"]) == []


def test_versions_and_empty_snapshot() -> None:
    s = snap()
    v = s.versions()
    assert list(v) == ["CDS", "EDS", "SDS", "LDS", "RDS"]
    assert Snapshot().versions() == {"CDS": "", "EDS": "", "SDS": "", "LDS": "", "RDS": ""}
    assert Snapshot().select(CLUSTER, []) == []
