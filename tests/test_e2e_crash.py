"""A backend SIGKILLed under steady load loses no request whose response had not started.

Real stack: two real tiny.en whisper_backend processes, the control plane, Envoy.
Closed-loop load, every other request streamed; the first backend is SIGKILLed (by
its pid) once Envoy holds a request on it whose response has not started; the load
goes on for a few seconds, then every request is counted. A transcription is
idempotent and Envoy holds the whole upload, so a request reset before its response
started is resent to the other backend (`retry_on: ...,reset`, one retry,
previous_hosts). A stream whose headers already reached the client cannot be
resent: those are the only failures allowed, and Envoy's access log must say so.

The scenario is bench/crash.py's `crash_once`: the bench measures what this asserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.crash import PER_HOST, CrashRun, Pair, Setting, crash_once


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


@pytest.mark.parametrize("concurrency", [4, 8])
def test_backend_crash_loses_no_request_whose_response_had_not_started(
    tmp_path: Path, pair: Pair, concurrency: int
) -> None:
    run = crash_once(tmp_path, pair, Setting(concurrency, stream_every=2, retry_on_reset=True))
    _assert_accounted(run)
    # The kill hit work on the victim, some of it not started (else nothing to prove).
    assert run.victim_unstarted_at_kill >= 1, _why(run)
    assert run.resets >= 1, _why(run)
    _assert_only_started_streams_failed(run)
    # Requests the crash reset before their response started, all served elsewhere:
    # only Envoy's retry can have done that (the control case shows them fail without).
    assert run.resets - len(run.started_failures) >= 1, _why(run)
    assert run.stats["upstream_rq_retry"] >= 1, _why(run)
    assert run.stats["upstream_rq_retry_success"] >= 1, _why(run)


def test_backend_crash_with_a_full_share_of_unstarted_requests(tmp_path: Path, pair: Pair) -> None:
    """The worst moment: the victim holds its whole share (4 per backend at concurrency
    8), none started. All four must be retried at once: the retry budget's floor is
    the per-host limit (it was 3, and the 4th reset got a 503 UO)."""
    run = crash_once(
        tmp_path,
        pair,
        Setting(8, stream_every=0, retry_on_reset=True, want_unstarted=PER_HOST),
    )
    _assert_accounted(run)
    if run.resets < PER_HOST:  # the kill caught fewer: the worst case was not produced
        pytest.skip(f"kill reset {run.resets} requests, not {PER_HOST}: {_why(run)}")
    assert run.failures == [], _why(run)
    assert run.stats["upstream_rq_retry"] >= PER_HOST, _why(run)


def test_control_without_retry_on_reset_requests_in_flight_fail(tmp_path: Path, pair: Pair) -> None:
    """The same kill with `routing.retry_on_reset: false`: requests in flight on the dead
    backend fail. Nothing streamed, so each one on it has not started: deterministic."""
    run = crash_once(tmp_path, pair, Setting(4, stream_every=0, retry_on_reset=False))
    _assert_accounted(run)
    assert run.resets >= 1, _why(run)
    assert 1 <= len(run.failures) <= run.resets, _why(run)
    for t in run.failures:
        log = run.access.get(t.request_id, {})
        assert t.outcome == "clear_error" and t.status == 503, _why(run)
        assert (
            log.get("details") == "upstream_reset_before_response_started{connection_termination}"
        )
        assert log.get("upstream") == run.victim, _why(run)
