"""Word error rate, for comparing a transcript against a reference one.

Both texts are normalised first: Whisper's casing and punctuation differ between one
pass over a whole file and the same audio cut into pieces (a piece starts a new
sentence with a capital, a cut can end one with a full stop), and those differences
say nothing about the words heard. Numbers are left as written ("3.5" stays one word),
so "five" against "5" still counts as an error.
"""

from __future__ import annotations

import unicodedata

import numpy as np

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalise(text: str) -> list[str]:
    """Lower-case words; punctuation becomes a space, except an apostrophe inside a word
    ("don't") and a point or comma inside a number ("3.5", "1,000")."""
    chars = text.lower().translate(_APOSTROPHES)
    out: list[str] = []
    for i, ch in enumerate(chars):
        if unicodedata.category(ch).startswith("P"):
            before = chars[i - 1] if i > 0 else " "
            after = chars[i + 1] if i + 1 < len(chars) else " "
            inside_word = ch == "'" and before.isalnum() and after.isalnum()
            inside_number = ch in ".," and before.isdigit() and after.isdigit()
            if not (inside_word or inside_number):
                ch = " "
        out.append(ch)
    return "".join(out).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance (substitutions + insertions + deletions) over the number
    of reference words, after `normalise`. An empty reference gives 0.0 when the
    hypothesis is empty too and 1.0 when it has words (every word is an insertion, and
    there is nothing to divide by)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return _distance(ref, hyp) / len(ref)


def _distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein over words, one rolling row over the reference per hypothesis word.

    A row's insertion-free part is elementwise; the deletions along the row (each cell
    at most its left neighbour + 1) are a running minimum of row[k] - k, plus j. That
    keeps the whole row in numpy: two 2,000-word texts take milliseconds, not seconds."""
    vocab: dict[str, int] = {}
    ref_ids = np.array([vocab.setdefault(w, len(vocab)) for w in ref], dtype=np.int64)
    steps = np.arange(len(ref) + 1, dtype=np.int64)
    row = steps.copy()  # the empty hypothesis: delete every reference word
    for i, word in enumerate(hyp, start=1):
        ids = vocab.get(word, -1)
        best = np.empty_like(row)
        best[0] = i  # insert every hypothesis word so far
        np.minimum(row[:-1] + (ref_ids != ids), row[1:] + 1, out=best[1:])
        row = np.minimum.accumulate(best - steps) + steps
    return int(row[-1])
