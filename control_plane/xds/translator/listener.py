"""LDS: one HTTP listener. Kept stable: an LDS change drains in-flight streams."""

from __future__ import annotations

from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2 as matcher_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from control_plane.ir.model import GatewayModel
from control_plane.names import (
    API_KEY_FILTER,
    CLIENT_HEADER,
    FORMAT_FILTER,
    LISTENER_NAME,
    LISTENER_SECRET,
    METER,
    METER_FILTER,
    MODEL_HEADER,
    RATE_LIMIT_FILTER,
    READ_UPLOAD_FILTER,
    ROUTE_CONFIG_NAME,
    XDS_CLUSTER,
)
from control_plane.xds.translator.common import ads_source, any_of, seconds
from control_plane.xds.translator.edge import early_header_mutations
from control_plane.xds.translator.lua import read_upload_source

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "model": f"%REQ({MODEL_HEADER.upper()})%",
    "client": f"%REQ({CLIENT_HEADER.upper()})%",  # the API key's client name, never the key
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "upstream": "%UPSTREAM_HOST%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upload_ms": "%REQUEST_DURATION%",
    "first_byte_ms": "%RESPONSE_DURATION%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "audio_s": f"%DYNAMIC_METADATA({METER}:audio_duration)%",
    "audio_usage_s": f"%DYNAMIC_METADATA({METER}:audio_seconds)%",
}
#: The same fields as one line for people (`log_format: text`).
ACCESS_LOG_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" %RESPONSE_CODE% '
    f"%RESPONSE_FLAGS% model=%REQ({MODEL_HEADER.upper()})% client=%REQ({CLIENT_HEADER.upper()})% "
    "upstream=%UPSTREAM_HOST% in=%BYTES_RECEIVED% out=%BYTES_SENT% ms=%DURATION% "
    "first_byte_ms=%RESPONSE_DURATION% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    f"audio_s=%DYNAMIC_METADATA({METER}:audio_duration)% "
    f"audio_usage_s=%DYNAMIC_METADATA({METER}:audio_seconds)% "
    "details=%RESPONSE_CODE_DETAILS% id=%REQ(X-REQUEST-ID)%\n"
)


def access_log_format(fmt: str) -> substitution_format_string_pb2.SubstitutionFormatString:
    if fmt == "json":
        return substitution_format_string_pb2.SubstitutionFormatString(
            json_format=_struct(ACCESS_LOG_FORMAT)
        )
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=ACCESS_LOG_TEXT)
    )


def _meter_rule(selectors: tuple[str, ...], key: str) -> json_to_metadata_pb2.JsonToMetadata.Rule:
    jm = json_to_metadata_pb2.JsonToMetadata
    return jm.Rule(
        selectors=[jm.Selector(key=k) for k in selectors],
        on_present=jm.KeyValuePair(metadata_namespace=METER, key=key, type=jm.NUMBER),
    )


def metering_filter() -> hcm.HttpFilter:
    """Audio seconds from every JSON response (`duration` of verbose_json, `usage.seconds`
    of json): Envoy's own parser on bodies it holds anyway (a transcript is small)."""
    return hcm.HttpFilter(
        name=METER_FILTER,
        typed_config=any_of(
            json_to_metadata_pb2.JsonToMetadata(
                response_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(
                    rules=[
                        _meter_rule(("duration",), "audio_duration"),
                        _meter_rule(("usage", "seconds"), "audio_seconds"),
                    ],
                    # aiohttp (whisper_backend) adds "; charset=utf-8"; vLLM does not.
                    allow_content_types_regex=matcher_pb2.RegexMatcher(
                        regex=r"application/json(\s*;.*)?"
                    ),
                )
            )
        ),
    )


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _error_format(
    message: str, err_type: str, param: str | None = None
) -> substitution_format_string_pb2.SubstitutionFormatString:
    """The OpenAI error shape for Envoy's own replies; code is the HTTP status."""
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct(
            {
                "error": {
                    "message": message,
                    "type": err_type,
                    "param": param,
                    "code": "%RESPONSE_CODE%",
                }
            }
        )
    )


def _flags(*flags: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags))
    )


def _no_header(name: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=route_components_pb2.HeaderMatcher(
                name=name, present_match=True, invert_match=True
            )
        )
    )


