"""Clips of a chosen length, cut from the speech fixture at run time.

No sox or espeak-ng on a fresh machine, but the backend's own decoder (PyAV via
faster-whisper) is installed: long_en.ogg (78.7 s of continuous speech) is decoded
once, looped to the length wanted and written as 16 kHz mono 16-bit WAV. The same
samples every run, so every arm of a bench sends the same bytes.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from testkit.procs import ROOT

SOURCE = ROOT / "tests" / "fixtures" / "long_en.ogg"
RATE = 16_000
SOURCE_S = 78.725875  # long_en.ogg's length (PyAV): a clip of k * SOURCE_S is k whole loops
#: What long_en.ogg says (scripts/make_fixtures.sh speaks it with espeak-ng).
SOURCE_SCRIPT = (
    "".join(
        f"Paragraph {n}. The library opens at nine in the morning and closes at five in the "
        "evening. Visitors can borrow books, read newspapers, and use the computers for free. "
        for n in ("one", "two", "three", "four", "five", "six", "seven")
    )
    + "This is the end of the long recording."
)


def _speech() -> np.ndarray:
    from faster_whisper import decode_audio

    audio = decode_audio(str(SOURCE), sampling_rate=RATE)
    assert isinstance(audio, np.ndarray)
    return audio


def make_clip(dest: Path, seconds: float, offset_s: float = 0.0) -> Path:
    """`seconds` of speech starting `offset_s` into the fixture, looped past its end."""
    speech = _speech()
    n, start = int(seconds * RATE), int(offset_s * RATE) % len(speech)
    reps = (start + n) // len(speech) + 1
    samples = np.tile(speech, reps)[start : start + n]
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return dest


def clip_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def make_noise(dest: Path, seconds: float, rate: int = RATE, channels: int = 1) -> Path:
    """Quiet noise as 16-bit WAV: a file of a chosen duration and size (48 kHz stereo
    for size at a short duration) to meet a server's limits, never to transcribe."""
    rng = np.random.default_rng(0)
    second = rng.integers(-300, 300, size=rate * channels, dtype="<i2").tobytes()
    whole, rest = divmod(int(seconds * rate) * channels * 2, len(second))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(second * whole + second[:rest])
    return dest
