"""Failover side by side: one of two real tiny.en backends SIGKILLed under steady load,
through the gateway and through the LiteLLM proxy, in the same run.

Both proxies sit in front of the same two whisper_backend processes (defaults: two
workers each). A closed loop of 4 clients sends hello.wav (nothing streamed: LiteLLM
answers transcriptions whole) through one proxy; after a warm-up the first backend is
SIGKILLed by its pid, the load goes on for a fixed window, then the backend is
started again and the load goes on until a request is served by it (or a cap).
The sides alternate run by run. Settings, stated in the result:

- gateway: its defaults as deployed (least_request; health probes every 5 s, 2 to
  readmit, 3 to drop, a refused connection drops at once; retries 1 with
  retry_on_reset; outlier ejection after 2 gateway failures);
- LiteLLM: bench/litellm_peer.py, its default routing (simple-shuffle) and its
  default cooldown (a deployment failing in a minute sits out 5 s), num_retries 1.

Figures per side: client-visible failures, split by whether the response had
started (no proxy can retry those) or not; time from the kill to the last request
sent to the dead backend; time from the restarted backend's readiness to the first
request it serves. How "sent to the dead backend" is seen:

- for both, from the responses: a request sent after the kill that failed or was
  retried (LiteLLM's `x-litellm-attempted-retries`, Envoy's access-log `attempts`)
  met the dead backend on an attempt made after its send time. Its send time is a
  lower bound of that attempt's, and the last one seen is bounded by the time the
  backend is back (`kill_to_ready_s`): a proxy that keeps trying it stops there;
- for the gateway also directly: Envoy's own per-host counters for the dead host
  (requests, connections, connect failures, errors), polled every 20 ms.

Gateway only: Envoy flagging the host, the probes' verdict, and the time from each
health decision to Envoy's ACK of the EDS update that carries it.

    .venv/bin/python -m bench.failover [--runs 3] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import target, write_result
from testkit.crash import Pair, envoy_hosts, read_access_log, wait_hosts_healthy
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import HELLO

TINY = "openai/whisper-tiny.en"
CONCURRENCY = 4
LITELLM_RETRIES = 1
#: LiteLLM 1.106.2's defaults (litellm/constants.py), not set by the peer's config.
LITELLM_DEFAULTS = {
    "routing_strategy": "simple-shuffle",
    "cooldown_time_s": 5,
    "allowed_fails": 3,
    "failure_threshold_percent": 50,
    "failure_threshold_minimum_requests": 5,
}
GATEWAY_SETTINGS = (
    "defaults: least_request; health interval 5 s, timeout 10 s, healthy 2, unhealthy 3 "
    "(a refused connection is a hard failure); retries 1, retry_on_reset on; outlier "
    "ejection after 2 consecutive gateway failures for 3 s"
)


@dataclass(frozen=True)
class Plan:
    warm_s: float = 4.0  # load before the kill
    window_s: float = 10.0  # load after the kill, before the restart
    readmit_cap_s: float = 20.0  # after the restart, wait at most this for a request on it


FULL, SMOKE = Plan(), Plan(warm_s=2.0, window_s=3.0, readmit_cap_s=12.0)


@dataclass
class Rec:
    """One request as the client saw it, times in the loop's clock."""

    sent_at: float
    ended_at: float | None = None
    status: int | None = None
    headers_at: float | None = None
    outcome: str = "hang"
    backend: str = "-"
    retries: int | None = None  # LiteLLM's header; the gateway's comes from Envoy's log
    request_id: str = ""
    error: str = ""

    @property
    def started(self) -> bool:
        """A success status reached the client: past the point any retry can help."""
        return self.headers_at is not None and self.status is not None and self.status < 400

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"


def _backend(headers: Any) -> str:
    """The backend that answered, as host:port, from either proxy's header."""
    for h in ("x-gateway-backend", "x-litellm-model-api-base"):
        if h in headers:
            return str(headers[h]).removeprefix("http://").removesuffix("/v1").rstrip("/")
    return "-"