def _status(code: int) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.Op.EQ,
                value={"default_value": code, "runtime_key": f"gateway.local_reply.{code}"},
            )
        )
    )


def _details(details: str) -> accesslog_pb2.AccessLogFilter:
    """Matches Envoy's RESPONSE_CODE_DETAILS (no built-in filter reads them)."""
    return accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=any_of(
                cel_pb2.ExpressionFilter(expression=f"response.code_details == '{details}'")
            ),
        )
    )


def local_reply_mappers(model: GatewayModel) -> list[hcm.ResponseMapper]:
    """Envoy-made errors rewritten into the OpenAI error shape, most specific first."""
    mb = f"{model.limits.max_upload_mb:g}"
    which = f"model %REQ({MODEL_HEADER})%"
    return [
        # The audio route's own cluster has no hosts: reached only when the Lua filter
        # failed before it chose a model. Fail closed, and say so.
        hcm.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(
                and_filter=accesslog_pb2.AndFilter(filters=[_flags("UH"), _no_header(MODEL_HEADER)])
            ),
            status_code=wrappers_pb2.UInt32Value(value=500),
            body_format_override=_error_format(
                "the gateway could not read this request's model (an internal error); "
                "nothing was sent to a backend",
                "server_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("UH"),
            body_format_override=_error_format(
                f"no healthy backend for {which}: every backend serving it is down, "
                "unhealthy or draining; retry later",
                "service_unavailable_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("UO"),
            body_format_override=_error_format(
                f"backends for {which} are at capacity; retry later", "service_unavailable_error"
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("UF", "URX", "UC", "UR", "LR", "UMSDR"),
            body_format_override=_error_format(
                f"the backend for {which} failed or closed the connection "
                "(%RESPONSE_CODE_DETAILS%)",
                "server_error",
            ),
        ),
        # A stall before the model was read (the upload itself stalled).
        hcm.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(
                and_filter=accesslog_pb2.AndFilter(
                    filters=[_flags("UT", "SI"), _no_header(MODEL_HEADER)]
                )
            ),
            body_format_override=_error_format(
                "the request stalled past the idle timeout "
                f"({model.limits.idle_timeout_s:g} s without a byte) and was ended",
                "timeout_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("UT", "SI"),
            body_format_override=_error_format(
                f"the request to {which} stalled past the idle timeout "
                f"({model.limits.idle_timeout_s:g} s without a byte) and was ended",
                "timeout_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_status(413),
            body_format_override=_error_format(
                f"the upload is larger than the gateway's limit of {mb} MB",
                "invalid_request_error",
                "file",
            ),
        ),
        hcm.ResponseMapper(
            filter=_status(408),
            body_format_override=_error_format(
                "the request was not received in time and was ended", "timeout_error"
            ),
        ),
        hcm.ResponseMapper(
            filter=_status(401),
            body_format_override=_error_format(
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                "invalid_request_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_status(429),
            body_format_override=_error_format(
                "rate limit reached for this gateway or API key; retry after the "
                "number of seconds in Retry-After",
                "rate_limit_error",
            ),
        ),
        hcm.ResponseMapper(
            filter=_status(431),
            body_format_override=_error_format(
                "the request headers are too large or too many", "invalid_request_error"
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("OM"),
            body_format_override=_error_format(
                "the gateway is overloaded; retry later", "service_unavailable_error"
            ),
        ),
        hcm.ResponseMapper(
            # The overload manager's load shed point in the HTTP/1 codec ends an upload
            # in progress with a bare 500 and no flag yet: a 503 like the one above.
            filter=_details("overload"),
            status_code=wrappers_pb2.UInt32Value(value=503),
            body_format_override=_error_format(
                "the gateway is overloaded; retry later", "service_unavailable_error"
            ),
        ),
        hcm.ResponseMapper(
            filter=_flags("NR"),
            body_format_override=_error_format("no route for this path", "invalid_request_error"),
        ),
    ]


def build_listener(model: GatewayModel) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(
        stat_prefix="gateway",
        codec_type=hcm.HttpConnectionManager.CodecType.AUTO,
        rds=hcm.Rds(config_source=ads_source(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=[
            # Enabled on the virtual host when the edge can refuse (keys, rate limits).
            hcm.HttpFilter(
                name=READ_UPLOAD_FILTER,
                typed_config=any_of(
                    lua_pb2.Lua(
                        source_codes={
                            READ_UPLOAD_FILTER: base_pb2.DataSource(
                                inline_string=read_upload_source()
                            )
                        }
                    )
                ),
                disabled=True,
            ),
            # Keys and rate limits come per virtual host / route through RDS; the base
            # configs here do nothing, so LDS stays the same when they change.
            hcm.HttpFilter(
                name=API_KEY_FILTER,
                typed_config=any_of(api_key_auth_pb2.ApiKeyAuth()),
                disabled=True,
            ),
            hcm.HttpFilter(
                name=RATE_LIMIT_FILTER,
                typed_config=any_of(
                    local_rate_limit_pb2.LocalRateLimit(stat_prefix="gateway_rate_limit")
                ),
            ),
            # The Lua source arrives per route through RDS (the audio route only).
            hcm.HttpFilter(name="envoy.filters.http.lua", typed_config=any_of(lua_pb2.Lua())),
            # Response formats; disabled on the virtual host, enabled per route.
            hcm.HttpFilter(name=FORMAT_FILTER, typed_config=any_of(lua_pb2.Lua())),
            # Before the format filter on the way out: it meters verbose_json before
            # the format filter renders it to srt or vtt.
            metering_filter(),
            hcm.HttpFilter(
                name="envoy.filters.http.router", typed_config=any_of(router_pb2.Router())
            ),
        ],
        # No total timeout anywhere: long jobs and streams run; stalls end.
        stream_idle_timeout=seconds(model.limits.idle_timeout_s),
        request_headers_timeout=seconds(model.limits.request_headers_timeout_s),
        request_timeout=seconds(0),
        generate_request_id=wrappers_pb2.BoolValue(value=True),
        # The client's address is the peer's (or the one `trusted_hops` proxies in front
        # saw); no client is internal, so Envoy drops every x-envoy-* header a client
        # sends (x-envoy-retry-on, x-envoy-max-retries: our retry policy stands).
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        xff_num_trusted_hops=model.edge.trusted_hops,
        internal_address_config=hcm.HttpConnectionManager.InternalAddressConfig(
            unix_sockets=False, cidr_ranges=[]
        ),
        early_header_mutation_extensions=early_header_mutations(),
        max_request_headers_kb=wrappers_pb2.UInt32Value(value=model.edge.max_request_headers_kb),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            max_headers_count=wrappers_pb2.UInt32Value(value=model.edge.max_headers_count),
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.HeadersWithUnderscoresAction.DROP_HEADER,
        ),
        always_set_request_id_in_response=True,
        local_reply_config=hcm.LocalReplyConfig(mappers=local_reply_mappers(model)),
        access_log=[
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.stdout",
                typed_config=any_of(
                    stream_pb2.StdoutAccessLog(
                        log_format=access_log_format(model.access_log_format)
                    )
                ),
            ),
            # Every finished request to the control plane (request stats, /metrics).
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.http_grpc",
                typed_config=any_of(
                    als_pb2.HttpGrpcAccessLogConfig(
                        common_config=als_pb2.CommonGrpcAccessLogConfig(
                            log_name="gateway",
                            grpc_service=grpc_service_pb2.GrpcService(
                                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                                    cluster_name=XDS_CLUSTER
                                )
                            ),
                            transport_api_version=config_source_pb2.ApiVersion.V3,
                            buffer_flush_interval=seconds(0.5),
                        ),
                        additional_request_headers_to_log=[MODEL_HEADER, CLIENT_HEADER],
                    )
                ),
            ),
        ],
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=model.listener.address, port_value=model.listener.port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=any_of(manager),
                    )
                ],
                transport_socket=downstream_tls() if model.security.listener_tls else None,
            )
        ],
    )


def downstream_tls() -> base_pb2.TransportSocket:
    """HTTPS with the certificate from SDS (rotated without a restart); HTTP/2 or
    HTTP/1.1 by ALPN."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=LISTENER_SECRET, sds_config=ads_source())
            ],
            alpn_protocols=["h2", "http/1.1"],
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=any_of(ctx))
