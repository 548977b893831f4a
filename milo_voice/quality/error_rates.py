"""Character and word error rates of a transcript against its reference.

Both texts are compared as people read them: case, punctuation and spacing do not count, accents
and apostrophes do (``l'école`` and ``lécole`` are different words). Given a language, numbers and
symbols are first spelled out on both sides (``milo_voice.text``), so that a recogniser that
writes "15 000" where the reference says "quinze mille" is not counted wrong. Rates are edits over the
reference's length, so a transcript that adds words can score above 1; over a corpus, sum the
edits and the lengths (``ErrorCount``) rather than averaging rates, so long clips weigh more.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from milo_voice.text.normalize import normalize_text

_NOT_SPOKEN = re.compile(r"[^\w\s']")


def normalise(text: str, language: str | None = None) -> str:
    """Numbers spelled out in ``language`` (where given), lower case, NFC, punctuation to spaces
    (apostrophes kept), single spaces."""
    if language is not None:
        text = normalize_text(text, language)
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
    return " ".join(_NOT_SPOKEN.sub(" ", text).split())


def edit_distance(reference: Sequence[object], hypothesis: Sequence[object]) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, each costing one."""
    previous = list(range(len(hypothesis) + 1))
    for row, expected in enumerate(reference, start=1):
        current = [row]
        for column, heard in enumerate(hypothesis, start=1):
            substitution = previous[column - 1] + (expected != heard)
            current.append(min(previous[column] + 1, current[column - 1] + 1, substitution))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class ErrorCount:
    """Edits and reference length, summed over clips; ``rate`` is their ratio."""

    edits: int = 0
    length: int = 0

    def __add__(self, other: ErrorCount) -> ErrorCount:
        return ErrorCount(self.edits + other.edits, self.length + other.length)

    @property
    def rate(self) -> float:
        return self.edits / self.length if self.length else 0.0


def character_errors(reference: str, hypothesis: str, language: str | None = None) -> ErrorCount:
    expected, heard = normalise(reference, language), normalise(hypothesis, language)
    return ErrorCount(edit_distance(expected, heard), len(expected))


def word_errors(reference: str, hypothesis: str, language: str | None = None) -> ErrorCount:
    expected, heard = normalise(reference, language).split(), normalise(hypothesis, language).split()
    return ErrorCount(edit_distance(expected, heard), len(expected))
