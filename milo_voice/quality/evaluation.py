"""``milo-voice eval``: how right a served stack's speech, transcripts and translations are.

Everything goes through the facade's public routes, as an app's requests would, so the report is
about the stack as served (normaliser, voices, Whisper's settings, the translation cache and
phrasebook included), whichever weights it serves:

- **TTS -> STT**: each language's sentences said by ``/v1/tts`` and heard back by ``/v1/stt``
  (told the language); character and word error rates against the text as the voice should say it
  (numbers spelled out). A voice nobody can understand scores near 1 whatever Whisper does.
- **STT on spoken clips**: speech the served voices did not make. Built in: French sentences said
  by a reference voice of this machine (MBROLA, ``reference_voices``); Malagasy has no such voice,
  so its row needs recordings (``--clips``, a manifest of people's recordings).
- **Translation**: chrF of ``/v1/translate`` against the reference in each direction, and of the
  French -> Malagasy -> French round trip against the French source. Where each translation came
  from (model, phrasebook, cache) is counted beside it; a text the stack refuses (too long for its
  model) counts as an empty translation, and as "refused".

Error rates are summed over sentences (edits over reference length), chrF is a corpus score.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from milo_voice.quality.chrf import chrf
from milo_voice.quality.error_rates import ErrorCount, character_errors, word_errors
from milo_voice.quality.eval_set import LANGUAGES, ParallelText, SpokenClip
from milo_voice.quality.reference_voices import SAMPLE_RATE, spoken

RETRIES = 5  # a busy stack (429, 503) is asked again after its Retry-After


@dataclass(frozen=True)
class EvalOptions:
    spoken_sentences: int = 12  # per language, the first this many short enough to say
    max_spoken_chars: int = 160
    clip_voice: str = "mb-fr1"  # the French reference voice for built-in clips
    translation_pairs: int | None = None  # all of the set


@dataclass(frozen=True)
class Row:
    """One line of the report: ``value`` is an error rate (0 best) or a chrF (100 best)."""

    task: str
    language: str  # "fr", "mg", or a direction such as "fr->mg"
    metric: str
    value: float | None  # None where the stack or this machine cannot measure it
    items: int
    detail: str = ""


@dataclass
class Report:
    stack: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)

    def value(self, task: str, language: str, metric: str) -> float | None:
        for row in self.rows:
            if (row.task, row.language, row.metric) == (task, language, metric):
                return row.value
        raise KeyError((task, language, metric))

    def to_json(self) -> str:
        return json.dumps(
            {"stack": self.stack, "rows": [asdict(r) for r in self.rows], "examples": self.examples},
            indent=1,
            ensure_ascii=False,
        )

    def to_markdown(self) -> str:
        weights = ", ".join(f"{model} {revision}" for model, revision in self.stack.get("weights", {}).items())
        lines = [
            *([f"Weights: {weights}", ""] if weights else []),
            "| task | language | metric | value | items | detail |",
            "|---|---|---|---:|---:|---|",
        ]
        for r in self.rows:
            value = "n/a" if r.value is None else f"{r.value:.1f}" if r.metric == "chrF" else f"{r.value:.3f}"
            lines.append(f"| {r.task} | {r.language} | {r.metric} | {value} | {r.items} | {r.detail} |")
        return "\n".join(lines) + "\n"


class Refused(RuntimeError):
    """The stack answered a 4xx or 5xx (after retries)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status = status


REFUSED = "refused"  # the origin of a text the stack would not translate (scored as an empty answer)


class FacadeCaller:
    """The facade's JSON routes, over HTTP, with a token where given."""

    def __init__(self, base_url: str, token: str = "", timeout_s: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(RETRIES):
            response = self._http.request(method, path, **kwargs)
            if response.status_code not in (429, 503):
                break
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 30.0))
        if response.status_code >= 400:
            raise Refused(method, path, response.status_code, response.text)
        return response

    def ready(self) -> dict[str, Any]:
        return dict(self._send("GET", "/ready").json())

    def speak(self, text: str, language: str) -> bytes:
        return self._send("POST", "/v1/tts", json={"text": text, "language": language, "format": "wav"}).content

    def transcribe(self, wav: bytes, language: str) -> str:
        body = {"audio": base64.b64encode(wav).decode("ascii"), "language": language}
        return str(self._send("POST", "/v1/stt", json=body).json()["text"])

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[tuple[str, str]]:
        """Each text's translation and where it came from, a call per text: a text the stack
        refuses (422, e.g. too long for its model) is ``REFUSED`` and fails no other."""
        out = []
        for text in texts:
            body = {"text": text, "source": source, "target": target}
            try:
                answer = self._send("POST", "/v1/translate", json=body).json()["translations"][0]
            except Refused as refused:
                if refused.status != 422:
                    raise
                answer = {"text": "", "origin": REFUSED}
            out.append((answer["text"], answer["origin"]))
        return out


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, audio, sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _error_rows(task: str, language: str, pairs: list[tuple[str, str]], detail: str = "") -> list[Row]:
    chars = sum((character_errors(ref, heard, language) for ref, heard in pairs), ErrorCount())
    words = sum((word_errors(ref, heard, language) for ref, heard in pairs), ErrorCount())
    return [
        Row(task, language, "CER", round(chars.rate, 4), len(pairs), f"{chars.edits}/{chars.length} chars {detail}"),
        Row(task, language, "WER", round(words.rate, 4), len(pairs), f"{words.edits}/{words.length} words {detail}"),
    ]


