"""Fleet scheduling: short clips queued behind long ones, per routing policy, same run.

Two real tiny.en whisper_backend processes, each one worker of one thread: each is a
serial queue, like one GPU, and the two together fill this machine's 2 cores (Envoy,
the control plane, the client and LiteLLM take their CPU from the same cores; that is
part of what each arm costs here). One seeded schedule of 60 clips of 5 s and 6 of
90 s (cut from tests/fixtures/long_en.ogg, testkit/clips.py) arrives open loop, as a
Poisson process: its span is set from the clips' service times measured at the start
of the run, so the offered work is 80 % of the two workers' capacity on any machine.
The same schedule is replayed, one arm after the other, through:

- direct: the client sends to the backends itself, the mix split evenly by hand
  (the n-th clip of each kind to backend n mod 2): the baseline;
- the gateway with `routing.policy: least_request` (the default) and `round_robin`,
  otherwise the deployed defaults (max_concurrency 4; health probes every 5 s, each a
  real transcription of a short clip: work the other arms do not have);
- the LiteLLM proxy with its default routing (bench/litellm_peer.py);
- direct again: the drift of the machine between the first arm and the last.

Figures per arm: latency p50/p99 of the short clips (what a bad placement behind a
long clip costs), of the long ones, failures, and audio seconds transcribed per
second of wall time (first arrival to last answer). The offered load is fixed and
below capacity, so throughput differs between arms only by how late the last answers
come: a ratio near 1 means nobody lost capacity, not that anybody is faster.

    .venv/bin/python -m bench.scheduling [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import target, write_result
from testkit.clips import clip_seconds, make_clip
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import Proc, free_port, start_backend

TINY = "openai/whisper-tiny.en"
BACKEND_ARGS = ("--num-workers", "1", "--cpu-threads", "1")
SEED = 11


@dataclass(frozen=True)
class Plan:
    """The run's sizes; `--smoke` shrinks every one of them."""

    short_s: float = 5.0
    long_s: float = 90.0
    shorts: int = 60  # jobs per arm (p99 of 60 is their maximum: stated as such)
    longs: int = 6
    load: float = 0.8  # offered work / the two workers' capacity
    calibration_shorts: int = 3
    deadline_s: float = 120.0


FULL = Plan()
SMOKE = Plan(short_s=1.0, long_s=6.0, shorts=4, longs=1, load=0.5, calibration_shorts=1)


@dataclass(frozen=True)
class Job:
    at: float  # seconds after the arm's start
    kind: str  # "short" | "long"
    index: int  # n-th of its kind


@dataclass
class Done:
    job: Job
    latency_s: float
    ended_at: float  # seconds after the arm's start
    status: int | None
    ok: bool
    backend: str
    error: str = ""


