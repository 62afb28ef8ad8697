"""The one owner of control-plane state: events in, snapshots out.

Every input (config reload, DNS answer, probe verdict, drain, Envoy ACK) is an
event on one queue. One task takes a batch of events (the first, plus whatever
arrives within DEBOUNCE_S), folds them into a new FleetState, and publishes
the snapshot built from it. Nothing else writes the state; readers (admin API,
metrics) read the frozen FleetState value, which is always a whole picture.

Removing a cluster takes two pushes (docs/architecture.md, xDS rule 9): first the
new routes with the old clusters kept, then, once every Envoy has ACKed those
routes (or REMOVAL_TIMEOUT_S passed), the clusters go. That wait is a state of
this loop, not an await in the middle of a method, so events keep flowing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.ir.model import (
    EndpointHealth,
    GatewaySpec,
    Security,
)


@dataclass(frozen=True)
class SpecChanged:
    """A reload: the new spec and what its host names resolved to just before."""

    spec: GatewaySpec
    lookups: Mapping[str, tuple[str, ...] | str]  # url -> addresses, or the lookup error
    reply: asyncio.Future[None]
    security: Security | None = None  # the secrets the new config names, read before


@dataclass(frozen=True)
class SecretsChanged:
    """A watched certificate or key file changed and loaded cleanly."""

    security: Security


@dataclass(frozen=True)
class Resolved:
    url: str
    addresses: tuple[str, ...] | None
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    target: str
    health: EndpointHealth


@dataclass(frozen=True)
class Drain:
    endpoint: str
    draining: bool
    reply: asyncio.Future[bool]


@dataclass(frozen=True)
class AckChanged:
    """An Envoy ACKed or NACKed something: a pending removal may go on."""


@dataclass(frozen=True)
class Barrier:
    """Answered once every event posted before it is published."""

    reply: asyncio.Future[None]


Event = SpecChanged | SecretsChanged | Resolved | Verdict | Drain | AckChanged | Barrier
