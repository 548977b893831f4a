"""What cutting Whisper's 30 s window to the audio costs in accuracy and gains in time, side by side.

    python -m loadtests.bench.stt_window [--seconds 30 10 6] [--voices fr mb-fr1 mb-fr4 pico]
                                         [--model models/embedded/stt] [--out docs/benchmarks/stt-window]

Whisper encodes every window over 30 s, a short question padded with silence
(``SttOptions.min_encoded_seconds``). For each setting of ``--seconds`` this builds the STT role
on this machine's CPU and transcribes, with the language detected as the product does, French
sentences said by each voice installed here (espeak-ng at 140 words a minute; MBROLA's fr1 and fr4 and SVOX Pico where
their Debian packages are). Settings take turns clip by clip, so that the machine's load falls on
all alike. Per voice and setting: character and word error rates (edits summed over the corpus,
over the references' length), clips heard wrongly in more than half their characters, clips whose
language came out other than French, and the time of a transcription: median per clip and in all,
with the full window's time over each setting's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.payloads import spoken
from milo_voice.quality.error_rates import ErrorCount, character_errors, word_errors
from milo_voice.roles.stt import SpeechToText, SttOptions

# What people ask a voice assistant, and the load tests' own clips; about 1.5 to 9 s each.
SENTENCES = (
    "Bonjour, je voudrais un taxi.",
    "Bonjour, pouvez-vous me raconter une histoire sur Madagascar ?",
    "Bienvenue à tous. Aujourd'hui nous parlerons de la santé et de l'agriculture.",
    "Où se trouve l'hôpital le plus proche ?",
    "Nous avons besoin d'eau et de nourriture.",
    "Le train pour Antsirabe part à sept heures du matin.",
    "Merci beaucoup, au revoir.",
    "Quel temps fera-t-il demain dans la capitale ?",
    "Je cherche une pharmacie ouverte le dimanche.",
    "Combien coûte un kilo de riz au marché ?",
    "Les enfants vont à l'école tous les jours sauf le mercredi après-midi.",
    "Pouvez-vous répéter plus lentement, s'il vous plaît ?",
    "La réunion du conseil municipal a été reportée à la semaine prochaine.",
    "Il faut arroser les plants de vanille avant la saison sèche.",
    "Mon téléphone ne fonctionne plus depuis hier soir.",
    "Bonjour, je voudrais réserver un taxi pour demain matin à huit heures, de l'hôtel jusqu'à l'aéroport "
    "d'Ivato, pour deux personnes avec leurs bagages.",
    "Quelle est la meilleure saison pour planter le riz ?",
    "Appelle ma sœur et dis-lui que je serai en retard.",
    "Traduis cette phrase en malgache, s'il te plaît.",
    "À quelle heure ouvre la banque le samedi matin ?",
    "Je voudrais envoyer de l'argent à ma famille.",
    "Le médecin passe au village une fois par mois.",
    "Rappelle-moi d'acheter du pain et du lait ce soir.",
    "Combien de temps faut-il pour aller à Toamasina en voiture ?",
    "Est-ce qu'il va pleuvoir cet après-midi ?",
    "Les prix du carburant ont encore augmenté cette semaine.",
    "Peux-tu lire les nouvelles du jour ?",
    "Mets de la musique douce, s'il te plaît.",
    "Je ne comprends pas ce que tu veux dire.",
    "La récolte de café a été bonne cette année dans les hautes terres.",
)
VOICES = ("fr", "mb-fr1", "mb-fr4", "pico")
LOST = 0.5  # a clip heard wrongly in more than half its characters
FULL_WINDOW = 30.0
# espeak-ng's own French speed is past what the embedded Whisper follows; the load tests' clips use this.
ESPEAK_WORDS_PER_MINUTE = 140


def installed(voice: str) -> bool:
    if voice == "pico":
        return shutil.which("pico2wave") is not None
    if voice.startswith("mb-"):
        return shutil.which("espeak-ng") is not None and Path("/usr/share/mbrola", voice[3:]).exists()
    return shutil.which("espeak-ng") is not None


@dataclass
class Tally:
    characters: ErrorCount = field(default_factory=ErrorCount)
    words: ErrorCount = field(default_factory=ErrorCount)
    lost: int = 0
    wrong_language: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, reference: str, text: str, language: str, seconds: float) -> None:
        characters = character_errors(reference, text)
        self.characters += characters
        self.words += word_errors(reference, text)
        self.lost += characters.rate > LOST
        self.wrong_language += language != "fr"
        self.seconds.append(seconds)

    def merge(self, other: Tally) -> None:
        self.characters += other.characters
        self.words += other.words
        self.lost += other.lost
        self.wrong_language += other.wrong_language
        self.seconds += other.seconds

    def row(self) -> dict[str, Any]:
        return {
            "clips": len(self.seconds),
            "cer": round(self.characters.rate, 4),
            "wer": round(self.words.rate, 4),
            "lost": self.lost,
            "wrong_language": self.wrong_language,
            "median_ms": round(statistics.median(self.seconds) * 1000, 1),
            "total_s": round(sum(self.seconds), 2),
        }


def measure(model: str, settings: list[float], voices: list[str]) -> dict[str, Any]:
    threads = len(os.sched_getaffinity(0))
    roles = {
        seconds: SpeechToText(model, options=SttOptions("int8", cpu_threads=threads, min_encoded_seconds=seconds))
        for seconds in settings
    }
    for role in roles.values():
        role.transcribe(spoken(SENTENCES[0]), "auto")  # first calls allocate
    tallies = {(voice, seconds): Tally() for voice in voices for seconds in settings}
    durations: dict[str, float] = {}
    examples: list[dict[str, Any]] = []
    for voice in voices:
        for sentence in SENTENCES:
            audio = spoken(sentence, voice, ESPEAK_WORDS_PER_MINUTE if voice == "fr" else None)
            durations[voice] = durations.get(voice, 0.0) + audio.size / 16000
            heard = {}
            for seconds, role in roles.items():
                started = time.perf_counter()
                result = role.transcribe(audio, "auto")
                tallies[voice, seconds].add(sentence, result.text, result.language, time.perf_counter() - started)
                heard[seconds] = result.text.strip()
            if len(set(heard.values())) > 1:
                examples.append({"voice": voice, "reference": sentence, "heard": {str(s): t for s, t in heard.items()}})
    for seconds in settings:
        tallies["all", seconds] = Tally()
        for voice in voices:
            tallies["all", seconds].merge(tallies[voice, seconds])
    rows = [
        {"voice": voice, "min_encoded_seconds": seconds, **tallies[voice, seconds].row()}
        for voice in [*voices, "all"]
        for seconds in settings
    ]
    full = {row["voice"]: row["total_s"] for row in rows if row["min_encoded_seconds"] == FULL_WINDOW}
    for row in rows:
        row["full_over_this"] = round(full[row["voice"]] / row["total_s"], 2)
    return {
        "machine": f"{threads} cores",
        "model": model,
        "sentences": len(SENTENCES),
        "audio_seconds": {voice: round(seconds, 1) for voice, seconds in durations.items()},
        "rows": rows,
        "differing": examples,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Whisper's window cut to the audio, {result['machine']}",
        "",
        f"{result['sentences']} French sentences per voice, language detected; model {result['model']}, int8. "
        "Seconds of speech per voice: "
        + ", ".join(f"{voice} {seconds}" for voice, seconds in result["audio_seconds"].items())
        + ". cer/wer: edits summed over the corpus over the references' length; lost: clips with a "
        f"character error rate over {LOST}; time: one transcription, median and summed; full/this: "
        "the 30 s window's summed time over this setting's.",
        "",
        "| voice | min encoded s | cer | wer | lost | wrong language | median ms | total s | full/this |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['voice']} | {r['min_encoded_seconds']:g} | {r['cer']:.3f} | {r['wer']:.3f} | {r['lost']} | "
            f"{r['wrong_language']} | {r['median_ms']} | {r['total_s']} | {r['full_over_this']} |"
        )
    lines += ["", "Clips heard differently by the settings:", ""]
    for example in result["differing"]:
        lines.append(f"- {example['voice']}: *{example['reference']}*")
        lines += [f"  - {seconds} s: {text}" for seconds, text in example["heard"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 10.0, 6.0])
    parser.add_argument("--voices", nargs="+", default=list(VOICES))
    parser.add_argument("--model", default="models/embedded/stt")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/stt-window"))
    args = parser.parse_args(argv)
    voices = [voice for voice in args.voices if installed(voice)]
    skipped = sorted(set(args.voices) - set(voices))
    if skipped:
        print(f"not installed here, skipped: {skipped} (Debian contrib/non-free: mbrola-fr*, libttspico-utils)")
    result = measure(args.model, sorted({FULL_WINDOW, *args.seconds}, reverse=True), voices)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stt_window.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    report = markdown(result)
    (args.out / "stt_window.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
