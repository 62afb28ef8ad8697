"""The pure threshold state machine: every transition, thresholds, hard vs soft."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

# Submodule imports: they work whether or not the editable install sees `health` as a
# regular package yet (it was installed before health/__init__.py existed).
from health.probe import ProbeResult
from health.settings import HealthSettings
from health.state import HealthStatus, TargetState, apply_result

H, U, K = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN

PASS = ProbeResult(ok=True, hard=False, latency_ms=12.0, text=" Hello world.", model="m")
SOFT = ProbeResult(ok=False, hard=False, latency_ms=10000.0, error="m: timeout", model="m")
HARD = ProbeResult(ok=False, hard=True, latency_ms=1.0, error="m: refused", model="m")
#: A timeout from a backend whose /metrics showed progress: neither pass nor failure.
BUSY = ProbeResult(
    ok=False,
    hard=False,
    latency_ms=10000.0,
    error="busy: timeout after 10s while 4 requests in flight and 3 finished since last probe",
    model="m",
    overload=True,
    busy=True,
)

SETTINGS = HealthSettings(healthy_threshold=2, unhealthy_threshold=3)


def run(
    results: Sequence[ProbeResult],
    state: TargetState | None = None,
    settings: HealthSettings = SETTINGS,
) -> tuple[TargetState, list[tuple[HealthStatus, str]]]:
    """Feed results in order; return the final state and the (status, reason) events."""
    st = state or TargetState()
    events: list[tuple[HealthStatus, str]] = []
    for i, r in enumerate(results):
        st, reason = apply_result(st, r, settings, now=float(i))
        if reason is not None:
            events.append((st.status, reason))
    return st, events


def healthy() -> TargetState:
    st, _ = run([PASS])
    assert st.status is H
    return st


def unhealthy() -> TargetState:
    st, _ = run([HARD])
    assert st.status is U
    return st


def test_starts_unknown_and_unknown_is_not_healthy() -> None:
    st = TargetState()
    assert st.status is K
    assert st.status is not H
    assert st.consecutive_passes == st.consecutive_fails == st.probes_total == 0


def test_unknown_one_pass_is_healthy() -> None:
    st, events = run([PASS])
    assert st.status is H
    assert events == [(H, "first probe passed")]


def test_unknown_soft_failures_reach_unhealthy_at_threshold() -> None:
    st, events = run([SOFT, SOFT])
    assert st.status is K and events == []
    st, events = run([SOFT, SOFT, SOFT])
    assert st.status is U
    assert len(events) == 1
    assert events[0][0] is U and events[0][1].startswith("3 consecutive failures")
    assert "timeout" in events[0][1]


def test_unknown_hard_failure_is_unhealthy_at_once() -> None:
    st, events = run([HARD])
    assert st.status is U
    assert events == [(U, "hard failure: m: refused")]


def test_unknown_pass_after_failures_is_healthy() -> None:
    st, events = run([SOFT, SOFT, PASS])
    assert st.status is H
    assert [e[0] for e in events] == [H]


def test_healthy_soft_failures_below_threshold_keep_healthy() -> None:
    st, events = run([SOFT, SOFT], state=healthy())
    assert st.status is H and events == []
    assert st.consecutive_fails == 2


def test_healthy_soft_failures_at_threshold_eject() -> None:
    st, events = run([SOFT, SOFT, SOFT], state=healthy())
    assert st.status is U
    assert [e[0] for e in events] == [U]


def test_healthy_pass_resets_the_failure_count() -> None:
    st, events = run([SOFT, SOFT, PASS, SOFT, SOFT], state=healthy())
    assert st.status is H and events == []
    assert st.consecutive_fails == 2


def test_healthy_hard_failure_ejects_at_once() -> None:
    st, events = run([HARD], state=healthy())
    assert st.status is U
    assert events == [(U, "hard failure: m: refused")]


def test_healthy_hard_after_soft_ejects_at_once() -> None:
    st, events = run([SOFT, HARD], state=healthy())
    assert st.status is U and len(events) == 1


def test_unhealthy_needs_healthy_threshold_passes() -> None:
    st, events = run([PASS], state=unhealthy())
    assert st.status is U and events == []
    st, events = run([PASS, PASS], state=unhealthy())
    assert st.status is H
    assert events == [(H, "2 consecutive passes")]


def test_unhealthy_failure_resets_the_pass_count() -> None:
    st, events = run([PASS, SOFT, PASS], state=unhealthy())
    assert st.status is U and events == []
    st, events = run([PASS, HARD, PASS, PASS], state=unhealthy())
    assert st.status is H and [e[0] for e in events] == [H]


def test_unhealthy_failures_emit_nothing() -> None:
    st, events = run([SOFT, HARD, SOFT, SOFT, HARD], state=unhealthy())
    assert st.status is U and events == []


def test_healthy_passes_emit_nothing() -> None:
    st, events = run([PASS] * 5, state=healthy())
    assert st.status is H and events == []


@pytest.mark.parametrize("healthy_t,unhealthy_t", [(1, 1), (1, 5), (3, 2), (5, 5)])
def test_thresholds_are_respected(healthy_t: int, unhealthy_t: int) -> None:
    cfg = HealthSettings(healthy_threshold=healthy_t, unhealthy_threshold=unhealthy_t)
    st, _ = run([PASS], settings=cfg)
    st, events = run([SOFT] * (unhealthy_t - 1), state=st, settings=cfg)
    assert st.status is H and events == []
    st, events = run([SOFT], state=st, settings=cfg)
    assert st.status is U and len(events) == 1
    st, events = run([PASS] * (healthy_t - 1), state=st, settings=cfg)
    assert st.status is U and events == []
    st, events = run([PASS], state=st, settings=cfg)
    assert st.status is H and len(events) == 1


def test_full_cycle_events_only_on_transitions() -> None:
    seq = [SOFT, PASS, PASS, SOFT, SOFT, SOFT, SOFT, PASS, PASS, PASS, HARD, PASS, PASS]
    _, events = run(seq)
    assert [e[0] for e in events] == [H, U, H, U, H]


def test_counters_and_last_fields() -> None:
    st, _ = run([PASS, SOFT, SOFT])
    assert st.probes_total == 3
    assert st.failures_total == 2
    assert st.consecutive_fails == 2 and st.consecutive_passes == 0
    assert st.last_probe_at == 2.0
    assert st.last_latency_ms == SOFT.latency_ms
    assert st.last_error == "m: timeout"
    assert st.last_transcript == " Hello world."  # kept from the last probe that had one
    assert st.last_change_at == 0.0
    st, _ = run([PASS], state=st)
    assert st.last_error is None and st.consecutive_passes == 1


@pytest.mark.parametrize("start", ["unknown", "healthy", "unhealthy"])
def test_busy_keeps_status_and_streaks(start: str) -> None:
    first = {"unknown": [], "healthy": [PASS], "unhealthy": [HARD]}[start]
    # Mid-streak in each direction: a soft failure (or pass when unhealthy) before busy.
    streak = [PASS] if start == "unhealthy" else [SOFT]
    before, _ = run([*first, *streak])
    st, events = run([BUSY] * 10, state=before)
    assert events == []
    assert st.status is before.status
    assert st.consecutive_fails == before.consecutive_fails
    assert st.consecutive_passes == before.consecutive_passes
    assert st.failures_total == before.failures_total
    assert st.probes_total == before.probes_total + 10
    assert st.busy_total == 10
    assert st.last_error == BUSY.error and st.last_latency_ms == BUSY.latency_ms
    assert st.last_probe_at == 9.0 and st.last_change_at == before.last_change_at


def test_busy_does_not_break_a_failure_streak() -> None:
    # Busy probes between soft failures neither reset nor advance the count.
    st, events = run([SOFT, BUSY, BUSY, SOFT, BUSY, SOFT], state=healthy())
    assert st.status is U and [e[0] for e in events] == [U]
    assert events[0][1].startswith("3 consecutive failures")
    # ...nor the pass streak back to HEALTHY.
    st, events = run([PASS, BUSY, PASS], state=unhealthy())
    assert st.status is H and events == [(H, "2 consecutive passes")]


def test_busy_with_ok_set_is_a_pass() -> None:
    # busy only means something on a failed probe; ok wins.
    st, _ = run([replace(PASS, busy=True)], state=healthy())
    assert st.busy_total == 0 and st.consecutive_passes == 2


def test_to_dict_is_json_ready() -> None:
    import json

    st, _ = run([PASS])
    d = st.to_dict()
    assert d["status"] == "HEALTHY"
    assert d["consecutive_passes"] == 1
    assert d["last_transcript"] == " Hello world."
    assert d["busy_total"] == 0
    json.dumps(d)


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        HealthSettings(healthy_threshold=0)
    with pytest.raises(ValueError):
        HealthSettings(interval_s=0)
    with pytest.raises(ValueError):
        HealthSettings(jitter=1.5)
    assert HealthSettings(interval_s=0.5).recheck_s == 0.5
    assert HealthSettings(interval_s=5).recheck_s == 1.0


def test_default_clip_is_packaged() -> None:
    s = HealthSettings()
    assert s.clip_path.name == "hello.wav"
    assert s.clip_path.parent.name == "clips"
    data = s.clip_path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
