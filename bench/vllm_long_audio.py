"""Past real vLLM's 600 s: a file vLLM alone refuses, served whole through the gateway.

Real vLLM 0.32 refuses more than 600 s of decoded audio (VLLM_MAX_AUDIO_DECODE_DURATION_S).
The same file sent to the gateway with `x-long-audio: split` is cut into pieces of at
most 30 s, which vLLM serves; srt comes back whole (its last cue at the file's end).
The stack is `make up CONFIG=examples/vllm-cpu.yaml` on free ports (testkit.vllm), its
CPU backend for whisper-base drained so vLLM alone serves the pieces.

    .venv/bin/python -m bench.vllm_long_audio [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import target, write_result
from testkit import load
from testkit.clips import clip_seconds, make_clip
from testkit.vllm import BASE, vllm_stack

CUE_END = re.compile(r"--> (\d\d):(\d\d):(\d\d),(\d\d\d)")


def last_cue_end(srt: str) -> float | None:
    ends = CUE_END.findall(srt)
    if not ends:
        return None
    h, m, s, ms = map(int, ends[-1])
    return h * 3600 + m * 60 + s + ms / 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="the same, a file just past 600 s")
    raw_argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw_argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # 16 kHz mono WAV: 700 s is 22.4 MB, under vLLM's 25 MB, so its duration limit is
    # what refuses it.
    seconds = 610.0 if args.smoke else 700.0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-long-") as tmp:
        work = Path(tmp)
        clip = make_clip(work / "long.wav", seconds)
        audio, duration = clip.read_bytes(), clip_seconds(clip)
        (work / "stack").mkdir()
        with vllm_stack(work / "stack") as stack:
            direct = asyncio.run(
                load.transcribe(f"http://{stack.vllm}", BASE, audio, response_format="json")
            )
            t0 = time.monotonic()
            split = asyncio.run(
                load.transcribe(
                    stack.gw.url, BASE, audio, response_format="srt", language="en",
                    headers={"x-long-audio": "split"},
                )
            )  # fmt: skip
            split_s = time.monotonic() - t0
    end = last_cue_end(split[2]) if split[0] == 200 else None
    targets = [
        target(
            "vLLM alone refuses the file for its duration",
            "a 4xx naming the duration",
            direct[0],
            400 <= direct[0] < 500 and "duration" in direct[2].lower(),
        ),
        target("the gateway serves it split", "200", split[0], split[0] == 200),
        target(
            "srt reaches the file's end",
            f"last cue ends within 30 s of {duration:.1f} s",
            end,
            end is not None and end > duration - 30,
        ),
    ]
    write_result(
        "vllm_long_audio",
        {
            "command": " ".join([".venv/bin/python -m bench.vllm_long_audio", *raw_argv]).strip(),
            "smoke": args.smoke,
            "model": BASE,
            "audio_s": round(duration, 1),
            "upload_mb": round(len(audio) / 1e6, 1),
            "direct": {"status": direct[0], "body": direct[2][:300]},
            "split": {
                "status": split[0],
                "wall_s": round(split_s, 1),
                "audio_s_per_wall_s": round(duration / split_s, 2) if split_s else None,
                "cues": split[2].count(" --> ") if split[0] == 200 else 0,
                "last_cue_end_s": end,
                "body_head": split[2][:200],
            },
            "wall_s": round(time.monotonic() - t_start, 1),
            "targets": targets,
        },
    )
    for t in targets:
        print(f"{'met' if t['met'] else 'MISSED':>6}  {t['name']}: {t['value']} ({t['target']})")
    return 0 if all(t["met"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
