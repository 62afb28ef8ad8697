"""A backend SIGKILLed under steady load loses no request whose response had not started.

Real stack: two real tiny.en whisper_backend processes, the control plane, Envoy.
Closed-loop load, every other request streamed; the first backend is SIGKILLed (by
its pid) once Envoy holds a request on it whose response has not started; the load
goes on for a few seconds, then every request is counted. A transcription is
idempotent and Envoy holds the whole upload, so a request reset before its response
started is resent to the other backend (`retry_on: ...,reset`, one retry,
previous_hosts). A stream whose headers already reached the client cannot be
resent: those are the only failures allowed, and Envoy's access log must say so.

The scenario is testkit/crash.py's `crash_once`; bench/crash.py measures what this
asserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.crash import PER_HOST, CrashRun, Pair, Setting, crash_once


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("crash-backends"))
    yield p
    p.stop()


def _why(run: CrashRun) -> str:
    """Everything needed to read a failed assertion without rerunning it."""
    s = run.summary()
    return f"{ {k: v for k, v in s.items() if k != 'failed'} }\nfailed: {s['failed']}"


def _assert_accounted(run: CrashRun) -> None:
    """Every request ended (none hung past its deadline, none still in flight)."""
    assert run.traces, _why(run)
    assert all(t.ended_at is not None and t.outcome != "hang" for t in run.traces), _why(run)


def _assert_only_started_streams_failed(run: CrashRun) -> None:
    """The retry's contract: no request whose response had not started is lost. Each
    failure left is a stream whose 200 and headers had reached the client, cut on the
    dead backend, and Envoy's access log says the reset came after the response began."""
    assert run.unstarted_failures == [], _why(run)
    for t in run.started_failures:
        log = run.access.get(t.request_id, {})
        assert t.stream and t.status == 200, _why(run)
        assert str(log.get("details", "")).startswith("upstream_reset_after_response_started"), (
            _why(run)
        )
        assert log.get("upstream") == run.victim, _why(run)


def _unstarted_resets(run: CrashRun) -> int:
    """Requests the crash reset before their response started (the retry's work)."""
    return run.resets - len(run.started_failures)


def _kills(tmp_path: Path, pair: Pair, setting: Setting, need: int) -> list[CrashRun]:
    """One kill, and a second only if the first reset fewer than `need` unstarted
    requests: the kill is aimed from a look at Envoy's counters, and a request can
    answer in the milliseconds between the look and the kill. Callers hold every run
    to the property, so a second kill never hides a failure of the first."""
    runs = [crash_once(tmp_path / "kill-1", pair, setting)]
    if _unstarted_resets(runs[0]) < need:
        runs.append(crash_once(tmp_path / "kill-2", pair, setting))
    return runs


@pytest.mark.parametrize("concurrency", [2, 4, 8])
def test_backend_crash_loses_no_request_whose_response_had_not_started(
    tmp_path: Path, pair: Pair, concurrency: int
) -> None:
    runs = _kills(tmp_path, pair, Setting(concurrency, stream_every=2, retry_on_reset=True), 1)
    for run in runs:
        _assert_accounted(run)
        # An unstarted failure names its cause in Envoy's flags in the message: UO (the
        # retry budget refused it), URX,UF (the one retry went back to the dead host).
        _assert_only_started_streams_failed(run)
    run = runs[-1]
    # Requests the crash reset before their response started, all served elsewhere:
    # only Envoy's retry can have done that (the control case shows them fail without).
    assert _unstarted_resets(run) >= 1, _why(run)
    assert run.stats["upstream_rq_retry"] >= 1, _why(run)
    assert run.stats["upstream_rq_retry_success"] >= 1, _why(run)


def test_backend_crash_with_a_full_share_of_unstarted_requests(tmp_path: Path, pair: Pair) -> None:
    """The worst moment: the victim holds its whole share (4 per backend at concurrency
    8), none started. All four must be retried at once, so the retry budget's floor
    must cover a backend's share and more (with 3 the 4th reset got a 503 UO; with
    the share alone, a request queued for the dead host as well)."""
    setting = Setting(8, stream_every=0, retry_on_reset=True, want_unstarted=PER_HOST)
    runs = _kills(tmp_path, pair, setting, PER_HOST)
    for run in runs:
        _assert_accounted(run)
        assert run.failures == [], _why(run)
    run = runs[-1]
    assert _unstarted_resets(run) >= PER_HOST, _why(run)
    assert run.stats["upstream_rq_retry"] >= PER_HOST, _why(run)


def test_control_without_retry_on_reset_requests_in_flight_fail(tmp_path: Path, pair: Pair) -> None:
    """The same kill with `routing.retry_on_reset: false`: requests in flight on the dead
    backend fail. Nothing streamed, so each one on it has not started: deterministic."""
    runs = _kills(tmp_path, pair, Setting(4, stream_every=0, retry_on_reset=False), 1)
    run = runs[-1]
    _assert_accounted(run)
    assert run.resets >= 1, _why(run)
    # Each reset request fails. A request that tried a new connection to the dead port
    # before the probe saw it gets a connect failure; with one retry (connect failures
    # are retried in the control too) it rarely fails, but it may, and it is no reset.
    reset = "upstream_reset_before_response_started{connection_termination}"
    refused = "upstream_reset_before_response_started{remote_connection_failure"
    cut = [t for t in run.failures if run.access.get(t.request_id, {}).get("details") == reset]
    assert 1 <= len(cut) <= run.resets, _why(run)
    for t in run.failures:
        log = run.access.get(t.request_id, {})
        assert t.outcome == "clear_error" and t.status == 503, _why(run)
        assert str(log.get("details", "")).startswith((reset, refused)), _why(run)
        assert log.get("upstream") == run.victim, _why(run)
