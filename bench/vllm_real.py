"""The bench on real vLLM (issue 17): `whisper-gateway` with a `launch: vllm` backend
(vLLM 0.32 serving openai/whisper-base on the CPU) beside a `launch: cpu` whisper_backend
serving the same model (testkit.vllm.vllm_stack), in one run:

1. RTF through the gateway against vLLM direct, at c=1 and c=2. The CPU backend is
   drained, so the gateway routes only to vLLM. The same clip (20 s of speech; 5 s with
   --smoke) is sent in closed-loop rounds of 2c requests at concurrency c, the two arms
   taking turns (direct, gateway, gateway, direct, ...: the first arm alternates by
   round) so the machine's other load hits both. RTF = audio seconds per wall second.
   Target: the gateway keeps >= 0.95x direct (the median of the per-round-pair ratios;
   the ratio of the totals is beside it).
3. Mixed fleet: both backends undrained, a batch of 5 s clips at c=4 through the
   gateway; how many each backend served (x-gateway-backend) and p50/p99 latency.
   Figures only.
4. vLLM's load signals while that batch runs: its /metrics
   (vllm:num_requests_running, vllm:num_requests_waiting, summed over engines) and its
   /load, and the gateway's own reading of vLLM's engine, sampled every 0.5 s. Figures
   only: routing on them was not tried in this run.
2. Failover with a real vLLM killed (run last: vLLM takes a minute to come back). The
   CPU backend undrained and HEALTHY, a closed loop of hello.wav at c=2 for a fixed
   window; after a warm-up vLLM's API server pid is SIGKILLed. Client-visible
   failures split into "response not started" (target: 0; the gateway retries those)
   and started (none can be retried); the time until the supervisor restarted vLLM
   and until the probes readmitted it; whether any process of the old vLLM group
   (listed with `ps -g` before the kill) outlived the restart.

Bounded: every request has a deadline, every wait a cap. --smoke: tiny counts, a short
failover window and a short cap on readmission (vLLM's start included, under 4
minutes); its figures mean nothing.

    .venv/bin/python -m bench.vllm_real [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import target, write_result
from testkit.clips import clip_seconds, make_clip
from testkit.load import HELLO, Trace, steady_load
from testkit.vllm import BASE, VllmStack, vllm_stack

GATEWAY_RATIO_TARGET = 0.95
DEADLINE_S = 300.0  # one request; vLLM on two cores decodes 20 s in seconds
NOT_TRIED = (
    "figures only: routing on vLLM's load signals (num_requests_running/waiting, /load) "
    "was not tried in this run; the gateway routes least_request with its own counts"
)


@dataclass(frozen=True)
class Plan:
    rtf_clip_s: float = 20.0
    rtf_rounds: int = 3  # per arm and concurrency
    rtf_per_round: int = 2  # a round is this many times c requests, c at a time
    mixed_clip_s: float = 5.0
    mixed_n: int = 24
    mixed_c: int = 4
    failover_c: int = 2
    warm_s: float = 10.0  # load before the kill
    window_s: float = 90.0  # load after the kill: spans vLLM's restart (and readmission)
    restart_cap_s: float = 90.0  # the supervisor's restart, from the kill
    readmit_cap_s: float = 300.0  # the probes' readmission, from the kill


FULL = Plan()
SMOKE = Plan(
    rtf_clip_s=3.0,
    rtf_rounds=1,
    rtf_per_round=1,
    mixed_clip_s=3.0,
    mixed_n=4,
    warm_s=3.0,
    window_s=6.0,
    restart_cap_s=15.0,
    readmit_cap_s=6.0,
)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return round(s[k], 3)


# ---------------------------------------------------------------- requests


async def transcribe(
    session: aiohttp.ClientSession, url: str, audio: bytes, name: str
) -> tuple[int, str, str]:
    """One upload, JSON answer: status, the backend that served it (gateway only), text."""
    form = aiohttp.FormData()
    form.add_field("file", audio, filename=name, content_type="audio/wav")
    form.add_field("model", BASE)
    form.add_field("response_format", "json")
    async with (
        asyncio.timeout(DEADLINE_S),
        session.post(f"{url}/v1/audio/transcriptions", data=form) as r,
    ):
        body = await r.text()
        backend = r.headers.get("x-gateway-backend", "-")
        text = ""
        if r.status == 200:
            try:
                text = str(json.loads(body)["text"])
            except (ValueError, KeyError, TypeError):
                text = ""
        else:
            text = body[:200]
        return r.status, backend, text


def _check(status: int, text: str, where: str) -> None:
    if status != 200 or not text.strip():
        raise RuntimeError(f"{where}: status {status}, text {text[:200]!r}")


async def closed_loop(url: str, audio: bytes, n: int, conc: int, where: str) -> float:
    """`n` requests, `conc` clients each sending its next as the last one ends; wall s.
    Every answer must be a 200 with a non-empty transcript, or the bench fails."""
    todo = list(range(n))
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def worker() -> None:
            while todo:
                todo.pop()
                status, _, text = await transcribe(s, url, audio, "clip.wav")
                _check(status, text, where)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.perf_counter() - t0


# ---------------------------------------------------------------- 1. RTF


def rtf_arms(stack: VllmStack, clip: Path, seconds: float, plan: Plan) -> dict[str, Any]:
    audio = clip.read_bytes()
    urls = {"direct": f"http://{stack.vllm}", "gateway": stack.gw.url}
    for name, url in urls.items():  # warm up both paths (vLLM's first request is slow)
        asyncio.run(closed_loop(url, audio, 1, 1, f"warm-up {name}"))
    by_c: list[dict[str, Any]] = []
    for conc in (1, 2):
        per_round = plan.rtf_per_round * conc
        walls: dict[str, list[float]] = {"direct": [], "gateway": []}
        load0 = loadavg()
        for r in range(plan.rtf_rounds):
            order = ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]
            for name in order:
                wall = asyncio.run(
                    closed_loop(urls[name], audio, per_round, conc, f"{name} c={conc}")
                )
                walls[name].append(wall)
                print(
                    f"rtf c={conc} round {r} {name}: {per_round * seconds / wall:.2f}x", flush=True
                )
        n = plan.rtf_rounds * per_round
        d_rtf = n * seconds / sum(walls["direct"])
        g_rtf = n * seconds / sum(walls["gateway"])
        pairs = [d / g for d, g in zip(walls["direct"], walls["gateway"], strict=True)]
        by_c.append(
            {
                "concurrency": conc,
                "requests_per_arm": n,
                "requests_per_round": per_round,
                "direct_audio_s_per_wall_s": round(d_rtf, 3),
                "gateway_audio_s_per_wall_s": round(g_rtf, 3),
                "gateway_over_direct_total": round(g_rtf / d_rtf, 3),
                "gateway_over_direct_per_pair": [round(x, 3) for x in pairs],
                "gateway_over_direct_median_pair": round(statistics.median(pairs), 3),
                "wall_s": {k: [round(w, 3) for w in v] for k, v in walls.items()},
                "loadavg_before": load0,
                "loadavg_after": loadavg(),
            }
        )
    return {
        "clip_s": round(seconds, 2),
        "note": "CPU backend drained: every gateway request went to vLLM (checked by header)",
        "by_concurrency": by_c,
    }


def check_gateway_routes_to_vllm(stack: VllmStack, audio: bytes) -> None:
    async def go() -> list[str]:
        async with aiohttp.ClientSession() as s:
            return [(await transcribe(s, stack.gw.url, audio, "clip.wav"))[1] for _ in range(2)]

    backends = asyncio.run(go())
    if any(b != stack.vllm for b in backends):
        raise RuntimeError(f"the gateway did not route to vLLM only: {backends}")


# ---------------------------------------------------------------- 3 + 4. mixed fleet


def metric_sum(text: str, name: str) -> float | None:
    """The sum of a Prometheus series over its labels (vLLM labels by engine); an exact
    name (vllm:num_requests_waiting, never ..._by_reason)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(None, 1)[1])
                seen = True
            except (IndexError, ValueError):
                pass
    return total if seen else None


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:200]
    except OSError as e:
        return 0, repr(e)