async def send(session: aiohttp.ClientSession, url: str, rec: Rec) -> None:
    loop = asyncio.get_running_loop()
    form = aiohttp.FormData()
    form.add_field("model", TINY)
    form.add_field("file", HELLO.read_bytes(), filename=HELLO.name)
    try:
        async with (
            asyncio.timeout(60),
            session.post(f"{url}/v1/audio/transcriptions", data=form) as r,
        ):
            rec.headers_at, rec.status = loop.time(), r.status
            rec.backend = _backend(r.headers)
            rec.request_id = r.headers.get("x-request-id", "")
            if "x-litellm-attempted-retries" in r.headers:
                rec.retries = int(r.headers["x-litellm-attempted-retries"])
            body = await r.read()
        if r.status != 200:
            rec.outcome, rec.error = "http_error", f"{r.status} {body[:200]!r}"
        else:
            try:
                json.loads(body)["text"]
                rec.outcome = "ok"
            except (ValueError, KeyError, TypeError):
                rec.outcome, rec.error = "wrong_answer", f"{body[:200]!r}"
    except TimeoutError:
        rec.outcome = "hang"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        rec.outcome, rec.error = "truncated", repr(e)
    except aiohttp.ClientError as e:
        rec.outcome, rec.error = "connect_error", repr(e)
    rec.ended_at = loop.time()


