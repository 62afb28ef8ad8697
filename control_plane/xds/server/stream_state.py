"""Per-stream, per-type ADS state: the rules of the protocol as pure decisions.

Kept apart from gRPC so each rule is tested without a socket, and so the
admin API can read what was sent, ACKed and NACKed to every Envoy.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    NAMED_TYPES,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
)

# Rule 7: after these are sent, the next request of the paired type is answered.
FORCE_AFTER = {CLUSTER: ENDPOINT, LISTENER: ROUTE}


class SyncState(StrEnum):
    SYNCED = "SYNCED"
    STALE = "STALE"
    NOT_SENT = "NOT_SENT"
    ERROR = "ERROR"


@dataclass
class Nack:
    version: str
    nonce: str
    message: str
    at: float


@dataclass
class TypeState:
    type_url: str
    subscribed: bool = False
    names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    sent_count: int = 0
    acked_version: str = ""
    acked_nonce: str = ""
    acked_at: float | None = None
    ack_count: int = 0
    last_nack: Nack | None = None
    nack_count: int = 0
    stale_ignored: int = 0
    force_next: bool = False

    def sync_state(self, current_version: str) -> SyncState:
        if not self.sent_nonce:
            return SyncState.NOT_SENT
        if self.last_nack is not None and self.last_nack.nonce == self.sent_nonce:
            return SyncState.ERROR
        if self.acked_nonce == self.sent_nonce and self.acked_version == current_version:
            return SyncState.SYNCED
        return SyncState.STALE

    def to_dict(self, current_version: str) -> dict[str, Any]:
        return {
            "state": self.sync_state(current_version).value,
            "current_version": current_version,
            "sent": {
                "version": self.sent_version,
                "nonce": self.sent_nonce,
                "at": self.sent_at,
                "count": self.sent_count,
            },
            "acked": {
                "version": self.acked_version,
                "nonce": self.acked_nonce,
                "at": self.acked_at,
                "count": self.ack_count,
            },
            "last_nack": None
            if self.last_nack is None
            else {
                "version": self.last_nack.version,
                "nonce": self.last_nack.nonce,
                "message": self.last_nack.message,
                "at": self.last_nack.at,
            },
            "nack_count": self.nack_count,
            "stale_ignored": self.stale_ignored,
            "resource_names": sorted(self.names),
        }


@dataclass(frozen=True)
class Response:
    """What to send: type, version label, nonce, resources."""

    type_url: str
    version: str
    nonce: str
    resources: list[Any]


_stream_ids = itertools.count(1)


@dataclass
class StreamState:
    """One ADS stream: one Envoy connection, nonces and state per type."""

    peer: str = ""
    id: int = field(default_factory=lambda: next(_stream_ids))
    node_id: str = ""
    node_cluster: str = ""
    envoy_version: str = ""
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=dict)
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def type_state(self, type_url: str) -> TypeState:
        if type_url not in self.types:
            self.types[type_url] = TypeState(type_url)
        return self.types[type_url]

    def _respond(self, snap: Snapshot, t: TypeState) -> Response:
        # Rule 1: a fresh nonce for every response, per stream.
        nonce = f"{self.id}-{next(self._nonces)}"
        version = snap.version(t.type_url)
        t.sent_version, t.sent_nonce, t.sent_at = version, nonce, time.time()
        t.sent_count += 1
        paired = FORCE_AFTER.get(t.type_url)
        if paired is not None:
            self.type_state(paired).force_next = True
        return Response(t.type_url, version, nonce, snap.select(t.type_url, t.names))

    def on_request(
        self,
        snap: Snapshot | None,
        type_url: str,
        version_info: str,
        response_nonce: str,
        resource_names: list[str],
        error_message: str | None,
        node_id: str = "",
        node_cluster: str = "",
        envoy_version: str = "",
    ) -> Response | None:
        """Apply one DiscoveryRequest; return the response to send, if any."""
        # Rule 2: only the first request carries the node.
        if node_id and not self.node_id:
            self.node_id, self.node_cluster, self.envoy_version = (
                node_id,
                node_cluster,
                envoy_version,
            )
        t = self.type_state(type_url)
        # Rule 5: a reply to anything but our latest response is stale.
        if response_nonce and response_nonce != t.sent_nonce:
            t.stale_ignored += 1
            return None
        first = not t.subscribed
        t.subscribed = True
        if response_nonce:
            if error_message is not None:
                # Rule 4: record the NACK; the same content is not sent again.
                t.last_nack = Nack(t.sent_version, response_nonce, error_message, time.time())
                t.nack_count += 1
            else:
                t.acked_version, t.acked_nonce, t.acked_at = (
                    version_info,
                    response_nonce,
                    time.time(),
                )
                t.ack_count += 1
        names = frozenset(resource_names)
        names_changed = type_url in NAMED_TYPES and names != t.names
        t.names = names
        if snap is None:
            return None
        changed = snap.version(type_url) != t.sent_version
        if response_nonce and error_message is not None:
            return self._respond(snap, t) if changed else None
        forced = t.force_next
        t.force_next = False
        # Rule 6: the first request of each type on a stream is always answered.
        if first or forced or names_changed or changed:
            return self._respond(snap, t)
        return None

    def flush_before(self, snap: Snapshot, type_url: str) -> list[Response]:
        """Changed types that rule 9 orders before `type_url`, to send ahead of it.

        A request can arrive between a snapshot change and its push; answering
        it alone would, say, send new routes before the clusters they name.
        """
        out = []
        for earlier in PUSH_ORDER[: PUSH_ORDER.index(type_url)]:
            t = self.types.get(earlier)
            if t is not None and t.subscribed and snap.version(earlier) != t.sent_version:
                out.append(self._respond(snap, t))
        return out

    def on_snapshot(self, snap: Snapshot) -> list[Response]:
        """Push every subscribed type whose content changed, in rule 9's order."""
        out = []
        for type_url in PUSH_ORDER:
            t = self.types.get(type_url)
            if t is None or not t.subscribed:
                continue
            if snap.version(type_url) != t.sent_version:
                out.append(self._respond(snap, t))
        return out

    def to_dict(self, snap: Snapshot | None) -> dict[str, Any]:
        return {
            "stream_id": self.id,
            "peer": self.peer,
            "node_id": self.node_id,
            "node_cluster": self.node_cluster,
            "envoy_version": self.envoy_version,
            "connected_at": self.connected_at,
            "types": {
                SHORT_NAMES[t]: self.types.get(t, TypeState(t)).to_dict(
                    snap.version(t) if snap else ""
                )
                # SDS only when Envoy asks for it (a TLS listener); the rest always.
                for t in PUSH_ORDER
                if t != SECRET or t in self.types
            },
        }