def sample_signals(stack: VllmStack) -> dict[str, Any]:
    """One sample: vLLM's /metrics and /load, and the gateway's reading of its engine."""
    out: dict[str, Any] = {"t": time.monotonic()}
    code, text = _get(f"http://{stack.vllm}/metrics")
    if code == 200:
        out["running"] = metric_sum(text, "vllm:num_requests_running")
        out["waiting"] = metric_sum(text, "vllm:num_requests_waiting")
    code, text = _get(f"http://{stack.vllm}/load")
    out["load_status"] = code
    if code == 200:
        try:
            body = json.loads(text)
            out["load_body"] = body
            if isinstance(body, dict) and isinstance(body.get("server_load"), int | float):
                out["server_load"] = float(body["server_load"])
        except ValueError:
            out["load_body"] = text[:200]
    try:
        view = next(b for b in stack.gw.backends() if b["endpoint"] == stack.vllm)
        engine = view.get("engine") or {}
        out["gw_engine_running"] = engine.get("running")
        out["gw_engine_waiting"] = engine.get("waiting")
        out["gw_engine_at"] = engine.get("at")
    except (OSError, StopIteration, ValueError):
        pass
    return out


def summarise(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    xs = [float(s[key]) for s in samples if isinstance(s.get(key), int | float)]
    if not xs:
        return {"samples": 0, "max": None, "mean": None}
    return {"samples": len(xs), "max": max(xs), "mean": round(statistics.mean(xs), 3)}


def mixed_fleet(stack: VllmStack, clip: Path, seconds: float, plan: Plan) -> dict[str, Any]:
    audio = clip.read_bytes()
    samples: list[dict[str, Any]] = []
    load0 = loadavg()

    async def go() -> tuple[float, list[tuple[float, int, str, str]]]:
        done = asyncio.Event()

        async def sampler() -> None:
            while not done.is_set():
                samples.append(await asyncio.to_thread(sample_signals, stack))
                try:
                    await asyncio.wait_for(done.wait(), 0.5)
                except TimeoutError:
                    pass

        rows: list[tuple[float, int, str, str]] = []
        todo = list(range(plan.mixed_n))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:

            async def worker() -> None:
                while todo:
                    todo.pop()
                    t0 = time.perf_counter()
                    try:
                        status, backend, text = await transcribe(s, stack.gw.url, audio, "c.wav")
                    except (TimeoutError, aiohttp.ClientError) as e:
                        status, backend, text = 0, "-", repr(e)
                    rows.append((time.perf_counter() - t0, status, backend, text))

            task = asyncio.create_task(sampler())
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(plan.mixed_c)))
            wall = time.perf_counter() - t0
            done.set()
            await task
        return wall, rows

    wall, rows = asyncio.run(go())
    ok = [r for r in rows if r[1] == 200 and r[3].strip()]
    lat = [r[0] for r in ok]
    names = {stack.vllm: "vllm", stack.cpu: "cpu"}
    per_backend = {
        names.get(b, b): {
            "served": sum(1 for r in ok if r[2] == b),
            "p50_s": pct([r[0] for r in ok if r[2] == b], 50),
            "p99_s": pct([r[0] for r in ok if r[2] == b], 99),
        }
        for b in sorted({r[2] for r in ok})
    }
    load_codes = Counter(s.get("load_status") for s in samples)
    load_bodies = [s["load_body"] for s in samples if "load_body" in s]
    return {
        "clip_s": round(seconds, 2),
        "requests": plan.mixed_n,
        "concurrency": plan.mixed_c,
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "failures": [f"{r[1]} {r[3][:120]}" for r in rows if r not in ok][:5],
        "wall_s": round(wall, 3),
        "audio_s_per_wall_s": round(len(ok) * seconds / wall, 3),
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "served_by": per_backend,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "vllm_signals": {
            "sampled_every_s": 0.5,
            "samples": len(samples),
            "num_requests_running": summarise(samples, "running"),
            "num_requests_waiting": summarise(samples, "waiting"),
            "load_endpoint": {
                "status_codes": {str(k): v for k, v in load_codes.items()},
                "server_load": summarise(samples, "server_load"),
                "first_body": load_bodies[0] if load_bodies else None,
            },
            # The gateway's own reading (its /backends "engine"), refreshed every
            # stats.engine_interval_s (30 s by default): few distinct readings in a batch.
            "gateway_engine_view_running": summarise(samples, "gw_engine_running"),
            "gateway_engine_view_waiting": summarise(samples, "gw_engine_waiting"),
            "gateway_engine_view_distinct_readings": len(
                {s["gw_engine_at"] for s in samples if s.get("gw_engine_at")}
            ),
            "load_endpoint_note": (
                "vLLM runs without --enable-server-load-tracking (whisper_backend.vllm_serve "
                "does not pass it), so /load answers its constant 0"
            ),
            "routing_on_them": NOT_TRIED,
        },
    }


