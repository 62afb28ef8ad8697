"""Long audio split across the fleet: one long upload cut at silence, its pieces served
concurrently by several backends, against the same file sent whole, in the same run.

The gateway runs as users run it (`whisper-gateway --config FILE --run-dir DIR`, the
supervisor starting the long-audio splitter and, for the real-model part, the CPU
backends), with a `long_audio:` section for the model; each split request carries
`x-long-audio: split`. Four parts:

- Fleet speed, FAKE backends (testkit/fake_backend.py `audio_rate`): each holds a
  request for its audio's duration x RTF and serves one request at a time, as one GPU
  does, so N of them give at most N-fold speed. A 20-minute WAV (looped real speech,
  testkit/clips.py) goes split to fleets of 1, 2 and 4 of them (max_concurrency 1 each),
  as json and as stream=true, and whole (no header) to one: wall time, speed-up over the
  whole file on one backend and over the split file on one backend (target: at least
  0.8 x N at N = 2 and 4), and for the streams the time to the first event against one
  piece's time (a 30 s clip sent alone, measured; and piece_s x RTF) and the whole stream.
  The answers are checked: every FAKE answer names the seconds it heard, so the stitched
  text must add up to the file's duration.
- The splitter's memory and CPU: its peak RSS (VmHWM, reset through
  /proc/<pid>/clear_refs before each request, with VmRSS sampled meanwhile as a check)
  for the 20-minute and a 60-minute file, against their sizes: it spools to disk and
  holds a piece at a time, so its memory should not grow with the file. Its CPU seconds
  (utime + stime) per hour of audio served.
- Real tiny.en (`launch: cpu`, two backends, max_concurrency 1 each): a 180 s file whole
  (one backend serves it) against split (both), wall time in alternating rounds, and
  the word error rate of the split transcript against the whole-file one, same model.
- `--smoke`: a 120 s file, fleets of 1 and 2, RTF 0.02, no real model: it proves the
  code runs and yields numbers, nothing more.

Processes: the FAKE backends and each `whisper-gateway` are started here and stopped by
their own pid (the gateway by its process group, which the supervisor leads); all on
loopback, free ports.

    .venv/bin/python -m bench.long_audio [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._harness import rss_kb, target, write_result
from testkit.clips import clip_seconds, make_clip
from testkit.procs import FIXTURES, Proc, free_port, start_fake
from testkit.stack import WHISPER_GATEWAY, Tree, wait_until
from testkit.wer import normalise, word_error_rate

FAKE_MODEL = "fake/audio-rate"
TINY = "openai/whisper-tiny.en"
SPLIT = {"x-long-audio": "split"}
# The speed-up wanted from N backends: 0.8 x N (the pieces' cuts, the splitter's
# decode and the last, shorter piece cost the rest).
SPEEDUP_SHARE = 0.8
# The splitter's memory should not follow the file: the peak RSS added by a 60-minute
# file over a 20-minute one, against the bytes added (76.8 MB of WAV). Holding the upload
# in memory would be 1.0x; its PCM as floats 2.0x. Our bound (the brief states none).
MEMORY_SHARE = 0.1
# The real backends' probes: each is a transcription of a short clip on the same
# one-worker backends (work the arms share), so seldom; but not once an hour: the
# supervisor starts the backends beside the control plane, whose first probe may meet a
# model still loading (503), and the next one decides.
REAL_PROBE = {"interval_s": 10, "timeout_s": 30, "healthy_threshold": 1}


@dataclass(frozen=True)
class Plan:
    """The run's sizes; `--smoke` shrinks every one of them."""

    file_s: float = 1200.0  # the fleet arms' file
    memory_file_s: float = 3600.0  # the second file of the memory part
    fleets: tuple[int, ...] = (1, 2, 4)
    rtf: float = 0.05  # FAKE seconds per audio second
    piece_s: float = 30.0
    # At least 4 (the brief); 2 x the largest fleet, so each backend has its next piece
    # waiting at Envoy when it finishes one.
    pieces_per_request: int = 8
    warm_s: float = 60.0  # a split request before the measured ones (PyAV's import)
    real_file_s: float | None = 180.0  # None: no real-model part
    real_rounds: int = 3
    deadline_s: float = 900.0
    # The largest fleet again with this pieces_per_request (None: not run).
    variant_ppr: int | None = 4


