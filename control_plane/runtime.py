"""The control plane's wiring: front end -> reconciler -> snapshot cache -> ADS.

ControlPlane holds no fleet state of its own. It turns outside inputs (a
reload, a DNS round, a probe verdict, a drain, an ACK) into events for the
Reconciler, which alone writes the state, and reads that state back for the
admin API. Its background tasks run under SupervisedTasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc

from control_plane.config.certs import make_self_signed
from control_plane.config.schema import GatewayConfig
from control_plane.config.sockets import is_ip, where
from control_plane.ir.fleet import EndpointView, FleetState, endpoint_views, fixed_addresses
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import EndpointHealth, GatewaySpec
from control_plane.ir.security import load_security
from control_plane.observe.access_log import AccessLogServer
from control_plane.observe.access_log import register as register_access_log
from control_plane.observe.backend_rows import backend_rows, log_line
from control_plane.observe.engines import EngineSample, scrape_engines
from control_plane.observe.envoy_admin import read_envoy_running
from control_plane.observe.request_stats import RequestStats
from control_plane.reconcile.dns import Resolver, resolve
from control_plane.reconcile.events import Resolved, SecretsChanged, Verdict
from control_plane.reconcile.reconciler import Reconciler, Stats
from control_plane.reconcile.secrets_watch import watch as watch_secrets
from control_plane.reconcile.tasks import SupervisedTasks, TaskInfo
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.cache.snapshot_cache import Refusal, SnapshotCache
from control_plane.xds.server import ads, csds
from control_plane.xds.server.stream_state import StreamState
from control_plane.xds.translator import load_lua_template
from health import HealthEvent, HealthMonitor, HealthStatus, ProbeTarget, TargetState

log = logging.getLogger("control_plane")


_FROM_PROBE = {
    HealthStatus.UNKNOWN: EndpointHealth.UNKNOWN,
    HealthStatus.HEALTHY: EndpointHealth.HEALTHY,
    HealthStatus.UNHEALTHY: EndpointHealth.UNHEALTHY,
}


#: Settings a running process cannot change: they are its sockets.
FIXED_AT_START = ("xds", "admin", "envoy_admin")


LOOKUP_TIMEOUT_S = 10.0


__all__ = ["ControlPlane", "EndpointView"]


class ControlPlane:
    def __init__(
        self,
        config: GatewayConfig,
        lua_template: str | None = None,
        config_path: str | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.resolver = resolver
        if config.tls is not None and config.tls.self_signed:
            make_self_signed(config.tls)
        security = load_security(config)  # ConfigError: refused at start
        self.fixed = {name: getattr(config, name) for name in FIXED_AT_START}
        self.xds_address = config.xds
        self.cache = SnapshotCache()
        self.tasks = SupervisedTasks()
        self.health_monitor = HealthMonitor(self._on_health_event)
        self.reconciler = Reconciler(
            FleetState(spec_from_config(config), security=security),
            self.cache,
            lua_template or load_lua_template(),
            set_targets=self.health_monitor.set_targets,
        )
        self.ads: ads.AdsServer | None = None
        self._grpc: grpc.aio.Server | None = None
        self.request_stats = RequestStats(window_s=config.stats.window_s)
        self.engines: dict[str, EngineSample] = {}
        self.access_log = AccessLogServer(self.request_stats, self._scheme_of)
        admin = config.envoy_admin
        self.envoy_admin_url = f"http://{admin.address}:{admin.port}"
        self.started_at = time.time()
        self._schemes: dict[str, str] = {}
        self._schemes_of: FleetState | None = None
        self.reader = RuntimeReader(self)

    def _scheme_of(self, endpoint: str) -> str:
        """Per access-log entry: a dict lookup, rebuilt only when the state changes."""
        state = self.reconciler.state
        if state is not self._schemes_of:
            self._schemes = {
                v.key: "https" if v.backend_url.startswith("https:") else "http"
                for v in endpoint_views(state)
            }
            self._schemes_of = state
        return self._schemes.get(endpoint, "http")

    # ------------------------------------------------------------ reads

    @property
    def state(self) -> FleetState:
        return self.reconciler.state

    def endpoints(self) -> list[EndpointView]:
        return endpoint_views(self.reconciler.state)

    def probe_targets(self) -> list[ProbeTarget]:
        return [t for _, t in self.reconciler.targets.values()]

    def probe_snapshot(self) -> dict[str, Any]:
        """Probe state per (endpoint, model) target, for the admin API."""
        return {k: v.to_dict() for k, v in self.health_monitor.snapshot().items()}

    # ------------------------------------------------------------ inputs -> events

    def _on_health_event(self, event: HealthEvent) -> None:
        self.reconciler.post(Verdict(event.target, _FROM_PROBE[event.status]))

    async def drain(self, key: str) -> bool:
        """DRAINING: no new requests; in-flight ones, streams included, finish."""
        return await self.reconciler.drain(key, True)

    async def undrain(self, key: str) -> bool:
        return await self.reconciler.drain(key, False)

    async def lookup(self, spec: GatewaySpec) -> dict[str, tuple[str, ...] | str]:
        """Resolve every host name of `spec` at once: url -> addresses, or the error."""
        urls = [(b.url, b.host, b.port) for b in spec.backends if not is_ip(b.host)]

        async def one(host: str, port: int) -> tuple[str, ...] | str:
            try:
                addrs = await asyncio.wait_for(self.resolver(host, port), LOOKUP_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                return f"{type(e).__name__}: {e}"
            if not addrs:
                return "no addresses"
            return tuple(addrs)

        answers = await asyncio.gather(*(one(h, p) for _, h, p in urls))
        return {u: a for (u, _, _), a in zip(urls, answers, strict=True)}

    async def refresh_addresses(self) -> bool:
        """Re-resolve every host name now; True if an endpoint set changed."""
        before = dict(self.reconciler.state.resolved)
        for url, answer in (await self.lookup(self.reconciler.state.spec)).items():
            if isinstance(answer, tuple):
                self.reconciler.post(Resolved(url, answer))
            else:
                self.reconciler.post(Resolved(url, None, answer))
        await self.reconciler.barrier()
        return dict(self.reconciler.state.resolved) != before

    async def _resolve_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconciler.state.spec.dns_refresh_s)
            await self.refresh_addresses()

    async def reload(self, new: GatewayConfig) -> None:
        """Swap in a validated config; the listener stays, so streams are not drained.

        Raises ValueError (and keeps the running config) for a change that needs a
        restart or a snapshot that does not close.
        """
        for name, value in self.fixed.items():
            if getattr(new, name) != value:
                raise ValueError(f"{name} cannot change on reload; restart instead")
        spec = spec_from_config(new)
        if new.tls is not None and new.tls.self_signed:
            make_self_signed(new.tls)
        security = load_security(new)
        lookups = await self.lookup(spec)
        await self.reconciler.change_spec(spec, lookups, security)
        self.config = new
        self.request_stats.window_s = new.stats.window_s

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        spec = self.reconciler.state.spec
        resolved: dict[str, tuple[str, ...]] = fixed_addresses(spec)
        errors: dict[str, str] = {}
        for url, answer in (await self.lookup(spec)).items():
            if isinstance(answer, tuple):
                resolved[url] = answer
            else:
                errors[url] = answer
                log.warning("cannot resolve %s: %s (retrying every refresh)", url, answer)
        await self.health_monitor.start()
        await self.reconciler.start(resolved, errors)
        self.tasks.spawn("reconciler", self.reconciler.run)
        await self._await_first_verdicts()
        plane_tls = self.xds_address.tls
        self._grpc, self.ads = await ads.serve(
            self.cache,
            where(self.xds_address),
            self.reconciler.on_ack,
            self._more_services,
            unix_socket=self.xds_address.unix_socket,
            tls=None
            if plane_tls is None
            else ads.ServerTls(plane_tls.cert_file, plane_tls.key_file, plane_tls.ca_file),
        )
        self.reconciler.acked = self.ads.all_acked
        self.tasks.spawn(
            "secrets",
            lambda: watch_secrets(
                lambda: self.config, lambda sec: self.reconciler.post(SecretsChanged(sec))
            ),
        )
        self.tasks.spawn(
            "engine-stats",
            lambda: scrape_engines(
                self.endpoints, self.engines, lambda: self.config.stats.engine_interval_s
            ),
        )
        self.tasks.spawn("log-stats", self._log_stats)
        if not all(is_ip(b.host) for b in spec.backends) or self.resolver is not resolve:
            self.tasks.spawn("dns", self._resolve_loop)
        log.info(
            "xDS (ADS) on %s; models: %s",
            where(self.xds_address),
            ", ".join(spec.models),
        )

    def _more_services(self, server: grpc.aio.Server) -> None:
        """On the xDS port beside ADS: the access log service and CSDS."""
        register_access_log(server, self.access_log)
        csds.register(
            server,
            csds.ClientStatusServer(
                lambda: list(self.ads.streams.values()) if self.ads else [],
                lambda: self.cache.snapshot,
            ),
        )

    async def _await_first_verdicts(self) -> None:
        """Serve xDS only once every target's first probe has decided (bounded).

        A restarted control plane must not tell a serving Envoy that every
        backend is UNKNOWN (no traffic) while it re-probes: Envoy keeps its last
        config until we answer.
        """
        targets = self.reconciler.targets
        if not targets:
            return
        limit = min(max(t.settings.timeout_s for _, t in targets.values()), 10.0) + 1.5
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        wanted = {hk for hk, _ in targets.values()}
        while loop.time() < deadline:
            if wanted <= set(self.reconciler.state.health):
                return
            await asyncio.sleep(0.05)
        log.warning("serving xDS before every first probe decided (%.1f s)", limit)

    async def backends(self) -> list[dict[str, Any]]:
        """One row per endpoint (observe.backend_rows), in flight read from Envoy now."""
        in_flight = await read_envoy_running(self.envoy_admin_url)
        return backend_rows(
            self.endpoints(), self.request_stats, in_flight, self.engines, self.probe_snapshot()
        )

    async def _log_stats(self) -> None:
        """The router's --log-stats: a line per backend every stats.log_interval_s."""
        while True:
            interval = self.config.stats.log_interval_s
            if interval <= 0:
                await asyncio.sleep(1.0)  # off; a reload may turn it on
                continue
            await asyncio.sleep(interval)
            for row in await self.backends():
                log.info("%s", log_line(row))

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.health_monitor.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)

    def status(self) -> dict[str, Any]:
        snap = self.cache.snapshot
        state = self.reconciler.state
        stats = self.reconciler.stats
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
            "tasks": self.tasks.snapshot(),
            "dns_errors": dict(state.dns_errors),
            "reconciler": {
                "events": dict(stats.events),
                "batches": stats.batches,
                "pushes": stats.pushes,
                "removal_pending": self.reconciler.removal_pending,
                "removals_timed_out": stats.removals_timed_out,
            },
        }


