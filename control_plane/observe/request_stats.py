"""Per-backend request stats and audio metering from Envoy's access log stream.

Envoy sends one entry per finished request over gRPC (control_plane.als); this
keeps what the router's /metrics reports (requests per model, per-server QPS
and mean latency over the window, errors by class, a latency histogram per
(server, model, status)), what `whisper-gateway backends` shows (p50/p99
latency and time to first byte over the window), and the audio seconds each
model, backend and client key was served, read from the responses. `server` is
the backend URL as the router writes it: scheme://address:port.
"""

from __future__ import annotations

import bisect
import math
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
    first_byte_s: float | None = None  # until the backend's first response byte
    audio_s: float | None = None  # seconds of audio the response reports
    client: str = ""  # the API key's client name ("" with keys off)
    task: str = "transcriptions"  # or "translations": the path's last part


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True)
class Window:
    """One backend's requests over the window: what `backends` prints."""

    requests: int
    qps: float
    p50_s: float | None
    p99_s: float | None
    first_byte_p50_s: float | None
    errors: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "qps": round(self.qps, 3),
            "latency_p50_s": self.p50_s,
            "latency_p99_s": self.p99_s,
            "first_byte_p50_s": self.first_byte_p50_s,
            "errors": self.errors,
        }


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
        # Metering: (task, model, server, client) -> audio seconds, and the 2xx
        # responses that reported none (a text format, a stream without usage).
        self.audio_seconds: dict[tuple[str, str, str, str], float] = {}
        self.unmetered: Counter[tuple[str, str, str]] = Counter()

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
            if 200 <= f.status < 300:
                if f.audio_s is not None:
                    key4 = (f.task, f.model, f.server, f.client)
                    self.audio_seconds[key4] = self.audio_seconds.get(key4, 0.0) + f.audio_s
                else:
                    self.unmetered[(f.task, f.model, f.server)] += 1
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

    def windows(self) -> dict[str, Window]:
        """server -> its requests over the window."""
        self._trim()
        grouped: dict[str, list[Finished]] = {}
        for f in self.recent:
            grouped.setdefault(f.server, []).append(f)
        out = {}
        for server, fs in grouped.items():
            lat = [f.latency_s for f in fs]
            fb = [f.first_byte_s for f in fs if f.first_byte_s is not None]
            errors = Counter(k for f in fs if (k := error_type(f.status, f.flags)) is not None)
            out[server] = Window(
                requests=len(fs),
                qps=len(fs) / self.window_s,
                p50_s=quantile(lat, 0.5),
                p99_s=quantile(lat, 0.99),
                first_byte_p50_s=quantile(fb, 0.5),
                errors=dict(errors),
            )
        return out