FULL = Plan()
SMOKE = Plan(
    file_s=120.0, memory_file_s=240.0, fleets=(1, 2), rtf=0.02, real_file_s=None, variant_ppr=None
)


@dataclass
class Answer:
    """One request as the client saw it."""

    status: int | None = None
    wall_s: float = 0.0
    first_event_s: float | None = None  # stream: the first transcript event
    pieces: int | None = None  # x-long-audio-pieces
    text: str = ""
    events: int = 0
    done: bool = False  # stream: ended with [DONE]
    usage_seconds: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


async def transcribe(
    url: str,
    model: str,
    audio: bytes,
    *,
    split: bool,
    stream: bool = False,
    deadline_s: float = 900.0,
    fields: tuple[tuple[str, str], ...] = (),
) -> Answer:
    form = aiohttp.FormData()
    form.add_field("model", model)
    form.add_field("response_format", "json")
    for name, value in fields:
        form.add_field(name, value)
    if stream:
        form.add_field("stream", "true")
    form.add_field("file", audio, filename="long.wav", content_type="audio/wav")
    a = Answer()
    timeout = aiohttp.ClientTimeout(total=deadline_s)
    t0 = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.post(
                f"{url}/v1/audio/transcriptions", data=form, headers=SPLIT if split else {}
            ) as r,
        ):
            a.status = r.status
            if "x-long-audio-pieces" in r.headers:
                a.pieces = int(r.headers["x-long-audio-pieces"])
            if r.status != 200 or not stream:
                body = await r.read()
                a.wall_s = time.monotonic() - t0
                if r.status != 200:
                    a.error = f"{r.status} {body[:300]!r}"
                    return a
                doc = json.loads(body)
                a.text = doc["text"]
                a.usage_seconds = (doc.get("usage") or {}).get("seconds")
                return a
            async for line in r.content:
                if line.startswith(b"data: [DONE]"):
                    a.done = True
                elif line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    a.events += 1
                    kind = event.get("type")
                    if kind == "transcript.text.delta" and a.first_event_s is None:
                        a.first_event_s = time.monotonic() - t0
                    elif kind == "transcript.text.done":
                        a.text = event.get("text", "")
                    elif "error" in event or kind == "error":
                        a.error = f"error event: {json.dumps(event)[:300]}"
            a.wall_s = time.monotonic() - t0
            if not a.done and not a.error:
                a.error = "the stream ended without [DONE]"
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
        a.wall_s = time.monotonic() - t0
        a.error = f"{type(e).__name__}: {str(e)[:300]}"
    return a


def fake_seconds(text: str) -> float:
    """The seconds every FAKE answer in a (stitched) text says it heard, summed."""
    return sum(float(x) for x in re.findall(r"FAKE (\d+\.\d+) s\.", text))