def _short(texts: list[ParallelText], language: str, options: EvalOptions) -> list[str]:
    said = [t.text(language) for t in texts if len(t.text(language)) <= options.max_spoken_chars]
    return said[: options.spoken_sentences]


def tts_to_stt(caller: FacadeCaller, texts: list[ParallelText], options: EvalOptions, report: Report) -> None:
    for language in LANGUAGES:
        pairs = []
        for text in _short(texts, language, options):
            pairs.append((text, caller.transcribe(caller.speak(text, language), language)))
        report.rows += _error_rows("tts->stt", language, pairs)
        report.examples.append({"task": "tts->stt", "language": language, "text": pairs[0][0], "heard": pairs[0][1]})


def stt_on_clips(
    caller: FacadeCaller,
    texts: list[ParallelText],
    options: EvalOptions,
    report: Report,
    clips: list[SpokenClip] | None = None,
    say: Callable[[str, str], np.ndarray] = spoken,
) -> None:
    """People's recordings where given, else French said by the reference voice."""
    for language in LANGUAGES:
        if clips:
            mine = [c for c in clips if c.language == language]
            pairs = [(c.text, caller.transcribe(c.path.read_bytes(), language)) for c in mine]
            detail = "recordings of the manifest"
        elif language == "fr":
            said = _short(texts, language, options)
            pairs = [(text, caller.transcribe(wav_bytes(say(text, options.clip_voice)), language)) for text in said]
            detail = f"said by espeak-ng {options.clip_voice}"
        else:
            pairs, detail = [], "no voice of this machine speaks Malagasy: give recordings (--clips)"
        if pairs:
            report.rows += _error_rows("stt", language, pairs, f"({detail})")
        else:
            report.rows += [Row("stt", language, metric, None, 0, detail) for metric in ("CER", "WER")]


def translation(caller: FacadeCaller, texts: list[ParallelText], options: EvalOptions, report: Report) -> None:
    pairs = texts[: options.translation_pairs] if options.translation_pairs else texts
    french, malagasy = [t.fr for t in pairs], [t.mg for t in pairs]
    to_mg = caller.translate(french, "fr", "mg")
    to_fr = caller.translate(malagasy, "mg", "fr")
    # A text refused on the way there is a miss on the way back too.
    there = [(i, text) for i, (text, origin) in enumerate(to_mg) if origin != REFUSED]
    back_of = dict(zip((i for i, _ in there), caller.translate([t for _, t in there], "mg", "fr"), strict=True))
    back = [back_of.get(i, ("", REFUSED)) for i in range(len(to_mg))]
    for direction, answers, references in (
        ("fr->mg", to_mg, malagasy),
        ("mg->fr", to_fr, french),
        ("fr->mg->fr", back, french),
    ):
        origins = Counter(origin for _, origin in answers)
        detail = ", ".join(f"{origin} {n}" for origin, n in sorted(origins.items()))
        score = chrf([text for text, _ in answers], references)
        report.rows.append(Row("translate", direction, "chrF", round(score, 2), len(answers), detail))
    report.examples.append({"task": "translate", "language": "fr->mg", "text": french[0], "heard": to_mg[0][0]})


def evaluate(
    caller: FacadeCaller,
    texts: list[ParallelText],
    options: EvalOptions = EvalOptions(),
    clips: list[SpokenClip] | None = None,
) -> Report:
    report = Report(stack={})
    tts_to_stt(caller, texts, options, report)
    stt_on_clips(caller, texts, options, report, clips)
    translation(caller, texts, options, report)
    ready = caller.ready()  # last: by now the models have said which weights they run
    report.stack = {key: ready[key] for key in ("status", "models", "weights") if key in ready}
    return report
