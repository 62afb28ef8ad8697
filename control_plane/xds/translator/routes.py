"""RDS: the routes, the Lua filters per route, and the gateway's own answers.

Order matters: the POST audio catch-all is a normal route (so the request
body has a buffer limit when Lua reads it), the model routes match the
header Lua writes, and everything else gets an OpenAI-shaped 404 or 405.
"""

from __future__ import annotations

import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import wrappers_pb2

from control_plane.ir.model import GatewayModel
from control_plane.names import (
    ADMIN_CLUSTER,
    BACKEND_HEADER,
    FORMAT_FILTER,
    META_NS,
    METER_FILTER,
    MODEL_HEADER,
    ROUTE_CONFIG_NAME,
    SPLITTER_CLUSTER,
    UNROUTED_CLUSTER,
)
from control_plane.xds.translator.common import any_of, seconds
from control_plane.xds.translator.edge import (
    api_keys_config,
    rate_limit_config,
    read_upload_config,
    unprotected,
)
from control_plane.xds.translator.lua import format_source, render_lua


def _format_filter(enabled: bool) -> dict[str, Any]:
    per = (
        lua_pb2.LuaPerRoute(source_code=base_pb2.DataSource(inline_string=format_source()))
        if enabled
        else lua_pb2.LuaPerRoute(disabled=True)
    )
    return {FORMAT_FILTER: any_of(per)}


AUDIO_PATH_RE = r"^/v1/audio/(transcriptions|translations)$"


RETRY_ON = "connect-failure,refused-stream,reset-before-request"


#: A backend that resets after the upload reached it (a crash) before any response
#: byte: resent to another host. Envoy never retries once the response has started.
RETRY_ON_RESET = RETRY_ON + ",reset"


MAX_DIRECT_BODY = 256 * 1024


UPLOAD_SLACK = 64 * 1024  # multipart headers around a file at the limit


def upload_limit_bytes(model: GatewayModel) -> int:
    return int(model.limits.max_upload_mb * 1024 * 1024) + UPLOAD_SLACK


def _error_body(status: int, message: str, param: str | None = None) -> str:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": status,
            }
        }
    )


def _direct(status: int, body: str) -> rc.DirectResponseAction:
    return rc.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=body))


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _exact(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _audio_match(*headers: rc.HeaderMatcher, meta: dict[str, str] | None = None) -> rc.RouteMatch:
    return rc.RouteMatch(
        safe_regex=regex_pb2.RegexMatcher(regex=AUDIO_PATH_RE),
        headers=list(headers),
        dynamic_metadata=[_meta_is(k, v) for k, v in (meta or {}).items()],
    )


def _meta_is(key: str, value: str) -> metadata_pb2.MetadataMatcher:
    """Matches dynamic metadata the Lua filter set: no client can write it."""
    return metadata_pb2.MetadataMatcher(
        filter=META_NS,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
    )


def _retry_policy(model: GatewayModel) -> rc.RetryPolicy | None:
    """None with `retries: 0`. Any retry policy makes Envoy's router keep the whole
    upload for a retry and send a copy (measured: 16 concurrent 25 MB uploads grow
    Envoy ~1.9x the bodies with it, ~1.05x without), so none when no retry can happen."""
    if model.retries == 0:
        return None
    return rc.RetryPolicy(
        retry_on=RETRY_ON_RESET if model.retry_on_reset else RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=model.retries),
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=any_of(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        # least_request picks 2 and keeps the emptier: a dead host, emptied by the
        # crash, wins 3 draws in 4 and 5 tries returned to it 1 time in 4; 50 make
        # that about 1 in a million (docs/architecture.md, retries).
        host_selection_retry_max_attempts=50,
    )


def _forward(model: GatewayModel, cluster: str) -> rc.RouteAction:
    return rc.RouteAction(
        cluster=cluster,
        timeout=seconds(0),  # Envoy's 15 s default would kill transcriptions
        idle_timeout=seconds(model.limits.idle_timeout_s),
        retry_policy=_retry_policy(model),
    )


def models_body(models: tuple[str, ...]) -> str:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "whisper-gateway"}
                for m in models
            ],
        }
    )