def covered(a: Answer, audio_s: float) -> bool:
    """A FAKE answer covers the whole file: no piece lost, none served twice."""
    return a.ok and abs(fake_seconds(a.text) - audio_s) < 0.05 + 0.002 * audio_s / 30


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- the splitter process: CPU and memory, read from /proc by its pid ---------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watch:
    """A process's CPU seconds and peak RSS over a stretch: VmHWM reset at the start
    (clear_refs 5, allowed on our own processes) and VmRSS sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_kb = 0  # VmRSS
        self.anon_kb = 0  # RssAnon: the process's own memory
        self.file_kb = 0  # RssFile: mapped files (np.memmap of the spooled PCM) and code
        self.cpu0 = self.cpu = 0.0
        self.hwm_kb = 0
        self.reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.cpu0 = cpu_s(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    kb = int(value.split()[0])
                    if key == "VmRSS":
                        self.sampled_kb = max(self.sampled_kb, kb)
                    elif key == "RssAnon":
                        self.anon_kb = max(self.anon_kb, kb)
                    else:
                        self.file_kb = max(self.file_kb, kb)
            self._stop.wait(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.cpu = cpu_s(self.pid) - self.cpu0
        self.hwm_kb = rss_kb(self.pid, "VmHWM")

    def figures(self) -> dict[str, Any]:
        peak = self.hwm_kb if self.reset else self.sampled_kb
        return {
            "splitter_cpu_s": round(self.cpu, 3),
            "splitter_peak_rss_mb": round(peak / 1024, 1),
            "splitter_peak_rss_sampled_mb": round(self.sampled_kb / 1024, 1),
            "splitter_peak_anon_mb_sampled": round(self.anon_kb / 1024, 1),
            "splitter_peak_file_mb_sampled": round(self.file_kb / 1024, 1),
            "peak_from": "VmHWM after clear_refs" if self.reset else "VmRSS sampled every 10 ms",
        }


# -- the gateway, as users start it --------------------------------------------------


@dataclass
class Stack:
    """`whisper-gateway --config FILE --run-dir DIR` and what it started."""

    name: str
    work: Path
    config: dict[str, Any]
    tree: Tree | None = None
    started_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['listener']['port']}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config['admin']['port']}"

    @property
    def run_dir(self) -> Path:
        return self.work / self.name / "run"

    def start(self, ready_s: float = 240.0) -> Stack:
        here = self.work / self.name
        here.mkdir(parents=True, exist_ok=True)
        path = here / "gateway.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        t0 = time.monotonic()
        argv = [WHISPER_GATEWAY, "--config", str(path), "--run-dir", str(self.run_dir)]
        self.tree = Tree(argv, here / "whisper-gateway.out")
        self.tree.wait_for("whisper-gateway is up", ready_s)
        n = len(self.config["backends"])
        wait_until(
            lambda: self._healthy() == n, ready_s, f"{self.name}: {n} backends HEALTHY, synced"
        )
        self.started_s = time.monotonic() - t0
        return self

    def _healthy(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.admin}/backends", timeout=5) as r:
                backends = json.loads(r.read())
            with urllib.request.urlopen(f"{self.admin}/status", timeout=5) as r:
                proxies = json.loads(r.read())["proxies"]
        except (OSError, ValueError, KeyError):
            return -1
        synced = proxies and all(
            t["state"] == "SYNCED" for p in proxies for t in p["types"].values()
        )
        return sum(b["health"] == "HEALTHY" for b in backends) if synced else -1

    def splitter_pid(self) -> int:
        assert self.tree is not None
        return int(self.tree.children()["splitter"]["pid"])

    def log_tail(self, name: str, n: int = 15) -> list[str]:
        try:
            return (self.run_dir / name).read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def stop(self) -> None:
        if self.tree is not None:
            self.tree.stop()


def stack_config(
    backends: list[dict[str, Any]], model: str, plan: Plan, max_upload_mb: float
) -> dict[str, Any]:
    ports = {n: free_port() for n in ("listener", "envoy_admin", "xds", "admin", "splitter")}
    return {
        **{n: {"address": "127.0.0.1", "port": ports[n]} for n in ("listener", "envoy_admin")},
        **{n: {"address": "127.0.0.1", "port": ports[n]} for n in ("xds", "admin")},
        "limits": {"max_upload_mb": max_upload_mb},
        "backends": backends,
        "long_audio": {
            "models": [model],
            "splitter": {"address": "127.0.0.1", "port": ports["splitter"]},
            "piece_s": plan.piece_s,
            "pieces_per_request": plan.pieces_per_request,
        },
    }


# -- part 1 and 2: FAKE fleets --------------------------------------------------------


@dataclass
class Files:
    """The clips, their bytes and durations."""

    path: dict[str, Path]
    body: dict[str, bytes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k, p in self.path.items():
            self.body[k] = p.read_bytes()
            self.seconds[k] = clip_seconds(p)

    def mb(self, k: str) -> float:
        return round(len(self.body[k]) / 1e6, 2)


def seen_by(fakes: list[int]) -> list[list[dict[str, Any]]]:
    """The requests each FAKE backend has had so far (what it heard, in seconds)."""
    out = []
    for port in fakes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/requests", timeout=5) as r:
            out.append(json.loads(r.read()))
    return out


def served(
    before: list[list[dict[str, Any]]], after: list[list[dict[str, Any]]], rtf: float
) -> dict[str, Any]:
    """How the pieces fell on the backends: the wall time can be no shorter than the
    busiest backend's work (its audio x RTF), and an even share is the total over N."""
    new = [a[len(b) :] for b, a in zip(before, after, strict=True)]
    work = [sum(float(x["seconds"]) for x in reqs) * rtf for reqs in new]
    return {
        "pieces_by_backend": [len(reqs) for reqs in new],
        "work_s_by_backend": [round(w, 2) for w in work],
        "busiest_backend_work_s": round(max(work), 2),
        "even_share_work_s": round(sum(work) / len(work), 2),
    }