class RuntimeReader:
    """The read model (observe.read_model.FleetReader) over a ControlPlane's parts:
    whole values out, nothing in."""

    def __init__(self, cp: ControlPlane) -> None:
        self._cp = cp

    @property
    def envoy_admin_url(self) -> str:
        return self._cp.envoy_admin_url

    @property
    def started_at(self) -> float:
        return self._cp.started_at

    @property
    def request_stats(self) -> RequestStats:
        return self._cp.request_stats

    def snapshot(self) -> Snapshot | None:
        return self._cp.cache.snapshot

    def last_refusal(self) -> Refusal | None:
        return self._cp.cache.last_refusal

    def streams(self) -> list[StreamState]:
        ads_server = self._cp.ads
        return list(ads_server.streams.values()) if ads_server else []

    def endpoints(self) -> list[EndpointView]:
        return self._cp.endpoints()

    def probes(self) -> Mapping[str, TargetState]:
        return self._cp.health_monitor.snapshot()

    def tasks(self) -> Mapping[str, TaskInfo]:
        return dict(self._cp.tasks.info)

    def reconciler_stats(self) -> Stats:
        return self._cp.reconciler.stats

    def engines(self) -> Mapping[str, EngineSample]:
        return dict(self._cp.engines)

    def status(self) -> dict[str, Any]:
        return self._cp.status()

    async def backends(self) -> list[dict[str, Any]]:
        return await self._cp.backends()
