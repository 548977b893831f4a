"""What the load tests send: short and long texts and spoken clips, multi-turn chat scripts.

Clips are spoken by espeak-ng (installed by ``make setup``) and sent as 16-bit WAV, as an
app would upload them; they are made once per run.
"""

from __future__ import annotations

import io
import os
import sys
from functools import cache
from pathlib import Path

import soundfile as sf

from milo_voice.quality.reference_voices import spoken

SHORT_TEXTS = {
    "mg": "Manao ahoana, tonga soa.",
    "fr": "Bonjour, comment allez-vous ?",
}
LONG_TEXTS = {
    "mg": (
        "Tonga soa eto Antananarivo ianareo rehetra. Androany dia hiresaka momba ny fahasalamana sy ny "
        "fambolena isika, ary hanome torohevitra ho an'ny tantsaha amin'ny faritra atsimo."
    ),
    "fr": (
        "Bienvenue à tous. Aujourd'hui nous parlerons de la santé et de l'agriculture, et nous donnerons "
        "quelques conseils pratiques aux cultivateurs des régions du sud."
    ),
}
# Sentences of the embedded translation corpus, so that the embedded model translates them for real.
TRANSLATE_SHORT = [("mg", "fr", "Misaotra betsaka tompoko."), ("fr", "mg", "Où se trouve l'hôpital le plus proche?")]
TRANSLATE_LONG = [
    ("mg", "fr", "Veloma ary mandra-pihaona. Mila rano sy sakafo izahay. Misaotra betsaka tompoko."),
    ("fr", "mg", "Où se trouve l'hôpital le plus proche? Nous avons besoin d'eau et de nourriture."),
]
CHAT_SCRIPT = [
    "Salama! Iza ianao?",
    "Inona no azonao atao ho ahy?",
    "Omeo torohevitra iray momba ny fambolena vary aho.",
    "Misaotra, veloma!",
]
CLIP_TEXTS = {
    "short": "Bonjour, je voudrais un taxi.",
    "long": (
        "Bonjour, je voudrais réserver un taxi pour demain matin à huit heures, "
        "de l'hôtel jusqu'à l'aéroport d'Ivato, pour deux personnes avec leurs bagages."
    ),
    # A spoken turn's question (the voice benchmarks and the Locust voice scenario).
    "question": "Bonjour, pouvez-vous me raconter une histoire sur Madagascar ?",
}


@cache
def clip_wav(kind: str) -> bytes:
    """A spoken clip ("short", about 2 s, or "long", about 8 s) as 16 kHz mono 16-bit WAV bytes.

    ``MILO_CLIPS_DIR`` may hold them ready-made as ``<kind>.wav``, for machines without
    espeak-ng (the GPU host); ``python -m loadtests.payloads DIR`` writes them.
    """
    ready = Path(os.environ.get("MILO_CLIPS_DIR", "")) / f"{kind}.wav"
    if os.environ.get("MILO_CLIPS_DIR") and ready.is_file():
        return ready.read_bytes()
    audio = spoken(CLIP_TEXTS[kind], "fr", 140)
    out = io.BytesIO()
    sf.write(out, audio, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def write_clips(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind in CLIP_TEXTS:
        (folder / f"{kind}.wav").write_bytes(clip_wav(kind))


if __name__ == "__main__":
    write_clips(Path(sys.argv[1]))
