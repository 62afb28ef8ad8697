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


def edit_counts(reference: str, hypothesis: str) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one minimal word alignment, after
    `normalise`; of the alignments as short as it, the one with fewest deletions and
    insertions. A word misheard is a substitution; a word lost at a cut is a deletion, a
    word heard twice across one an insertion: the two kinds tell a weak model from a
    bad cut."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    # Each cell: (edits, deletions + insertions, substitutions, deletions, insertions).
    prev = [(j, j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        row = [(i, i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            e, g, s, d, n = prev[j - 1]
            diag = (e, g, s, d, n) if ref[i - 1] == hyp[j - 1] else (e + 1, g, s + 1, d, n)
            e, g, s, d, n = prev[j]
            up = (e + 1, g + 1, s, d + 1, n)
            e, g, s, d, n = row[j - 1]
            left = (e + 1, g + 1, s, d, n + 1)
            row.append(min(diag, up, left))
        prev = row
    _, _, s, d, n = prev[-1]
    return s, d, n