async def steady(url: str, stop: asyncio.Event, recs: list[Rec]) -> None:
    """Closed loop, CONCURRENCY clients; bounded: nothing starts once `stop` is set."""
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not stop.is_set():
                rec = Rec(sent_at=asyncio.get_running_loop().time())
                recs.append(rec)
                await send(session, url, rec)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def watch_envoy(gw: Gateway, key: str, stop: asyncio.Event) -> dict[str, float | None]:
    """Loop-clock times of the last change of Envoy's counters for `key`, and of its
    first non-healthy flag."""
    loop = asyncio.get_running_loop()
    last_change: float | None = None
    flagged: float | None = None
    prev: int | None = None
    while not stop.is_set():
        host = (await asyncio.to_thread(envoy_hosts, gw)).get(key, {})
        now = loop.time()
        total = sum(
            int(host.get(k, "0")) for k in ("rq_total", "cx_total", "cx_connect_fail", "rq_error")
        )
        if prev is not None and total != prev:
            last_change = now
        prev = total
        flags = host.get("health_flags", "")
        if flagged is None and flags and flags != "healthy":
            flagged = now
        await asyncio.sleep(0.02)
    return {"last_change": last_change, "flagged": flagged}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def decision_to_ack_ms(gw: Gateway, key: str, deadline_s: float = 10) -> float | None:
    """ms from the control plane's health decision on `key` to Envoy's ACK of that EDS."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status = get_json(f"{gw.admin_url}/status")
        eds = status["proxies"][0]["types"]["EDS"]
        backend = next(b for b in get_json(f"{gw.admin_url}/backends") if b["endpoint"] == key)
        changed = backend["probe"]["last_change_at"]
        if eds["acked"]["version"] == status["versions"]["EDS"] and eds["acked"]["at"]:
            return round(max(0.0, (eds["acked"]["at"] - changed) * 1000), 2)
        time.sleep(0.01)
    return None


def probe_health(gw: Gateway, key: str) -> tuple[str, float]:
    b = next(x for x in get_json(f"{gw.admin_url}/backends") if x["endpoint"] == key)
    return str(b["health"]), float(b["probe"]["last_change_at"])


@dataclass
class Side:
    """What differs between the two proxies; the scenario is the same code."""

    name: str
    url: str
    gw: Gateway | None = None  # the gateway's own views (Envoy, probes) when it is one


async def scenario(side: Side, pair: Pair, plan: Plan) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    victim = pair.victim
    recs: list[Rec] = []
    stop_load, stop_watch = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:
        # Not counted: LiteLLM's first transcription imports its OpenAI client (seconds).
        for _ in range(2):
            await send(session, side.url, Rec(sent_at=loop.time()))
    load = asyncio.create_task(steady(side.url, stop_load, recs))
    watcher = None
    try:
        await asyncio.sleep(plan.warm_s)
        if side.gw is not None:
            watcher = asyncio.create_task(watch_envoy(side.gw, victim, stop_watch))
            await asyncio.sleep(0.1)
        in_flight = sum(1 for r in recs if r.ended_at is None)
        t_kill = loop.time()
        wall_kill = time.time()
        pair.kill_victim()
        await asyncio.to_thread(pair.reap_victim)
        verdict_s: float | None = None
        ack_down: float | None = None
        if side.gw is not None:
            gw = side.gw
            while loop.time() - t_kill < plan.window_s:
                health, changed = await asyncio.to_thread(probe_health, gw, victim)
                if health == "UNHEALTHY":
                    verdict_s = round(changed - wall_kill, 3)
                    break
                await asyncio.sleep(0.05)
            ack_down = await asyncio.to_thread(decision_to_ack_ms, gw, victim)
        await asyncio.sleep(max(0.0, t_kill + plan.window_s - loop.time()))
        stop_watch.set()
        watched = await watcher if watcher is not None else {}
        t_restart = loop.time()
        await asyncio.to_thread(pair.ensure)
        t_ready = loop.time()
        window = [r for r in recs if r.sent_at < t_ready]  # sent while it was down
        served: float | None = None
        while loop.time() - t_ready < plan.readmit_cap_s:
            on_victim = [
                r.ended_at
                for r in recs
                if r.ended_at is not None and r.sent_at >= t_ready and r.backend == victim
            ]
            if on_victim:
                served = min(on_victim)
                break
            await asyncio.sleep(0.05)
        ack_up = None
        readmitted_s = None
        if side.gw is not None:
            health, changed = await asyncio.to_thread(probe_health, side.gw, victim)
            if health == "HEALTHY":
                readmitted_s = round(changed - (wall_kill + (t_ready - t_kill)), 3)
                ack_up = await asyncio.to_thread(decision_to_ack_ms, side.gw, victim)
    finally:
        stop_load.set()
        stop_watch.set()
        await load
    return {
        "t_kill": t_kill,
        "recs": window,
        "in_flight_at_kill": in_flight,
        "restart_s": round(t_ready - t_restart, 3),
        "kill_to_ready_s": round(t_ready - t_kill, 3),
        "ready_to_first_served_s": None if served is None else round(served - t_ready, 3),
        "probe_verdict_s": verdict_s,
        "envoy_last_change_s": _since(watched.get("last_change"), t_kill),
        "envoy_flagged_s": _since(watched.get("flagged"), t_kill),
        "decision_to_eds_ack_ms": {"down": ack_down, "up": ack_up},
        "probe_readmitted_after_ready_s": readmitted_s,
        "requests_total": len(recs),
    }


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def judge(raw: dict[str, Any], access: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Client-visible figures of the kill window, and the dead backend's last request."""
    t_kill: float = raw["t_kill"]
    recs: list[Rec] = raw["recs"]
    for r in recs:  # the gateway's attempts, from Envoy's access log
        entry = access.get(r.request_id)
        if r.retries is None and entry is not None:
            try:
                r.retries = int(entry.get("attempts") or 1) - 1
            except ValueError:
                pass
    failures = [r for r in recs if r.failed]
    met_dead = [r for r in recs if r.sent_at >= t_kill and (r.failed or (r.retries or 0) > 0)]
    last = max((r.sent_at for r in met_dead), default=None)
    out = {
        "requests": len(recs),
        "in_flight_at_kill": raw["in_flight_at_kill"],
        "outcomes": dict(Counter(r.outcome for r in recs)),
        "client_failures": len(failures),
        "failures_response_started": sum(1 for r in failures if r.started),
        "failures_response_not_started": sum(1 for r in failures if not r.started),
        "failures_sent_before_kill": sum(1 for r in failures if r.sent_at < t_kill),
        "retried_requests": sum(1 for r in recs if (r.retries or 0) > 0),
        "sent_after_kill_met_dead_backend": len(met_dead),
        "kill_to_last_request_met_dead_s": _since(last, t_kill),
        "served_by": dict(Counter(r.backend for r in recs if not r.failed)),
        "failure_examples": [
            {
                "sent_s_after_kill": round(r.sent_at - t_kill, 3),
                "started": r.started,
                "outcome": r.outcome,
                "error": r.error[:200],
            }
            for r in failures[:5]
        ],
    }
    keep = (
        "kill_to_ready_s",
        "restart_s",
        "ready_to_first_served_s",
        "requests_total",
    )
    out.update({k: raw[k] for k in keep})
    if access:
        out.update(
            {
                k: raw[k]
                for k in (
                    "envoy_last_change_s",
                    "envoy_flagged_s",
                    "probe_verdict_s",
                    "decision_to_eds_ack_ms",
                    "probe_readmitted_after_ready_s",
                )
            }
        )
    return out


def run_gateway(work: Path, pair: Pair, plan: Plan) -> dict[str, Any]:
    pair.ensure()
    backends = [{"url": f"http://{k}", "models": [TINY]} for k in pair.keys]
    gw = start_gateway(work, gateway_config(backends, health={}))
    try:
        wait_hosts_healthy(gw, pair.keys)
        side = Side("gateway", gw.url, gw=gw)
        raw = asyncio.run(scenario(side, pair, plan))
    finally:
        gw.stop()
    return judge(raw, read_access_log(gw.workdir / "envoy.log"))


