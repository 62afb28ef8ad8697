"""The intermediate model: what Envoy must do, free of YAML and of protobuf.

Two halves, both frozen values with types of their own (no config class is
imported here, so a new input such as router flags or Kubernetes only writes
a new front end):

* `GatewaySpec`, what the operator asked for: backends, models, limits;
* `GatewayModel`, what Envoy must do now: the spec joined with the runtime
  state (addresses, health per endpoint and model, draining), built by the
  pure `build_model`, so every translator downstream sees one picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import StrEnum

from control_plane.names import cluster_name


class EndpointHealth(StrEnum):
    """What the control plane knows of an endpoint for one model; UNKNOWN gets no traffic."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"


@dataclass(frozen=True)
class Listen:
    address: str
    port: int
    unix_socket: str | None = None  # instead of address:port (config HostPort.unix_socket)


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float
    retry_buffer_mb: float  # 0: every upload is kept for a resend
    request_headers_timeout_s: float
    idle_timeout_s: float
    connect_timeout_s: float
    drain_time_s: float


@dataclass(frozen=True)
class Outlier:
    consecutive_5xx: int
    consecutive_gateway_failure: int
    interval_s: float
    base_ejection_time_s: float


@dataclass(frozen=True)
class Edge:
    """What the listener trusts and tells: the settings facing clients."""

    trusted_hops: int = 0  # proxies in front whose X-Forwarded-For is believed
    backend_header: bool = False  # x-gateway-backend on responses (debugging only)
    forward_client_key: bool = False  # pass the client's Authorization to backends
    max_request_headers_kb: int = 60
    max_headers_count: int = 100


@dataclass(frozen=True)
class Client:
    """One API key. The key never leaves the model except into Envoy's config."""

    name: str
    key: str = field(repr=False)
    models: tuple[str, ...] = ()  # empty: every model
    requests_per_s: float | None = None  # its own bucket; None: rate_limit.per_key_*
    burst: int | None = None


@dataclass(frozen=True)
class RateLimit:
    """Token buckets: requests per second and burst; 0 turns a bucket off."""

    requests_per_s: float = 0.0  # the whole gateway
    burst: int = 0
    per_key_requests_per_s: float = 0.0  # each client key
    per_key_burst: int = 0


@dataclass(frozen=True)
class ListenerTls:
    """The listener's certificate, delivered to Envoy over SDS (files read by the
    control plane, so a rotated certificate needs no restart)."""

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class UpstreamTls:
    """TLS to backends whose URL is https://."""

    ca_pem: bytes | None = field(default=None, repr=False)  # None: the system's roots
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Security:
    """Loaded from files the control plane watches; changes arrive as events."""

    listener_tls: ListenerTls | None = None
    clients: tuple[Client, ...] | None = None  # None: API keys off
    upstream_tls: UpstreamTls = UpstreamTls()
    # model -> its backends' own key, added by Envoy on the way to them
    backend_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ProbeSpec:
    """How a backend is probed; None on a BackendSpec means probes are off."""

    interval_s: float
    timeout_s: float
    healthy_threshold: int
    unhealthy_threshold: int
    expected_word: str | None
    language: str | None


@dataclass(frozen=True)
class BackendSpec:
    url: str
    host: str
    port: int
    tls: bool
    models: tuple[str, ...]
    max_concurrency: int
    probe: ProbeSpec | None
    api_key_env: str | None = None


@dataclass(frozen=True)
class LongAudio:
    """Which uploads the request-side Lua sends to the splitter instead of a backend."""

    models: tuple[str, ...]
    splitter: Listen
    min_upload_bytes: int


@dataclass(frozen=True)
class GatewaySpec:
    listener: Listen
    limits: Limits
    outlier: Outlier
    policy: str
    retries: int
    backends: tuple[BackendSpec, ...]
    retry_on_reset: bool = True
    dns_refresh_s: float = 30.0
    admin_api: Listen = Listen("127.0.0.1", 19000)  # where Envoy reaches the control plane
    public_router_endpoints: bool = False  # /metrics, /engines on the listener
    version: str = "unknown"
    stream_formats: tuple[tuple[str, str], ...] = ()  # model -> openai | backend | text
    stream_format: str = "openai"  # for models not listed
    edge: Edge = Edge()
    rate_limit: RateLimit = RateLimit()
    access_log_format: str = "text"  # Envoy's line per request: text or json
    long_audio: LongAudio | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """Every served model, in first-seen order."""
        seen: dict[str, None] = {}
        for b in self.backends:
            for m in b.models:
                seen.setdefault(m, None)
        return tuple(seen)


