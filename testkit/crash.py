"""A backend SIGKILLed under steady load (the scenario bench/crash.py measures and
tests/e2e/test_e2e_crash.py asserts on): two real tiny.en backends behind the real
gateway, closed-loop load, the first backend killed by its pid once Envoy holds a
request on it whose response has not started; every request then counted."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.names import cluster_name
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import Trace, steady_load
from testkit.procs import Proc, free_port, start_backend

TINY = "openai/whisper-tiny.en"


CLUSTER = cluster_name(TINY)


#: Envoy cluster counters read after each run (`cluster.<CLUSTER>.<name>`).
STATS = (
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_overflow",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_connect_fail",
)


#: The gateway's default max_concurrency per backend: what one crash can reset at once.
PER_HOST = 4


class Pair:
    """Two real tiny.en backends on fixed ports. The first is the one killed; `ensure`
    starts it again before the next run. Only these processes are ever signalled, by pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.ports = [free_port(), free_port()]
        self.procs: list[Proc | None] = [None, None]

    @property
    def keys(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def victim(self) -> str:
        return self.keys[0]

    def ensure(self) -> None:
        for i, p in enumerate(self.procs):
            if p is None or not p.alive():
                self.procs[i] = start_backend(
                    self.log_dir, port=self.ports[i], env={"HF_HUB_OFFLINE": "1"}
                )[0]

    def kill_victim(self) -> None:
        """SIGKILL, at once: the caller aimed it from a look at Envoy's counters."""
        p = self.procs[0]
        assert p is not None
        p.signal(signal.SIGKILL)

    def reap_victim(self) -> None:
        """Wait for the killed victim: its sockets are closed when this returns."""
        p = self.procs[0]
        assert p is not None and p.popen is not None
        p.popen.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None:
                p.stop()


@dataclass(frozen=True)
class Setting:
    concurrency: int
    stream_every: int  # 2: every other request streamed; 0: none
    retry_on_reset: bool
    #: Kill once the victim holds this many requests whose response has not started.
    want_unstarted: int = 1

    @property
    def name(self) -> str:
        mix = "mixed" if self.stream_every else "unstreamed"
        reset = "on" if self.retry_on_reset else "off"
        return f"c{self.concurrency}-{mix}-want{self.want_unstarted}-retry_on_reset_{reset}"


@dataclass
class CrashRun:
    """One kill: every request the client sent, Envoy's counters and access log."""

    setting: Setting
    victim: str
    traces: list[Trace]
    killed_at: float
    victim_active_at_kill: int
    victim_unstarted_at_kill: int
    stats: dict[str, int]
    access: dict[str, dict[str, Any]] = field(default_factory=dict)  # by request id

    @property
    def failures(self) -> list[Trace]:
        return [t for t in self.traces if t.failed]

    @property
    def started_failures(self) -> list[Trace]:
        """Failures whose response had started: past the point any retry could help."""
        return [t for t in self.failures if t.started]

    @property
    def unstarted_failures(self) -> list[Trace]:
        """The failures the retry on reset is there to prevent."""
        return [t for t in self.failures if not t.started]

    @property
    def resets(self) -> int:
        """Requests on the victim when it died (one per HTTP/1.1 connection)."""
        return self.stats["upstream_cx_destroy_remote_with_active_rq"]

    def describe(self, t: Trace) -> dict[str, Any]:
        """A failed request as the client and Envoy's access log saw it."""
        log = self.access.get(t.request_id, {})
        return {
            "stream": t.stream,
            "outcome": t.outcome,
            "status": t.status,
            "response_started": t.started,
            "body_bytes": t.body_bytes,
            "sent_s_before_kill": round(self.killed_at - t.sent_at, 3),
            "error": t.error[:200],
            "envoy_flags": log.get("flags"),
            "envoy_details": log.get("details"),
            "envoy_upstream": log.get("upstream"),
            "envoy_attempts": log.get("attempts"),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "setting": self.setting.name,
            "requests": len(self.traces),
            "streamed": sum(t.stream for t in self.traces),
            "outcomes": dict(Counter(t.outcome for t in self.traces)),
            "client_failures": len(self.failures),
            "failures_response_started": len(self.started_failures),
            "failures_response_not_started": len(self.unstarted_failures),
            "victim_active_at_kill": self.victim_active_at_kill,
            "victim_unstarted_at_kill": self.victim_unstarted_at_kill,
            "envoy": self.stats,
            "failed": [self.describe(t) for t in self.failures],
        }


def envoy_hosts(gw: Gateway) -> dict[str, dict[str, str]]:
    """Envoy's per-host counters and flags for the model's cluster (admin /clusters)."""
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/clusters", timeout=5) as r:
        text = r.read().decode()
    hosts: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == CLUSTER:
            hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
    return hosts


def wait_hosts_healthy(gw: Gateway, keys: list[str], timeout: float = 60) -> None:
    """Until Envoy itself routes to every backend: the precondition that matters here,
    read where it is decided (Envoy's host flags), not from the control plane's view."""
    deadline = time.monotonic() + timeout
    hosts: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        hosts = envoy_hosts(gw)
        if all(hosts.get(k, {}).get("health_flags") == "healthy" for k in keys):
            return
        time.sleep(0.05)
    raise TimeoutError(f"Envoy does not route to all of {keys}: {hosts}")


def read_access_log(path: Path) -> dict[str, dict[str, Any]]:
    """Envoy's JSON access log lines (stdout) by request id; complete once Envoy exited."""
    entries: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entries[str(entry.get("request_id"))] = entry
    return entries


async def _kill_when_busy(
    gw: Gateway, pair: Pair, traces: list[Trace], want: int, timeout: float
) -> tuple[int, int, float]:
    """SIGKILL the victim once Envoy holds `want` requests on it whose response has not
    started (or at `timeout`). Envoy's rq_active counts the requests on the host; every
    stream in flight that is on the victim or not yet placed is taken off, so what is
    left are non-streamed requests, which start only when their decode is done (0.3-1 s
    away): the kill lands on them, not on an answer already leaving."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        hosts = await asyncio.to_thread(envoy_hosts, gw)
        active = int(hosts.get(pair.victim, {}).get("rq_active", "0"))
        streams = sum(
            1 for t in traces if t.stream and t.ended_at is None and t.backend in (pair.victim, "-")
        )
        unstarted = max(0, active - streams)
        if unstarted >= want or loop.time() > end:
            break
        await asyncio.sleep(0.005)
    killed_at = loop.time()
    pair.kill_victim()  # in the loop, no thread hop between the look and the kill
    await asyncio.to_thread(pair.reap_victim)
    return active, unstarted, killed_at


async def _scenario(
    gw: Gateway, pair: Pair, setting: Setting, before_s: float, after_s: float
) -> CrashRun:
    traces: list[Trace] = []
    stop = asyncio.Event()
    load = asyncio.create_task(
        steady_load(gw.url, TINY, setting.concurrency, stop, traces, setting.stream_every)
    )
    try:
        await asyncio.sleep(before_s)
        active, unstarted, killed_at = await _kill_when_busy(
            gw, pair, traces, setting.want_unstarted, timeout=20
        )
        await asyncio.sleep(after_s)
    finally:
        stop.set()
        await load
    stats = {s: gw.envoy_stat(f"cluster.{CLUSTER}.{s}") or 0 for s in STATS}
    return CrashRun(setting, pair.victim, traces, killed_at, active, unstarted, stats)


def crash_once(
    work: Path,
    pair: Pair,
    setting: Setting,
    before_s: float = 1.5,
    after_s: float = 4.0,
) -> CrashRun:
    """One run on a fresh gateway (fresh counters): load, kill, load on, count."""
    pair.ensure()
    backends = [{"url": f"http://{k}", "models": [TINY]} for k in pair.keys]
    cfg = gateway_config(
        backends,
        health={},  # the defaults: interval 5 s, as deployed
        routing={"retry_on_reset": setting.retry_on_reset},
    )
    gw = start_gateway(work, cfg)
    try:
        wait_hosts_healthy(gw, pair.keys)
        run = asyncio.run(_scenario(gw, pair, setting, before_s, after_s))
    finally:
        gw.stop()
    run.access = read_access_log(gw.workdir / "envoy.log")
    return run
