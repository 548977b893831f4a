"""Text to speech, one voice per language (``voices.py``: VITS, the MMS-TTS architecture, or SVOX Pico).

Text is first turned into the words to say (``milo_voice.text``); the texts of a batch are then
grouped by language and speed, and each group is said by its language's voice at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from contract.records import InputError, Speech, TtsRequest
from milo_voice.roles.refusals import compute_valid
from milo_voice.roles.voices import Voice, open_voice
from milo_voice.text.normalize import TextNormalizer

MAX_TEXT_CHARS = 2000
# Sentence ends: the text is spoken sentence by sentence when streamed.
_SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+")


class TtsInputError(InputError):
    """A request that cannot be synthesised (empty text, unknown language, bad speed)."""


class TextToSpeech:
    """One voice per language, e.g. ``{"mg": ".../mms-tts-mlg", "fr": "pico:fr-FR"}``: a VITS folder,
    or ``pico:<language>`` (``voices.voice_location``)."""

    def __init__(self, voices: dict[str, str | Path], device: str = "cpu", seed: int = 0) -> None:
        if not voices:
            raise ValueError("TextToSpeech needs at least one voice")
        self.device = device
        self._voices: dict[str, Voice] = {lang: open_voice(where, device, seed) for lang, where in voices.items()}
        self._normalizers = {lang: TextNormalizer(lang) for lang in voices}

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self._voices)

    def normalize(self, text: str, language: str) -> str:
        return self._normalizers[language](text)

    def validate(self, request: TtsRequest) -> None:
        if request.language not in self._voices:
            raise TtsInputError(f"language {request.language!r} is not one of {list(self._voices)}")
        if not request.text or not request.text.strip():
            raise TtsInputError("text is empty")
        if not re.search(r"\w", request.text):
            raise TtsInputError("text has no words to speak")
        if len(request.text) > MAX_TEXT_CHARS:
            raise TtsInputError(f"text is longer than {MAX_TEXT_CHARS} characters; split it or stream it")
        if not 0.25 <= request.speed <= 4.0:
            raise TtsInputError("speed must be between 0.25 and 4.0")

    def synthesize(self, text: str, language: str, speed: float = 1.0) -> Speech:
        """One text; raises ``TtsInputError`` where it is refused."""
        result = self.synthesize_batch([TtsRequest(text, language, speed)])[0]
        if isinstance(result, InputError):
            raise result
        return result

    def synthesize_batch(self, requests: list[TtsRequest]) -> list[Speech | InputError]:
        """A refused request gets its error in place."""
        return compute_valid(requests, self.validate, self._synthesize_valid)

    def _synthesize_valid(self, requests: list[TtsRequest]) -> list[Speech]:
        results: list[Speech | None] = [None] * len(requests)
        # One forward pass per (language, speed): a voice is one model and speed scales all durations.
        groups: dict[tuple[str, float], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.language, request.speed), []).append(i)
        for (language, speed), indices in groups.items():
            spoken = [self.normalize(requests[i].text, language) for i in indices]
            for i, speech in zip(indices, self._synthesize_voice(language, spoken, speed), strict=True):
                results[i] = speech
        return [r for r in results if r is not None]

    def stream(self, request: TtsRequest) -> Iterator[Speech]:
        """Speech sentence by sentence, so the first audio is ready long before the last; the request
        is checked before the first (``TtsInputError``)."""
        self.validate(request)
        for sentence in split_sentences(request.text):
            yield self._synthesize_valid([replace(request, text=sentence)])[0]

    def _synthesize_voice(self, language: str, texts: list[str], speed: float) -> list[Speech]:
        return self._voices[language].speak(texts, speed)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
