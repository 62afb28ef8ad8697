"""The edge: what the listener trusts, who may call it, and how often (pure).

API keys are Envoy's own api_key_auth filter, its credentials in RDS (an RDS
change drains nothing); rate limits are Envoy's local rate limit, a gateway
bucket plus one per client key, on the audio route only. Our internal headers
are removed before any route is chosen, so no client can write them.
"""

from __future__ import annotations

from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early,
)
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2

from control_plane.ir.model import Client, GatewayModel
from control_plane.names import (
    API_KEY_FILTER,
    CLIENT_HEADER,
    INTERNAL_HEADERS,
    RATE_LIMIT_DESCRIPTOR,
    RATE_LIMIT_FILTER,
    READ_UPLOAD_FILTER,
)
from control_plane.xds.translator.common import any_of, seconds


def keys_on(model: GatewayModel) -> bool:
    return model.security.clients is not None


def early_header_mutations() -> list[extension_pb2.TypedExtensionConfig]:
    """Removes our internal headers and every client x-envoy-* header before the route
    is chosen (HCM early mutation)."""
    return [
        extension_pb2.TypedExtensionConfig(
            name="envoy.http.early_header_mutation.header_mutation",
            typed_config=any_of(
                early.HeaderMutation(
                    mutations=[
                        *(mutation_rules_pb2.HeaderMutation(remove=h) for h in INTERNAL_HEADERS),
                        # Every x-envoy-* header a client sends (x-envoy-retry-on,
                        # x-envoy-max-retries, ...): Envoy honours them from clients it
                        # deems internal, and loopback peers are.
                        mutation_rules_pb2.HeaderMutation(
                            remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                                key_matcher=string_pb2.StringMatcher(prefix="x-envoy-")
                            )
                        ),
                    ]
                )
            ),
        )
    ]


def api_keys_config(model: GatewayModel, keep_key: bool = False) -> dict[str, Any]:
    """The virtual host's keys, enabling the filter the listener holds disabled; {} when
    keys are off. The key is read from `Authorization: Bearer`, the client's name is
    passed on in CLIENT_HEADER, and the key itself is not (unless configured). With
    `keep_key` the filter leaves the key in place for the routes after it to decide:
    the audio route before Lua, since an upload Lua sends to the splitter needs it for
    its pieces, while every model route removes it (routes.py)."""
    if not keys_on(model):
        return {}
    clients = model.security.clients or ()
    keys = api_key_auth_pb2.ApiKeyAuthPerRoute(
        credentials=[api_key_auth_pb2.Credential(key=c.key, client=c.name) for c in clients],
        key_sources=[api_key_auth_pb2.KeySource(header="authorization")],
        forwarding=api_key_auth_pb2.Forwarding(
            header=CLIENT_HEADER,
            hide_credentials=not (model.edge.forward_client_key or keep_key),
        ),
    )
    return {API_KEY_FILTER: any_of(rc.FilterConfig(config=any_of(keys), disabled=False))}


def read_upload_config(model: GatewayModel) -> dict[str, Any]:
    """Enables the listener's first filter where the edge can refuse an upload: over
    HTTP/2 a refusal then waits for the whole upload, so every client reads it
    (read_upload.lua, docs/security.md). {} when there are no keys and no gateway rate
    limit (a per-key limit needs keys)."""
    if not (keys_on(model) or model.rate_limit.requests_per_s > 0):
        return {}
    enabled = rc.FilterConfig(
        config=any_of(lua_pb2.LuaPerRoute(name=READ_UPLOAD_FILTER)), disabled=False
    )
    return {READ_UPLOAD_FILTER: any_of(enabled)}


def unprotected(model: GatewayModel) -> dict[str, Any]:
    """/health and /version answer without a key (liveness probes carry none)."""
    if not keys_on(model):
        return {}
    return {API_KEY_FILTER: any_of(rc.FilterConfig(disabled=True))}


def _bucket(per_s: float, burst: int) -> token_bucket_pb2.TokenBucket:
    """`burst` tokens, refilled at `per_s`: whole tokens every 1/per_s seconds, or
    one token every interval when the rate is below one per second."""
    tokens = max(1, round(per_s)) if per_s >= 1 else 1
    interval = tokens / per_s
    return token_bucket_pb2.TokenBucket(
        max_tokens=max(burst, tokens),
        tokens_per_fill=wrappers_pb2.UInt32Value(value=tokens),
        fill_interval=seconds(max(interval, 0.05)),
    )


def retry_after_s(per_s: float) -> int:
    """What a limited client is told to wait: the time for one token, rounded up."""
    return max(1, int(-(-1 // per_s))) if per_s > 0 else 1


def _client_bucket(model: GatewayModel, c: Client) -> tuple[float, int] | None:
    rl = model.rate_limit
    rate = c.requests_per_s if c.requests_per_s is not None else rl.per_key_requests_per_s
    burst = c.burst if c.burst is not None else rl.per_key_burst
    return (rate, burst) if rate > 0 else None


def rate_limit_config(model: GatewayModel) -> dict[str, Any]:
    """The audio route's local rate limit, or {} when no bucket is on."""
    rl = model.rate_limit
    gateway_on = rl.requests_per_s > 0
    buckets = {
        c.name: b
        for c in (model.security.clients or ())
        if (b := _client_bucket(model, c)) is not None
    }
    if not gateway_on and not buckets:
        return {}
    rates = [r for r, _ in buckets.values()] + ([rl.requests_per_s] if gateway_on else [])
    full = percent_pb2.FractionalPercent(
        numerator=100, denominator=percent_pb2.FractionalPercent.DenominatorType.HUNDRED
    )
    config = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix="gateway_rate_limit",
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=full),
        filter_enforced=base_pb2.RuntimeFractionalPercent(default_value=full),
        # One value for every limited reply: the wait for a token of the slowest bucket.
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key="retry-after", value=str(retry_after_s(min(rates)))
                ),
                append_action=base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
        always_consume_default_token_bucket=wrappers_pb2.BoolValue(value=gateway_on),
    )
    # Without a gateway bucket: one large enough never to limit.
    config.token_bucket.CopyFrom(
        _bucket(rl.requests_per_s, rl.burst) if gateway_on else _bucket(1e6, 1_000_000)
    )
    if buckets:
        config.rate_limits.append(
            rc.RateLimit(
                actions=[
                    rc.RateLimit.Action(
                        request_headers=rc.RateLimit.Action.RequestHeaders(
                            header_name=CLIENT_HEADER, descriptor_key=RATE_LIMIT_DESCRIPTOR
                        )
                    )
                ]
            )
        )
    for name, (rate, burst) in sorted(buckets.items()):
        config.descriptors.append(
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[
                    ratelimit_pb2.RateLimitDescriptor.Entry(key=RATE_LIMIT_DESCRIPTOR, value=name)
                ],
                token_bucket=_bucket(rate, burst),
            )
        )
    return {RATE_LIMIT_FILTER: any_of(config)}
