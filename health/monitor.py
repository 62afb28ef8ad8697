"""Probe loops: one asyncio task per target, jittered, emitting events on transitions only.

No threads: every target's loop runs on the caller's event loop, so a hanging
backend only ever occupies its own task and never delays the others.

Busy is not broken: after every passing probe, and after a probe that timed out or
got 503/429, the loop also GETs the target's /metrics (health.load) and remembers
the progress counter (finished requests). A timeout/503/429 while that counter moved
since the previous reading and requests are in flight is recorded as BUSY, which
leaves the status alone; a still counter, nothing in flight or unreachable metrics
leave it an ordinary soft failure. Other failures read no metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from health.load import METRICS_TIMEOUT_S, fetch_load, judge
from health.probe import ProbeResult, load_clip, probe_target
from health.settings import ProbeTarget
from health.state import HealthEvent, HealthStatus, TargetState, apply_result

log = logging.getLogger(__name__)

OnEvent = Callable[[HealthEvent], None]

#: Upper bound of the random delay before a target's first probe.
FIRST_PROBE_SPREAD_S = 1.0


@dataclass
class _Runner:
    """Mutable bookkeeping of one target; only its own task writes `state`."""

    target: ProbeTarget
    clip: bytes
    state: TargetState = field(default_factory=TargetState)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Progress counter (finished requests) at the last /metrics reading, None if none yet.
    progress: float | None = None


class HealthMonitor:
    """Probes a changing set of targets and reports status transitions through `on_event`.

    `on_event` is called synchronously on the event loop, once per transition; keep it
    cheap (e.g. mark the EDS snapshot dirty). If `session` is given it is used as is and
    not closed here; otherwise the monitor owns one with connection reuse disabled.
    """

    def __init__(
        self,
        on_event: OnEvent,
        session: aiohttp.ClientSession | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._on_event = on_event
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._rng = rng or random.Random()
        self._runners: dict[str, _Runner] = {}
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session (if we own it) and start probing the known targets."""
        if self._closed:
            raise RuntimeError("HealthMonitor is closed")
        if self._started:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)
            )
        self._started = True
        for runner in self._runners.values():
            self._launch(runner, first=True)

    async def close(self) -> None:
        """Stop every loop and release the session we own. Idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await _cancel_all([r.task for r in self._runners.values()])
            for runner in self._runners.values():
                runner.task = None
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> HealthMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- targets -----------------------------------------------------------------------

    async def set_targets(self, targets: Iterable[ProbeTarget]) -> None:
        """Make the probed set exactly `targets`.

        New targets start UNKNOWN; gone ones stop probing and their state is dropped;
        a changed target (settings, URL, models, key) has its loop restarted but keeps
        its status and counters, so a config reload does not flap the fleet.
        """
        wanted: dict[str, ProbeTarget] = {}
        for t in targets:
            if t.key in wanted and wanted[t.key] != t:
                raise ValueError(f"duplicate target key {t.key!r} with different settings")
            wanted[t.key] = t
        # Read clips before touching anything, so a bad path leaves the monitor unchanged.
        clips = {key: _read_clip(t.settings.clip_path) for key, t in wanted.items()}
        async with self._lock:
            if self._closed:
                raise RuntimeError("HealthMonitor is closed")
            gone = [k for k in self._runners if k not in wanted]
            changed = [
                k for k, t in wanted.items() if k in self._runners and self._runners[k].target != t
            ]
            await _cancel_all([self._runners[k].task for k in gone + changed])
            for key in gone:
                del self._runners[key]
            for key, target in wanted.items():
                old = self._runners.get(key)
                if old is not None and key not in changed:
                    continue
                state = old.state if old is not None else TargetState()
                runner = _Runner(target=target, clip=clips[key], state=state)
                if old is not None and old.target.base_url == target.base_url:
                    runner.progress = old.progress
                self._runners[key] = runner
                if self._started:
                    self._launch(runner, first=True)

    def probe_now(self, key: str) -> bool:
        """Wake a target's loop for an immediate probe; False if the key is unknown."""
        runner = self._runners.get(key)
        if runner is None:
            return False
        runner.wake.set()
        return True

    def snapshot(self) -> dict[str, TargetState]:
        """Current state of every target (immutable values, safe to hand out)."""
        return {key: r.state for key, r in self._runners.items()}

    def status(self, key: str) -> HealthStatus | None:
        """Status of one target, None if it is not probed."""
        runner = self._runners.get(key)
        return None if runner is None else runner.state.status

    # -- loops -------------------------------------------------------------------------

    def _launch(self, runner: _Runner, *, first: bool) -> None:
        runner.task = asyncio.create_task(
            self._run(runner, first=first), name=f"health-probe:{runner.target.key}"
        )

    def _jittered(self, base: float, jitter: float) -> float:
        return max(0.0, base * (1.0 + self._rng.uniform(-jitter, jitter)))

    async def _run(self, runner: _Runner, *, first: bool) -> None:
        s = runner.target.settings
        # First probe soon (a new backend gets no traffic until it passes), spread out
        # a little so a fleet added at once is not probed in lockstep.
        spread = min(s.interval_s * s.jitter, FIRST_PROBE_SPREAD_S)
        delay = self._rng.uniform(0.0, spread) if first else s.interval_s
        while True:
            await self._sleep(runner, delay)
            was = runner.state.status
            result = await self._probe(runner)
            self._record(runner, result)
            failed = not result.ok and not result.busy
            still = runner.state.status is was
            if failed and was is HealthStatus.HEALTHY and still:
                delay = self._jittered(s.recheck_s, s.jitter)  # confirm a failure fast
            elif result.ok and was is not HealthStatus.HEALTHY and still:
                delay = self._jittered(s.recheck_s, s.jitter)  # confirm a recovery fast
            else:
                delay = self._jittered(s.interval_s, s.jitter)

    async def _sleep(self, runner: _Runner, delay: float) -> None:
        """Sleep `delay`, or less if probe_now() wakes us."""
        if runner.wake.is_set():
            runner.wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.wake.wait(), timeout=delay)
        runner.wake.clear()

    async def _probe(self, runner: _Runner) -> ProbeResult:
        assert self._session is not None
        try:
            result = await probe_target(self._session, runner.target, runner.clip)
            if result.ok or (result.overload and not result.hard):
                return await self._check_progress(runner, result)
            return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in probing must not kill the loop
            log.exception("probe of %s crashed", runner.target.key)
            return ProbeResult(ok=False, hard=False, latency_ms=0.0, error=f"probe crashed: {exc}")

    async def _check_progress(self, runner: _Runner, result: ProbeResult) -> ProbeResult:
        """Read /metrics: refresh the progress baseline, and judge an overload failure."""
        assert self._session is not None
        t = runner.target
        load = await fetch_load(
            self._session,
            t.base_url,
            api_key=t.api_key,
            timeout_s=min(METRICS_TIMEOUT_S, t.settings.timeout_s),
        )
        judged = judge(result, runner.progress, load)
        if load is not None and load.finished is not None:
            runner.progress = load.finished
        return judged

    def _record(self, runner: _Runner, result: ProbeResult) -> None:
        now = self._clock()
        runner.state, reason = apply_result(runner.state, result, runner.target.settings, now)
        if reason is None:
            return
        event = HealthEvent(
            target=runner.target.key, status=runner.state.status, reason=reason, at=now
        )
        log.info("health %s -> %s (%s)", event.target, event.status.value, event.reason)
        try:
            self._on_event(event)
        except Exception:
            log.exception("health on_event callback failed for %s", event.target)


def _read_clip(path: Path) -> bytes:
    """Clip bytes, read once per path for the whole process (see load_clip)."""
    return load_clip(Path(path))


async def _cancel_all(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel and wait; asyncio.wait (not await t) so our own cancellation still propagates."""
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live)
