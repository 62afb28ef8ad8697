"""Real-time factor of whisper_backend through its real HTTP server, and through the
gateway in front of the same backend (not a test).

RTF here = seconds of audio transcribed per wall-clock second (higher is better),
at concurrency 1 and 2, for tiny.en and base, next to a bare faster-whisper
baseline measured in the same run. With the server's defaults, the same backend
process is also reached through the whole gateway (control plane + Envoy, Lua
reading the upload's model field), rounds alternating direct and gateway, so the
gateway's cost on a real decode shows as a ratio of two RTFs from one run.

Writes bench/results/backend_rtf.json (through bench._harness, so BENCH_RESULTS
moves it) and a markdown table into docs/backend.md (between BENCH markers; not
with --smoke or --no-doc).

    .venv/bin/python -m bench.backend_rtf [--rounds 2] [--pairs 4] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import ROOT, target, write_result
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import start_backend

FIXTURES = ROOT / "tests" / "fixtures"
DOC = ROOT / "docs" / "backend.md"
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"
TINY, BASE = "openai/whisper-tiny.en", "openai/whisper-base"
DEFAULTS = "server defaults (2 workers x 1 thread)"
VIA_GATEWAY = DEFAULTS + " via the gateway"
# The probe decides once at start, then stays out of the way: what is compared is the
# request path. (In service a probe sends a ~5 s clip every health.interval_s, 5 s by
# default, to each backend: a cost of its own, not measured here.)
QUIET_PROBE = {"interval_s": 3600, "timeout_s": 30, "healthy_threshold": 1}

# Targets. tiny.en >= 20x real time at concurrency 1 and >= 1.5x the throughput at
# concurrency 2 are the CPU backend's own (docs/backend.md). The gateway's: an upload of a
# few hundred KB buffered by Lua and one more loopback hop cost milliseconds against
# seconds of decoding, so the gateway should keep >= 95 % of the direct RTF; more
# loss would mean Envoy takes CPU the decode needs.
TINY_RTF_TARGET = 20.0
SCALING_TARGET = 1.5
GATEWAY_RATIO_TARGET = 0.95


@dataclass(frozen=True)
class Clip:
    path: Path
    expected: str  # a word the transcript must hold: a wrong or empty answer fails


LONG = Clip(FIXTURES / "long_en.ogg", "library")
SHORT = Clip(FIXTURES / "hello.wav", "world")


@dataclass(frozen=True)
class Row:
    model: str
    setup: str
    concurrency: int
    requests: int
    audio_s: float
    wall_s: float

    @property
    def rtf(self) -> float:
        return self.audio_s / self.wall_s


def clip_seconds(clip: Clip) -> float:
    from faster_whisper import decode_audio

    return len(decode_audio(str(clip.path))) / 16000


def bare_baseline(model: str, clip: Clip, seconds: float, threads: int) -> Row:
    """faster-whisper in-process, beam 1, no HTTP: the ceiling the server is judged against."""
    from faster_whisper import WhisperModel

    from whisper_backend.models import locate

    m = WhisperModel(
        str(locate(model).path), device="cpu", compute_type="int8", cpu_threads=threads
    )
    path = str(clip.path)
    list(m.transcribe(path, beam_size=1, temperature=0.0, language="en")[0])  # warm up
    t0 = time.perf_counter()
    list(m.transcribe(path, beam_size=1, temperature=0.0, language="en")[0])
    return Row(
        model, f"bare faster-whisper, {threads} threads", 1, 1, seconds, time.perf_counter() - t0
    )


async def _one(
    session: aiohttp.ClientSession, url: str, model: str, clip: Clip, data: bytes
) -> dict[str, str]:
    """One transcription; the response's headers (the gateway names its backend)."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename=clip.path.name)
    form.add_field("model", model)  # the gateway routes on it; the backend checks it
    form.add_field("language", "en")
    async with session.post(url + "/v1/audio/transcriptions", data=form) as r:
        body = await r.json()
        assert r.status == 200 and clip.expected in body["text"].lower(), (r.status, body)
        return dict(r.headers)


async def _batch(
    session: aiohttp.ClientSession, url: str, model: str, clip: Clip, data: bytes, conc: int
) -> tuple[float, list[dict[str, str]]]:
    t0 = time.perf_counter()
    heads = await asyncio.gather(*(_one(session, url, model, clip, data) for _ in range(conc)))
    return time.perf_counter() - t0, list(heads)


