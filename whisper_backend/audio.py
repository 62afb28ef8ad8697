"""Decode any container PyAV knows (wav, mp3, flac, ogg, webm, m4a) to 16 kHz mono float32."""

from __future__ import annotations

import io

import numpy as np

from .engine import SAMPLE_RATE
from .errors import bad_request


def decode(data: bytes, max_seconds: float) -> np.ndarray:
    """Blocking (run it in a thread). Raises a 400 ApiError for anything but usable audio."""
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as e:
        raise bad_request(
            f"Could not decode the audio file: {type(e).__name__}: {e}", "file"
        ) from e
    if not isinstance(audio, np.ndarray) or audio.size == 0:
        raise bad_request("The file contains no audio.", "file")
    seconds = audio.size / SAMPLE_RATE
    if seconds > max_seconds:
        raise bad_request(
            f"Audio is {seconds:.1f} s long; the maximum duration is {max_seconds:g} s.",
            "file",
        )
    return audio
