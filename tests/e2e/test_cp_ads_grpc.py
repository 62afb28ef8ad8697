"""The real grpc.aio ADS server against a real gRPC client that speaks like Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import message
from google.rpc import status_pb2

from control_plane.config.parse import parse_config
from control_plane.ir.model import EndpointHealth, build_model
from control_plane.names import LISTENER_NAME, ROUTE_CONFIG_NAME, cluster_name
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.cache.snapshot_cache import SnapshotCache
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.server.ads import AdsServer, serve
from control_plane.xds.server.stream_state import SyncState
from control_plane.xds.translator import load_lua_template, translate
from testkit.procs import free_port
from testkit.snapshots import A, B, snap

pytestmark = pytest.mark.timeout(60)

QUIET = 0.3  # how long "no response" is awaited: a protocol check, not a speed bound
TYPES: dict[str, type[message.Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


@dataclass
class Env:
    cache: SnapshotCache
    ads: AdsServer
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    cache = SnapshotCache()
    assert cache.set(snap())
    port = free_port()
    server, ads = await serve(cache, f"127.0.0.1:{port}")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(cache, ads, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(0)


class Client:
    """One ADS stream: writes requests, a reader task queues responses."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        self.call = stub.StreamAggregatedResources()
        self.inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}
        self.first = True

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for resp in self.call:
                self.inbox.put_nowait(resp)

    async def send(
        self,
        type_url: str,
        version: str = "",
        nonce: str = "",
        names: list[str] | None = None,
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=names or [],
        )
        if self.first:
            req.node.CopyFrom(base_pb2.Node(id="envoy-test", cluster="gateway"))
            self.first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self, timeout: float = 10) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.inbox.get(), timeout)
        self.last[resp.type_url] = resp
        return resp

    async def nothing(self) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.inbox.get(), QUIET)

    async def ack(
        self, resp: discovery_pb2.DiscoveryResponse, names: list[str] | None = None
    ) -> None:
        await self.send(resp.type_url, resp.version_info, resp.nonce, names)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call.done_writing()
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


def unpack(resp: discovery_pb2.DiscoveryResponse) -> list[Any]:
    out = []
    for any_msg in resp.resources:
        assert any_msg.type_url == resp.type_url
        msg = TYPES[resp.type_url]()
        assert any_msg.Unpack(msg)
        out.append(msg)
    return out


EDS_NAMES = [cluster_name(A), cluster_name(B)]


async def handshake(c: Client) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """CDS, ACK, EDS with names, ACK, LDS, ACK, RDS, ACK: Envoy's start-up order."""
    got = {}
    for type_url, names in (
        (CLUSTER, None),
        (ENDPOINT, EDS_NAMES),
        (LISTENER, None),
        (ROUTE, [ROUTE_CONFIG_NAME]),
    ):
        await c.send(type_url, names=names)
        resp = await c.recv()
        assert resp.type_url == type_url
        await c.ack(resp, names)
        got[type_url] = resp
    return got


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (bounded) for server-side state the protocol gives no message for."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 (state of another task, no event to wait on)
            await asyncio.sleep(0.01)


def only_stream(e: Env) -> Any:
    assert len(e.ads.streams) == 1
    return next(iter(e.ads.streams.values()))


async def test_handshake_types_resources_nonces(env: Env) -> None:
    c = Client(env.stub)
    got = await handshake(c)
    s = env.cache.snapshot
    assert s is not None
    clusters = unpack(got[CLUSTER])
    assert sorted(x.name for x in clusters) == sorted(
        ["gateway_unrouted", cluster_name(A), cluster_name(B)]
    )
    assert sorted(x.cluster_name for x in unpack(got[ENDPOINT])) == sorted(EDS_NAMES)
    assert [x.name for x in unpack(got[LISTENER])] == [LISTENER_NAME]
    assert [x.name for x in unpack(got[ROUTE])] == [ROUTE_CONFIG_NAME]
    for t, r in got.items():
        assert r.version_info == s.version(t)
    nonces = [r.nonce for r in got.values()]
    assert all(nonces) and len(set(nonces)) == 4
    await c.nothing()  # every ACK is silent
    st = only_stream(env)
    assert st.node_id == "envoy-test" and st.node_cluster == "gateway"
    await until(lambda: st.types[ROUTE].ack_count == 1)
    for t in TYPES:
        assert st.types[t].sync_state(s.version(t)) is SyncState.SYNCED
    await c.close()


async def test_eds_subset_by_name(env: Env) -> None:
    c = Client(env.stub)
    await c.send(ENDPOINT, names=[cluster_name(B)])
    r = await c.recv()
    assert [x.cluster_name for x in unpack(r)] == [cluster_name(B)]
    await c.close()


