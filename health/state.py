"""The per-target threshold state machine: pure functions over frozen values, no I/O.

Kept apart from the probing loops so every transition can be unit-tested with
hand-made probe results and a fake clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from health.probe import ProbeResult
    from health.settings import HealthSettings


class HealthStatus(StrEnum):
    """UNKNOWN is not healthy: a backend gets no traffic until its first probe passes."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True)
class HealthEvent:
    """A status transition of one target; emitted only when the status changes."""

    target: str
    status: HealthStatus
    reason: str
    at: float


@dataclass(frozen=True)
class TargetState:
    """What we know about one target, readable from outside (admin API serves to_dict())."""

    status: HealthStatus = HealthStatus.UNKNOWN
    consecutive_passes: int = 0
    consecutive_fails: int = 0
    last_probe_at: float | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None
    last_transcript: str | None = None
    probes_total: int = 0
    failures_total: int = 0
    #: Probes that timed out or got 503/429 from a backend found making progress.
    busy_total: int = 0
    last_change_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (status as its string name)."""
        d = asdict(self)
        d["status"] = self.status.value
        return d


def next_status(
    status: HealthStatus,
    ok: bool,
    hard: bool,
    consecutive_passes: int,
    consecutive_fails: int,
    settings: HealthSettings,
) -> tuple[HealthStatus, str | None]:
    """The status after one probe, given the counters *including* that probe.

    Returns (status, reason) where reason is None when the status does not change.
    """
    if ok:
        if status is HealthStatus.UNKNOWN:
            return HealthStatus.HEALTHY, "first probe passed"
        if status is HealthStatus.UNHEALTHY and consecutive_passes >= settings.healthy_threshold:
            return HealthStatus.HEALTHY, f"{consecutive_passes} consecutive passes"
        return status, None
    if status is HealthStatus.UNHEALTHY:
        return status, None
    if hard:
        # The process is gone: out now, don't wait for the threshold.
        return HealthStatus.UNHEALTHY, "hard failure"
    if consecutive_fails >= settings.unhealthy_threshold:
        return HealthStatus.UNHEALTHY, f"{consecutive_fails} consecutive failures"
    return status, None


def apply_result(
    state: TargetState, result: ProbeResult, settings: HealthSettings, now: float
) -> tuple[TargetState, str | None]:
    """Fold one probe result into the state.

    Returns the new state and, if the status changed, the reason for the event.
    A busy result (backend slow but progressing) is neither a pass nor a failure:
    status and consecutive counters stay as they are; it counts in probes_total and
    busy_total, and its explanation goes to last_error.
    """
    if result.busy and not result.ok:
        busy = replace(
            state,
            last_probe_at=now,
            last_latency_ms=result.latency_ms,
            last_error=result.error,
            probes_total=state.probes_total + 1,
            busy_total=state.busy_total + 1,
        )
        return busy, None
    if result.ok:
        passes, fails = state.consecutive_passes + 1, 0
    else:
        passes, fails = 0, state.consecutive_fails + 1
    status, why = next_status(state.status, result.ok, result.hard, passes, fails, settings)
    new = replace(
        state,
        status=status,
        consecutive_passes=passes,
        consecutive_fails=fails,
        last_probe_at=now,
        last_latency_ms=result.latency_ms,
        last_error=result.error,
        last_transcript=result.text if result.text is not None else state.last_transcript,
        probes_total=state.probes_total + 1,
        failures_total=state.failures_total + (0 if result.ok else 1),
        last_change_at=now if why is not None else state.last_change_at,
    )
    if why is None:
        return new, None
    reason = why if result.error is None else f"{why}: {result.error}"
    return new, reason
