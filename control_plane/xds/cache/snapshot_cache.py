"""The snapshot cache: the last good snapshot, the refused ones, and who to wake."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from control_plane.xds.cache.consistency import consistency_errors
from control_plane.xds.cache.snapshot import Snapshot


@dataclass(frozen=True)
class Refusal:
    at: float
    errors: tuple[str, ...]


class SnapshotCache:
    """Holds one snapshot for every Envoy (one node group); readable from outside."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._subscribers: set[asyncio.Event] = set()
        self.generation = 0
        self.last_refusal: Refusal | None = None
        self.updated_at: float | None = None

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def set(self, snap: Snapshot) -> bool:
        """Publish `snap` if its references close; else keep the last good one."""
        errors = consistency_errors(snap)
        if errors:
            self.last_refusal = Refusal(time.time(), tuple(errors))
            return False
        if self._snapshot is not None and self._snapshot.versions() == snap.versions():
            return True
        self._snapshot = snap
        self.generation += 1
        self.updated_at = time.time()
        for ev in self._subscribers:
            ev.set()
        return True

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._subscribers.add(ev)
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        self._subscribers.discard(ev)
