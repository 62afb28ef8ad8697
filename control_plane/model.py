"""The intermediate model: what Envoy must do, free of YAML and of protobuf.

Built by a pure function from the config, the resolved addresses of each
backend and the health of each endpoint, so every translator downstream sees
one consistent picture.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from control_plane.config import BackendConfig, GatewayConfig, HostPort, LimitsConfig, OutlierConfig


class EndpointHealth(StrEnum):
    """What the control plane knows of an endpoint; UNKNOWN gets no traffic."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"


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


@dataclass(frozen=True)
class GatewayModel:
    listener: HostPort
    limits: LimitsConfig
    outlier: OutlierConfig
    policy: str
    retries: int
    clusters: tuple[ModelCluster, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(c.model for c in self.clusters)


UNROUTED_CLUSTER = "gateway_unrouted"


def cluster_name(model: str) -> str:
    """A stat-safe, collision-free cluster name for a model name."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[:60]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"model_{safe}_{digest}"


def endpoint_key(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def endpoint_health(backend: BackendConfig, known: EndpointHealth | None) -> EndpointHealth:
    """An unprobed endpoint is UNKNOWN (no traffic); with probes off it is HEALTHY
    unless an operator drains it."""
    if not backend.health.enabled:
        return (
            EndpointHealth.DRAINING if known is EndpointHealth.DRAINING else EndpointHealth.HEALTHY
        )
    return known or EndpointHealth.UNKNOWN


def build_model(
    config: GatewayConfig,
    resolved: Mapping[str, tuple[str, ...]],
    health: Mapping[str, EndpointHealth],
) -> GatewayModel:
    """Config + addresses per backend URL + health per endpoint key -> model (pure).

    A backend whose host has not resolved yet has no endpoints; an endpoint
    with no health record is UNKNOWN unless probes are off for its backend.
    """
    per_model: dict[str, list[Endpoint]] = {m: [] for m in config.models}
    limits: dict[str, int] = {}
    tls: dict[str, bool] = {}
    for backend in config.backends:
        addresses = resolved.get(backend.url, ())
        for address in addresses:
            key = endpoint_key(address, backend.port)
            state = endpoint_health(backend, health.get(key))
            ep = Endpoint(key, address, backend.port, backend.url, state)
            for m in backend.models:
                # Two host names may resolve to one address: one endpoint, not two.
                if all(e.key != key for e in per_model[m]):
                    per_model[m].append(ep)
        for m in backend.models:
            # Envoy's per-host limit is one number per cluster: the tightest wins.
            limits[m] = min(limits.get(m, backend.max_concurrency), backend.max_concurrency)
            tls[m] = tls.get(m, False) or backend.tls
    clusters = tuple(
        ModelCluster(
            model=m,
            cluster_name=cluster_name(m),
            endpoints=tuple(sorted(eps, key=lambda e: e.key)),
            max_concurrency_per_host=limits[m],
            tls=tls[m],
        )
        for m, eps in per_model.items()
    )
    return GatewayModel(
        listener=config.listener,
        limits=config.limits,
        outlier=config.outlier,
        policy=config.routing.policy,
        retries=config.routing.retries,
        clusters=clusters,
    )
