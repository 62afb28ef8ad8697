"""The control plane's wiring: config + discovery + health -> snapshot -> ADS.

Holds the only mutable state (addresses, health, draining) and rebuilds the
snapshot from it through the pure layers below on every change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from control_plane import ads
from control_plane.cache import SnapshotCache
from control_plane.config import GatewayConfig
from control_plane.discovery import Resolver, is_ip, resolve
from control_plane.model import (
    EndpointHealth,
    GatewayModel,
    build_model,
    endpoint_health,
    endpoint_key,
)
from control_plane.resources import build_snapshot, load_lua_template
from control_plane.snapshot import ROUTE, merge_for_removal
from health import HealthEvent, HealthMonitor, HealthSettings, HealthStatus, ProbeTarget

log = logging.getLogger("control_plane")

_FROM_PROBE = {
    HealthStatus.UNKNOWN: EndpointHealth.UNKNOWN,
    HealthStatus.HEALTHY: EndpointHealth.HEALTHY,
    HealthStatus.UNHEALTHY: EndpointHealth.UNHEALTHY,
}


@dataclass(frozen=True)
class EndpointView:
    key: str
    backend_url: str
    models: tuple[str, ...]
    health: EndpointHealth
    draining: bool


class ControlPlane:
    def __init__(
        self,
        config: GatewayConfig,
        lua_template: str | None = None,
        config_path: str | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.resolver = resolver
        self.lua_template = lua_template or load_lua_template()
        self.cache = SnapshotCache()
        self.resolved: dict[str, tuple[str, ...]] = {}
        self.health: dict[str, EndpointHealth] = {}
        self.draining: set[str] = set()
        self.model: GatewayModel | None = None
        self.ads: ads.AdsServer | None = None
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.health_monitor: HealthMonitor | None = None

    # ------------------------------------------------------------ state -> snapshot

    def effective_health(self) -> dict[str, EndpointHealth]:
        out = dict(self.health)
        for key in self.draining:
            out[key] = EndpointHealth.DRAINING
        return out

    def rebuild(self) -> bool:
        """Recompute and publish; a snapshot whose references do not close is refused."""
        model = build_model(self.config, self.resolved, self.effective_health())
        snap = build_snapshot(model, self.lua_template)
        ok = self.cache.set(snap)
        if ok:
            self.model = model
        else:
            log.error("snapshot refused, serving the last good one: %s", self.cache.last_refusal)
        return ok

    async def publish_with_removal(self, new_model: GatewayModel) -> bool:
        """Rule 9: stop routing to removed clusters before removing them."""
        new = build_snapshot(new_model, self.lua_template)
        old = self.cache.snapshot
        if old is not None and self.ads is not None:
            first = merge_for_removal(old, new)
            if first is not None and self.cache.set(first):
                await self.ads.wait_acked(ROUTE, first.version(ROUTE), timeout=10.0)
        ok = self.cache.set(new)
        if ok:
            self.model = new_model
        return ok

    def endpoints(self) -> list[EndpointView]:
        health = self.effective_health()
        out = []
        for b in self.config.backends:
            for address in self.resolved.get(b.url, ()):
                key = endpoint_key(address, b.port)
                h = endpoint_health(b, health.get(key))
                out.append(EndpointView(key, b.url, b.models, h, key in self.draining))
        return out

    # ------------------------------------------------------------ inputs

    def set_health(self, key: str, health: EndpointHealth) -> None:
        if self.health.get(key) == health:
            return
        self.health[key] = health
        self.rebuild()

    def drain(self, key: str) -> bool:
        """DRAINING: no new requests; in-flight ones, streams included, finish."""
        if key not in {e.key for e in self.endpoints()}:
            return False
        self.draining.add(key)
        self.rebuild()
        return True

    def undrain(self, key: str) -> bool:
        if key not in self.draining:
            return False
        self.draining.discard(key)
        self.rebuild()
        return True

    async def resolve_all(self) -> bool:
        changed = False
        for b in self.config.backends:
            try:
                addrs = await self.resolver(b.host, b.port)
            except OSError as e:
                log.warning(
                    "cannot resolve %s: %s (keeping %s)", b.host, e, self.resolved.get(b.url, ())
                )
                continue
            if self.resolved.get(b.url) != addrs:
                self.resolved[b.url] = addrs
                changed = True
        return changed

    async def _resolve_loop(self) -> None:
        if all(is_ip(b.host) for b in self.config.backends) and self.resolver is resolve:
            return
        while True:
            await asyncio.sleep(self.config.dns_refresh_s)
            await self.refresh_addresses()

    async def refresh_addresses(self) -> bool:
        """Re-resolve host names; a changed answer changes EDS and the probe targets."""
        if not await self.resolve_all():
            return False
        self.rebuild()
        await self._on_endpoints_changed()
        return True

    def probe_targets(self) -> list[ProbeTarget]:
        """One target per resolved address of every backend that is probed."""
        targets = []
        for b in self.config.backends:
            if not b.health.enabled:
                continue
            h = b.health
            settings = HealthSettings(
                interval_s=h.interval_s,
                timeout_s=h.timeout_s,
                healthy_threshold=h.healthy_threshold,
                unhealthy_threshold=h.unhealthy_threshold,
                expected_word=h.expected_word,
                language=h.language,
            )
            scheme = "https" if b.tls else "http"
            for address in self.resolved.get(b.url, ()):
                host = f"[{address}]" if ":" in address else address
                targets.append(
                    ProbeTarget(
                        key=endpoint_key(address, b.port),
                        base_url=f"{scheme}://{host}:{b.port}",
                        models=b.models,
                        api_key=b.api_key(),
                        settings=settings,
                    )
                )
        return targets

    def _on_health_event(self, event: HealthEvent) -> None:
        """A probe decision: only EDS changes, pushed before this returns to the loop."""
        log.info("health: %s -> %s (%s)", event.target, event.status.value, event.reason)
        self.set_health(event.target, _FROM_PROBE[event.status])

    async def _on_endpoints_changed(self) -> None:
        if self.health_monitor is None:
            return
        targets = self.probe_targets()
        keys = {t.key for t in targets}
        for key in list(self.health):
            if key not in keys:
                del self.health[key]
        await self.health_monitor.set_targets(targets)

    async def reload(self, new: GatewayConfig) -> None:
        """Swap in a validated config; the listener stays, so streams are not drained.

        Raises ValueError (and keeps the running config) for a change that needs a
        restart or a snapshot that does not close.
        """
        for name in ("xds", "admin", "envoy_admin"):
            if getattr(new, name) != getattr(self.config, name):
                raise ValueError(f"{name} cannot change on reload; restart instead")
        old_config, old_resolved = self.config, dict(self.resolved)
        self.config = new
        self.resolved = {}
        await self.resolve_all()
        model = build_model(new, self.resolved, self.effective_health())
        if not await self.publish_with_removal(model):
            self.config, self.resolved = old_config, old_resolved
            raise ValueError(f"new config refused: {self.cache.last_refusal}")
        await self._on_endpoints_changed()
        log.info("config reloaded; models: %s", ", ".join(new.models))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.resolve_all()
        if not self.rebuild():
            raise RuntimeError(f"initial snapshot refused: {self.cache.last_refusal}")
        self.health_monitor = HealthMonitor(self._on_health_event)
        await self.health_monitor.start()
        await self._on_endpoints_changed()
        await self._await_first_verdicts()
        self._grpc, self.ads = await ads.serve(
            self.cache, self.config.xds.address, self.config.xds.port
        )
        self._tasks.append(asyncio.create_task(self._resolve_loop()))
        log.info(
            "xDS (ADS) on %s:%d; models: %s",
            self.config.xds.address,
            self.config.xds.port,
            ", ".join(self.config.models),
        )

    async def _await_first_verdicts(self) -> None:
        """Serve xDS only once every endpoint's first probe has decided (bounded).

        A restarted control plane must not tell a serving Envoy that every
        backend is UNKNOWN (no traffic) while it re-probes: Envoy keeps its last
        config until we answer.
        """
        if self.health_monitor is None:
            return
        targets = self.probe_targets()
        if not targets:
            return
        limit = min(max(t.settings.timeout_s for t in targets), 10.0) + 1.5
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        keys = {t.key for t in targets}
        while loop.time() < deadline:
            if all(k in self.health for k in keys):
                return
            await asyncio.sleep(0.05)
        log.warning("serving xDS before every first probe decided (%.1f s)", limit)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.health_monitor is not None:
            await self.health_monitor.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)

    def probe_snapshot(self) -> dict[str, Any]:
        """The health monitor's per-endpoint probe state, for the admin API."""
        if self.health_monitor is None:
            return {}
        return {k: v.to_dict() for k, v in self.health_monitor.snapshot().items()}

    def status(self) -> dict[str, Any]:
        snap = self.cache.snapshot
        return {
            "versions": snap.versions() if snap else {},
            "snapshot_updated_at": self.cache.updated_at,
            "last_refusal": None
            if self.cache.last_refusal is None
            else {
                "at": self.cache.last_refusal.at,
                "errors": list(self.cache.last_refusal.errors),
            },
            "proxies": [s.to_dict(snap) for s in (self.ads.streams.values() if self.ads else [])],
        }
