"""The fleet's state as one frozen value, and the read-only views of it.

`FleetState` (spec, addresses, health per endpoint and model, drains, secrets) is
written by the reconciler alone; `model_of` turns it into what Envoy must do, and
`endpoint_views` into what observers show. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from control_plane.config.sockets import is_ip
from control_plane.ir.model import (
    EndpointHealth,
    GatewayModel,
    GatewaySpec,
    HealthKey,
    Security,
    build_model,
    endpoint_health,
    endpoint_key,
)


@dataclass(frozen=True)
class FleetState:
    spec: GatewaySpec
    resolved: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dns_errors: Mapping[str, str] = field(default_factory=dict)
    health: Mapping[HealthKey, EndpointHealth] = field(default_factory=dict)
    draining: frozenset[str] = frozenset()
    security: Security = field(default_factory=Security)  # certificates and keys, from files


@dataclass(frozen=True)
class EndpointView:
    key: str
    backend_url: str
    models: tuple[str, ...]
    model_health: Mapping[str, EndpointHealth]
    draining: bool

    @property
    def health(self) -> EndpointHealth:
        """The endpoint as a whole: its worst model (DRAINING when drained)."""
        order = (
            EndpointHealth.DRAINING,
            EndpointHealth.UNHEALTHY,
            EndpointHealth.UNKNOWN,
            EndpointHealth.HEALTHY,
        )
        states = set(self.model_health.values())
        return next((h for h in order if h in states), EndpointHealth.UNKNOWN)


def target_key(endpoint: str, model: str) -> str:
    """A probe target is one (endpoint, model): its health is its own."""
    return f"{endpoint}/{model}"


def model_of(state: FleetState) -> GatewayModel:
    """What Envoy must do for this state (pure): the translators' one input."""
    return build_model(state.spec, state.resolved, state.health, state.draining, state.security)


def endpoint_views(state: FleetState) -> list[EndpointView]:
    """One view per endpoint (address:port), merging backends that share it (pure)."""
    views: dict[str, EndpointView] = {}
    for b in state.spec.backends:
        for address in state.resolved.get(b.url, ()):
            key = endpoint_key(address, b.port)
            draining = key in state.draining
            per_model = {
                m: endpoint_health(b, state.health.get((key, m)), draining) for m in b.models
            }
            old = views.get(key)
            if old is not None:
                per_model = {**per_model, **old.model_health}
            models = tuple(dict.fromkeys((*(old.models if old else ()), *b.models)))
            views[key] = EndpointView(key, b.url, models, per_model, draining)
    return list(views.values())


def fixed_addresses(spec: GatewaySpec) -> dict[str, tuple[str, ...]]:
    """Backends given by IP address need no lookup."""
    return {b.url: (b.host,) for b in spec.backends if is_ip(b.host)}


def server_url(view: EndpointView) -> str:
    scheme = "https" if view.backend_url.startswith("https:") else "http"
    return f"{scheme}://{view.key}"
