"""The ADS protocol rules (docs/architecture.md, xDS rules 1-9) against StreamState alone."""

from __future__ import annotations

from typing import Any

from control_plane.names import ROUTE_CONFIG_NAME, cluster_name
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.server.stream_state import Response, StreamState, SyncState
from testkit.snapshots import snap as support_snap

A, B = "model-a", "model-b"


def snap(models: tuple[str, ...] = (A,), **kw: Any) -> Snapshot:
    """Protocol tests start from one model."""
    return support_snap(models, **kw)


ALL = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def names_for(type_url: str, models: tuple[str, ...] = (A,)) -> list[str]:
    if type_url == ENDPOINT:
        return [cluster_name(m) for m in models]
    if type_url == ROUTE:
        return [ROUTE_CONFIG_NAME]
    return []


def request(
    st: StreamState,
    s: Snapshot | None,
    type_url: str,
    version: str = "",
    nonce: str = "",
    names: list[str] | None = None,
    error: str | None = None,
    node_id: str = "",
) -> Response | None:
    return st.on_request(
        s,
        type_url,
        version,
        nonce,
        names_for(type_url) if names is None else names,
        error,
        node_id=node_id,
    )


def ack(st: StreamState, s: Snapshot | None, r: Response, **kw: Any) -> Response | None:
    return request(st, s, r.type_url, r.version, r.nonce, **kw)


def subscribed(s: Snapshot) -> tuple[StreamState, dict[str, Response]]:
    """A stream that subscribed to all four types, like Envoy, and ACKed each."""
    st = StreamState(peer="test")
    sent: dict[str, Response] = {}
    for i, t in enumerate(ALL):
        r = request(st, s, t, node_id="envoy-1" if i == 0 else "")
        assert r is not None
        assert ack(st, s, r) is None
        sent[t] = r
    return st, sent


def test_rule1_fresh_nonce_per_response_per_stream() -> None:
    s1, s2 = snap(), snap(healthy=False)
    st, sent = subscribed(s1)
    pushed = st.on_snapshot(s2)
    _, other_sent = subscribed(s1)
    nonces = [r.nonce for r in sent.values()] + [r.nonce for r in pushed]
    assert all(nonces)
    assert len(set(nonces)) == len(nonces)
    assert not set(nonces) & {r.nonce for r in other_sent.values()}


def test_rule2_node_from_first_request_only() -> None:
    st = StreamState()
    s = snap()
    request(st, s, CLUSTER, node_id="envoy-1")
    request(st, s, ENDPOINT, node_id="envoy-2")
    assert st.node_id == "envoy-1"


def test_rule3_unchanged_type_not_resent() -> None:
    s = snap()
    st, sent = subscribed(s)
    assert st.on_snapshot(s) == []
    assert st.on_snapshot(snap()) == []  # rebuilt, same content
    # A request repeating the ACK gets nothing.
    assert ack(st, s, sent[LISTENER]) is None


def test_rule3_health_flip_pushes_only_eds() -> None:
    st, sent = subscribed(snap((A, B)))
    flipped = snap((A, B), healthy=(False, True))
    pushed = st.on_snapshot(flipped)
    assert [r.type_url for r in pushed] == [ENDPOINT]
    assert pushed[0].version == flipped.version(ENDPOINT) != sent[ENDPOINT].version


def test_rule3_last_healthy_backend_gone_also_changes_health_route() -> None:
    """The one exception: GET /health is answered by Envoy from RDS, so when no model
    has a healthy backend left (or the first comes back) the routes change too."""
    st, _ = subscribed(snap())
    pushed = st.on_snapshot(snap(healthy=False))
    assert [r.type_url for r in pushed] == [ENDPOINT, ROUTE]


