"""The evaluation set: the same texts in French and Malagasy (``data/README.md`` says whose and
under what terms), and spoken clips a user may bring of their own."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
EVAL_SET = DATA / "udhr_fr_mg.tsv"
LANGUAGES = ("fr", "mg")


@dataclass(frozen=True)
class ParallelText:
    id: str
    fr: str
    mg: str

    def text(self, language: str) -> str:
        if language not in LANGUAGES:
            raise ValueError(f"the evaluation set has no {language!r} text")
        return self.fr if language == "fr" else self.mg


@dataclass(frozen=True)
class SpokenClip:
    """A recording and what it says: a person's, where a manifest names them (``load_clips``)."""

    path: Path
    language: str
    text: str


def load_eval_set(path: Path = EVAL_SET) -> list[ParallelText]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts = [ParallelText(row["id"], row["fr"].strip(), row["mg"].strip()) for row in rows]
    if not texts or any(not t.fr or not t.mg for t in texts):
        raise ValueError(f"{path}: every row needs an id, a French and a Malagasy text")
    return texts


def load_clips(manifest: Path) -> list[SpokenClip]:
    """Clips listed in a tab-separated manifest with a header ``path language text``; paths are
    relative to the manifest's folder (recordings of people, e.g. a FLEURS split converted to WAV)."""
    with manifest.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    clips = []
    for number, row in enumerate(rows, start=2):
        path, language, text = ((row.get(key) or "").strip() for key in ("path", "language", "text"))
        if not path or language not in LANGUAGES or not text:
            raise ValueError(f"{manifest}:{number}: needs a path, a language ({'/'.join(LANGUAGES)}) and a text")
        clip = SpokenClip(manifest.parent / path, language, text)
        if not clip.path.is_file():
            raise FileNotFoundError(f"{manifest}:{number}: no file {clip.path}")
        clips.append(clip)
    return clips
