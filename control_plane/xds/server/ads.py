"""The ADS gRPC server (state of the world) on grpc.aio: one coroutine pair per Envoy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.config.sockets import restrict_socket
from control_plane.names import XDS_PING_INTERVAL_S
from control_plane.xds.cache.snapshot_cache import SnapshotCache
from control_plane.xds.server.stream_state import Response, StreamState

log = logging.getLogger("control_plane.ads")


def _to_proto(r: Response) -> discovery_pb2.DiscoveryResponse:
    resp = discovery_pb2.DiscoveryResponse(
        version_info=r.version, nonce=r.nonce, type_url=r.type_url
    )
    for msg in r.resources:
        resp.resources.add().Pack(msg)
    return resp


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves the cache's snapshot to every connected Envoy."""

    def __init__(self, cache: SnapshotCache, on_ack: Callable[[], None] | None = None) -> None:
        self.cache = cache
        self.streams: dict[int, StreamState] = {}
        self.ack_event = asyncio.Event()
        self._on_ack = on_ack

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = StreamState(peer=context.peer())
        self.streams[stream.id] = stream
        outbox: asyncio.Queue[Response | None] = asyncio.Queue()
        changed = self.cache.subscribe()
        reader = asyncio.create_task(self._read(stream, request_iterator, outbox))
        watcher = asyncio.create_task(self._watch(stream, changed, outbox))
        log.info("ADS stream %d opened from %s", stream.id, stream.peer)
        try:
            while True:
                item = await outbox.get()
                if item is None:
                    break
                yield _to_proto(item)
        finally:
            reader.cancel()
            watcher.cancel()
            self.cache.unsubscribe(changed)
            self.streams.pop(stream.id, None)
            log.info("ADS stream %d (%s) closed", stream.id, stream.node_id)

    async def _read(
        self,
        stream: StreamState,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        outbox: asyncio.Queue[Response | None],
    ) -> None:
        try:
            async for req in requests:
                error = req.error_detail.message if req.HasField("error_detail") else None
                if error is not None:
                    log.warning(
                        "NACK from %s for %s nonce %s: %s",
                        stream.node_id,
                        req.type_url,
                        req.response_nonce,
                        error,
                    )
                version = ""
                if req.HasField("node") and req.node.HasField("user_agent_build_version"):
                    v = req.node.user_agent_build_version.version
                    version = f"{v.major_number}.{v.minor_number}.{v.patch}"
                resp = stream.on_request(
                    self.cache.snapshot,
                    req.type_url,
                    req.version_info,
                    req.response_nonce,
                    list(req.resource_names),
                    error,
                    node_id=req.node.id if req.HasField("node") else "",
                    node_cluster=req.node.cluster if req.HasField("node") else "",
                    envoy_version=version,
                )
                if req.response_nonce:
                    self.ack_event.set()
                    self.ack_event = asyncio.Event()
                    if self._on_ack is not None:
                        self._on_ack()
                if resp is not None:
                    snap = self.cache.snapshot
                    assert snap is not None
                    for earlier in stream.flush_before(snap, resp.type_url):
                        outbox.put_nowait(earlier)
                    outbox.put_nowait(resp)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken stream ends; Envoy reconnects
            log.info("ADS stream %d read ended: %r", stream.id, e)
        finally:
            outbox.put_nowait(None)

    async def _watch(
        self,
        stream: StreamState,
        changed: asyncio.Event,
        outbox: asyncio.Queue[Response | None],
    ) -> None:
        try:
            while True:
                await changed.wait()
                changed.clear()
                snap = self.cache.snapshot
                if snap is None:
                    continue
                for resp in stream.on_snapshot(snap):
                    outbox.put_nowait(resp)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never a silent end of pushes: log, close the stream, Envoy reconnects.
            log.exception("ADS stream %d push failed; closing it", stream.id)
            outbox.put_nowait(None)

    def all_acked(self, type_url: str, version: str) -> bool:
        """Every stream subscribed to `type_url` has ACKed `version`."""
        return not any(
            type_url in s.types
            and s.types[type_url].subscribed
            and s.types[type_url].acked_version != version
            for s in self.streams.values()
        )

    async def wait_acked(self, type_url: str, version: str, timeout: float) -> bool:
        """Until every stream subscribed to `type_url` has ACKed `version`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.all_acked(type_url, version):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            ev = self.ack_event
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except TimeoutError:
                return False


@dataclass(frozen=True)
class ServerTls:
    """Mutual TLS on the xDS port: our certificate and key, and the CA that signs Envoy's."""

    cert_file: str
    key_file: str
    ca_file: str


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Mutual TLS: our certificate, and only clients (Envoy) whose certificate the CA signed."""
    files = (tls.key_file, tls.cert_file, tls.ca_file)
    key, cert, ca = (Path(f).read_bytes() for f in files)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def _bind(server: grpc.aio.Server, target: str, tls: ServerTls | None) -> None:
    """Listen on `target` (`host:port` or `unix:/path`); OSError naming it if we cannot."""
    try:
        if tls is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, server_credentials(tls))
    except RuntimeError as e:  # grpc's way of saying EADDRINUSE, ENOENT, EACCES
        raise OSError(f"cannot listen for xDS on {target}: {e}") from e
    if bound == 0:
        raise OSError(f"cannot listen for xDS on {target}")


async def serve(
    cache: SnapshotCache,
    target: str,
    on_ack: Callable[[], None] | None = None,
    more: Callable[[grpc.aio.Server], None] | None = None,
    unix_socket: str | None = None,
    tls: ServerTls | None = None,
) -> tuple[grpc.aio.Server, AdsServer]:
    """ADS (and, through `more`, other services on the same port) on grpc.aio, on
    `target` (`host:port`, or `unix:/path` for a socket Envoy dials as a pipe, whose file
    `unix_socket` names so its permissions can be set);
    with `tls`, only over mutual TLS."""
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC's default (pings at most every 5 minutes without data) made this
            # server send GOAWAY (too_many_pings) to Envoy's idle ADS stream every ~43 s,
            # and Envoy redialled: accept Envoy's keepalive pings.
            ("grpc.http2.min_ping_interval_without_data_ms", XDS_PING_INTERVAL_S * 1000 // 2),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    ads = AdsServer(cache, on_ack)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    if more is not None:
        more(server)
    _bind(server, target, tls)
    await server.start()
    if unix_socket is not None:
        restrict_socket(unix_socket)
    return server, ads
