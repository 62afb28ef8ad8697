"""The one place the gateway decodes audio: any container PyAV reads, to 16 kHz mono
16-bit PCM on disk, and each piece back out as a WAV file.

The upload and its PCM live on disk (an hour is 115 MB of PCM); memory holds one
decoded frame at a time and, per piece, its WAV (about 1 MB for 30 s).
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from long_audio.cuts import RATE, frame_energy


class DecodeError(ValueError):
    """The upload is not audio PyAV can read: the client's error (400)."""


def decode_to_pcm(src: Path, dst: Path) -> float:
    """Decode `src` to raw PCM at `dst`; the audio's duration in seconds. Blocking: run
    it in a thread (PyAV's decoding is C, it holds the event loop otherwise)."""
    import av  # faster-whisper's decoder, already installed with the backend

    try:
        with av.open(str(src)) as container, dst.open("wb") as out:
            if not container.streams.audio:
                raise DecodeError("the file holds no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    out.write(f.to_ndarray().tobytes())
            for f in resampler.resample(None):
                out.write(f.to_ndarray().tobytes())
    except av.error.FFmpegError as e:
        raise DecodeError(f"the file could not be decoded as audio: {e}") from e
    samples = dst.stat().st_size // 2
    if samples == 0:
        raise DecodeError("the file holds no audio")
    return samples / RATE


#: Samples read at once for the energy: 60 s (a whole number of energy frames).
_ENERGY_CHUNK = 60 * RATE


def pcm_energy(pcm_path: Path) -> np.ndarray:
    """frame_energy of the PCM file, a minute at a time through a memory map, so an
    hour never sits in memory as floats (230 MB)."""
    pcm = np.memmap(pcm_path, dtype="<i2", mode="r")
    parts = [frame_energy(pcm[i : i + _ENERGY_CHUNK]) for i in range(0, len(pcm), _ENERGY_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def piece_wav(pcm_path: Path, start_s: float, end_s: float) -> bytes:
    """The samples of [start_s, end_s) as a 16 kHz mono WAV file."""
    pcm = np.memmap(pcm_path, dtype="<i2", mode="r")
    chunk = pcm[round(start_s * RATE) : round(end_s * RATE)]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.ascontiguousarray(chunk).tobytes())
    return buf.getvalue()