@dataclass(frozen=True)
class Endpoint:
    key: str  # "address:port", unique across the fleet
    address: str
    port: int
    backend_url: str
    health: EndpointHealth


@dataclass(frozen=True)
class ModelCluster:
    model: str
    cluster_name: str
    endpoints: tuple[Endpoint, ...]
    max_concurrency_per_host: int
    tls: bool
    stream_format: str = "openai"


@dataclass(frozen=True)
class GatewayModel:
    listener: Listen
    limits: Limits
    outlier: Outlier
    policy: str
    retries: int
    clusters: tuple[ModelCluster, ...]
    retry_on_reset: bool = True
    admin_api: Listen = Listen("127.0.0.1", 19000)
    public_router_endpoints: bool = False
    version: str = "unknown"
    edge: Edge = Edge()
    rate_limit: RateLimit = RateLimit()
    access_log_format: str = "text"  # Envoy's line per request: text or json
    security: Security = Security()
    long_audio: LongAudio | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(c.model for c in self.clusters)

    @property
    def any_healthy(self) -> bool:
        """At least one model has a healthy backend: what GET /health reports."""
        return any(e.health is EndpointHealth.HEALTHY for c in self.clusters for e in c.endpoints)


#: Health is kept per (endpoint key, model): one broken model leaves the others served.
HealthKey = tuple[str, str]


def endpoint_key(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def per_model_share(backend: BackendSpec) -> int:
    """The backend's concurrency budget split over its models.

    Envoy's per-host limit lives in each model's cluster, so a backend in two
    clusters would get twice its limit; splitting keeps the sum within it.
    """
    return max(1, backend.max_concurrency // len(backend.models))


def endpoint_health(
    backend: BackendSpec, known: EndpointHealth | None, draining: bool
) -> EndpointHealth:
    """Draining wins; an unprobed endpoint is UNKNOWN (no traffic); with probes off
    it is HEALTHY."""
    if draining:
        return EndpointHealth.DRAINING
    if backend.probe is None:
        return EndpointHealth.HEALTHY
    return known or EndpointHealth.UNKNOWN


def build_model(
    spec: GatewaySpec,
    resolved: Mapping[str, tuple[str, ...]],
    health: Mapping[HealthKey, EndpointHealth],
    draining: Set[str] = frozenset(),
    security: Security = Security(),
) -> GatewayModel:
    """Spec + addresses per backend URL + health per (endpoint, model) -> model (pure).

    A backend whose host has not resolved yet has no endpoints; two host names
    resolving to one address make one endpoint per model, not two.
    """
    per_model: dict[str, dict[str, Endpoint]] = {m: {} for m in spec.models}
    limits: dict[str, int] = {}
    tls: dict[str, bool] = {}
    for backend in spec.backends:
        share = per_model_share(backend)
        for m in backend.models:
            for address in resolved.get(backend.url, ()):
                key = endpoint_key(address, backend.port)
                if key in per_model[m]:
                    continue
                state = endpoint_health(backend, health.get((key, m)), key in draining)
                per_model[m][key] = Endpoint(key, address, backend.port, backend.url, state)
            # Envoy's per-host limit is one number per cluster: the tightest wins.
            limits[m] = min(limits.get(m, share), share)
            tls[m] = tls.get(m, False) or backend.tls
    clusters = tuple(
        ModelCluster(
            model=m,
            cluster_name=cluster_name(m),
            endpoints=tuple(eps[k] for k in sorted(eps)),
            max_concurrency_per_host=limits[m],
            tls=tls[m],
            stream_format=dict(spec.stream_formats).get(m, spec.stream_format),
        )
        for m, eps in per_model.items()
    )
    return GatewayModel(
        listener=spec.listener,
        limits=spec.limits,
        outlier=spec.outlier,
        policy=spec.policy,
        retries=spec.retries,
        retry_on_reset=spec.retry_on_reset,
        clusters=clusters,
        admin_api=spec.admin_api,
        public_router_endpoints=spec.public_router_endpoints,
        version=spec.version,
        edge=spec.edge,
        rate_limit=spec.rate_limit,
        access_log_format=spec.access_log_format,
        security=security,
        long_audio=spec.long_audio,
    )
