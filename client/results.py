"""What the client returns: plain dataclasses, independent of the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str
    language_probability: float
    confidence: float
    duration: float
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class SpeechResult:
    audio: np.ndarray  # mono float32 PCM
    sample_rate: int
    spoken_text: str

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class TranslationResult:
    text: str
    score: float


@dataclass(frozen=True)
class ChatResult:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed reply; the last one carries the finish reason ("stop", "length")."""

    text: str
    finish_reason: str | None = None
