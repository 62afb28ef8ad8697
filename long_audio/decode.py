"""The one place the gateway decodes audio: any container PyAV reads, to 16 kHz mono
16-bit PCM on disk, and each piece back out as a WAV file.

The upload and its PCM live on disk (an hour is 115 MB of PCM), read back with plain
reads; memory holds one decoded frame at a time, a minute of samples while the energy
is computed and, per piece, its WAV (about 1 MB for 30 s).
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


def _read(pcm_path: Path, start: int, count: int) -> np.ndarray:
    """Samples [start, start + count) by a plain read: a memory map would leave every
    page it touched counted in the splitter's resident memory, the whole file by the end."""
    with pcm_path.open("rb") as f:
        f.seek(start * 2)
        return np.frombuffer(f.read(count * 2), dtype="<i2")


def pcm_energy(pcm_path: Path) -> np.ndarray:
    """frame_energy of the PCM file, a minute at a time, so an hour never sits in memory
    (as samples 115 MB, as floats 230 MB)."""
    total = pcm_path.stat().st_size // 2
    parts = [
        frame_energy(_read(pcm_path, i, _ENERGY_CHUNK)) for i in range(0, total, _ENERGY_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def piece_wav(pcm_path: Path, start_s: float, end_s: float) -> bytes:
    """The samples of [start_s, end_s) as a 16 kHz mono WAV file."""
    first, last = round(start_s * RATE), round(end_s * RATE)
    chunk = _read(pcm_path, first, max(0, last - first))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(chunk.tobytes())
    return buf.getvalue()