@dataclass
class Clips:
    path: dict[str, Path]
    body: dict[str, bytes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, p in self.path.items():
            self.body[kind] = p.read_bytes()
            self.seconds[kind] = clip_seconds(p)


def backend_of(r: aiohttp.ClientResponse, url: str) -> str:
    """Who served it: the gateway's header, LiteLLM's, or the URL the client chose."""
    for h in ("x-gateway-backend", "x-litellm-model-api-base"):
        if h in r.headers:
            return r.headers[h].removeprefix("http://").removesuffix("/v1").rstrip("/")
    return url.removeprefix("http://")


async def transcribe(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    clips: Clips,
    job: Job,
    t0: float,
    deadline_s: float,
) -> Done:
    form = aiohttp.FormData()
    form.add_field("model", model)
    form.add_field("file", clips.body[job.kind], filename=f"{job.kind}.wav")
    loop = asyncio.get_running_loop()
    start = loop.time()
    status: int | None = None
    backend, error, ok = "-", "", False
    try:
        async with (
            asyncio.timeout(deadline_s),
            session.post(f"{url}/v1/audio/transcriptions", data=form) as r,
        ):
            status, backend = r.status, backend_of(r, url)
            body = await r.read()
        try:
            ok = status == 200 and isinstance(json.loads(body)["text"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            error = f"{status} {body[:160]!r}"
    except TimeoutError:
        error = "client deadline"
    except aiohttp.ClientError as e:
        error = repr(e)[:200]
    end = loop.time()
    return Done(job, end - start, end - t0, status, ok, backend, error)


async def play(
    schedule: list[Job],
    route: Callable[[Job], str],
    model: str,
    clips: Clips,
    deadline_s: float,
) -> list[Done]:
    """Send each job at its time (open loop: nothing waits for an answer), collect all."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for job in schedule:
            await asyncio.sleep(max(0.0, t0 + job.at - loop.time()))
            tasks.append(
                asyncio.create_task(
                    transcribe(session, route(job), model, clips, job, t0, deadline_s)
                )
            )
        return list(await asyncio.gather(*tasks))


def pct(values: list[float], q: float) -> float | None:
    """Nearest rank: the value at or below which a share q of the values lie."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def summarise(done: list[Done], clips: Clips) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("short", "long"):
        lat = [d.latency_s for d in done if d.job.kind == kind and d.ok]
        out[kind] = {
            "sent": sum(1 for d in done if d.job.kind == kind),
            "ok": len(lat),
            "p50_s": r3(pct(lat, 0.5)),
            "p99_s": r3(pct(lat, 0.99)),
            "max_s": r3(max(lat) if lat else None),
            "by_backend": dict(Counter(d.backend for d in done if d.job.kind == kind)),
        }
    good = [d for d in done if d.ok]
    audio = sum(clips.seconds[d.job.kind] for d in good)
    span = max((d.ended_at for d in done), default=0.0)
    per_backend: dict[str, float] = {}
    for b in sorted({d.backend for d in good}):
        mine = [d for d in good if d.backend == b]
        per_backend[b] = round(
            sum(clips.seconds[d.job.kind] for d in mine) / max(d.ended_at for d in mine), 2
        )
    failures = [d for d in done if not d.ok]
    return {
        **out,
        "failures": len(failures),
        "failure_examples": [f"{d.job.kind}: {d.error}" for d in failures[:5]],
        "audio_s": round(audio, 1),
        "wall_s": round(span, 3),
        "audio_s_per_s": round(audio / span, 2) if span else None,
        "audio_s_per_s_by_backend": per_backend,
    }


def work_s(plan: Plan, service: dict[str, float]) -> float:
    """The whole schedule's work on one backend, from its measured service times."""
    return plan.shorts * service["short"] + plan.longs * service["long"]


def arrivals_s(plan: Plan, services: list[dict[str, float]]) -> float:
    """How long the jobs take to arrive: the time the backends together need for the
    whole schedule (each backend's speed measured: 1 / sum of 1 / its work), over
    `load`. Two equal backends: their work over 2 x `load`."""
    together = 1.0 / sum(1.0 / work_s(plan, s) for s in services)
    return together / plan.load


def make_schedule(plan: Plan, services: list[dict[str, float]], seed: int = SEED) -> list[Job]:
    """Poisson arrivals of a fixed number of each kind (given n arrivals of a Poisson
    process over a span, their times are n uniform draws), the span from the measured
    service times, so the offered work is `load` of the backends' capacity."""
    rng = random.Random(seed)
    span = arrivals_s(plan, services)
    kinds = ["short"] * plan.shorts + ["long"] * plan.longs
    jobs = sorted((rng.uniform(0, span), kind) for kind in kinds)
    seen: Counter[str] = Counter()
    schedule = []
    for at, kind in jobs:
        schedule.append(Job(round(at, 3), kind, seen[kind]))
        seen[kind] += 1
    return schedule


async def service_times(url: str, clips: Clips, plan: Plan, model: str = TINY) -> dict[str, float]:
    """Each kind alone on one idle backend: the median of a few, after a warm-up."""
    times: dict[str, list[float]] = {"short": [], "long": []}
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        warm = Job(0, "short", 0)
        await transcribe(session, url, model, clips, warm, loop.time(), plan.deadline_s)
        for kind, n in (("short", plan.calibration_shorts), ("long", 1)):
            for i in range(n):
                d = await transcribe(
                    session, url, model, clips, Job(0, kind, i), loop.time(), plan.deadline_s
                )
                if not d.ok:
                    raise RuntimeError(f"calibration failed: {d.error}")
                times[kind].append(d.latency_s)
    return {k: statistics.median(v) for k, v in times.items()}


def run_arm(
    schedule: list[Job], route: Callable[[Job], str], model: str, clips: Clips, plan: Plan
) -> dict[str, Any]:
    done = asyncio.run(play(schedule, route, model, clips, plan.deadline_s))
    return summarise(done, clips)


def gateway_arm(
    work: Path,
    keys: list[str],
    policy: str,
    schedule: list[Job],
    clips: Clips,
    plan: Plan,
    model: str = TINY,
    health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    backends = [{"url": f"http://{k}", "models": [model]} for k in keys]
    cfg = gateway_config(backends, health=health or {}, routing={"policy": policy})
    gw = start_gateway(Path(tempfile.mkdtemp(prefix=f"gw-{policy}-", dir=work)), cfg)
    try:
        gw.wait_backends(set(keys))
        before = probes_sent(gw)
        result = run_arm(schedule, lambda _: str(gw.url), model, clips, plan)
        probes = probes_sent(gw) - before
    finally:
        gw.stop()
    return {
        "settings": f"routing.policy {policy}, health {health or 'the defaults'}, "
        "other settings the defaults",
        # Each probe is a transcription on the same single-worker backends.
        "health_probes_during_arm": probes,
        **result,
    }


def probes_sent(gw: Gateway) -> int:
    return sum(int(b["probe"].get("probes_total") or 0) for b in gw.backends())


def litellm_arm(
    work: Path, keys: list[str], schedule: list[Job], clips: Clips, plan: Plan
) -> dict[str, Any]:
    """LiteLLM's proxy with its default routing (simple-shuffle), no retries (nothing
    fails here), in front of the same two backends."""
    from bench.litellm_peer import LITELLM_VERSION, start_litellm

    peer = start_litellm(work / "litellm", [f"http://{k}" for k in keys], [TINY])
    try:
        # Its first transcription imports the OpenAI client: not a scheduling cost.
        asyncio.run(warm(peer.url, clips, plan))
        result = run_arm(schedule, lambda _: str(peer.url), TINY, clips, plan)
    finally:
        peer.stop()
    settings = f"LiteLLM {LITELLM_VERSION}, routing simple-shuffle (its default), num_retries 0"
    return {"settings": settings, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny clips and counts, for CI")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-scheduling-"))
    clips = Clips(
        {
            "short": make_clip(work / "short.wav", plan.short_s),
            "long": make_clip(work / "long.wav", plan.long_s),
        }
    )
    started = time.monotonic()
    load_before = os.getloadavg()
    procs: list[Proc] = []
    try:
        ports = [free_port(), free_port()]
        for p in ports:
            procs.append(start_backend(work, port=p, extra=BACKEND_ARGS)[0])
        keys = [f"127.0.0.1:{p}" for p in ports]
        urls = [f"http://{k}" for k in keys]
        for u in urls[1:]:  # the first warms up in service_times
            asyncio.run(warm(u, clips, plan))
        service = asyncio.run(service_times(urls[0], clips, plan))
        schedule = make_schedule(plan, [service, service])
        span = arrivals_s(plan, [service, service])
        arms: dict[str, Any] = {}
        direct = "the n-th clip of each kind to backend n mod 2"
        arms["direct"] = {
            "settings": direct,
            **run_arm(schedule, lambda j: urls[j.index % 2], TINY, clips, plan),
        }
        for policy in ("least_request", "round_robin"):
            arms[f"gateway_{policy}"] = gateway_arm(work, keys, policy, schedule, clips, plan)
        try:
            arms["litellm_default"] = litellm_arm(work, keys, schedule, clips, plan)
        except (ImportError, RuntimeError, TimeoutError) as e:  # stated, never hidden
            arms["litellm_default"] = {"not_run": f"{type(e).__name__}: {str(e)[:500]}"}
        # Again at the end: the two brackets show how much the machine drifted meanwhile.
        arms["direct_again"] = {
            "settings": direct + " (the same arm, run last)",
            **run_arm(schedule, lambda j: urls[j.index % 2], TINY, clips, plan),
        }
    finally:
        for proc in procs:
            proc.stop()
    result = {
        "command": ".venv/bin/python -m bench.scheduling" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "run_s": round(time.monotonic() - started, 1),
        "scenario": {
            "backends": "2 x whisper_backend openai/whisper-tiny.en, 1 worker x 1 thread each",
            "service_time_s": {k: round(v, 3) for k, v in service.items()},
            **schedule_facts(plan, clips, schedule, span),
        },
        "arms": arms,
        "targets": targets(arms),
    }
    publish("scheduling", result)


def schedule_facts(plan: Plan, clips: Clips, schedule: list[Job], span: float) -> dict[str, Any]:
    """What was offered, for the result file."""
    return {
        "clips_s": clips.seconds,
        "offered_load": plan.load,
        "arrivals_s": round(span, 2),
        "jobs": dict(Counter(j.kind for j in schedule)),
        "offered_audio_s_per_s": round(sum(clips.seconds[j.kind] for j in schedule) / span, 2),
        "seed": SEED,
    }


def publish(name: str, result: dict[str, Any]) -> None:
    """The result file, and its summary and arms table on stdout."""
    path = write_result(name, result)
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=2))
    print(table(result["arms"]))
    print(f"written: {path}")


async def warm(url: str, clips: Clips, plan: Plan, model: str = TINY) -> None:
    """One short clip, so no arm pays the first request's model warm-up."""
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        await transcribe(
            session, url, model, clips, Job(0, "short", 0), loop.time(), plan.deadline_s
        )


def _p99_at_most(name: str, ours: float | None, theirs: float | None) -> dict[str, Any]:
    return target(
        name,
        "<= 1.0x",
        r3(ours / theirs) if ours and theirs else None,
        bool(ours and theirs and ours <= theirs),
    )


def policy_targets(arms: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """What every fleet's gateway arms must show: least_request's short-clip p99 at most
    round_robin's, no failure, and direct's audio seconds per second (`split`: how the
    direct arms share the mix out)."""
    out = []
    lr, rr = arms["gateway_least_request"], arms["gateway_round_robin"]
    lr99, rr99 = lr["short"]["p99_s"], rr["short"]["p99_s"]
    out.append(_p99_at_most("least_request short-clip p99 <= round_robin's", lr99, rr99))
    for name in ("gateway_least_request", "gateway_round_robin"):
        out.append(
            target(f"{name}: failures", "== 0", arms[name]["failures"], arms[name]["failures"] == 0)
        )
    # The baseline: the mean of the direct arm run first and last (drift averaged).
    base = statistics.mean(arms[k]["audio_s_per_s"] or 0.0 for k in ("direct", "direct_again"))
    ratio = lr["audio_s_per_s"] / base if base and lr["audio_s_per_s"] else None
    out.append(
        target(
            f"gateway least_request audio s/s vs direct ({split}; first and last)",
            ">= 0.95x",
            r3(ratio),
            ratio is not None and ratio >= 0.95,
        )
    )
    return out


def targets(arms: dict[str, Any]) -> list[dict[str, Any]]:
    out = policy_targets(arms, "mix split by hand")
    ll = arms["litellm_default"]
    if "short" in ll:
        lr99 = arms["gateway_least_request"]["short"]["p99_s"]
        name = "gateway least_request short-clip p99 <= LiteLLM default's"
        out.append(_p99_at_most(name, lr99, ll["short"]["p99_s"]))
    return out


def table(arms: dict[str, Any]) -> str:
    lines = [
        "| arm | short p50 s | short p99 s | long p50 s | long p99 s | failures | audio s/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in arms.items():
        if "short" not in a:
            lines.append(f"| {name} | {a.get('not_run', '-')} ||||||")
            continue
        cells = (
            name,
            a["short"]["p50_s"],
            a["short"]["p99_s"],
            a["long"]["p50_s"],
            a["long"]["p99_s"],
            a["failures"],
            a["audio_s_per_s"],
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