# ---------------------------------------------------------------- 2. failover


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True, timeout=10
    )
    return [int(p) for p in out.stdout.split()]


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a live pid, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


async def poll(cond: Any, cap_s: float, every: float = 0.25) -> float | None:
    """Seconds until `cond()` (run in a thread) holds, None past `cap_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < cap_s:
        try:
            if await asyncio.to_thread(cond):
                return round(time.monotonic() - t0, 2)
        except (OSError, ValueError, KeyError, AssertionError, StopIteration):
            pass  # the supervisor's file mid-rewrite, the admin API busy: ask again
        await asyncio.sleep(every)
    return None


async def probe_verdicts(
    stack: VllmStack, t_kill: float, cap_s: float
) -> tuple[float | None, float | None]:
    """Seconds from the kill to the probes' UNHEALTHY verdict on vLLM, and to its
    readmission (HEALTHY again after that verdict); None past `cap_s` from the kill."""
    loop = asyncio.get_running_loop()
    down = await poll(lambda: stack.health(stack.vllm) == "UNHEALTHY", cap_s)
    if down is None:
        return None, None
    down = round(loop.time() - t_kill, 2)
    rest = max(0.0, cap_s - (loop.time() - t_kill))
    if await poll(lambda: stack.health(stack.vllm) == "HEALTHY", rest) is None:
        return down, None
    return down, round(loop.time() - t_kill, 2)


def failover(stack: VllmStack, plan: Plan) -> dict[str, Any]:
    load0 = loadavg()
    if next(b for b in stack.gw.backends() if b["endpoint"] == stack.cpu)["draining"]:
        stack.admin("undrain", stack.cpu)
    t = time.monotonic()
    stack.gw.wait_backends({stack.cpu, stack.vllm}, timeout=120)
    cpu_healthy_s = round(time.monotonic() - t, 2)
    child = stack.vllm_child()
    leader, starts0 = int(child["pid"]), int(child["starts"])
    family = group_members(leader)
    traces: list[Trace] = []

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        load = asyncio.create_task(
            steady_load(
                stack.gw.url, BASE, plan.failover_c, stop, traces, stream_every=0, deadline_s=120
            )
        )
        try:
            await asyncio.sleep(plan.warm_s)
            in_flight = sum(1 for tr in traces if tr.ended_at is None)
            t_kill = loop.time()
            os.kill(leader, signal.SIGKILL)
            # Each watched in its own task from the kill: none waits on another.
            verdicts = asyncio.create_task(probe_verdicts(stack, t_kill, plan.readmit_cap_s))
            restarted = asyncio.create_task(
                poll(lambda: int(stack.vllm_child()["starts"]) > starts0, plan.restart_cap_s)
            )
            await asyncio.sleep(plan.window_s)
        finally:
            stop.set()
            await load
        t_load_end = loop.time() - t_kill
        to_restart = await restarted
        # Checked once the supervisor has restarted vLLM (it reaps the old group first).
        checked_after_restart = int(stack.vllm_child()["starts"]) > starts0
        survivors: list[dict[str, Any]] = []
        for pid in family:
            st = proc_state(pid)
            if st is not None and st[1] == leader:  # still in the old group
                survivors.append({"pid": pid, "state": st[0]})
        to_unhealthy, to_readmit = await verdicts
        return {
            "t_kill": t_kill,
            "in_flight_at_kill": in_flight,
            "load_ran_after_kill_s": round(t_load_end, 2),
            "kill_to_probe_unhealthy_s": to_unhealthy,
            "kill_to_supervisor_restart_s": to_restart,
            "kill_to_probe_readmitted_s": to_readmit,
            "old_group_survivors": survivors,
            "survivors_checked_after_restart": checked_after_restart,
        }

    raw = asyncio.run(go())
    t_kill = raw.pop("t_kill")
    child_after = stack.vllm_child()
    failures = [tr for tr in traces if tr.failed]
    served_after: Counter[str] = Counter(
        tr.backend for tr in traces if not tr.failed and tr.sent_at >= t_kill
    )
    names = {stack.vllm: "vllm", stack.cpu: "cpu"}
    readmit = raw["kill_to_probe_readmitted_s"]
    on_vllm = [tr.sent_at - t_kill for tr in traces if tr.sent_at >= t_kill and not tr.failed
               and tr.backend == stack.vllm]  # fmt: skip
    return {
        "clip": HELLO.name,
        "concurrency": plan.failover_c,
        "warm_s": plan.warm_s,
        "window_after_kill_s": plan.window_s,
        "cpu_backend_healthy_after_undrain_s": cpu_healthy_s,
        "requests": len(traces),
        "outcomes": dict(Counter(tr.outcome for tr in traces)),
        "client_failures": len(failures),
        "failures_response_not_started": sum(1 for tr in failures if not tr.started),
        "failures_response_started": sum(1 for tr in failures if tr.started),
        "failure_examples": [
            {
                "sent_s_after_kill": round(tr.sent_at - t_kill, 3),
                "started": tr.started,
                "outcome": tr.outcome,
                "error": tr.error[:200],
            }
            for tr in failures[:5]
        ],
        "served_by_before_kill": {
            names.get(b, b): n
            for b, n in Counter(
                tr.backend for tr in traces if not tr.failed and tr.sent_at < t_kill
            ).items()
        },
        "served_by_after_kill": {names.get(b, b): n for b, n in served_after.items()},
        "kill_to_first_request_sent_that_vllm_served_s": round(min(on_vllm), 2)
        if on_vllm
        else None,
        **raw,
        "vllm_group_before_kill": family,
        "vllm_leader_pid": leader,
        "vllm_pid_after": child_after.get("pid"),
        "vllm_starts": {"before": starts0, "after": child_after.get("starts")},
        "supervisor_said_group_reaped": "left processes in its group" in stack.tree.text(),
        "readmission_note": None
        if readmit is not None
        else f"not readmitted within the {plan.readmit_cap_s:.0f} s cap (from the kill)",
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


# ---------------------------------------------------------------- main


def targets_of(rtf: dict[str, Any], fo: dict[str, Any]) -> list[dict[str, Any]]:
    out = [
        target(
            f"RTF via gateway / vLLM direct, c={c['concurrency']} (median of round pairs)",
            f">= {GATEWAY_RATIO_TARGET}x direct",
            c["gateway_over_direct_median_pair"],
            c["gateway_over_direct_median_pair"] >= GATEWAY_RATIO_TARGET,
        )
        for c in rtf["by_concurrency"]
    ]
    out.append(
        target(
            "vLLM SIGKILLed under c=2 load: failures whose response had not started",
            "0",
            fo["failures_response_not_started"],
            fo["failures_response_not_started"] == 0,
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="tiny counts: proves it runs")
    raw_argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw_argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = SMOKE if args.smoke else FULL
    load_start = loadavg()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        rtf_clip = make_clip(work / "rtf.wav", plan.rtf_clip_s)
        mixed_clip = make_clip(work / "mixed.wav", plan.mixed_clip_s, offset_s=20.0)
        rtf_s, mixed_s = clip_seconds(rtf_clip), clip_seconds(mixed_clip)
        (work / "stack").mkdir()
        t0 = time.monotonic()
        with vllm_stack(work / "stack") as stack:
            stack_ready_s = round(time.monotonic() - t0, 1)
            print(
                f"stack ready in {stack_ready_s} s: vLLM {stack.vllm}, cpu {stack.cpu}", flush=True
            )
            check_gateway_routes_to_vllm(stack, mixed_clip.read_bytes())
            rtf = rtf_arms(stack, rtf_clip, rtf_s, plan)
            print(json.dumps(rtf["by_concurrency"], indent=1), flush=True)
            stack.admin("undrain", stack.cpu)
            stack.gw.wait_backends({stack.cpu, stack.vllm}, timeout=120)
            mixed = mixed_fleet(stack, mixed_clip, mixed_s, plan)
            print(json.dumps(mixed, indent=1), flush=True)
            fo = failover(stack, plan)
            print(json.dumps(fo, indent=1), flush=True)
    targets = targets_of(rtf, fo)
    by_c = {c["concurrency"]: c for c in rtf["by_concurrency"]}
    summary = {
        "rtf_c1_direct": by_c[1]["direct_audio_s_per_wall_s"],
        "rtf_c1_gateway": by_c[1]["gateway_audio_s_per_wall_s"],
        "rtf_c1_gateway_over_direct": by_c[1]["gateway_over_direct_median_pair"],
        "rtf_c2_direct": by_c[2]["direct_audio_s_per_wall_s"],
        "rtf_c2_gateway": by_c[2]["gateway_audio_s_per_wall_s"],
        "rtf_c2_gateway_over_direct": by_c[2]["gateway_over_direct_median_pair"],
        "failover_failures_not_started": fo["failures_response_not_started"],
        "failover_failures_started": fo["failures_response_started"],
        "failover_requests": fo["requests"],
        "kill_to_restart_s": fo["kill_to_supervisor_restart_s"],
        "kill_to_readmitted_s": fo["kill_to_probe_readmitted_s"],
        "old_group_survivors": len(fo["old_group_survivors"]),
        "mixed_served_vllm": mixed["served_by"].get("vllm", {}).get("served", 0),
        "mixed_served_cpu": mixed["served_by"].get("cpu", {}).get("served", 0),
        "mixed_p50_s": mixed["p50_s"],
        "mixed_p99_s": mixed["p99_s"],
        "vllm_running_max": mixed["vllm_signals"]["num_requests_running"]["max"],
        "vllm_waiting_max": mixed["vllm_signals"]["num_requests_waiting"]["max"],
    }
    path = write_result(
        "vllm_real",
        {
            "command": " ".join([".venv/bin/python -m bench.vllm_real", *raw_argv]).strip(),
            "smoke": args.smoke,
            "model": BASE,
            "setup": (
                "whisper-gateway (supervisor) with launch: vllm (vLLM 0.32, CPU, "
                "--dtype float32 --enforce-eager, max_concurrency 4) beside launch: cpu "
                "(whisper_backend, max_concurrency 2), both openai/whisper-base; probes "
                "every 5 s, healthy 1, unhealthy 2 (testkit.vllm)"
            ),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "wall_s": round(time.monotonic() - t_start, 1),
            "stack_ready_s": stack_ready_s,
            "plan": asdict(plan),
            "clips": {
                "rtf": f"{rtf_s:.1f} s of speech (testkit.clips.make_clip, WAV)",
                "mixed": f"{mixed_s:.1f} s of speech (offset 20 s)",
                "failover": f"{HELLO.name}",
            },
            "summary": summary,
            "signals_note": NOT_TRIED,
            "rtf": rtf,
            "mixed_fleet": mixed,
            "failover": fo,
            "targets": targets,
        },
    )
    for t in targets:
        print(f"{'met' if t['met'] else 'MISSED':>6}  {t['name']}: {t['value']} ({t['target']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
