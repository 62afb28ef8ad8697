"""The operator's commands against a running gateway: `status`, `backends`, CSDS.

Real Envoy and control plane with real backends (the session's `gateway`); the
commands run as users run them, from the installed `whisper-gateway` script.
"""

from __future__ import annotations

import json
import subprocess
import time

import grpc
from conftest import TINY
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from control_plane.names import XDS_PING_INTERVAL_S
from testkit.gateway import ROOT, Gateway

WHISPER_GATEWAY = str(ROOT / ".venv" / "bin" / "whisper-gateway")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WHISPER_GATEWAY, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_status_shows_every_envoy_synced(gateway: Gateway) -> None:
    gateway.wait_synced()
    proc = run("status", "--admin", gateway.admin_url)
    assert proc.returncode == 0, proc.stderr
    header, row, *rest = proc.stdout.splitlines()
    assert header.split()[:7] == ["NODE", "PEER", "ENVOY", "CDS", "EDS", "LDS", "RDS"]
    assert row.split()[3:7] == ["SYNCED"] * 4, proc.stdout
    assert rest[0].startswith("snapshot: CDS ")
    gateway.wait_synced()  # on a loaded machine Envoy may have redialled since (seen in CI)
    doc = json.loads(run("status", "--json", "--admin", gateway.admin_url).stdout)
    assert doc["proxies"][0]["types"]["EDS"]["state"] == "SYNCED"


def test_backends_lists_each_endpoint_with_health(gateway: Gateway) -> None:
    proc = run("backends", "--admin", gateway.admin_url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["ENDPOINT", "MODELS", "HEALTH"]
    tiny = [line for line in lines if TINY in line]
    assert len(tiny) == 2 and all(" HEALTHY " in line for line in tiny), proc.stdout
    assert any(" UNHEALTHY " in line for line in lines), proc.stdout  # the dead backend
    rows = json.loads(run("backends", "--json", "--admin", gateway.admin_url).stdout)
    assert {r["endpoint"] for r in rows} == {r["endpoint"] for r in gateway.backends()}


def test_unreachable_admin_is_a_clear_error() -> None:
    proc = run("status", "--admin", "http://127.0.0.1:9")
    assert proc.returncode == 1
    assert "cannot read the admin API at http://127.0.0.1:9" in proc.stderr


def test_csds_on_the_xds_port(gateway: Gateway) -> None:
    gateway.wait_synced()
    xds = gateway.config["xds"]
    with grpc.insecure_channel(f"{xds['address']}:{xds['port']}") as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        reply = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
        streamed = next(stub.StreamClientStatus(iter([csds_pb2.ClientStatusRequest()])))
    assert [c.node.id for c in reply.config] == [gateway.config.get("node_id", "gateway")]
    configs = reply.config[0].generic_xds_configs
    kinds = {g.type_url.rsplit(".", 1)[-1] for g in configs}
    assert {"Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"} <= kinds
    assert all(g.config_status == csds_pb2.ConfigStatus.SYNCED for g in configs)
    status = gateway.status()["versions"]
    cds = [g for g in configs if g.type_url.endswith("Cluster")]
    assert {g.version_info for g in cds} == {status["CDS"]}
    assert len(streamed.config) == 1


def test_envoy_keeps_its_first_ads_stream(gateway: Gateway) -> None:
    """Envoy pings the control plane every XDS_PING_INTERVAL_S; a gRPC server with its
    default ping policy answered the third ping with GOAWAY, so Envoy redialled every
    ~43 s and for a moment had no stream (its status showed no proxy)."""
    first = gateway.wait_synced()["proxies"][0]
    # Five pings' worth of connection: the GOAWAY came after the third.
    time.sleep(max(0.0, first["connected_at"] + 5 * XDS_PING_INTERVAL_S - time.time()))
    now = gateway.wait_synced()["proxies"]
    assert [p["stream_id"] for p in now] == [first["stream_id"]], now
