"""Real-time factor of whisper_backend through its real HTTP server (not a test).

RTF here = seconds of audio transcribed per wall-clock second (higher is better),
at concurrency 1 and 2, for tiny.en and base, next to a bare faster-whisper
baseline measured in the same run. Writes bench/results/backend_rtf.json and a
markdown table into docs/backend.md (between BENCH markers).

    .venv/bin/python -m bench.backend_rtf [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.procs import start_backend  # noqa: E402

CLIP = ROOT / "tests" / "fixtures" / "long_en.ogg"
RESULTS = ROOT / "bench" / "results" / "backend_rtf.json"
DOC = ROOT / "docs" / "backend.md"
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"


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


def clip_seconds() -> float:
    from faster_whisper import decode_audio

    return len(decode_audio(str(CLIP))) / 16000


def bare_baseline(model: str, seconds: float, threads: int) -> Row:
    """faster-whisper in-process, beam 1, no HTTP: the ceiling the server is judged against."""
    from faster_whisper import WhisperModel

    from whisper_backend.models import locate

    m = WhisperModel(
        str(locate(model).path), device="cpu", compute_type="int8", cpu_threads=threads
    )
    list(m.transcribe(str(CLIP), beam_size=1, temperature=0.0, language="en")[0])  # warm up
    t0 = time.perf_counter()
    list(m.transcribe(str(CLIP), beam_size=1, temperature=0.0, language="en")[0])
    return Row(
        model, f"bare faster-whisper, {threads} threads", 1, 1, seconds, time.perf_counter() - t0
    )


async def _one(session: aiohttp.ClientSession, url: str, data: bytes) -> None:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=CLIP.name)
    form.add_field("language", "en")
    async with session.post(url + "/v1/audio/transcriptions", data=form) as r:
        body = await r.json()
        assert r.status == 200 and "library" in body["text"].lower(), body


async def measure(url: str, concurrency: int, rounds: int, seconds: float) -> tuple[int, float]:
    data = CLIP.read_bytes()
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await _one(s, url, data)  # warm up
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(_one(s, url, data) for _ in range(concurrency)))
        return rounds * concurrency, time.perf_counter() - t0


def bench_server(
    model: str, extra: tuple[str, ...], setup: str, rounds: int, seconds: float
) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        proc, port = start_backend(
            Path(logs), model=model, extra=extra, env={"HF_HUB_OFFLINE": "1"}
        )
        try:
            for conc in (1, 2):
                n, wall = asyncio.run(measure(f"http://127.0.0.1:{port}", conc, rounds, seconds))
                rows.append(Row(model, setup, conc, n, n * seconds, wall))
        finally:
            proc.stop()
    return rows


def markdown(rows: list[Row], cores: int, load: float) -> str:
    lines = [
        f"Measured on this machine ({cores} cores, {platform.machine()}), clip "
        f"`{CLIP.name}` ({rows[0].audio_s / rows[0].requests:.1f} s of speech), beam 1, int8. "
        "RTF = audio seconds per wall second (higher is better). Load average before the run: "
        f"{load:.2f} (other work on the machine skews the figures).",
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
    return "\n".join(lines) + "\n"


def write_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    block = f"{BEGIN}\n{table}{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Real-time factor\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models", nargs="*", default=["openai/whisper-tiny.en", "openai/whisper-base"])
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    seconds = clip_seconds()
    rows: list[Row] = []
    for model in args.models:
        rows.append(bare_baseline(model, seconds, cores))
        rows += bench_server(
            model, (), "server defaults (2 workers x 1 thread)", args.rounds, seconds
        )
        rows += bench_server(
            model,
            ("--num-workers", "1", "--cpu-threads", str(cores)),
            f"1 worker x {cores} threads",
            args.rounds,
            seconds,
        )
        for r in rows[-5:]:
            print(f"{r.model:24s} {r.setup:42s} c={r.concurrency} rtf={r.rtf:.1f}x", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "cores": cores,
                "loadavg_after": os.getloadavg(),
                "clip": CLIP.name,
                "clip_seconds": seconds,
                "rows": [{**asdict(r), "rtf": round(r.rtf, 2)} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    table = markdown(rows, cores, load)
    print(table)
    if not args.no_doc:
        write_doc(table)


if __name__ == "__main__":
    main()
