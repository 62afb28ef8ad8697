"""long_audio.cuts and long_audio.decode: where a long upload is cut, and the audio it is cut from.

The energy is synthetic (quiet gaps at known times) so each cut can be checked against
the gap it must land in; decoding runs on the repo's fixtures and on files made here.
"""

from __future__ import annotations

import io
import itertools
import wave
from pathlib import Path

import numpy as np
import pytest

from long_audio.cuts import FRAME_S, RATE, frame_energy, plan_pieces
from long_audio.decode import DecodeError, decode_to_pcm, pcm_energy, piece_wav

FIXTURES = Path(__file__).parents[1] / "fixtures"
FRAME = int(RATE * FRAME_S)  # samples per energy frame
LOUD = 1e7  # a speech frame's energy (int16 amplitude ~3000)
QUIET = 10.0  # a gap's energy: background noise, not digital silence


def tone(seconds: float, amplitude: float = 10_000.0, hz: float = 1000.0) -> np.ndarray:
    """A sine as int16 PCM: 1 kHz has a whole number of periods in each 20 ms frame."""
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def speech(duration_s: float, gaps: list[float], gap_s: float = 0.3, seed: int = 0) -> np.ndarray:
    """Energy frames: loud, uneven stretches (never quiet) with QUIET gaps starting at `gaps`."""
    rng = np.random.default_rng(seed)
    energy = rng.uniform(0.3 * LOUD, LOUD, int(duration_s / FRAME_S)).astype(np.float32)
    for g in gaps:
        energy[round(g / FRAME_S) : round((g + gap_s) / FRAME_S)] = QUIET
    return energy


def assert_tiles(pieces: list[tuple[float, float]], duration: float, piece_s: float) -> None:
    """The pieces cover [0, duration] exactly: no gap, no overlap, none too long."""
    assert pieces[0][0] == 0.0
    assert pieces[-1][1] == duration
    for (_, end), (start, _) in itertools.pairwise(pieces):
        assert start == end, "each piece starts where the previous one ends"
    for start, end in pieces:
        assert 0 < end - start <= piece_s + 1e-9


# --- frame_energy ----------------------------------------------------------------------


def test_frame_energy_silence_is_zero_and_tone_is_loud() -> None:
    pcm = np.concatenate([np.zeros(RATE, dtype=np.int16), tone(1.0, amplitude=10_000)])
    energy = frame_energy(pcm)
    per_second = int(1 / FRAME_S)
    assert energy.dtype == np.float32
    assert len(energy) == 2 * per_second
    assert np.all(energy[:per_second] == 0)
    # A sine's mean square is amplitude^2 / 2 (int16 truncation moves it by < 0.1 %).
    assert np.allclose(energy[per_second:], 10_000**2 / 2, rtol=1e-3)


def test_frame_energy_drops_the_short_last_frame() -> None:
    """A partial frame would weigh a few samples like 20 ms: it is dropped, loud or not."""
    pcm = np.zeros(3 * FRAME + FRAME - 1, dtype=np.int16)
    pcm[3 * FRAME :] = 30_000
    energy = frame_energy(pcm)
    assert len(energy) == 3
    assert np.all(energy == 0)
    assert len(frame_energy(np.zeros(FRAME - 1, dtype=np.int16))) == 0


def test_frame_energy_does_not_overflow_int16() -> None:
    """Squaring full-scale int16 in int16 would wrap: the energy must be float."""
    energy = frame_energy(np.full(FRAME, -32768, dtype=np.int16))
    assert energy[0] == pytest.approx(32768.0**2)


# --- plan_pieces -----------------------------------------------------------------------


def test_shorter_than_a_piece_is_one_piece() -> None:
    energy = speech(12.34, [5.0])
    assert plan_pieces(energy, 12.34, 30.0) == [(0.0, 12.34)]
    assert plan_pieces(speech(30.0, []), 30.0, 30.0) == [(0.0, 30.0)]  # exactly one piece long


@pytest.mark.parametrize(("duration", "piece_s"), [(95.0, 30.0), (61.37, 30.0), (48.0, 5.0)])
def test_pieces_cover_the_audio(duration: float, piece_s: float) -> None:
    pieces = plan_pieces(speech(duration, []), duration, piece_s)
    assert_tiles(pieces, duration, piece_s)
    assert len(pieces) >= duration / piece_s