def test_rule4_nack_recorded_and_not_resent() -> None:
    s = snap()
    st = StreamState()
    r = request(st, s, CLUSTER)
    assert r is not None
    assert ack(st, s, r, error="bad cluster") is None  # same content: not again
    t = st.types[CLUSTER]
    assert t.last_nack is not None
    assert (t.last_nack.message, t.last_nack.nonce, t.last_nack.version) == (
        "bad cluster",
        r.nonce,
        r.version,
    )
    assert t.nack_count == 1 and t.ack_count == 0
    assert t.acked_version == ""
    assert st.on_snapshot(s) == []
    assert st.on_snapshot(snap()) == []
    assert t.sync_state(s.version(CLUSTER)) is SyncState.ERROR


def test_rule4_new_content_after_nack_is_sent() -> None:
    s = snap()
    st = StreamState()
    r = request(st, s, CLUSTER)
    assert r is not None
    assert ack(st, s, r, error="bad") is None
    fixed = snap(policy="round_robin")
    pushed = st.on_snapshot(fixed)
    assert [p.type_url for p in pushed] == [CLUSTER]
    assert pushed[0].version == fixed.version(CLUSTER)
    assert ack(st, fixed, pushed[0]) is None
    assert st.types[CLUSTER].sync_state(fixed.version(CLUSTER)) is SyncState.SYNCED


def test_rule4_nack_answered_when_content_changed_meanwhile() -> None:
    s = snap()
    st = StreamState()
    r = request(st, s, CLUSTER)
    assert r is not None
    fixed = snap(policy="round_robin")
    resp = ack(st, fixed, r, error="bad")  # the cache moved on before the NACK came
    assert resp is not None and resp.version == fixed.version(CLUSTER)


def test_rule5_stale_nonce_ignored_and_counted() -> None:
    s = snap()
    st = StreamState()
    first = request(st, s, CLUSTER)
    assert first is not None
    pushed = st.on_snapshot(snap(policy="round_robin"))
    assert len(pushed) == 1
    # Envoy's ACK of the first response crosses our push: stale.
    assert ack(st, s, first) is None
    assert ack(st, s, first, error="late nack") is None
    assert request(st, s, CLUSTER, "v", "no-such-nonce") is None
    t = st.types[CLUSTER]
    assert t.stale_ignored == 3
    assert t.ack_count == 0 and t.last_nack is None
    assert t.acked_nonce == ""


def test_rule6_first_request_answered_on_reconnect() -> None:
    s = snap()
    _, sent = subscribed(s)
    new = StreamState()  # the reconnect: old versions, empty nonce
    for t in ALL:
        r = request(new, s, t, version=sent[t].version)
        assert r is not None, t
        assert r.version == sent[t].version
        assert r.nonce != sent[t].nonce
        assert ack(new, s, r) is None


def test_rule6_first_request_before_any_snapshot() -> None:
    st = StreamState()
    assert request(st, None, CLUSTER) is None
    s = snap()
    pushed = st.on_snapshot(s)
    assert [r.type_url for r in pushed] == [CLUSTER]


def test_rule7_eds_after_cds_answered_even_if_unchanged() -> None:
    s = snap()
    st, sent = subscribed(s)
    cds_only = snap(policy="round_robin")
    pushed = st.on_snapshot(cds_only)
    assert [r.type_url for r in pushed] == [CLUSTER]
    assert cds_only.version(ENDPOINT) == s.version(ENDPOINT)
    # Envoy re-requests EDS with what looks like a duplicate ACK.
    r = ack(st, cds_only, sent[ENDPOINT])
    assert r is not None and r.type_url == ENDPOINT
    assert r.version == sent[ENDPOINT].version
    # Once: the ACK of that answer is not answered again.
    assert ack(st, cds_only, r) is None
    assert ack(st, cds_only, pushed[0]) is None


def test_rule7_rds_after_lds_answered_even_if_unchanged() -> None:
    s = snap()
    st, sent = subscribed(s)
    lds_only = snap(port=8100)
    pushed = st.on_snapshot(lds_only)
    assert [r.type_url for r in pushed] == [LISTENER]
    r = ack(st, lds_only, sent[ROUTE])
    assert r is not None and r.type_url == ROUTE
    assert [x.name for x in r.resources] == [ROUTE_CONFIG_NAME]
    assert ack(st, lds_only, r) is None