def run_litellm(work: Path, pair: Pair, plan: Plan) -> dict[str, Any]:
    from bench.litellm_peer import start_litellm

    pair.ensure()
    peer = start_litellm(
        work, [f"http://{k}" for k in pair.keys], [TINY], num_retries=LITELLM_RETRIES
    )
    try:
        raw = asyncio.run(scenario(Side("litellm", peer.url), pair, plan))
    finally:
        peer.stop()
    return judge(raw, {})


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    sums = (
        "requests",
        "client_failures",
        "failures_response_started",
        "failures_response_not_started",
        "retried_requests",
        "sent_after_kill_met_dead_backend",
    )
    out: dict[str, Any] = {"runs": len(runs), **{k: sum(r[k] for r in runs) for k in sums}}
    for k in (
        "kill_to_last_request_met_dead_s",
        "kill_to_ready_s",
        "ready_to_first_served_s",
        "envoy_last_change_s",
        "envoy_flagged_s",
        "probe_verdict_s",
        "probe_readmitted_after_ready_s",
    ):
        if any(k in r for r in runs):
            out[f"median_{k}"] = _median(runs, k)
    acks = [v for r in runs for v in r.get("decision_to_eds_ack_ms", {}).values() if v is not None]
    if acks:
        out["median_decision_to_eds_ack_ms"] = round(statistics.median(acks), 2)
    out["readmitted_within_cap"] = sum(1 for r in runs if r["ready_to_first_served_s"] is not None)
    return out


def targets(gw: dict[str, Any], ll: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = [
        target(
            "gateway: failures of unstarted requests",
            "== 0",
            gw["failures_response_not_started"],
            gw["failures_response_not_started"] == 0,
        )
    ]
    if ll is not None:
        out.append(
            target(
                "gateway client failures <= LiteLLM's (same kills, same load)",
                "<= LiteLLM's " + str(ll["client_failures"]),
                gw["client_failures"],
                gw["client_failures"] <= ll["client_failures"],
            )
        )
        g, lt = gw["sent_after_kill_met_dead_backend"], ll["sent_after_kill_met_dead_backend"]
        out.append(
            target(
                "requests sent after the kill that met the dead backend (retried or failed)",
                f"<= LiteLLM's {lt}",
                g,
                g <= lt,
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="kills per side")
    parser.add_argument("--smoke", action="store_true", help="one short run per side, for CI")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    runs_n = 1 if args.smoke else args.runs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    load_before = os.getloadavg()
    started = time.monotonic()
    pair = Pair(work)
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "litellm": []}
    litellm_error: str | None = None
    try:
        for i in range(runs_n):  # sides alternate: they share the machine's conditions
            runs["gateway"].append(run_gateway(work / f"gw-{i}", pair, plan))
            print("gateway", json.dumps(runs["gateway"][-1]), flush=True)
            if litellm_error is None:
                try:
                    runs["litellm"].append(run_litellm(work / f"litellm-{i}", pair, plan))
                    print("litellm", json.dumps(runs["litellm"][-1]), flush=True)
                except (ImportError, RuntimeError, TimeoutError) as e:
                    litellm_error = f"{type(e).__name__}: {str(e)[:500]}"
    finally:
        pair.stop()
    gw_t = totals(runs["gateway"])
    ll_t = totals(runs["litellm"]) if runs["litellm"] else None
    result = {
        "command": ".venv/bin/python -m bench.failover"
        + (" --smoke" if args.smoke else f" --runs {runs_n}"),
        "smoke": args.smoke,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "run_s": round(time.monotonic() - started, 1),
        "scenario": {
            "backends": "2 x whisper_backend openai/whisper-tiny.en, defaults (2 workers)",
            "load": f"closed loop, concurrency {CONCURRENCY}, tests/fixtures/hello.wav, "
            "nothing streamed",
            "warm_s": plan.warm_s,
            "window_after_kill_s": plan.window_s,
            "readmit_cap_s": plan.readmit_cap_s,
        },
        "settings": {
            "gateway": GATEWAY_SETTINGS,
            "litellm": {"num_retries": LITELLM_RETRIES, **LITELLM_DEFAULTS},
        },
        "totals": {"gateway": gw_t, "litellm": ll_t},
        "litellm_not_run": litellm_error,
        "targets": targets(gw_t, ll_t),
        "runs": runs,
    }
    path = write_result("failover", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
