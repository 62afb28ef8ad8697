"""Per-backend request stats from Envoy's access log stream, over a sliding window.

Envoy sends one entry per finished request over gRPC (control_plane.als); this
keeps what the router's /metrics reports: requests per model, per-server QPS
and mean latency over the window, errors by class, and a latency histogram
per (server, model, status). `server` is the backend URL as the router writes
it: scheme://address:port of the endpoint that served the request.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: Latency buckets (s): Whisper requests run from ~0.1 s to many minutes.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
DEFAULT_WINDOW_S = 60.0


@dataclass(frozen=True)
class Finished:
    at: float
    server: str  # "" when no backend was reached
    model: str  # "" when the request named none
    status: int
    latency_s: float
    flags: str = ""  # Envoy's response flags (UF, UH, UT, ...)


def error_type(status: int, flags: str) -> str | None:
    """A request's error class, None for a success."""
    if status == 0 or "UC" in flags or "UR" in flags:
        return "connection_reset"
    if "UF" in flags:
        return "connection_failure"
    if "UH" in flags:
        return "no_healthy_backend"
    if "UT" in flags or status == 504:
        return "timeout"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return None


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class RequestStats:
    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self.recent: deque[Finished] = deque()
        self.incoming: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str, str]] = Counter()
        self.latency: dict[tuple[str, str, str], Histogram] = {}

    def add(self, f: Finished) -> None:
        if f.model:
            self.incoming[f.model] += 1
        kind = error_type(f.status, f.flags)
        if kind is not None:
            self.errors[(f.server, f.model, kind)] += 1
        if f.server:
            key = (f.server, f.model, str(f.status))
            self.latency.setdefault(key, Histogram()).observe(f.latency_s)
            self.recent.append(f)
        self._trim()

    def _trim(self) -> None:
        cutoff = self._clock() - self.window_s
        while self.recent and self.recent[0].at < cutoff:
            self.recent.popleft()

    def per_server(self) -> dict[str, tuple[float, float]]:
        """server -> (QPS, mean latency in s) over the window."""
        self._trim()
        grouped: dict[str, list[float]] = {}
        for f in self.recent:
            grouped.setdefault(f.server, []).append(f.latency_s)
        return {s: (len(v) / self.window_s, sum(v) / len(v)) for s, v in grouped.items()}