def answer_figures(a: Answer, audio_s: float, fake: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": a.ok,
        "status": a.status,
        "wall_s": r3(a.wall_s),
        "pieces": a.pieces,
    }
    if fake:
        out["audio_covered_s"] = round(fake_seconds(a.text), 2)
        out["whole"] = covered(a, audio_s)
    if a.first_event_s is not None or a.events:
        out.update(first_event_s=r3(a.first_event_s), events=a.events, done=a.done)
    if a.error:
        out["error"] = a.error
    return out


def fleet_arm(
    stack: Stack, n: int, fakes: list[int], files: Files, plan: Plan, baseline: bool
) -> dict[str, Any]:
    """On a gateway of n FAKE backends: (the whole file to one backend,) one 30 s clip
    alone, the file split as json, then split as a stream."""
    pid = stack.splitter_pid()
    url, audio, secs = stack.url, files.body["long"], files.seconds["long"]
    out: dict[str, Any] = {"backends": n, "gateway_start_s": round(stack.started_s, 1)}
    warm = asyncio.run(
        transcribe(url, FAKE_MODEL, files.body["warm"], split=True, deadline_s=plan.deadline_s)
    )
    out["warm_up"] = answer_figures(warm, files.seconds["warm"])
    piece = asyncio.run(transcribe(url, FAKE_MODEL, files.body["piece"], split=False))
    out["one_piece"] = {**answer_figures(piece, files.seconds["piece"]), "nominal_s": r3(
        files.seconds["piece"] * plan.rtf
    )}  # fmt: skip
    if baseline:
        whole = asyncio.run(
            transcribe(url, FAKE_MODEL, audio, split=False, deadline_s=plan.deadline_s)
        )
        out["whole_file_one_backend"] = answer_figures(whole, secs)
    before = seen_by(fakes[:n])
    with Watch(pid) as w:
        js = asyncio.run(transcribe(url, FAKE_MODEL, audio, split=True, deadline_s=plan.deadline_s))
    after = seen_by(fakes[:n])
    out["split_json"] = {
        **answer_figures(js, secs),
        **w.figures(),
        **served(before, after, plan.rtf),
    }
    before = seen_by(fakes[:n])
    with Watch(pid) as w:
        st = asyncio.run(
            transcribe(url, FAKE_MODEL, audio, split=True, stream=True, deadline_s=plan.deadline_s)
        )
    after = seen_by(fakes[:n])
    piece_s = out["one_piece"]["wall_s"] if piece.ok else None
    out["split_stream"] = {
        **answer_figures(st, secs),
        **w.figures(),
        **served(before, after, plan.rtf),
        "first_event_over_one_piece_measured": ratio(st.first_event_s, piece_s),
        "first_event_over_one_piece_nominal": ratio(st.first_event_s, plan.piece_s * plan.rtf),
        "first_event_over_whole_stream": ratio(st.first_event_s, st.wall_s),
    }
    return out


