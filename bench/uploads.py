"""Scenario 2: large uploads, and the memory each one costs the proxy in front.

Uploads of 1, 5 and 25 MB at concurrency 1 and 16, through three paths in the same
run, to the same FAKE backend (`fast`: it reads every body whole, then answers):
direct (the baseline), the gateway (control plane + real Envoy), and the LiteLLM
proxy (bench/litellm_peer.py). Per case: MB/s of upload and the proxy's peak RSS
growth (sampled every 10 ms) over its RSS just before the case, as a ratio of the
bodies in flight (concurrency x size). Every proxy is a fresh process for each case
in the full run, so memory a previous case left in its heap hides nothing. For
LiteLLM the RSS is the whole process tree's (a worker may fork); for Envoy, tcmalloc's
own peak (`allocated` from /memory) is recorded beside the RSS, and whether the
router gave up retries to save memory (it must not: retries are kept). The biggest
case runs once more on a gateway with `routing.retries: 0`: with any retry policy
Envoy's router keeps each upload for a retry and sends a copy, and this shows what
that copy costs in the same run.

Target: Envoy's growth at most 1.1x the bodies in flight (16 x 25 MB).

    .venv/bin/python -m bench.uploads [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import rss_kb, target, write_result
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import start_fake

MODEL = "fake/fast"
PATH = "/v1/audio/transcriptions"
MB = 1000 * 1000
SAMPLE_S = 0.01
TARGET_RATIO = 1.1


@dataclass(frozen=True)
class Plan:
    """What one run measures: sizes in MB, concurrencies, bytes sent per case at least."""

    sizes_mb: tuple[float, ...]
    concurrency: tuple[int, ...]
    min_mb_per_case: float
    fresh_proxy_per_case: bool


FULL = Plan((1, 5, 25), (1, 16), 50, True)
SMOKE = Plan((0.05, 0.5), (1, 4), 1, False)


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and all its descendants (LiteLLM may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_kb(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


class Sampler:
    """Peak of `probe()` (kB) every 10 ms in a thread, so a busy event loop cannot hide it."""

    def __init__(self, probe: Callable[[], int], extra: Callable[[], int] | None = None) -> None:
        self.probe, self.extra = probe, extra
        self.peak, self.extra_peak = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.peak = max(self.peak, self.probe())
            n += 1
            # /memory is an HTTP call: every 5th sample is enough to see tcmalloc's peak.
            if self.extra is not None and n % 5 == 0:
                self.extra_peak = max(self.extra_peak, self.extra())
            time.sleep(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.probe())


async def upload_round(session: aiohttp.ClientSession, url: str, payload: bytes, n: int) -> int:
    """`n` concurrent uploads of `payload` (model first, as the openai SDK sends it);
    returns how many got a 200."""

    async def one() -> int:
        form = aiohttp.FormData()
        form.add_field("model", MODEL)
        form.add_field("file", payload, filename="upload.wav", content_type="audio/wav")
        async with session.post(url, data=form) as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return sum(1 for s in statuses if s == 200)


async def run_case(url: str, size: int, conc: int, rounds: int) -> dict[str, float]:
    payload = os.urandom(size)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.monotonic()
        ok = 0
        for _ in range(rounds):
            ok += await upload_round(session, url, payload, conc)
        elapsed = time.monotonic() - t0
    sent = rounds * conc
    return {
        "uploads": sent,
        "ok": ok,
        "seconds": elapsed,
        "mb_per_s": ok * size / MB / elapsed if elapsed > 0 else 0.0,
    }


def _envoy_memory(gw: Gateway) -> dict[str, int]:
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/memory", timeout=5) as r:
        raw = json.loads(r.read())
    return {k: int(v) for k, v in raw.items() if str(v).isdigit()}


def _cluster_stat(gw: Gateway, suffix: str) -> int:
    """Sum of a counter over the model clusters (the names carry a hash)."""
    with urllib.request.urlopen(f"{gw.envoy_admin_url}/stats?filter={suffix}$", timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key.startswith("cluster.model_") and value.strip().isdigit():
            total += int(value)
    return total


class GatewayPath:
    """The gateway; Envoy restarted (the control plane stays) for a fresh heap.

    `retries=None` is the default config (a retry on reset: the router keeps each
    upload for it and sends a copy); 0 turns retries off, so no copy is made."""

    def __init__(self, work: Path, backend_port: int, retries: int | None = None) -> None:
        self.name = "gateway" if retries is None else f"gateway_retries_{retries}"
        routing = {} if retries is None else {"routing": {"retries": retries}}
        cfg = gateway_config(
            [
                {
                    "url": f"http://127.0.0.1:{backend_port}",
                    "models": [MODEL],
                    "max_concurrency": 64,
                    "health": {"enabled": False},
                }
            ],
            **routing,
        )
        self.gw = start_gateway(work, cfg)
        self.gw.wait_synced()
        self.url = self.gw.url + PATH

    def fresh(self) -> None:
        assert self.gw.envoy is not None
        self.gw.envoy.stop()
        self.gw.start_envoy()
        self.gw.wait_synced()

    def warm(self) -> None:
        asyncio.run(run_case(self.url, 1000, 1, 1))

    def pid(self) -> int:
        assert self.gw.envoy is not None
        return int(self.gw.envoy.pid)

    def measure(self, size: int, conc: int, rounds: int) -> dict[str, Any]:
        self.warm()
        time.sleep(0.3)
        pid = self.pid()
        base = rss_kb(pid)
        base_alloc = _envoy_memory(self.gw)["allocated"]
        abandoned = _cluster_stat(self.gw, "retry_or_shadow_abandoned")
        with Sampler(lambda: rss_kb(pid), lambda: _envoy_memory(self.gw)["allocated"]) as s:
            result = asyncio.run(run_case(self.url, size, conc, rounds))
        return {
            **result,
            "rss_before_mb": base / 1024,
            "rss_peak_mb": s.peak / 1024,
            "growth_mb": (s.peak - base) / 1024,
            "tcmalloc_allocated_before_mb": base_alloc / 2**20,
            "tcmalloc_allocated_peak_mb": s.extra_peak / 2**20,
            "retries_given_up": _cluster_stat(self.gw, "retry_or_shadow_abandoned") - abandoned,
        }

    def stop(self) -> None:
        self.gw.stop()


class LiteLLMPath:
    """The LiteLLM proxy in front of the same backend; restarted for a fresh heap."""

    def __init__(self, work: Path, backend_port: int) -> None:
        from bench.litellm_peer import start_litellm

        self.name = "litellm"
        self._start = lambda: start_litellm(work, [f"http://127.0.0.1:{backend_port}"], [MODEL])
        self.peer = self._start()
        self.url = self.peer.url + PATH
        self.version = str(self.peer.version)

    def fresh(self) -> None:
        self.peer.stop()
        self.peer = self._start()
        self.url = self.peer.url + PATH

    def measure(self, size: int, conc: int, rounds: int) -> dict[str, Any]:
        asyncio.run(run_case(self.url, 1000, 1, 1))  # warm: imports and clients ready
        time.sleep(0.3)
        pid = self.peer.pid
        base = tree_rss_kb(pid)
        with Sampler(lambda: tree_rss_kb(pid)) as s:
            result = asyncio.run(run_case(self.url, size, conc, rounds))
        return {
            **result,
            "rss_before_mb": base / 1024,
            "rss_peak_mb": s.peak / 1024,
            "growth_mb": (s.peak - base) / 1024,
        }

    def stop(self) -> None:
        self.peer.stop()


def cases(plan: Plan) -> list[tuple[int, int]]:
    """(size in bytes, concurrency), fewest bytes in flight first."""
    pairs = [(int(mb * MB), c) for mb in plan.sizes_mb for c in plan.concurrency]
    return sorted(pairs, key=lambda p: (p[0] * p[1], p[1]))


def rounds_for(plan: Plan, size: int, conc: int) -> int:
    return max(1, math.ceil(plan.min_mb_per_case * MB / (size * conc)))


def key(size: int, conc: int) -> str:
    return f"{size / MB:g}MB_c{conc}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: proves it runs")
    p.add_argument("--no-litellm", action="store_true", help="the gateway side only")
    args = p.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-uploads-"))
    fake, port = start_fake(work, "fast")
    direct_url = f"http://127.0.0.1:{port}{PATH}"
    results: dict[str, dict[str, Any]] = {
        "direct": {},
        "gateway": {},
        "litellm": {},
        "gateway_retries_0": {},
    }
    notes: list[str] = []
    peer_version: str | None = None
    t_start = time.monotonic()
    try:
        for size, conc in cases(plan):
            results["direct"][key(size, conc)] = asyncio.run(
                run_case(direct_url, size, conc, rounds_for(plan, size, conc))
            )
        paths: list[Callable[[], GatewayPath | LiteLLMPath]] = [
            lambda: GatewayPath(work / "gateway", port)
        ]
        if not args.smoke:
            # The same gateway with `routing.retries: 0` on the biggest case: what the
            # retry's copy of each upload costs, measured in this run.
            paths.append(lambda: GatewayPath(work / "gateway-no-retries", port, retries=0))
        if args.no_litellm:
            notes.append("LiteLLM not run (--no-litellm)")
        else:
            paths.append(lambda: LiteLLMPath(work / "litellm", port))
        for make in paths:
            try:
                path = make()
            except Exception as e:  # the peer is optional: say why it is missing
                notes.append(f"LiteLLM not measured: {e!r}"[:500])
                continue
            todo = cases(plan)
            if path.name.startswith("gateway_retries"):
                todo = todo[-1:]
            try:
                for i, (size, conc) in enumerate(todo):
                    if plan.fresh_proxy_per_case and i > 0:
                        path.fresh()
                    r = path.measure(size, conc, rounds_for(plan, size, conc))
                    r["bodies_in_flight_mb"] = size * conc / MB
                    r["growth_ratio"] = r["growth_mb"] * 2**20 / (size * conc)
                    d = results["direct"][key(size, conc)]["mb_per_s"]
                    r["mb_per_s_ratio_to_direct"] = r["mb_per_s"] / d if d else None
                    results[path.name][key(size, conc)] = r
                if isinstance(path, LiteLLMPath):
                    peer_version = path.version
            finally:
                path.stop()
    finally:
        fake.stop()
    biggest = key(*max(cases(plan), key=lambda p: (p[0] * p[1], p[1])))
    env_big = results["gateway"].get(biggest, {})
    ratio = env_big.get("growth_ratio")
    targets = [
        target(
            f"envoy_growth_{biggest}",
            f"<= {TARGET_RATIO}x the bodies in flight",
            ratio,
            ratio is not None and ratio <= TARGET_RATIO,
        )
    ]
    out = write_result(
        "uploads",
        {
            "scenario": "uploads of 1, 5, 25 MB at concurrency 1 and 16; direct vs gateway "
            "vs LiteLLM, same FAKE backend (fast: reads the whole body), same run",
            "smoke": args.smoke,
            "mb": "10^6 bytes; RSS in MiB; growth_ratio = peak RSS growth / bodies in flight",
            "fresh_proxy_per_case": plan.fresh_proxy_per_case,
            "sample_interval_s": SAMPLE_S,
            "results": results,
            "litellm_version": peer_version,
            "targets": targets,
            "notes": notes,
            "wall_s": time.monotonic() - t_start,
        },
    )
    head = f"{'case':>12} {'path':>17} {'MB/s':>8} {'x direct':>8}"
    print(f"{head} {'growth MB':>10} {'x bodies':>8}")
    for size, conc in cases(plan):
        k = key(size, conc)
        for name in ("direct", "gateway", "gateway_retries_0", "litellm"):
            row: dict[str, Any] | None = results[name].get(k)
            if not row:
                continue
            growth = ""
            if "growth_mb" in row:
                growth = f"{row['growth_mb']:10.0f} {row['growth_ratio']:8.2f}"
            rel = row.get("mb_per_s_ratio_to_direct")
            print(
                f"{k:>12} {name:>17} {row['mb_per_s']:8.0f} "
                f"{(f'{rel:.2f}' if rel else '-'):>8} {growth}  ok {row['ok']}/{row['uploads']}"
            )
    for t in targets:
        met = "met" if t["met"] else "MISSED"
        print(f"target {t['name']}: {t['target']}, got {t['value']}: {met}")
    for n in notes:
        print("note:", n)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
