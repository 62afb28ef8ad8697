"""The reconciler's events: every change to the fleet's state is one of these, posted
on its queue (docs/architecture.md, "The reconciler")."""

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
