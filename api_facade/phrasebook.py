"""Fixed translations of common expressions, which win over the model on an exact match.

Matching ignores case, accents' absence is not forgiven (they change meaning in French),
and differences of punctuation, apostrophe style and spacing are ignored: "manao ahoana
daholo !" matches "Manao ahoana daholo".
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

DEFAULT_PHRASEBOOK = Path(__file__).with_name("data") / "phrasebook.json"
_PUNCTUATION = re.compile(r"[\s.,!?;:…«»\"“”()-]+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("’", "'").replace("`", "'").lower()
    return _PUNCTUATION.sub(" ", text).strip()


class Phrasebook:
    def __init__(self, entries: list[dict[str, str]]) -> None:
        self._index: dict[tuple[str, str], dict[str, str]] = {}
        for entry in entries:
            for language, text in entry.items():
                self._index[(language, normalise(text))] = entry

    @classmethod
    def load(cls, path: Path = DEFAULT_PHRASEBOOK) -> Phrasebook:
        return cls(json.loads(path.read_text(encoding="utf-8"))["entries"])

    def lookup(self, text: str, source: str, target: str) -> str | None:
        entry = self._index.get((source, normalise(text)))
        return entry.get(target) if entry else None

    def __len__(self) -> int:
        return len({id(e) for e in self._index.values()})
