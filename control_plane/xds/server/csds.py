"""Envoy's Client Status Discovery Service on the xDS port: every Envoy's sync state.

What `/status` shows, in the standard shape, so standard tools (`istioctl
proxy-status`-like clients, grpcurl) can read it: one ClientConfig per ADS
stream, one GenericXdsConfig per resource with SYNCED / STALE / NOT_SENT /
ERROR and the last NACK. Resource contents go out for CDS, EDS and LDS only:
RDS carries client API keys and SDS private keys, so those are named, never
sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import any_pb2, timestamp_pb2

from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import CLUSTER, ENDPOINT, LISTENER, NAMED_TYPES, PUSH_ORDER
from control_plane.xds.server.stream_state import StreamState, SyncState

#: Types whose contents CSDS may show; the others hold credentials.
SHOWN = frozenset({CLUSTER, ENDPOINT, LISTENER})


_STATUS = {
    SyncState.SYNCED: csds_pb2.ConfigStatus.SYNCED,
    SyncState.STALE: csds_pb2.ConfigStatus.STALE,
    SyncState.NOT_SENT: csds_pb2.ConfigStatus.NOT_SENT,
    SyncState.ERROR: csds_pb2.ConfigStatus.ERROR,
}


_CLIENT = {
    SyncState.SYNCED: config_dump_shared_pb2.ClientResourceStatus.ACKED,
    SyncState.STALE: config_dump_shared_pb2.ClientResourceStatus.REQUESTED,
    SyncState.NOT_SENT: config_dump_shared_pb2.ClientResourceStatus.REQUESTED,
    SyncState.ERROR: config_dump_shared_pb2.ClientResourceStatus.NACKED,
}


def _ts(at: float | None) -> timestamp_pb2.Timestamp | None:
    if at is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


def client_config(
    stream: StreamState, snap: Snapshot | None, contents: bool = True
) -> csds_pb2.ClientConfig:
    """One Envoy's view, from the stream's per-type state (pure)."""
    node = base_pb2.Node(id=stream.node_id, cluster=stream.node_cluster)
    out = csds_pb2.ClientConfig(node=node)
    for type_url in PUSH_ORDER:
        t = stream.types.get(type_url)
        if t is None or not t.subscribed:
            continue
        current = snap.version(type_url) if snap else ""
        state = t.sync_state(current)
        items = snap.items(type_url) if snap else {}
        if type_url in NAMED_TYPES and t.names:
            names = sorted(t.names)
        else:
            names = sorted(items)
        for name in names:
            cfg = csds_pb2.ClientConfig.GenericXdsConfig(
                type_url=type_url,
                name=name,
                version_info=t.acked_version,
                config_status=_STATUS[state],
                client_status=_CLIENT[state],
            )
            if (ts := _ts(t.acked_at)) is not None:
                cfg.last_updated.CopyFrom(ts)
            if contents and type_url in SHOWN and state is SyncState.SYNCED and name in items:
                packed = any_pb2.Any()
                packed.Pack(items[name])
                cfg.xds_config.CopyFrom(packed)
            if t.last_nack is not None:
                cfg.error_state.CopyFrom(
                    config_dump_shared_pb2.UpdateFailureState(
                        details=t.last_nack.message,
                        version_info=t.last_nack.version,
                        last_update_attempt=_ts(t.last_nack.at),
                    )
                )
            out.generic_xds_configs.append(cfg)
    return out


def _matches(stream: StreamState, request: csds_pb2.ClientStatusRequest) -> bool:
    """Node id matchers (exact or prefix); none matches every Envoy."""
    for m in request.node_matchers:
        sm = m.node_id
        if sm.exact and stream.node_id != sm.exact:
            return False
        if sm.prefix and not stream.node_id.startswith(sm.prefix):
            return False
    return True


def client_status(
    streams: Iterable[StreamState], snap: Snapshot | None, request: csds_pb2.ClientStatusRequest
) -> csds_pb2.ClientStatusResponse:
    return csds_pb2.ClientStatusResponse(
        config=[
            client_config(s, snap, contents=not request.exclude_resource_contents)
            for s in streams
            if _matches(s, request)
        ]
    )


class ClientStatusServer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):
    def __init__(
        self, streams: Callable[[], Iterable[StreamState]], snapshot: Callable[[], Snapshot | None]
    ) -> None:
        self.streams, self.snapshot = streams, snapshot

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> csds_pb2.ClientStatusResponse:
        return client_status(self.streams(), self.snapshot(), request)

    async def StreamClientStatus(
        self,
        request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in request_iterator:
            yield client_status(self.streams(), self.snapshot(), request)


def register(server: grpc.aio.Server, csds: ClientStatusServer) -> None:
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(csds, server)
