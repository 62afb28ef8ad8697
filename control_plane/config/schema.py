"""The input model: one YAML file, validated at start (config/parse.py).

Each section is a frozen dataclass; each default and bound is written once, on its
field. Nothing here knows Envoy or protobuf."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


POLICIES = ("least_request", "round_robin")


STREAM_FORMATS = ("openai", "backend", "text")


LOG_FORMATS = ("text", "json")


BACKEND_TYPES = ("transcription",)


LAUNCH_KINDS = ("cpu", "vllm")


#: The planes that may listen on a Unix socket (Envoy and operators dial them).
UNIX_PLANES = ("xds", "admin")


UNIX_PATH_MAX = 107  # bytes: sockaddr_un's sun_path less its NUL


class ConfigError(ValueError):
    """A config value that cannot be served; `field` is its dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"config error at {field}: {reason}")
        self.field = field
        self.reason = reason


def _bound(default: Any, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A field with its default and its bounds, the one place both are written."""
    return field(default=default, metadata={"min": minimum, "max": maximum})


@dataclass(frozen=True)
class PlaneTlsConfig:
    """Mutual TLS on xDS: the control plane's certificate, the CA that signs both sides,
    and the client certificate Envoy presents (its bootstrap names these files, so the
    paths must hold on Envoy's side too). Read at start: a new certificate needs a restart."""

    cert_file: str
    key_file: str
    ca_file: str
    client_cert_file: str
    client_key_file: str


@dataclass(frozen=True)
class HostPort:
    address: str
    port: int
    # xds and admin only: a Unix socket path used instead of address:port. No TCP port
    # is opened, and the socket file's permissions decide who may connect.
    unix_socket: str | None = None
    tls: PlaneTlsConfig | None = None  # xds only: mutual TLS


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    interval_s: float = _bound(5.0, 0.05)
    timeout_s: float = _bound(10.0, 0.05)
    healthy_threshold: int = _bound(2, 1)
    unhealthy_threshold: int = _bound(3, 1)
    expected_word: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_5xx: int = _bound(3, 1)
    consecutive_gateway_failure: int = _bound(2, 1)
    interval_s: float = _bound(1.0, 0.1)
    # Short: the probes decide for the long term; outlier ejection only bridges
    # the gap between probes, and a restarted backend must not wait it out.
    base_ejection_time_s: float = _bound(3.0, 0.1)


@dataclass(frozen=True)
class LimitsConfig:
    max_upload_mb: float = _bound(25.0, 0.001, 1024)  # Envoy buffers the upload
    # Uploads up to this size are kept for a resend (a crashed backend's request goes
    # to another); Envoy's router holds a second copy of each one until the backend
    # has read it (~2x memory). Larger uploads go without a resend and without the
    # copy. 0: every upload up to max_upload_mb (the default: no request lost).
    retry_buffer_mb: float = _bound(0.0, 0.0, 1024)
    request_headers_timeout_s: float = _bound(10.0, 0.1)
    idle_timeout_s: float = _bound(900.0, 0.1)
    connect_timeout_s: float = _bound(2.0, 0.01)
    drain_time_s: float = _bound(30.0, 0.0)


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "least_request"
    retries: int = _bound(1, 0)
    # Resend an upload whose backend reset before answering (a crash): a
    # transcription is idempotent. A query of death then takes down retries + 1
    # backends, so with this on `retries` is at most 1.
    retry_on_reset: bool = True


@dataclass(frozen=True)
class EdgeConfig:
    # Proxies in front of the gateway whose X-Forwarded-For is believed (0: the peer).
    trusted_hops: int = _bound(0, 0, 10)
    # x-gateway-backend on responses names the backend's address: debugging only.
    backend_header: bool = False
    # Pass the client's Authorization / x-api-key to backends (a backend's own key,
    # api_key_env, is injected either way).
    forward_client_key: bool = False
    max_request_headers_kb: int = _bound(60, 1, 8192)
    max_headers_count: int = _bound(100, 1)
    # Envoy's overload manager: past these, new requests get 503 instead of Envoy
    # running out of memory or file descriptors.
    max_heap_mb: int = _bound(2048, 64)
    max_connections: int = _bound(10000, 1)


@dataclass(frozen=True)
class RateLimitConfig:
    # Token buckets, refilled at the rate, holding `burst`; 0 turns one off.
    requests_per_s: float = _bound(0.0, 0.0)  # the whole gateway
    burst: int = _bound(0, 0)
    per_key_requests_per_s: float = _bound(0.0, 0.0)  # each API key (needs api_keys)
    per_key_burst: int = _bound(0, 0)


@dataclass(frozen=True)
class StatsConfig:
    # The sliding window of per-backend request stats (QPS, latency, time to first
    # byte, errors): the router's --request-stats-window.
    window_s: float = _bound(60.0, 1.0, 3600.0)
    # One log line per backend this often; 0 is off (the router's --log-stats and
    # --log-stats-interval).
    log_interval_s: float = _bound(0.0, 0.0)
    # How often each backend's /metrics (running, waiting) is read: the router's
    # --engine-stats-interval.
    engine_interval_s: float = _bound(30.0, 1.0)


@dataclass(frozen=True)
class TlsConfig:
    """The listener's certificate. Read (and re-read on change) by the control plane,
    which hands it to Envoy over SDS."""

    cert_file: str
    key_file: str
    # Make a self-signed certificate for localhost at these paths when they are absent.
    self_signed: bool = False


@dataclass(frozen=True)
class ApiKeysConfig:
    """Client API keys: a YAML file of clients, and/or clients whose key is in an
    environment variable. The file is watched; a bad edit keeps the last good keys."""

    file: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # client name -> environment variable


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """For backends whose URL is https://: the CA that signs them (else the system's
    roots) and an optional client certificate. SNI is each backend's host name."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BackendConfig:
    url: str
    models: tuple[str, ...]
    type: str = "transcription"
    max_concurrency: int = _bound(4, 1)
    api_key_env: str | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    # `make up` starts the server: "cpu" a whisper_backend, "vllm" real vLLM (its own venv)
    launch: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class LongAudioConfig:
    """Long uploads cut at silence and served piece by piece across the fleet
    (docs/long-audio.md). Only the models listed, and only for a request that asks
    with the `x-long-audio: split` header: without it the upload is proxied as sent."""

    models: tuple[str, ...] = ()
    # The splitter service (a child of the supervisor, a container of the gateway pod).
    splitter: HostPort = HostPort("127.0.0.1", 18100)
    # Uploads at most this size go to a backend whole (a 30 s 16 kHz WAV is ~1 MB).
    min_upload_mb: float = _bound(1.0, 0.0, 1024)
    # The longest piece: 30 s is one Whisper window, the most one vLLM request's
    # verbose_json covers whole.
    piece_s: float = _bound(30.0, 5.0, 30.0)
    pieces_per_request: int = _bound(4, 1, 256)  # in flight for one upload
    pieces_in_flight: int = _bound(16, 1, 4096)  # in flight for all uploads together


@dataclass(frozen=True)
class GatewayConfig:
    listener: HostPort = HostPort("127.0.0.1", 8000)
    envoy_admin: HostPort = HostPort("127.0.0.1", 9901)
    xds: HostPort = HostPort("127.0.0.1", 18000)
    admin: HostPort = HostPort("127.0.0.1", 19000)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    backends: tuple[BackendConfig, ...] = ()
    node_id: str = "gateway"
    dns_refresh_s: float = _bound(30.0, 1.0)  # how often backend host names are re-resolved
    # Envoy --concurrency. Each worker may open one connection per host even past
    # the per-host limit, so max_concurrency is exact only with one worker.
    envoy_workers: int = _bound(1, 1)
    # GET /metrics and /engines on the public listener (the admin API always has them).
    # Off by default: they name every backend and its load to whoever reaches the listener.
    public_router_endpoints: bool = False
    # How streamed transcriptions reach clients: OpenAI's transcript.text.* events,
    # the backend's own chunks untouched, or the seed's `data: {"text": ...}`.
    stream_format: str = "openai"
    stream_formats: tuple[tuple[str, str], ...] = ()  # per-model overrides
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    tls: TlsConfig | None = None  # HTTPS on the listener
    api_keys: ApiKeysConfig | None = None  # client keys required
    upstream_tls: UpstreamTlsConfig = field(default_factory=UpstreamTlsConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    # The control plane's log lines and Envoy's access log (one line per request):
    # `text` for people, `json` for log pipelines. `--log-format` overrides it.
    log_format: str = "text"
    long_audio: LongAudioConfig | None = None  # off unless the section is given

    @property
    def models(self) -> tuple[str, ...]:
        """Every served model, in first-seen order."""
        seen: dict[str, None] = {}
        for b in self.backends:
            for m in b.models:
                seen.setdefault(m, None)
        return tuple(seen)
