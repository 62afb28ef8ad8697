"""testkit.wer: word error rate after normalising case and punctuation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.wer import _distance, edit_counts, normalise, word_error_rate


def naive_distance(ref: list[str], hyp: list[str]) -> int:
    """The textbook full-table Levenshtein, to check the vectorised rolling row against."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1])
            )
    return d[-1][-1]


def test_identical_is_zero() -> None:
    assert word_error_rate("the cat sat on the mat", "the cat sat on the mat") == 0.0


@pytest.mark.parametrize(
    ("hyp", "errors"),
    [
        ("the dog sat on the mat", 1),  # substitution
        ("the cat sat down on the mat", 1),  # insertion
        ("the cat on the mat", 1),  # deletion
        ("cat sat on the mat the", 2),  # a moved word: one deletion, one insertion
        ("", 6),
    ],
)
def test_each_edit_counts_once(hyp: str, errors: int) -> None:
    assert word_error_rate("the cat sat on the mat", hyp) == pytest.approx(errors / 6)


def test_case_and_punctuation_are_ignored() -> None:
    ref = "Hello there. General Kenobi! You're a bold one; kill him."
    hyp = "hello there, general kenobi... you\u2019re a bold one - Kill him"
    assert word_error_rate(ref, hyp) == 0.0


def test_apostrophes_inside_words_and_numbers_stay_as_written() -> None:
    assert normalise("'Don't' rock-and-roll, dogs' 3.5 1,000 end.") == [
        "don't",
        "rock",
        "and",
        "roll",
        "dogs",
        "3.5",
        "1,000",
        "end",
    ]
    assert word_error_rate("don't stop", "dont stop") == 0.5
    assert word_error_rate("five dollars", "5 dollars") == 0.5


def test_empty_reference() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate(" ... ", "") == 0.0  # punctuation only: no words
    assert word_error_rate("", "a few words") == 1.0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcde"), max_size=12)
)
def test_rolling_row_equals_the_full_table(ref: list[str], hyp: list[str]) -> None:
    assert _distance(ref, hyp) == naive_distance(ref, hyp)


def test_two_thousand_words_each() -> None:
    """About 10 % of the words replaced at random: the rate says so."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(300)]
    ref = [rng.choice(vocab) for _ in range(2000)]
    hyp = [w if rng.random() > 0.1 else rng.choice(vocab) for w in ref]
    rate = word_error_rate(" ".join(ref), " ".join(hyp))
    assert 0.05 < rate < 0.15


def test_edit_counts_tell_misheard_lost_and_extra_words_apart() -> None:
    ref = "the library opens at nine in the morning"
    assert edit_counts(ref, ref) == (0, 0, 0)
    assert edit_counts(ref, "the library opens at hide in the morning") == (1, 0, 0)
    assert edit_counts(ref, "the library opens at in the morning") == (0, 1, 0)
    assert edit_counts(ref, "the library opens at nine nine in the morning") == (0, 0, 1)
    s, d, i = edit_counts(ref, "library opens at hide in the morning too")
    assert (s, d, i) == (1, 1, 1) and (s + d + i) / 8 == word_error_rate(
        ref, "library opens at hide in the morning too"
    )
