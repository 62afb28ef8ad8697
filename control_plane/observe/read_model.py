"""The read model: what observers (metrics, the admin API, the CLI's tables) may read.

The runtime implements it over the parts it wires (runtime.RuntimeReader); observers
type against this Protocol and never reach into the runtime's attributes, so the
state keeps one owner (the reconciler) and a reader cannot write it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from control_plane.ir.fleet import EndpointView
from control_plane.observe.engines import EngineSample
from control_plane.observe.request_stats import RequestStats
from control_plane.reconcile.reconciler import Stats
from control_plane.reconcile.tasks import TaskInfo
from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.cache.snapshot_cache import Refusal
from control_plane.xds.server.stream_state import StreamState
from health import TargetState


class FleetReader(Protocol):
    @property
    def envoy_admin_url(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def request_stats(self) -> RequestStats: ...

    def snapshot(self) -> Snapshot | None:
        """The published snapshot (None before the first)."""
        ...

    def last_refusal(self) -> Refusal | None: ...

    def streams(self) -> list[StreamState]:
        """One per Envoy connected over ADS."""
        ...

    def endpoints(self) -> list[EndpointView]: ...

    def probes(self) -> Mapping[str, TargetState]:
        """Probe state per (endpoint, model) target key."""
        ...

    def tasks(self) -> Mapping[str, TaskInfo]: ...

    def reconciler_stats(self) -> Stats: ...

    def engines(self) -> Mapping[str, EngineSample]: ...

    def status(self) -> dict[str, Any]:
        """GET /status: versions, proxies, tasks, DNS errors, the reconciler's counts."""
        ...

    async def backends(self) -> list[dict[str, Any]]:
        """GET /backends: one row per endpoint (backend_rows)."""
        ...