def memory_part(stack: Stack, files: Files, plan: Plan) -> dict[str, Any]:
    """The splitter's peak RSS for the fleet file and the longer one, after the fleet
    arms (PyAV is imported by then): one request at a time, nothing else running."""
    pid = stack.splitter_pid()
    idle_kb = rss_kb(pid)
    rows: dict[str, Any] = {}
    for k in ("long", "longer"):
        with Watch(pid) as w:
            a = asyncio.run(
                transcribe(
                    stack.url, FAKE_MODEL, files.body[k], split=True, deadline_s=plan.deadline_s
                )
            )
        secs = files.seconds[k]
        fig = w.figures()
        rows[k] = {
            "audio_s": secs,
            "file_mb": files.mb(k),
            **answer_figures(a, secs),
            **fig,
            "peak_over_file_size": ratio(fig["splitter_peak_rss_mb"], files.mb(k)),
            "splitter_cpu_s_per_audio_hour": round(w.cpu / (secs / 3600), 2),
        }
    added_file = files.mb("longer") - files.mb("long")
    out: dict[str, Any] = {"splitter_idle_rss_mb": round(idle_kb / 1024, 1), "files": rows}
    out["file_added_mb"] = round(added_file, 2)
    # VmHWM counts the spooled PCM's pages the splitter maps (np.memmap) as well as its
    # own memory: the two are told apart from RssAnon and RssFile, sampled.
    for what, key in (
        ("rss", "splitter_peak_rss_mb"),
        ("anon", "splitter_peak_anon_mb_sampled"),
        ("file", "splitter_peak_file_mb_sampled"),
    ):
        added = rows["longer"][key] - rows["long"][key]
        out[f"peak_{what}_added_mb"] = round(added, 1)
        out[f"peak_{what}_added_over_file_added"] = round(added / added_file, 4)
    return out


@contextmanager
def running(stack: Stack, ready_s: float = 240.0) -> Iterator[Stack]:
    """The stack started, stopped however the block ends; on a failure, where its logs
    are and their last lines."""
    try:
        yield stack.start(ready_s)
    except Exception:
        print(f"== {stack.name} failed; its logs are in {stack.run_dir}; splitter.log, envoy.log:")
        for line in stack.log_tail("splitter.log") + stack.log_tail("envoy.log"):
            print("   ", line)
        raise
    finally:
        stack.stop()


def split_only(stack: Stack, n: int, fakes: list[int], files: Files, plan: Plan) -> dict[str, Any]:
    """A warm-up, then the fleet file split as json: a variant's figures."""
    url, secs = stack.url, files.seconds["long"]
    asyncio.run(transcribe(url, FAKE_MODEL, files.body["warm"], split=True))
    before = seen_by(fakes[:n])
    with Watch(stack.splitter_pid()) as w:
        a = asyncio.run(
            transcribe(url, FAKE_MODEL, files.body["long"], split=True, deadline_s=plan.deadline_s)
        )
    after = seen_by(fakes[:n])
    return {
        "backends": n,
        "pieces_per_request": plan.pieces_per_request,
        **answer_figures(a, secs),
        **w.figures(),
        **served(before, after, plan.rtf),
    }


def fake_part(work: Path, files: Files, plan: Plan) -> dict[str, Any]:
    fakes: list[Proc] = []
    ports: list[int] = []
    arms: dict[str, Any] = {}
    out: dict[str, Any] = {"arms": arms, "memory": {}}
    # The longer file, whole, must pass the listener's limit (Envoy buffers it).
    max_upload_mb = math.ceil(len(files.body["longer"]) / 1024 / 1024) + 8

    def stack_of(name: str, n: int, p: Plan) -> Stack:
        backends = [
            {"url": f"http://127.0.0.1:{port}", "models": [FAKE_MODEL], "max_concurrency": 1,
             "health": {"enabled": False}}
            for port in ports[:n]
        ]  # fmt: skip
        return Stack(name, work, stack_config(backends, FAKE_MODEL, p, max_upload_mb))

    try:
        for _ in range(max(plan.fleets)):
            proc, port = start_fake(work / "fakes", "audio_rate", "--rtf", str(plan.rtf))
            fakes.append(proc)
            ports.append(port)
        for n in plan.fleets:
            with running(stack_of(f"fake-{n}", n, plan)) as stack:
                arms[str(n)] = fleet_arm(stack, n, ports, files, plan, baseline=n == 1)
                if n == max(plan.fleets):
                    out["memory"] = memory_part(stack, files, plan)
            print(f"== fleet of {n}: {json.dumps(arms[str(n)]['split_json'])}", flush=True)
        if plan.variant_ppr is not None:
            # The largest fleet again with the default pieces_per_request: figures only.
            n, variant = max(plan.fleets), replace(plan, pieces_per_request=plan.variant_ppr)
            with running(stack_of(f"fake-{n}-ppr{variant.pieces_per_request}", n, variant)) as st:
                out["variant"] = split_only(st, n, ports, files, variant)
            print(f"== variant: {json.dumps(out['variant'])}", flush=True)
    finally:
        for proc in fakes:
            proc.stop()
    return out