def test_each_cut_lands_in_a_gap_of_its_window() -> None:
    """Gaps every 7 s; one or two fall in each piece's last 10 s. A cut in a word would
    split it between two transcripts."""
    duration, piece_s, search_s, gap_s = 300.0, 30.0, 10.0, 0.3
    gaps = [3.0 + 7.0 * i for i in range(42)]
    pieces = plan_pieces(speech(duration, gaps, gap_s), duration, piece_s, search_s)
    assert_tiles(pieces, duration, piece_s)
    for start, cut in pieces[:-1]:
        lo, hi = start + piece_s - search_s, start + piece_s
        inside = [g for g in gaps if lo <= g and g + gap_s <= hi and g <= cut <= g + gap_s]
        assert inside, f"the cut at {cut:.2f} s (piece from {start:.2f} s) is in no gap"
        # The cut is at the start of a frame wholly quiet on both sides (SMOOTH_S / 2).
        assert inside[0] + 0.1 - 1e-9 <= cut <= inside[0] + gap_s - 0.1 + 1e-9


def test_gap_outside_the_window_is_not_used() -> None:
    """A quiet gap early in a piece would make it short: only the last search_s counts."""
    pieces = plan_pieces(speech(60.0, [5.0, 15.0]), 60.0, 30.0, 10.0)
    assert 20.0 <= pieces[0][1] <= 30.0


def test_of_two_equal_gaps_the_later_is_chosen() -> None:
    """Pieces stay long, so there are fewer of them."""
    pieces = plan_pieces(speech(50.0, [21.0, 26.0]), 50.0, 30.0, 10.0)
    assert 26.0 <= pieces[0][1] <= 26.3
    pieces = plan_pieces(speech(50.0, [26.0, 21.0], seed=3), 50.0, 30.0, 10.0)
    assert 26.0 <= pieces[0][1] <= 26.3


def test_quieter_gap_wins_over_a_later_one() -> None:
    energy = speech(50.0, [21.0, 26.0])
    energy[round(26.0 / FRAME_S) : round(26.3 / FRAME_S)] = 100 * QUIET
    assert 21.0 <= plan_pieces(energy, 50.0, 30.0, 10.0)[0][1] <= 21.3


@pytest.mark.parametrize("seed", range(5))
def test_without_a_gap_the_cut_stays_in_the_window(seed: int) -> None:
    duration, piece_s = 200.0, 30.0
    search_s = piece_s / 3  # the default
    pieces = plan_pieces(speech(duration, [], seed=seed), duration, piece_s)
    assert_tiles(pieces, duration, piece_s)
    for start, cut in pieces[:-1]:
        assert start + piece_s - search_s - 1e-9 <= cut <= start + piece_s + 1e-9


@pytest.mark.parametrize(
    ("piece_s", "gap_frame"),
    [
        (25.0, None),  # search_s 8.333 s: the window starts at frame 833.33, int() gives 833
        (30.0, 1001),  # a first cut at 20.02 s: (20.02 + 20) / 0.02 is 2000.9999...
    ],
)
def test_window_never_starts_before_its_bound(piece_s: float, gap_frame: int | None) -> None:
    """Energy that rises all along puts the quietest moment at the window's very start."""
    energy = np.linspace(1e5, 1e7, int(90 / FRAME_S)).astype(np.float32)
    if gap_frame is not None:  # a quiet 0.2 s centred on one frame: the first cut is there
        energy[gap_frame - 5 : gap_frame + 5] = 0
    search_s = piece_s / 3
    for start, cut in plan_pieces(energy, 90.0, piece_s)[:-1]:
        assert cut >= start + piece_s - search_s - 1e-9, (start, cut)


def test_an_hour_is_planned_in_about_duration_over_piece_s_pieces() -> None:
    duration, piece_s = 3600.0, 30.0
    gaps = [float(g) for g in np.arange(2.0, duration, 4.1)]
    pieces = plan_pieces(speech(duration, gaps), duration, piece_s)
    assert_tiles(pieces, duration, piece_s)
    # At least 20 s each (the window is the last 10 s); gaps every 4.1 s keep them > 25 s.
    assert duration / piece_s <= len(pieces) <= duration / 25.0 + 1


def test_energy_shorter_than_the_duration_cuts_at_the_limit() -> None:
    """Energy that ends early (a dropped last frame, at worst more): the pieces past its
    end are cut at the limit and still cover the duration."""
    pieces = plan_pieces(speech(40.0, []), 100.0, 30.0)
    assert_tiles(pieces, 100.0, 30.0)
    assert pieces[-2:] == [(pieces[-2][0], pieces[-2][0] + 30.0), (pieces[-1][0], 100.0)]