async def measure(
    urls: dict[str, str], model: str, clip: Clip, concurrency: int, rounds: int
) -> dict[str, list[float]]:
    """Wall seconds per path and round, a batch of `concurrency` requests each; paths
    take turns, the first one alternating by round, so drift hits both alike."""
    data = clip.path.read_bytes()
    timeout = aiohttp.ClientTimeout(total=900)
    walls: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for url in urls.values():
            await _one(s, url, model, clip, data)  # warm up
        order = list(urls)
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                wall, heads = await _batch(s, urls[name], model, clip, data, concurrency)
                if name == "gateway":
                    assert all("x-gateway-backend" in h for h in heads), heads[0]
                walls[name].append(wall)
    return walls


def cpu_s(pid: int) -> float:
    """utime + stime of a process we started, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_server(
    model: str,
    extra: tuple[str, ...],
    setup: str,
    clip: Clip,
    rounds: int,
    seconds: float,
    gateway: bool,
) -> tuple[list[Row], dict[str, Any] | None]:
    """The server's rows at concurrency 1 and 2; with `gateway`, the same backend also
    through a gateway started in front of it, and the Envoy CPU that path cost."""
    rows: list[Row] = []
    envoy_cpu: dict[int, float] = {}
    pairs: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as logs:
        proc, port = start_backend(
            Path(logs), model=model, extra=extra, env={"HF_HUB_OFFLINE": "1"}
        )
        gw: Gateway | None = None
        try:
            urls = {"direct": f"http://127.0.0.1:{port}"}
            if gateway:
                backend = {"url": urls["direct"], "models": [model], "health": QUIET_PROBE}
                gw = start_gateway(Path(logs) / "gateway", gateway_config([backend]))
                gw.wait_backends()
                urls["gateway"] = gw.url
            for conc in (1, 2):
                envoy0 = cpu_s(gw.envoy.pid) if gw is not None and gw.envoy else 0.0
                walls = asyncio.run(measure(urls, model, clip, conc, rounds))
                if gw is not None and gw.envoy is not None:
                    envoy_cpu[conc] = cpu_s(gw.envoy.pid) - envoy0
                n = rounds * conc
                rows.append(Row(model, setup, conc, n, n * seconds, sum(walls["direct"])))
                if "gateway" in walls:
                    g_wall = sum(walls["gateway"])
                    rows.append(Row(model, VIA_GATEWAY, conc, n, n * seconds, g_wall))
                    # RTF ratio of each pair of neighbouring rounds: drift between
                    # rounds (other work on the machine) cancels within a pair.
                    pairs[conc] = [
                        d / g for d, g in zip(walls["direct"], walls["gateway"], strict=True)
                    ]
        finally:
            if gw is not None:
                gw.stop()
            proc.stop()
    if not gateway:
        return rows, None
    direct = {r.concurrency: r for r in rows if r.setup == setup}
    via = {r.concurrency: r for r in rows if r.setup == VIA_GATEWAY}
    comparison = {
        "model": model,
        "backend": setup,
        "by_concurrency": [
            {
                "concurrency": c,
                "direct_rtf": round(direct[c].rtf, 2),
                "gateway_rtf": round(via[c].rtf, 2),
                "gateway_over_direct": round(via[c].rtf / direct[c].rtf, 3),
                "gateway_over_direct_per_pair": [round(x, 3) for x in pairs[c]],
                "gateway_over_direct_median_pair": round(statistics.median(pairs[c]), 3),
                "added_wall_s_per_batch": round(
                    (via[c].wall_s - direct[c].wall_s) / (via[c].requests / c), 3
                ),
                # Envoy's CPU over the whole measurement (warm-up included, both paths'
                # turns: Envoy is idle during the direct ones), per request it proxied.
                "envoy_cpu_ms_per_request": round(envoy_cpu[c] * 1000 / (via[c].requests + 1), 1),
            }
            for c in (1, 2)
        ],
    }
    return rows, comparison


def ratio_line(comparisons: list[dict[str, Any]]) -> str:
    parts = []
    for cmp in comparisons:
        for c in cmp["by_concurrency"]:
            each = ", ".join(f"{x:.2f}" for x in c["gateway_over_direct_per_pair"])
            parts.append(
                f"{cmp['model']} c={c['concurrency']}: {c['gateway_over_direct']:.3f}x "
                f"({c['direct_rtf']:.1f}x direct, {c['gateway_rtf']:.1f}x via the gateway; "
                f"per pair of rounds {each})"
            )
    return "; ".join(parts)


def markdown(
    rows: list[Row],
    clip: Clip,
    cores: int,
    load: float,
    comparisons: list[dict[str, Any]],
    targets: list[dict[str, Any]],
) -> str:
    per_request = rows[0].audio_s / rows[0].requests
    lines = [
        f"Measured on this machine ({cores} cores, {platform.machine()}), clip "
        f"`{clip.path.name}` ({per_request:.1f} s of speech), beam 1, int8. "
        "RTF = audio seconds per wall second (higher is better). Load average before the run: "
        f'{load:.2f} (other work on the machine skews the figures). The rows "via the '
        'gateway" reach the same backend process as the server-defaults rows above them '
        "through the control plane and Envoy, in the same run, rounds alternating between "
        "the two paths; the probe decides once at start and stays quiet meanwhile.",
        "",
        "| model | setup | concurrency | requests | RTF | throughput vs concurrency 1 |",
        "|---|---|---|---|---|---|",
    ]
    base: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.concurrency == 1:
            base[(r.model, r.setup)] = r.rtf
        ratio = r.rtf / base[(r.model, r.setup)]
        cells = (r.model, r.setup, r.concurrency, r.requests, f"{r.rtf:.1f}x", f"{ratio:.2f}x")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"RTF via the gateway over RTF direct: {ratio_line(comparisons)}.", ""]
    for t in targets:
        met = "met" if t["met"] else "missed"
        lines.append(f"- {t['name']}: {t['value']} (target {t['target']}): {met}")
    return "\n".join(lines) + "\n"


def write_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    block = f"{BEGIN}\n{table}{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Real-time factor\n\n" + block + "\n"
    DOC.write_text(text)


def targets_of(
    rows: list[Row], clip: Clip, comparisons: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The backend's own targets hold for the long clip only (a 5 s clip is mostly
    fixed cost per request); the gateway's ratio for any clip."""
    out = []
    by = {(r.model, r.setup, r.concurrency): r for r in rows}
    c1, c2 = by.get((TINY, DEFAULTS, 1)), by.get((TINY, DEFAULTS, 2))
    if c1 is not None and c2 is not None and clip is LONG:
        out.append(
            target(
                "tiny.en RTF at concurrency 1 (server defaults)",
                f">= {TINY_RTF_TARGET:.0f}x",
                round(c1.rtf, 2),
                c1.rtf >= TINY_RTF_TARGET,
            )
        )
        scaling = c2.rtf / c1.rtf
        out.append(
            target(
                "tiny.en throughput at concurrency 2 over concurrency 1 (server defaults)",
                f">= {SCALING_TARGET}x",
                round(scaling, 2),
                scaling >= SCALING_TARGET,
            )
        )
    for cmp in comparisons:
        for c in cmp["by_concurrency"]:
            out.append(
                target(
                    f"{cmp['model'].split('/')[-1]} RTF via gateway / direct, c="
                    f"{c['concurrency']} (median of round pairs)",
                    f">= {GATEWAY_RATIO_TARGET}x",
                    c["gateway_over_direct_median_pair"],
                    c["gateway_over_direct_median_pair"] >= GATEWAY_RATIO_TARGET,
                )
            )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--pairs",
        type=int,
        default=4,
        help="rounds per path with the server's defaults, direct and via the gateway",
    )
    p.add_argument("--models", nargs="*", default=[TINY, BASE])
    p.add_argument("--no-doc", action="store_true")
    p.add_argument(
        "--smoke", action="store_true", help="tiny.en, the short clip, one round, no doc"
    )
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clip, rounds, pairs, models = LONG, args.rounds, args.pairs, args.models
    if args.smoke:
        clip, rounds, pairs, models = SHORT, 1, 1, [TINY]
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    seconds = clip_seconds(clip)
    rows: list[Row] = []
    comparisons: list[dict[str, Any]] = []
    for model in models:
        start = len(rows)
        rows.append(bare_baseline(model, clip, seconds, cores))
        server, cmp = bench_server(model, (), DEFAULTS, clip, pairs, seconds, gateway=True)
        rows += server
        if cmp is not None:
            comparisons.append(cmp)
        if not args.smoke:
            rows += bench_server(
                model,
                ("--num-workers", "1", "--cpu-threads", str(cores)),
                f"1 worker x {cores} threads",
                clip,
                rounds,
                seconds,
                gateway=False,
            )[0]
        for r in rows[start:]:
            print(f"{r.model:24s} {r.setup:52s} c={r.concurrency} rtf={r.rtf:.1f}x", flush=True)
    targets = targets_of(rows, clip, comparisons)
    path = write_result(
        "backend_rtf",
        {
            "command": " ".join([".venv/bin/python -m bench.backend_rtf", *raw]).strip(),
            "smoke": args.smoke,
            "cores": cores,
            "loadavg_before": load,
            "loadavg_after": os.getloadavg(),
            "clip": clip.path.name,
            "clip_seconds": seconds,
            "rows": [{**asdict(r), "rtf": round(r.rtf, 2)} for r in rows],
            "gateway_vs_direct": comparisons,
            "targets": targets,
        },
    )
    table = markdown(rows, clip, cores, load, comparisons, targets)
    print(table)
    print(f"wrote {path}")
    if not args.no_doc and not args.smoke:
        write_doc(table)


if __name__ == "__main__":
    main()