async def test_nack_recorded_and_not_answered(env: Env) -> None:
    c = Client(env.stub)
    await c.send(CLUSTER)
    r = await c.recv()
    await c.send(CLUSTER, "", r.nonce, error="cluster rejected: test")
    await c.nothing()
    st = only_stream(env)
    await until(lambda: st.types[CLUSTER].nack_count == 1)
    t = st.types[CLUSTER]
    assert t.last_nack is not None and t.last_nack.message == "cluster rejected: test"
    assert t.sync_state(r.version_info) is SyncState.ERROR
    # New content is sent after a NACK.
    assert env.cache.set(snap((A,)))
    r2 = await c.recv()
    assert r2.type_url == CLUSTER and r2.nonce != r.nonce
    assert len(unpack(r2)) == 2
    await c.close()


async def test_stale_nonce_ignored(env: Env) -> None:
    c = Client(env.stub)
    await c.send(CLUSTER)
    first = await c.recv()
    assert env.cache.set(snap((A,)))
    pushed = await c.recv()
    assert pushed.nonce != first.nonce
    # The ACK of the first response arrives after our push: stale.
    await c.ack(first)
    await c.send(CLUSTER, "x", "bogus-nonce")
    await c.nothing()
    st = only_stream(env)
    await until(lambda: st.types[CLUSTER].stale_ignored == 2)
    assert st.types[CLUSTER].ack_count == 0
    await c.ack(pushed)
    await until(lambda: st.types[CLUSTER].ack_count == 1)
    await c.nothing()
    await c.close()


async def test_health_change_pushes_only_eds(env: Env) -> None:
    c = Client(env.stub)
    got = await handshake(c)
    flipped = snap(healthy=(False, True))
    assert env.cache.set(flipped)
    r = await c.recv()
    assert r.type_url == ENDPOINT
    assert r.version_info == flipped.version(ENDPOINT) != got[ENDPOINT].version_info
    assert sorted(x.cluster_name for x in unpack(r)) == sorted(EDS_NAMES)
    await c.ack(r, EDS_NAMES)
    await c.nothing()
    assert await env.ads.wait_acked(ENDPOINT, flipped.version(ENDPOINT), timeout=10)
    await c.close()


async def test_wait_acked(env: Env) -> None:
    c = Client(env.stub)
    await handshake(c)
    flipped = snap(healthy=False)
    v = flipped.version(ENDPOINT)
    # Nobody has it yet: not ACKed within a short wait.
    assert not await env.ads.wait_acked(ENDPOINT, v, timeout=QUIET)
    waiter = asyncio.create_task(env.ads.wait_acked(ENDPOINT, v, timeout=10))
    assert env.cache.set(flipped)
    r = await c.recv()
    assert not waiter.done()
    await c.ack(r, EDS_NAMES)
    assert await waiter
    # Types nobody subscribed to are trivially ACKed.
    assert await env.ads.wait_acked("type.googleapis.com/unknown", "v", timeout=1)
    await c.close()


async def test_two_streams_are_independent(env: Env) -> None:
    c1, c2 = Client(env.stub), Client(env.stub)
    got1 = await handshake(c1)
    await c2.send(CLUSTER)
    r2 = await c2.recv()
    assert r2.version_info == got1[CLUSTER].version_info
    await until(lambda: len(env.ads.streams) == 2)
    # A NACK on stream 2 does not touch stream 1.
    await c2.send(CLUSTER, "", r2.nonce, error="nope")
    await c1.nothing()
    flipped = snap(healthy=False)
    assert env.cache.set(flipped)
    r1 = await c1.recv()
    assert r1.type_url == ENDPOINT
    await c2.nothing()  # stream 2 only subscribed to CDS, which did not change
    await c2.close()
    await until(lambda: len(env.ads.streams) == 1)
    await c1.ack(r1, EDS_NAMES)
    assert await env.ads.wait_acked(ENDPOINT, flipped.version(ENDPOINT), timeout=10)
    await c1.close()


async def test_reconnect_with_old_version_answered(env: Env) -> None:
    c = Client(env.stub)
    got = await handshake(c)
    await c.close()
    await until(lambda: not env.ads.streams)
    again = Client(env.stub)
    for type_url, names in ((CLUSTER, None), (ENDPOINT, EDS_NAMES)):
        await again.send(type_url, got[type_url].version_info, "", names)
        r = await again.recv()
        assert r.type_url == type_url
        assert r.version_info == got[type_url].version_info
        await again.ack(r, names)
    await again.nothing()
    await again.close()


async def test_cds_change_then_eds_rerequest_answered(env: Env) -> None:
    c = Client(env.stub)
    got = await handshake(c)
    grown = snap((A, B, "model-c"))
    assert env.cache.set(grown)
    pushed = [await c.recv() for _ in range(3)]
    assert [p.type_url for p in pushed] == [CLUSTER, ENDPOINT, ROUTE]
    # Envoy re-requests EDS with the new cluster's name: answered with it.
    names = [*EDS_NAMES, cluster_name("model-c")]
    await c.ack(pushed[1], names)
    r = await c.recv()
    assert r.type_url == ENDPOINT
    assert cluster_name("model-c") in [x.cluster_name for x in unpack(r)]
    assert got[LISTENER].version_info == grown.version(LISTENER)
    await c.close()