def speedups(arms: dict[str, Any], fleets: tuple[int, ...]) -> dict[str, Any]:
    whole = arms[str(fleets[0])]["whole_file_one_backend"]["wall_s"]
    one = arms[str(fleets[0])]["split_json"]["wall_s"]
    out: dict[str, Any] = {}
    for n in fleets:
        wall = arms[str(n)]["split_json"]["wall_s"]
        out[str(n)] = {
            "split_wall_s": wall,
            "over_whole_file_one_backend": ratio(whole, wall),
            "over_split_one_backend": ratio(one, wall),
            "share_of_n_over_whole_file": ratio(ratio(whole, wall), n),
        }
    return out


# -- part 4: real tiny.en -------------------------------------------------------------


async def warm_direct(ports: list[int]) -> None:
    """hello.wav straight to each backend: no arm pays a first request's warm-up."""
    hello = (FIXTURES / "hello.wav").read_bytes()
    await asyncio.gather(
        *(
            transcribe(
                f"http://127.0.0.1:{p}", TINY, hello, split=False, fields=(("language", "en"),)
            )
            for p in ports
        )
    )


def real_part(work: Path, files: Files, plan: Plan) -> dict[str, Any]:
    ports = [free_port(), free_port()]
    backends = [
        {"url": f"http://127.0.0.1:{p}", "models": [TINY], "max_concurrency": 1,
         "launch": "cpu", "health": REAL_PROBE}
        for p in ports
    ]  # fmt: skip
    stack = Stack("real", work, stack_config(backends, TINY, plan, 64))
    audio, secs = files.body["real"], files.seconds["real"]
    lang = (("language", "en"),)
    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with running(stack, ready_s=300):
        pid = stack.splitter_pid()
        asyncio.run(warm_direct(ports))
        for r in range(plan.real_rounds):
            got: dict[str, Any] = {}
            for arm in ("whole", "split") if r % 2 == 0 else ("split", "whole"):
                with Watch(pid) as w:
                    a = asyncio.run(
                        transcribe(stack.url, TINY, audio, split=arm == "split", fields=lang,
                                   deadline_s=plan.deadline_s)
                    )  # fmt: skip
                got[arm] = {**answer_figures(a, secs, fake=False), "text": a.text}
                if arm == "split":
                    got[arm]["splitter_cpu_s"] = round(w.cpu, 3)
            ok = got["whole"]["ok"] and got["split"]["ok"]
            wer = word_error_rate(got["whole"]["text"], got["split"]["text"]) if ok else None
            # The fixture's paragraphs each end "...use the computers for free": how many
            # each transcript heard (a pass that skips or repeats one shows here).
            heard = {arm: " ".join(normalise(got[arm]["text"])).count("for free") for arm in got}
            rounds.append(
                {
                    **got,
                    "wer_split_vs_whole": r3(wer),
                    "paragraphs_heard": heard,
                    "order": list(got),
                }
            )
    whole = [x["whole"]["wall_s"] for x in rounds if x["whole"]["ok"]]
    split = [x["split"]["wall_s"] for x in rounds if x["split"]["ok"]]
    wers = [x["wer_split_vs_whole"] for x in rounds if x["wer_split_vs_whole"] is not None]
    w_med = statistics.median(whole) if whole else None
    s_med = statistics.median(split) if split else None
    for x in rounds[1:]:  # the first round's texts in full, the others' first words
        for arm in ("whole", "split"):
            x[arm]["text"] = x[arm]["text"][:160]
    return {
        "setup": "2 x whisper_backend tiny.en, launch: cpu, max_concurrency 1 (1 worker each); "
        "the whole file goes to one of them",
        "audio_s": secs,
        "file_mb": files.mb("real"),
        # Two CPU backends on this machine's cores: other work running meanwhile moves
        # these figures more than anything measured.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "gateway_start_s": round(stack.started_s, 1),
        "whole_wall_s_median": r3(w_med),
        "split_wall_s_median": r3(s_med),
        "split_speedup_over_whole": ratio(w_med, s_med),
        "split_speedup_per_round": [
            ratio(x["whole"]["wall_s"], x["split"]["wall_s"])
            for x in rounds
            if x["whole"]["ok"] and x["split"]["ok"]
        ],
        "wer_split_vs_whole_max": max(wers) if wers else None,
        "paragraphs_heard_first_round": rounds[0]["paragraphs_heard"] if rounds else None,
        "rounds": rounds,
    }


