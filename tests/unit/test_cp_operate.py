"""CSDS and the operator's tables, as pure functions of the control plane's state."""

from __future__ import annotations

from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2
from test_cp_stream_state import A, B, ack, request, snap, subscribed

from control_plane.cli.admin_client import admin_target
from control_plane.cli.tables import backends_table, status_table
from control_plane.config.schema import HostPort
from control_plane.xds.resource import CLUSTER, ENDPOINT, ROUTE
from control_plane.xds.server.csds import client_config, client_status

SYNCED, STALE, ERROR = (csds_pb2.ConfigStatus.SYNCED, csds_pb2.ConfigStatus.STALE,
                        csds_pb2.ConfigStatus.ERROR)  # fmt: skip


def by_type(cc: csds_pb2.ClientConfig) -> dict[str, list[csds_pb2.ClientConfig.GenericXdsConfig]]:
    out: dict[str, list[csds_pb2.ClientConfig.GenericXdsConfig]] = {}
    for g in cc.generic_xds_configs:
        out.setdefault(g.type_url, []).append(g)
    return out


def test_csds_synced_stream_lists_every_resource_with_contents_but_routes() -> None:
    s = snap((A, B))
    st, _ = subscribed(s)
    cc = client_config(st, s)
    assert cc.node.id == "envoy-1"
    types = by_type(cc)
    assert {g.name for g in types[CLUSTER]} == set(s.items(CLUSTER))
    assert all(g.config_status == SYNCED for gs in types.values() for g in gs)
    assert all(g.HasField("xds_config") for g in types[CLUSTER] + types[ENDPOINT])
    # Routes carry client API keys: named, never sent.
    assert [g.HasField("xds_config") for g in types[ROUTE]] == [False]
    assert all(g.version_info == s.version(g.type_url) for gs in types.values() for g in gs)


def test_csds_stale_after_a_new_snapshot_and_error_after_a_nack() -> None:
    s1 = snap((A,))
    st, _ = subscribed(s1)
    s2 = snap((A, B))
    pushed = st.on_snapshot(s2)
    cluster_push = next(r for r in pushed if r.type_url == CLUSTER)
    stale = by_type(client_config(st, s2))[CLUSTER]
    assert {g.config_status for g in stale} == {STALE}
    assert not any(g.HasField("xds_config") for g in stale)  # Envoy does not hold these
    # Envoy NACKs the push: ERROR, with its message and the refused version.
    request(st, s2, CLUSTER, s1.version(CLUSTER), cluster_push.nonce, error="bad cluster")
    errs = by_type(client_config(st, s2))[CLUSTER]
    assert {g.config_status for g in errs} == {ERROR}
    assert errs[0].error_state.details == "bad cluster"
    assert errs[0].error_state.version_info == s2.version(CLUSTER)
    assert errs[0].version_info == s1.version(CLUSTER)  # what Envoy still runs


def test_csds_node_matchers_and_excluded_contents() -> None:
    s = snap((A,))
    one, _ = subscribed(s)
    other, _ = subscribed(s)
    other.node_id = "envoy-2"
    exact = csds_pb2.ClientStatusRequest(
        node_matchers=[node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact="envoy-2"))]
    )
    assert [c.node.id for c in client_status([one, other], s, exact).config] == ["envoy-2"]
    bare = client_status([one], s, csds_pb2.ClientStatusRequest(exclude_resource_contents=True))
    assert not any(g.HasField("xds_config") for g in bare.config[0].generic_xds_configs)
    assert len(client_status([one, other], s, csds_pb2.ClientStatusRequest()).config) == 2


STATUS = {
    "versions": {"CDS": "36f19344aa", "EDS": "cb1b5fd1bb", "SDS": "", "LDS": "48232ae4",
                 "RDS": "94a2f385"},
    "last_refusal": None,
    "proxies": [
        {
            "node_id": "gateway",
            "peer": "ipv4:127.0.0.1:34196",
            "envoy_version": "1.40.0",
            "connected_at": 1000.0,
            "types": {
                "CDS": {"state": "SYNCED", "last_nack": None},
                "EDS": {"state": "ERROR", "last_nack": {"version": "cb1b5fd1bb", "at": 1030.0,
                                                        "message": "no such cluster"}},
                "LDS": {"state": "SYNCED", "last_nack": None},
                "RDS": {"state": "NOT_SENT", "last_nack": None},
            },
        }
    ],
}  # fmt: skip


def test_status_table() -> None:
    assert status_table(STATUS, now=1035.0) == (
        "NODE     PEER                  ENVOY   CDS     EDS    LDS     RDS       CONNECTED\n"
        "gateway  ipv4:127.0.0.1:34196  1.40.0  SYNCED  ERROR  SYNCED  NOT_SENT  35s ago\n"
        "snapshot: CDS 36f19344 EDS cb1b5fd1 LDS 48232ae4 RDS 94a2f385\n"
        "gateway EDS NACK of version cb1b5fd1 (5s ago): no such cluster"
    )
    assert status_table({"versions": {}, "proxies": []}).startswith("no Envoy connected")


def test_backends_table() -> None:
    row = {
        "endpoint": "127.0.0.1:8002",
        "models": ["openai/whisper-tiny.en"],
        "health": "HEALTHY",
        "probe": {"last_probe_at": 994.0, "last_latency_ms": 830.0, "last_error": None},
        "in_flight": 2.0,
        "window_s": 60.0,
        "window": {"requests": 3, "qps": 0.05, "latency_p50_s": 0.86, "latency_p99_s": 1.5,
                   "first_byte_p50_s": 0.8, "errors": {"timeout": 1, "connection_reset": 1}},
        "audio_seconds": 12.34,
    }  # fmt: skip
    down = {**row, "endpoint": "127.0.0.1:8003", "health": "UNHEALTHY", "in_flight": None,
            "probe": {"last_probe_at": 999.0, "last_latency_ms": None, "last_error": "refused"},
            "window": {"requests": 0, "qps": 0.0, "latency_p50_s": None, "latency_p99_s": None,
                       "first_byte_p50_s": None, "errors": {}}, "audio_seconds": 0.0}  # fmt: skip
    assert backends_table([row, down], now=1000.0) == (
        "ENDPOINT        MODELS                  HEALTH     LAST PROBE       IN FLIGHT  QPS   "
        "P50    P99    FIRST BYTE  ERRORS  AUDIO\n"
        "127.0.0.1:8002  openai/whisper-tiny.en  HEALTHY    ok 0.83s 6s ago  2          0.05  "
        "0.86s  1.50s  0.80s       2       12.3s\n"
        "127.0.0.1:8003  openai/whisper-tiny.en  UNHEALTHY  fail 1s ago      -          0.00  "
        "-      -      -           0       0.0s\n"
        "QPS, latency and errors over the last 60 s"
    )


def test_admin_target() -> None:
    assert admin_target(HostPort("127.0.0.1", 19000), None) == ("http://127.0.0.1:19000", None)
    assert admin_target(HostPort("0.0.0.0", 19000), None) == ("http://127.0.0.1:19000", None)
    assert admin_target(HostPort("::1", 19000), None) == ("http://[::1]:19000", None)
    sock = HostPort("127.0.0.1", 19000, "/run/gw/admin.sock")
    assert admin_target(sock, None) == ("http://localhost", "/run/gw/admin.sock")
    assert admin_target(sock, "http://10.0.0.1:9/") == ("http://10.0.0.1:9", None)
    assert admin_target(sock, "unix:/tmp/a.sock") == ("http://localhost", "/tmp/a.sock")
