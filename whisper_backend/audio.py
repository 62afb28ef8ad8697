"""Decode any container PyAV knows (wav, mp3, flac, ogg, webm, m4a) to 16 kHz mono float32."""

from __future__ import annotations

import io

import numpy as np

from .engine import SAMPLE_RATE
from .errors import ApiError, bad_request


def _vllm_error(message: str) -> ApiError:
    """vLLM raises ValueError from its audio loader: 400 BadRequestError, param null."""
    return ApiError(message, 400, None, err_type="BadRequestError")


# vLLM 0.33's loader is torchcodec (a hard dependency): vllm/multimodal/media/audio.py.
_VLLM_INVALID = (
    "Invalid or corrupted audio data. Ensure the input is a valid "
    "audio or video file (e.g. a complete WAV, MP3, or MP4)."
)


def decode(data: bytes, max_seconds: float, vllm: bool = False) -> np.ndarray:
    """Blocking (run it in a thread). Raises a 400 ApiError for anything but usable audio.

    `vllm`: the messages and `param: null` of vLLM's audio loader."""
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as e:
        if vllm:
            raise _vllm_error(_VLLM_INVALID) from e
        raise bad_request(
            f"Could not decode the audio file: {type(e).__name__}: {e}", "file"
        ) from e
    if not isinstance(audio, np.ndarray) or audio.size == 0:
        if vllm:
            raise _vllm_error("No audio found in the input.")
        raise bad_request("The file contains no audio.", "file")
    seconds = audio.size / SAMPLE_RATE
    if seconds > max_seconds:
        if vllm:
            raise _vllm_error(
                f"Audio exceeds maximum allowed duration of {max_seconds:g}s (metadata reports "
                f"{seconds:.1f}s). Set VLLM_MAX_AUDIO_DECODE_DURATION_S to increase this limit."
            )
        raise bad_request(
            f"Audio is {seconds:.1f} s long; the maximum duration is {max_seconds:g} s.",
            "file",
        )
    return audio
