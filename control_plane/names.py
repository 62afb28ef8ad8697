"""Every name that Python, the Lua filters and Envoy's config share, written once.

Headers only the gateway writes, the dynamic-metadata namespaces the Lua filters set
and the routes and access log read, and the names of the clusters, listener, route
configuration, secret and filters that several translators (and the bootstrap)
refer to. The Lua filters get these values from here when they are rendered
(xds/translator/lua.py), so a rename is one edit.
"""

from __future__ import annotations

import hashlib
import re

# ---------------------------------------------------------------- headers

#: Set by the request-side Lua: the model the form named (routes match its metadata).
MODEL_HEADER = "x-gateway-model"
#: Set by the API key filter to the key's client name; Lua and the rate limit read it.
CLIENT_HEADER = "x-gateway-client"
#: Set by the request-side Lua when the response must be rendered (text, srt, vtt).
CONVERT_HEADER = "x-gateway-convert"
#: The backend that served a response (edge.backend_header), for debugging.
BACKEND_HEADER = "x-gateway-backend"
#: A client's request to split a long upload (value "split"): only for the models
#: listed in long_audio.models; the splitter's pieces never carry it.
SPLIT_HEADER = "x-long-audio"
#: Headers only the gateway writes: removed from every request before routing.
INTERNAL_HEADERS = (MODEL_HEADER, CLIENT_HEADER, CONVERT_HEADER, BACKEND_HEADER)

# ---------------------------------------------------------------- dynamic metadata

#: Dynamic metadata the request-side Lua sets; the model routes match only it.
META_NS = "whisper_gateway"
#: Dynamic metadata namespace of metering: audio seconds read from each response
#: (json_to_metadata for JSON bodies, the format filter for converted streams).
METER = "whisper_gateway.meter"

# ---------------------------------------------------------------- resources

#: The bootstrap's static cluster to the control plane (xDS and the access log service).
XDS_CLUSTER = "xds_cluster"
#: Envoy pings the control plane this often (HTTP/2 keepalive on XDS_CLUSTER); the
#: gRPC server must accept pings at this rate, or it sends GOAWAY after two of them.
XDS_PING_INTERVAL_S = 10
LISTENER_NAME = "gateway_http"
ROUTE_CONFIG_NAME = "gateway_routes"
LISTENER_SECRET = "listener_cert"
UNROUTED_CLUSTER = "gateway_unrouted"
SPLITTER_CLUSTER = "gateway_splitter"  # the long-audio splitter (long_audio.splitter)
ADMIN_CLUSTER = "gateway_admin"  # the control plane's admin API, for /metrics and /engines

# ---------------------------------------------------------------- filters

#: The second Lua filter: response conversion, enabled per route (routes.py).
FORMAT_FILTER = "whisper.filters.format"
#: The first filter: over HTTP/2 and /3, the edge refuses once the upload has arrived.
READ_UPLOAD_FILTER = "whisper.filters.read_upload"
METER_FILTER = "envoy.filters.http.json_to_metadata"  # audio seconds from JSON responses
API_KEY_FILTER = "envoy.filters.http.api_key_auth"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_DESCRIPTOR = "client"
#: Endpoint metadata that picks a TLS cluster's per-host transport socket (its SNI).
SNI_KEY = "sni_host"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"


def cluster_name(model: str) -> str:
    """A stat-safe, collision-free cluster name for a model name."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[:60]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"model_{safe}_{digest}"
