"""Where to cut: the quietest moment near the end of each piece (pure).

Energy, not a speech model: a cut needs only a gap between words, and the pieces'
transcripts are compared with a single pass in tests/e2e/test_long_audio.py.
"""

from __future__ import annotations

import math

import numpy as np

RATE = 16_000  # what every piece is resampled to: Whisper's own rate
FRAME_S = 0.02  # energy resolution: shorter than a gap between words
SMOOTH_S = 0.2  # a cut lands in a quiet stretch this long, not a quiet instant


def frame_energy(pcm: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Mean square of each FRAME_S of 16-bit mono samples (the last, short frame dropped)."""
    n = int(rate * FRAME_S)
    whole = len(pcm) // n * n
    frames = pcm[:whole].astype(np.float32).reshape(-1, n)
    return np.asarray((frames * frames).mean(axis=1), dtype=np.float32)


def plan_pieces(
    energy: np.ndarray, duration_s: float, piece_s: float, search_s: float | None = None
) -> list[tuple[float, float]]:
    """(start, end) seconds of pieces no longer than `piece_s` that cover [0, duration_s]:
    each ends at the quietest SMOOTH_S stretch in its last `search_s` (a third of a
    piece by default), the latest of equals, so pieces stay long and few."""
    if duration_s <= piece_s:  # also audio shorter than one energy frame
        return [(0.0, duration_s)]
    search_s = piece_s / 3 if search_s is None else search_s
    width = max(1, round(SMOOTH_S / FRAME_S))
    smooth = np.convolve(energy, np.ones(width, dtype=np.float32) / width, mode="same")
    pieces: list[tuple[float, float]] = []
    start = 0.0
    while duration_s - start > piece_s:
        # Never before its bound: (20.02 + 20) / 0.02 is 2000.9999 in floating point.
        lo = math.ceil(round((start + piece_s - search_s) / FRAME_S, 6))
        hi = int((start + piece_s) / FRAME_S)  # a cut at frame k's start: k * FRAME_S
        window = smooth[lo:hi]
        if len(window) == 0:  # past the energy's end (a short last frame): cut at the limit
            cut = start + piece_s
        else:
            k = len(window) - 1 - int(np.argmin(window[::-1]))
            cut = (lo + k) * FRAME_S
        cut = min(max(cut, start + FRAME_S), start + piece_s)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, duration_s))
    return pieces
