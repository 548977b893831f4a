"""Where a streamed reply can be cut into pieces to speak, as its text arrives."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? or … (possibly followed by closing quotes or brackets), then a space,
# or at a line break. Checked on the text written so far, so the space after the mark must have
# arrived: "3.5" or "M.Ravelo" never end a sentence.
SENTENCE_END = re.compile(r"[.!?…]+[\"'»”)\]]*\s+|\n+")
CLAUSE_END = re.compile(r"[,;:]\s+")


@dataclass(frozen=True)
class ChunkRules:
    """How soon a piece of the reply is spoken.

    The first piece is short: it may end at a clause break once it has ``first_min_chars``,
    and waits for no break beyond ``first_max_chars`` (cut at the last space before it), so
    that the listener hears something soon even when the reply opens with a long sentence; the
    wait is the time the chat takes to write it. Later pieces, synthesised while earlier ones
    play, are at least ``min_chars`` (whole sentences read more naturally than fragments). No
    piece waits beyond ``max_chars`` for a break: it is cut at the last space (a model that
    writes no punctuation must not keep the listener waiting to the end).
    """

    first_min_chars: int = 12
    first_max_chars: int = 48
    min_chars: int = 24
    max_chars: int = 220


class SentenceChunker:
    """Feed the reply's text as it streams; take back the pieces ready to speak, in order."""

    def __init__(self, rules: ChunkRules | None = None) -> None:
        self.rules = rules or ChunkRules()
        self._pending = ""
        self._pieces = 0

    def feed(self, text: str) -> list[str]:
        self._pending += text
        ready: list[str] = []
        while (cut := self._cut()) is not None:
            piece, self._pending = self._pending[:cut].strip(), self._pending[cut:]
            if piece:
                ready.append(piece)
                self._pieces += 1
        return ready

    def flush(self) -> str | None:
        """What is left once the reply has ended."""
        piece, self._pending = self._pending.strip(), ""
        if piece:
            self._pieces += 1
        return piece or None

    def _cut(self) -> int | None:
        """Where the next piece ends in the pending text, or None to wait for more."""
        text, rules = self._pending, self.rules
        least = rules.first_min_chars if self._pieces == 0 else rules.min_chars
        for match in SENTENCE_END.finditer(text):
            if len(text[: match.start()].strip()) >= least or match.group().startswith("\n"):
                return match.end()
        if self._pieces == 0:
            for match in CLAUSE_END.finditer(text):
                if len(text[: match.start()].strip()) >= least:
                    return match.end()
        longest = rules.first_max_chars if self._pieces == 0 else rules.max_chars
        if len(text) > longest:
            space = text.rfind(" ", 0, longest)
            return space + 1 if space > 0 else longest
        return None
