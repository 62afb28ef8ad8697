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
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from control_plane.ir.fleet import FleetState, endpoint_views, fixed_addresses
from control_plane.ir.model import (
    GatewaySpec,
    HealthKey,
    Security,
)
from control_plane.reconcile.events import (
    AckChanged,
    Barrier,
    Drain,
    Event,
    Resolved,
    SecretsChanged,
    SpecChanged,
    Verdict,
)
from control_plane.reconcile.probes import probe_targets
from control_plane.xds.cache.consistency import consistency_errors, merge_for_removal
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.cache.snapshot_cache import SnapshotCache
from control_plane.xds.resource import CLUSTER, ROUTE
from control_plane.xds.translator import snapshot_of
from health import ProbeTarget

log = logging.getLogger("control_plane.reconciler")


#: Events arriving this long after the first of a batch join it: one push per burst.
DEBOUNCE_S = 0.02


#: Longest wait for the route ACK between the two steps of a cluster removal.
REMOVAL_TIMEOUT_S = 10.0


Acked = Callable[[str, str], bool]


SetTargets = Callable[[list[ProbeTarget]], Awaitable[None]]


@dataclass
class Stats:
    events: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    pushes: int = 0
    removals_timed_out: int = 0
    last_batch_size: int = 0


class Reconciler:
    def __init__(
        self,
        state: FleetState,
        cache: SnapshotCache,
        lua_template: str,
        *,
        set_targets: SetTargets | None = None,
        debounce_s: float = DEBOUNCE_S,
        removal_timeout_s: float = REMOVAL_TIMEOUT_S,
    ) -> None:
        self.state = state
        self.cache = cache
        self.lua_template = lua_template
        self.stats = Stats()
        self.acked: Acked = lambda _type, _version: True  # set once ADS serves
        self._set_targets = set_targets
        self._debounce_s = debounce_s
        self._removal_timeout_s = removal_timeout_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._targets: dict[str, tuple[HealthKey, ProbeTarget]] = {}
        self._sent_targets: list[ProbeTarget] | None = None
        self._removal_deadline: float | None = None

    # -- inputs (any task may call these; only the loop writes state) --

    def post(self, event: Event) -> None:
        self.stats.events[type(event).__name__] = self.stats.events.get(type(event).__name__, 0) + 1
        self._queue.put_nowait(event)

    def on_ack(self) -> None:
        if self._removal_deadline is not None:
            self.post(AckChanged())

    async def barrier(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.post(Barrier(fut))
        await fut

    async def drain(self, endpoint: str, draining: bool) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.post(Drain(endpoint, draining, fut))
        return await fut

    async def change_spec(
        self, spec: GatewaySpec, lookups: Mapping[str, Any], security: Security | None = None
    ) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.post(SpecChanged(spec, lookups, fut, security))
        await fut

    @property
    def targets(self) -> Mapping[str, tuple[HealthKey, ProbeTarget]]:
        """The probe targets of the current state, by target key."""
        return self._targets

    @property
    def removal_pending(self) -> bool:
        return self._removal_deadline is not None

    # -- the loop --

    async def start(
        self, resolved: Mapping[str, tuple[str, ...]], dns_errors: Mapping[str, str]
    ) -> None:
        """The first state, snapshot and probe targets, before anything is served."""
        self.state = replace(self.state, resolved=dict(resolved), dns_errors=dict(dns_errors))
        await self._sync_targets()
        if not self._publish():
            raise RuntimeError(f"initial snapshot refused: {self.cache.last_refusal}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(loop)
            try:
                replies = [self._apply(ev) for ev in batch]
                await self._sync_targets()
                self._publish()
            except BaseException as e:
                for ev in batch:
                    reply = getattr(ev, "reply", None)
                    if reply is not None and not reply.done():
                        reply.set_exception(RuntimeError(f"reconciler failed: {e!r}"))
                raise
            for ev, result in zip(batch, replies, strict=True):
                reply = getattr(ev, "reply", None)
                if reply is None or reply.done():
                    continue
                if isinstance(result, BaseException):
                    reply.set_exception(result)
                else:
                    reply.set_result(result)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[Event]:
        timeout = None
        if self._removal_deadline is not None:
            timeout = max(0.0, self._removal_deadline - loop.time())
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []  # a removal's ACK wait ran out: publish decides
        batch: list[Event] = [first]
        end = loop.time() + self._debounce_s
        while (left := end - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self.stats.batches += 1
        self.stats.last_batch_size = len(batch)
        return batch

    # -- folding one event into the state (no I/O) --

    def _apply(self, ev: Event) -> Any:
        s = self.state
        if isinstance(ev, Verdict):
            hk = self._targets.get(ev.target)
            if hk is not None:
                self.state = replace(s, health={**s.health, hk[0]: ev.health})
            return None
        if isinstance(ev, Resolved):
            return self._apply_resolved(ev)
        if isinstance(ev, Drain):
            known = {v.key for v in endpoint_views(s)}
            if ev.draining:
                if ev.endpoint not in known:
                    return False
                self.state = replace(s, draining=s.draining | {ev.endpoint})
                return True
            if ev.endpoint not in s.draining:
                return False
            self.state = replace(s, draining=s.draining - {ev.endpoint})
            return True
        if isinstance(ev, SpecChanged):
            return self._apply_spec(ev)
        if isinstance(ev, SecretsChanged):
            self.state = replace(s, security=ev.security)
            return None
        return None  # AckChanged, Barrier: publishing is all they ask

    def _apply_resolved(self, ev: Resolved) -> None:
        s = self.state
        if all(b.url != ev.url for b in s.spec.backends):
            return  # an answer for a backend a reload removed meanwhile
        if ev.addresses is None:
            kept = s.resolved.get(ev.url, ())
            log.warning("cannot resolve %s: %s (keeping %s)", ev.url, ev.error, list(kept))
            self.state = replace(s, dns_errors={**s.dns_errors, ev.url: ev.error or "failed"})
            return
        errors = {u: e for u, e in s.dns_errors.items() if u != ev.url}
        if s.resolved.get(ev.url) != ev.addresses:
            log.info("%s resolves to %s", ev.url, list(ev.addresses))
        self.state = replace(s, resolved={**s.resolved, ev.url: ev.addresses}, dns_errors=errors)

    def _apply_spec(self, ev: SpecChanged) -> Exception | None:
        s = self.state
        resolved = fixed_addresses(ev.spec)
        errors: dict[str, str] = {}
        for b in ev.spec.backends:
            if b.url in resolved:
                continue
            got = ev.lookups.get(b.url)
            if isinstance(got, tuple):
                resolved[b.url] = got
                continue
            kept = s.resolved.get(b.url)
            if kept is not None:
                resolved[b.url] = kept  # resolved addresses survive a reload
            if isinstance(got, str):
                errors[b.url] = got
                log.warning("cannot resolve %s: %s (keeping %s)", b.url, got, list(kept or ()))
        candidate = replace(
            s,
            spec=ev.spec,
            resolved=resolved,
            dns_errors=errors,
            security=s.security if ev.security is None else ev.security,
        )
        problems = consistency_errors(self._snapshot_of(candidate))
        if problems:
            return ValueError(f"new config refused: {'; '.join(problems)}")
        self.state = candidate
        log.info("config applied; models: %s", ", ".join(ev.spec.models))
        return None

    # -- probe targets follow the endpoints --

    async def _sync_targets(self) -> None:
        targets = probe_targets(self.state)
        self._targets = targets
        wanted = {hk for hk, _ in targets.values()}
        s = self.state
        endpoints = {v.key for v in endpoint_views(s)}
        health = {hk: h for hk, h in s.health.items() if hk in wanted}
        draining = s.draining & endpoints
        if health != s.health or draining != s.draining:
            self.state = replace(s, health=health, draining=draining)
        listed = [t for _, t in targets.values()]
        if self._set_targets is None or listed == self._sent_targets:
            return
        try:
            await self._set_targets(listed)
            self._sent_targets = listed
        except Exception:
            log.exception("probe targets not updated; will retry on the next event")

    # -- state -> snapshot --

    def _snapshot_of(self, state: FleetState) -> Snapshot:
        return snapshot_of(state, self.lua_template)

    def _publish(self) -> bool:
        new = self._snapshot_of(self.state)
        old = self.cache.snapshot
        now = asyncio.get_running_loop().time()
        gone = set(old.items(CLUSTER)) - set(new.items(CLUSTER)) if old is not None else set()
        if gone and old is not None:
            if self._removal_deadline is None:
                self._removal_deadline = now + self._removal_timeout_s
            routes_done = old.version(ROUTE) == new.version(ROUTE) and self.acked(
                ROUTE, new.version(ROUTE)
            )
            if now >= self._removal_deadline:
                log.warning("route ACK not seen; removing clusters %s anyway", sorted(gone))
                self.stats.removals_timed_out += 1
            elif not routes_done:
                # Step one: routes that no longer name the clusters; clusters kept.
                first = merge_for_removal(old, new)
                assert first is not None
                if not self._set(first):
                    return False
                if not self.acked(ROUTE, first.version(ROUTE)):
                    return True
        self._removal_deadline = None
        return self._set(new)

    def _set(self, snap: Snapshot) -> bool:
        before = self.cache.generation
        ok = self.cache.set(snap)
        if not ok:
            log.error("snapshot refused, serving the last good one: %s", self.cache.last_refusal)
        elif self.cache.generation != before:
            self.stats.pushes += 1
        return ok