def test_rule8_eds_answers_requested_names_only() -> None:
    s = snap((A, B))
    st = StreamState()
    r = request(st, s, ENDPOINT, names=[cluster_name(B)])
    assert r is not None
    assert [x.cluster_name for x in r.resources] == [cluster_name(B)]
    # New names on the same nonce: answered with the new subset.
    r2 = ack(st, s, r, names=[cluster_name(A), cluster_name(B)])
    assert r2 is not None
    assert sorted(x.cluster_name for x in r2.resources) == sorted(
        [cluster_name(A), cluster_name(B)]
    )
    # CDS is full state whatever the names.
    c = request(st, s, CLUSTER, names=[cluster_name(A)])
    assert c is not None and len(c.resources) == 3


def test_rule8_missing_name_sent_once_it_appears() -> None:
    s = snap((A,))
    st = StreamState()
    r = request(st, s, ENDPOINT, names=[cluster_name(A), cluster_name(B)])
    assert r is not None
    assert [x.cluster_name for x in r.resources] == [cluster_name(A)]
    assert ack(st, s, r, names=[cluster_name(A), cluster_name(B)]) is None
    assert st.types[ENDPOINT].names == {cluster_name(A), cluster_name(B)}
    grown = snap((A, B))
    pushed = st.on_snapshot(grown)
    eds = [p for p in pushed if p.type_url == ENDPOINT]
    assert len(eds) == 1
    assert sorted(x.cluster_name for x in eds[0].resources) == sorted(
        [cluster_name(A), cluster_name(B)]
    )


def test_rule9_push_order() -> None:
    st, _ = subscribed(snap((A,)))
    pushed = st.on_snapshot(snap((A, B), port=8100))
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_unsubscribed_types_not_pushed() -> None:
    st = StreamState()
    s = snap()
    r = request(st, s, CLUSTER)
    assert r is not None
    assert [p.type_url for p in st.on_snapshot(snap((A, B)))] == [CLUSTER]


def test_sync_state_lifecycle() -> None:
    s = snap()
    st = StreamState()
    t = st.type_state(CLUSTER)
    assert t.sync_state(s.version(CLUSTER)) is SyncState.NOT_SENT
    r = request(st, s, CLUSTER)
    assert r is not None
    assert t.sync_state(s.version(CLUSTER)) is SyncState.STALE
    assert ack(st, s, r) is None
    assert t.sync_state(s.version(CLUSTER)) is SyncState.SYNCED
    s2 = snap(policy="round_robin")
    assert t.sync_state(s2.version(CLUSTER)) is SyncState.STALE  # the cache moved on
    (p,) = st.on_snapshot(s2)
    assert t.sync_state(s2.version(CLUSTER)) is SyncState.STALE  # sent, not ACKed
    assert ack(st, s2, p, error="no") is None
    assert t.sync_state(s2.version(CLUSTER)) is SyncState.ERROR
    d = st.to_dict(s2)
    assert d["types"]["CDS"]["state"] == "ERROR"
    assert d["types"]["CDS"]["last_nack"]["message"] == "no"
    assert d["types"]["EDS"]["state"] == "NOT_SENT"
    assert d["types"]["CDS"]["acked"]["version"] == s.version(CLUSTER)


def test_request_racing_a_push_is_answered_after_earlier_types() -> None:
    """An RDS ACK processed after a snapshot change but before its push must not
    carry new routes ahead of the clusters they name (rule 9)."""
    s1 = snap((A, B))
    st, sent = subscribed(s1)
    s2 = snap((A, B, "model-c"))
    r = ack(st, s2, sent[ROUTE])
    assert r is not None and r.type_url == ROUTE
    ahead = st.flush_before(s2, ROUTE)
    assert [x.type_url for x in ahead] == [CLUSTER, ENDPOINT]
    assert st.on_snapshot(s2) == []  # nothing left for the push
