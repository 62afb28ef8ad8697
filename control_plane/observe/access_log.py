"""Envoy's gRPC access log service: one entry per finished request, into RequestStats.

Served on the xDS port (Envoy reaches it through the same bootstrap cluster);
the listener's HttpGrpcAccessLogConfig names it. No request bytes come here:
only the entry Envoy writes after the response (status, timings, upstream).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

# What the listener logs: the headers it adds to each entry, the metering namespace.
from control_plane.names import CLIENT_HEADER, METER, MODEL_HEADER, SPLITTER_CLUSTER
from control_plane.observe.request_stats import Finished, RequestStats

log = logging.getLogger("control_plane.als")


_FLAGS = {
    "upstream_connection_failure": "UF",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "upstream_remote_reset": "UR",
    "upstream_connection_termination": "UC",
    "stream_idle_timeout": "SI",
    "upstream_overflow": "UO",
}


def finished(entry: accesslog_pb2.HTTPAccessLogEntry, scheme_of: Callable[[str], str]) -> Finished:
    common = entry.common_properties
    sa = common.upstream_remote_address.socket_address
    endpoint = ""
    # The splitter is no backend: its pieces come back through the listener and are
    # logged (timed, metered) one by one; the whole upload counts only as a request.
    if sa.address and common.upstream_cluster != SPLITTER_CLUSTER:
        endpoint = (
            f"[{sa.address}]:{sa.port_value}"
            if ":" in sa.address
            else (f"{sa.address}:{sa.port_value}")
        )
    flags = ",".join(code for name, code in _FLAGS.items() if getattr(common.response_flags, name))
    first_byte = None
    if common.HasField("time_to_first_upstream_rx_byte"):
        first_byte = common.time_to_first_upstream_rx_byte.ToNanoseconds() / 1e9
    path = entry.request.original_path or entry.request.path
    return Finished(
        at=common.start_time.ToSeconds() + common.duration.ToNanoseconds() / 1e9,
        server=f"{scheme_of(endpoint)}://{endpoint}" if endpoint else "",
        model=entry.request.request_headers.get(MODEL_HEADER, ""),
        status=entry.response.response_code.value,
        latency_s=common.duration.ToNanoseconds() / 1e9,
        flags=flags,
        first_byte_s=first_byte,
        audio_s=audio_seconds(common.metadata.filter_metadata),
        client=entry.request.request_headers.get(CLIENT_HEADER, ""),
        task="translations"
        if path.split("?", 1)[0].endswith("/translations")
        else "transcriptions",
    )


def audio_seconds(metadata: Any) -> float | None:
    """verbose_json's `duration` when there is one (exact), else `usage.seconds` (whole
    seconds, rounded up by vLLM and whisper_backend alike), else None."""
    if METER not in metadata:
        return None
    fields = metadata[METER].fields
    for key in ("audio_duration", "audio_seconds"):
        if key in fields and fields[key].HasField("number_value"):
            return max(0.0, fields[key].number_value)
    return None


class AccessLogServer(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, stats: RequestStats, scheme_of: Callable[[str], str]) -> None:
        self.stats = stats
        self.scheme_of = scheme_of
        self.entries = 0

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> als_pb2.StreamAccessLogsResponse:
        async for msg in request_iterator:
            for entry in msg.http_logs.log_entry:
                self.stats.add(finished(entry, self.scheme_of))
                self.entries += 1
        return als_pb2.StreamAccessLogsResponse()


def register(server: grpc.aio.Server, als: AccessLogServer) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(als, server)