_NO_LUA = {"envoy.filters.http.lua": any_of(lua_pb2.LuaPerRoute(disabled=True))}


def health_body(model: GatewayModel) -> tuple[int, str]:
    """GET /health as the router answers it, decided from the model Envoy holds."""
    if model.any_healthy:
        return 200, json.dumps({"status": "healthy"})
    return 503, json.dumps({"status": "no model has a healthy backend"})


def router_routes(model: GatewayModel) -> list[rc.Route]:
    """The router's own endpoints. Envoy answers /health and /version itself (so they
    work while the control plane restarts); /metrics and /engines, when public, go to
    the control plane's admin API over a cluster of their own. Never through Lua."""
    get = _exact(":method", "GET")
    status, body = health_body(model)
    json_type = [_header("content-type", "application/json")]
    routes = [
        rc.Route(
            name="router:health",
            match=rc.RouteMatch(path="/health", headers=[get]),
            direct_response=_direct(status, body),
            response_headers_to_add=json_type,
            typed_per_filter_config={**_NO_LUA, **unprotected(model)},
        ),
        rc.Route(
            name="router:version",
            match=rc.RouteMatch(path="/version", headers=[get]),
            direct_response=_direct(200, json.dumps({"version": model.version})),
            response_headers_to_add=json_type,
            typed_per_filter_config={**_NO_LUA, **unprotected(model)},
        ),
    ]
    if model.public_router_endpoints:
        for path in ("/metrics", "/engines"):
            routes.append(
                rc.Route(
                    name=f"router:{path[1:]}",
                    match=rc.RouteMatch(path=path, headers=[get]),
                    route=rc.RouteAction(
                        cluster=ADMIN_CLUSTER,
                        prefix_rewrite=f"/router{path}",
                        timeout=seconds(10),
                    ),
                    typed_per_filter_config=_NO_LUA,
                )
            )
    return routes


def _retry_buffer(model: GatewayModel) -> wrappers_pb2.UInt64Value | None:
    cap = model.limits.retry_buffer_mb
    if cap <= 0 or cap >= model.limits.max_upload_mb:
        return None
    return wrappers_pb2.UInt64Value(value=int(cap * 1024 * 1024))


def _split_route(model: GatewayModel) -> rc.Route:
    """An upload the request-side Lua chose to split goes to the splitter, which sends
    each piece back through the listener: the pieces are routed, retried, limited and
    metered as any request, so this route keeps the client's key for them and meters
    nothing itself (its answer repeats the pieces' audio seconds)."""
    return rc.Route(
        name="audio:split",
        match=_audio_match(_exact(":method", "POST"), meta={"split": "1"}),
        route=rc.RouteAction(
            cluster=SPLITTER_CLUSTER,
            timeout=seconds(0),
            idle_timeout=seconds(model.limits.idle_timeout_s),
        ),
        typed_per_filter_config={
            **_NO_LUA,
            **_format_filter(False),
            METER_FILTER: any_of(rc.FilterConfig(disabled=True)),
        },
    )


