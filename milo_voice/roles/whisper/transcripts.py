"""From decoded tokens to the contract's records: prompts, timestamps to segments, a request's transcription."""

from __future__ import annotations

import math
from dataclasses import dataclass

from faster_whisper.tokenizer import Tokenizer

from contract.records import Segment, SttRequest, Transcription
from milo_voice.roles.whisper.decoder import WhisperDecoding
from milo_voice.roles.whisper.windows import SAMPLE_RATE, Window

TIME_PRECISION = 0.02  # seconds per Whisper timestamp token

Language = tuple[str, float]  # a language and how sure the model is of it


@dataclass(frozen=True)
class DecodingLimits:
    """At most ``new_tokens`` per window; ``suppress``: tokens never decoded (-1: the model's list)."""

    new_tokens: int
    suppress: tuple[int, ...] = (-1,)


class Prompts:
    """The tokens a window's decoding starts with, and the tokenizer that reads what it decodes."""

    def __init__(self, tokenizer: Tokenizer, languages: tuple[str, ...], timestamps: bool) -> None:
        self.tokenizer = tokenizer
        self.languages = languages
        self.timestamps = timestamps
        self.language_ids = {lang: tokenizer.tokenizer.token_to_id(f"<|{lang}|>") for lang in languages}

    def __call__(self, language: str) -> list[int]:
        prompt = [self.tokenizer.sot, self.language_ids[language], self.tokenizer.transcribe]
        return prompt if self.timestamps else [*prompt, self.tokenizer.no_timestamps]

    def segments(self, window: Window, decoding: WhisperDecoding) -> list[Segment]:
        tokens = decoding.tokens
        avg_logprob = decoding.logprob_sum / (len(tokens) + 1)
        duration = window.audio.size / SAMPLE_RATE
        segments = []
        for start, end, text_tokens in split_on_timestamps(tokens, self.tokenizer.timestamp_begin, duration):
            text = self.tokenizer.decode(text_tokens).strip()
            if text:
                segments.append(
                    Segment(
                        start=round(window.offset + start, 2),
                        end=round(window.offset + min(end, duration), 2),
                        text=text,
                        avg_logprob=avg_logprob,
                        no_speech_prob=decoding.no_speech_prob,
                    )
                )
        return segments


def pick_language(probabilities: dict[str, float]) -> Language:
    """The likeliest allowed language, and its probability renormalised over the allowed ones
    ("how sure, between mg and fr")."""
    total = sum(probabilities.values())
    language = max(probabilities, key=probabilities.__getitem__)
    return language, (probabilities[language] / total if total > 0 else 1.0 / len(probabilities))


def split_on_timestamps(
    tokens: list[int], timestamp_begin: int, duration: float
) -> list[tuple[float, float, list[int]]]:
    """Cut generated tokens into (start, end, text tokens) at Whisper's timestamp tokens."""
    pieces: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            time = (token - timestamp_begin) * TIME_PRECISION
            if start is None:
                start = time
            elif text:
                pieces.append((start, time, text))
                start, text = None, []
            else:
                start = time
        else:
            text.append(token)
    if text:
        pieces.append((start or 0.0, duration, text))
    return pieces


def transcription(request: SttRequest, language: Language, segments: list[Segment], tokens: int) -> Transcription:
    """A request's result; its confidence is exp of the duration-weighted mean token log-probability."""
    duration = request.audio.size / SAMPLE_RATE
    if segments:
        weights = [max(s.end - s.start, 0.01) for s in segments]
        mean_logprob = sum(w * s.avg_logprob for w, s in zip(weights, segments, strict=True)) / sum(weights)
        confidence = math.exp(min(mean_logprob, 0.0))
    else:
        confidence = 0.0
    return Transcription(
        text=" ".join(s.text for s in segments).strip(),
        language=language[0],
        language_probability=round(language[1], 4),
        confidence=round(confidence, 4),
        duration=round(duration, 3),
        segments=segments,
        tokens=tokens,
    )