def test_audio_shorter_than_a_frame_is_one_piece() -> None:
    """decode_to_pcm accepts 1..319 samples; pcm_energy gives them no frame at all."""
    duration = 100 / RATE
    energy = frame_energy(np.zeros(100, dtype=np.int16))
    assert len(energy) == 0
    assert plan_pieces(energy, duration, 30.0) == [(0.0, duration)]


# --- decode ----------------------------------------------------------------------------


def wav_bytes(pcm: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def test_decode_wav_fixture(tmp_path: Path) -> None:
    src = FIXTURES / "hello.wav"
    with wave.open(str(src)) as w:
        real = w.getnframes() / w.getframerate()
    pcm = tmp_path / "a.pcm"
    duration = decode_to_pcm(src, pcm)
    assert duration == pytest.approx(real, abs=0.02)
    assert pcm.stat().st_size == round(duration * RATE) * 2


def test_decode_ogg_fixture(tmp_path: Path) -> None:
    assert decode_to_pcm(FIXTURES / "long_en.ogg", tmp_path / "a.pcm") == pytest.approx(
        78.7, abs=0.1
    )


def test_decode_resamples_stereo_44k_to_16k_mono(tmp_path: Path) -> None:
    """Every piece must be Whisper's 16 kHz mono, whatever the upload was."""
    t = np.arange(2 * 44_100) / 44_100
    left = (8000 * np.sin(2 * np.pi * 441.0 * t)).astype(np.int16)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    src = tmp_path / "s.wav"
    src.write_bytes(wav_bytes(stereo, 44_100, channels=2))
    pcm = tmp_path / "a.pcm"
    assert decode_to_pcm(src, pcm) == pytest.approx(2.0, abs=0.02)
    samples = np.fromfile(pcm, dtype="<i2")
    # The tone survives: its energy in the middle is that of an 8000-amplitude sine.
    middle = frame_energy(samples[RATE // 2 : RATE + RATE // 2])
    assert np.allclose(middle, 8000**2 / 2, rtol=0.1)


@pytest.mark.parametrize("content", [b"", b"this is not audio, just text\n" * 50])
def test_decode_refuses_what_is_not_audio(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "upload"
    src.write_bytes(content)
    with pytest.raises(DecodeError):
        decode_to_pcm(src, tmp_path / "a.pcm")


def test_decode_of_a_few_samples_has_no_energy_frame(tmp_path: Path) -> None:
    """Reachable input for test_audio_shorter_than_a_frame_is_one_piece: a 100-sample WAV
    decodes (no DecodeError) to PCM whose energy is empty."""
    src, pcm = tmp_path / "tiny.wav", tmp_path / "a.pcm"
    src.write_bytes(wav_bytes(tone(100 / RATE), RATE))
    assert decode_to_pcm(src, pcm) == pytest.approx(100 / RATE, abs=1e-3)
    assert len(pcm_energy(pcm)) == 0


def test_piece_wav_is_16k_mono_of_the_span(tmp_path: Path) -> None:
    pcm_path = tmp_path / "a.pcm"
    samples = (np.arange(5 * RATE) % 30_000).astype("<i2")
    samples.tofile(pcm_path)
    spans = [(0.0, 1.2345), (1.2345, 3.98), (3.98, 5.0)]
    joined = b""
    for start, end in spans:
        with wave.open(io.BytesIO(piece_wav(pcm_path, start, end))) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
            assert w.getnframes() == round(end * RATE) - round(start * RATE)
            joined += w.readframes(w.getnframes())
    # Adjacent pieces share no sample and miss none.
    assert joined == samples.tobytes()


def test_pcm_energy_is_frame_energy_of_the_whole(tmp_path: Path) -> None:
    """Read a minute at a time: the chunks' seams must not add or lose a frame."""
    pcm = tmp_path / "a.pcm"
    decode_to_pcm(FIXTURES / "long_en.ogg", pcm)  # 78.7 s: crosses the 60 s chunk
    whole = frame_energy(np.fromfile(pcm, dtype="<i2"))
    got = pcm_energy(pcm)
    assert len(got) > 60 / FRAME_S
    assert len(whole) == pcm.stat().st_size // 2 // FRAME
    assert np.array_equal(got, whole)
