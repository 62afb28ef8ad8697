"""A snapshot: the full set of xDS resources, versioned per type by content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import message

from control_plane.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    NAMED_TYPES,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    resource_name,
)


def content_version(items: Mapping[str, message.Message]) -> str:
    """Same content, same version: an unchanged type is never re-sent."""
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(items[name].SerializeToString(deterministic=True))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TypeResources:
    version: str
    items: Mapping[str, message.Message]


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeResources] = field(default_factory=dict)

    def version(self, type_url: str) -> str:
        t = self.types.get(type_url)
        return t.version if t else ""

    def items(self, type_url: str) -> Mapping[str, message.Message]:
        t = self.types.get(type_url)
        return t.items if t else {}

    def select(self, type_url: str, names: Iterable[str]) -> list[message.Message]:
        """Full state for CDS/LDS (or an empty name list); the named subset otherwise."""
        items = self.items(type_url)
        wanted = frozenset(names)
        if type_url not in NAMED_TYPES or not wanted:
            return [items[n] for n in sorted(items)]
        return [items[n] for n in sorted(wanted) if n in items]

    def versions(self) -> dict[str, str]:
        return {SHORT_NAMES[t]: self.version(t) for t in PUSH_ORDER}


def make_snapshot(
    clusters: Iterable[message.Message],
    endpoints: Iterable[message.Message],
    listeners: Iterable[message.Message],
    routes: Iterable[message.Message],
    secrets: Iterable[message.Message] = (),
) -> Snapshot:
    types: dict[str, TypeResources] = {}
    for type_url, msgs in (
        (CLUSTER, clusters),
        (ENDPOINT, endpoints),
        (SECRET, secrets),
        (LISTENER, listeners),
        (ROUTE, routes),
    ):
        items = {resource_name(m): m for m in msgs}
        types[type_url] = TypeResources(content_version(items), items)
    return Snapshot(types)