# -- the run ----------------------------------------------------------------------------


def targets(fleet: dict[str, Any], memory: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    arms, sp = fleet["arms"], fleet["speedups"]
    out = []
    for n in plan.fleets:
        if n == 1:
            continue
        want = SPEEDUP_SHARE * n
        for key, base in (
            ("over_whole_file_one_backend", "the whole file on 1 backend"),
            ("over_split_one_backend", "the split file on 1 backend"),
        ):
            v = sp[str(n)][key]
            out.append(
                target(
                    f"{n} backends, split json: speed-up over {base}",
                    f">= {want:g}x (0.8 x {n})",
                    v,
                    v is not None and v >= want,
                )
            )
    kinds = ("split_json", "split_stream", "whole_file_one_backend")
    answers = [a[k] for a in arms.values() for k in kinds if k in a]
    answers += list(memory.get("files", {}).values())
    if "variant" in fleet:
        answers.append(fleet["variant"])
    whole = sum(bool(a.get("whole")) for a in answers)
    out.append(
        target(
            "FAKE answers: 200, the stitched text covering the file exactly",
            f"== {len(answers)} of {len(answers)}",
            whole,
            whole == len(answers),
        )
    )
    for what, words in (
        ("rss", "peak RSS (VmHWM: its own memory and the PCM file pages it maps)"),
        ("anon", "peak anonymous RSS (RssAnon sampled: its own memory)"),
    ):
        v = memory.get(f"peak_{what}_added_over_file_added")
        out.append(
            target(
                f"splitter {words} added by the longer file / the bytes it adds",
                f"<= {MEMORY_SHARE:g} (1.0: the upload held in memory)",
                v,
                v is not None and v <= MEMORY_SHARE,
            )
        )
    return out


def summary(fleet: dict[str, Any], memory: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, flat (the report's generic table reads two levels deep)."""
    out: dict[str, Any] = {}
    arms = fleet["arms"]
    first = arms[min(arms, key=int)]
    out["whole_file_one_backend_wall_s"] = first["whole_file_one_backend"]["wall_s"]
    out["one_piece_wall_s"] = first["one_piece"]["wall_s"]
    for n, s in fleet["speedups"].items():
        out[f"n{n}_split_wall_s"] = s["split_wall_s"]
        out[f"n{n}_speedup_over_whole"] = s["over_whole_file_one_backend"]
        out[f"n{n}_speedup_over_split_1"] = s["over_split_one_backend"]
        out[f"n{n}_busiest_backend_work_s"] = arms[n]["split_json"]["busiest_backend_work_s"]
        st = arms[n]["split_stream"]
        out[f"n{n}_stream_wall_s"] = st["wall_s"]
        out[f"n{n}_stream_first_event_s"] = st["first_event_s"]
        out[f"n{n}_first_event_over_one_piece"] = st["first_event_over_one_piece_measured"]
    for row in memory.get("files", {}).values():
        out[f"splitter_peak_rss_mb_{row['audio_s']:.0f}s"] = row["splitter_peak_rss_mb"]
        out[f"splitter_peak_anon_mb_{row['audio_s']:.0f}s"] = row["splitter_peak_anon_mb_sampled"]
        out[f"splitter_cpu_s_per_audio_hour_{row['audio_s']:.0f}s"] = row[
            "splitter_cpu_s_per_audio_hour"
        ]
    out["splitter_idle_rss_mb"] = memory.get("splitter_idle_rss_mb")
    if "variant" in fleet:
        v = fleet["variant"]
        out[f"n{v['backends']}_ppr{v['pieces_per_request']}_speedup_over_whole"] = v[
            "speedup_over_whole_file_one_backend"
        ]
    if "rounds" in real:
        out["real_whole_wall_s"] = real["whole_wall_s_median"]
        out["real_split_wall_s"] = real["split_wall_s_median"]
        out["real_split_speedup"] = real["split_speedup_over_whole"]
        out["real_wer_split_vs_whole"] = real["wer_split_vs_whole_max"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny files and fleets, for CI")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    started = time.monotonic()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-long-audio-"))
    print(f"== work folder (configs, run dirs, logs): {work}", flush=True)
    clips = {
        "long": plan.file_s,
        "longer": plan.memory_file_s,
        "warm": plan.warm_s,
        "piece": plan.piece_s,
    }
    if plan.real_file_s is not None:
        clips["real"] = plan.real_file_s
    files = Files({k: make_clip(work / f"{k}.wav", s) for k, s in clips.items()})
    for k in clips:  # in memory now; the folder keeps only the configs and logs
        (work / f"{k}.wav").unlink()
    fleet = fake_part(work, files, plan)
    fleet["speedups"] = speedups(fleet["arms"], plan.fleets)
    if "variant" in fleet:
        whole = fleet["arms"][str(plan.fleets[0])]["whole_file_one_backend"]["wall_s"]
        v = fleet["variant"]
        v["speedup_over_whole_file_one_backend"] = ratio(whole, v["wall_s"])
    memory = fleet.pop("memory")
    real: dict[str, Any] = {"not_run": "--smoke: no real model (it would double its time)"}
    failed = False
    if plan.real_file_s is not None:
        try:
            real = real_part(work, files, plan)
        except Exception as e:  # the FAKE figures are still written, the run still fails
            real = {"failed": f"{type(e).__name__}: {str(e)[:500]}", "logs": str(work / "real")}
            failed = True
    result = {
        "command": ".venv/bin/python -m bench.long_audio" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "run_s": round(time.monotonic() - started, 1),
        "summary": summary(fleet, memory, real),
        "scenario": {
            "plan": asdict(plan),
            "files": {k: {"audio_s": files.seconds[k], "mb": files.mb(k)} for k in clips},
            "fake_backend": f"testkit/fake_backend.py --mode audio_rate --rtf {plan.rtf}: "
            "FAKE, one request at a time, holds it for its audio x RTF",
            "gateway": "whisper-gateway --config FILE --run-dir DIR, one per fleet; "
            f"long_audio piece_s {plan.piece_s:g}, pieces_per_request "
            f"{plan.pieces_per_request}, pieces_in_flight 16 (default), min_upload_mb 1 "
            "(default); routing least_request (default); FAKE health probes off",
            "pieces_by_backend": {
                n: a["split_json"]["pieces_by_backend"] for n, a in fleet["arms"].items()
            },
        },
        "fleet": fleet,
        "memory": memory,
        "real": real,
        "targets": targets(fleet, memory, plan),
    }
    path = write_result("long_audio", result)
    print(json.dumps({k: result[k] for k in ("summary", "targets")}, indent=2))
    print(f"written: {path}  ({result['run_s']} s)")
    counts = Counter(t["met"] for t in result["targets"])
    print(f"targets: {counts[True]} met, {counts[False]} missed")
    if failed:
        raise SystemExit(f"the real-model part failed: {real['failed']}")


if __name__ == "__main__":
    main()