def build_routes(model: GatewayModel, lua: str) -> list[rc.Route]:
    routes: list[rc.Route] = []
    audio_limits = rate_limit_config(model)
    post = _exact(":method", "POST")
    if model.long_audio is not None:
        routes.append(_split_route(model))
    for c in model.clusters:
        # Two routes per model: the response filter runs only where the request side
        # asked for a conversion, so plain JSON answers never enter Lua on the way back.
        for convert in (True, False):
            meta = {"model": c.model, **({"convert": "1"} if convert else {})}
            response_headers = [_header(MODEL_HEADER, c.model)]
            if model.edge.backend_header:
                response_headers.append(_header(BACKEND_HEADER, "%UPSTREAM_REMOTE_ADDRESS%"))
            backend_key = dict(model.security.backend_keys).get(c.model)
            routes.append(
                rc.Route(
                    name=f"model:{c.model}" + (":convert" if convert else ""),
                    # The backend's own key, never the client's (redacted in /snapshot).
                    request_headers_to_add=[_header("authorization", f"Bearer {backend_key}")]
                    if backend_key
                    else [],
                    match=_audio_match(post, meta=meta),
                    route=_forward(model, c.cluster_name),
                    # Above the cap Envoy sends the upload without keeping a copy for
                    # a resend (limits.retry_buffer_mb); the upload limit itself is the
                    # route before the script's.
                    request_body_buffer_limit=_retry_buffer(model),
                    request_headers_to_remove=[]
                    if model.edge.forward_client_key
                    else ["authorization", "x-api-key"],
                    response_headers_to_add=response_headers,
                    typed_per_filter_config={**_NO_LUA, **_format_filter(convert)},
                )
            )
    # The only route the request-side Lua runs on: every audio POST lands here
    # first. If the script fails, nothing re-routes it and the unrouted cluster
    # (no hosts) ends it with the gateway's own 503.
    routes.append(
        rc.Route(
            name="audio:before-lua",
            match=_audio_match(post),
            route=_forward(model, UNROUTED_CLUSTER),
            typed_per_filter_config={
                "envoy.filters.http.lua": any_of(
                    lua_pb2.LuaPerRoute(source_code=base_pb2.DataSource(inline_string=lua))
                ),
                **audio_limits,
                # The key stays on the request only as far as the route Lua picks: the
                # model routes remove it, the split route hands it to the splitter.
                **(api_keys_config(model, keep_key=True) if model.long_audio else {}),
            },
        )
    )
    routes.append(
        rc.Route(
            name="audio:wrong-method",
            match=_audio_match(),
            direct_response=_direct(
                405, _error_body(405, "method not allowed: use POST with a multipart form")
            ),
            response_headers_to_add=[
                _header("content-type", "application/json"),
                _header("allow", "POST"),
            ],
        )
    )
    routes.append(
        rc.Route(
            name="models:list",
            match=rc.RouteMatch(path="/v1/models", headers=[_exact(":method", "GET")]),
            direct_response=_direct(200, models_body(model.models)),
            response_headers_to_add=[_header("content-type", "application/json")],
        )
    )
    routes.append(
        rc.Route(
            name="models:wrong-method",
            match=rc.RouteMatch(path="/v1/models"),
            direct_response=_direct(405, _error_body(405, "method not allowed: use GET")),
            response_headers_to_add=[
                _header("content-type", "application/json"),
                _header("allow", "GET"),
            ],
        )
    )
    routes += router_routes(model)
    routes.append(
        rc.Route(
            name="not-found",
            match=rc.RouteMatch(prefix="/"),
            direct_response=_direct(
                404,
                _error_body(
                    404,
                    "unknown path: this gateway serves POST /v1/audio/transcriptions, "
                    "POST /v1/audio/translations and GET /v1/models",
                ),
            ),
            response_headers_to_add=[_header("content-type", "application/json")],
        )
    )
    return routes


def build_route_config(model: GatewayModel, lua_template: str) -> route_pb2.RouteConfiguration:
    clients = model.security.clients or ()
    lua = render_lua(
        lua_template,
        model.models,
        {c.model: c.stream_format for c in model.clusters},
        {c.name: c.models for c in clients if c.models},
        model.long_audio.models if model.long_audio else (),
        model.long_audio.min_upload_bytes if model.long_audio else 0,
    )
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(value=MAX_DIRECT_BODY),
        virtual_hosts=[
            rc.VirtualHost(
                name="gateway",
                domains=["*"],
                request_body_buffer_limit=wrappers_pb2.UInt64Value(value=upload_limit_bytes(model)),
                # Lua runs on the audio route only (build_routes); keys on every route
                # but /health and /version.
                typed_per_filter_config={
                    **_NO_LUA,
                    **_format_filter(False),
                    **api_keys_config(model),
                    **read_upload_config(model),
                },
                routes=build_routes(model, lua),
            )
        ],
    )
