"""The request and result records of every served model, from the client to the role and back.

A record's fields are its model's tensors (``contract.tensors`` says which field each
tensor carries); the roles compute on these records, the servers' handlers and the client
turn them into tensors and back with ``contract.codec``, and the facade maps them to its
JSON bodies. They are defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AUTO = "auto"  # STT: detect the spoken language
STT_SAMPLE_RATE = 16000  # STT's audio: mono PCM at this rate
# As OpenAI's chat completions: at most 4 stop strings, each of 1 to 64 characters here.
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64


class InputError(ValueError):
    """A request the model refuses (empty text, unknown language, ...); the message says why.

    It travels in the model's ``error`` tensor, in place of the request's result, so a
    refused request never fails the other requests of its batch.
    """


# -- speech to text ----------------------------------------------------------------


@dataclass(frozen=True)
class SttRequest:
    audio: np.ndarray  # mono float32 PCM at ``STT_SAMPLE_RATE``
    language: str = AUTO  # a language the model serves, or "auto"


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str
    language_probability: float
    confidence: float  # exp of the duration-weighted mean token log-probability, in (0, 1]
    duration: float
    segments: list[Segment] = field(default_factory=list)
    tokens: int = 0  # tokens decoded over all windows (timestamps included)


# -- text to speech ----------------------------------------------------------------


@dataclass(frozen=True)
class TtsRequest:
    text: str
    language: str
    speed: float = 1.0
    request_id: str = ""  # streams only: the id ``tts_cancel`` stops it by


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # mono float32 PCM in [-1, 1]
    sample_rate: int  # 0 marks a stream's filler piece, which clients skip
    spoken_text: str  # the normalised text the voice read

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate if self.sample_rate else 0.0


# -- translation -------------------------------------------------------------------


@dataclass(frozen=True)
class TranslateRequest:
    text: str
    source: str
    target: str


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # mean log-probability per generated token
    # The weights that translated it: their content hash (``milo_voice.weights.identity``), the
    # facade's translation cache keys by it.
    revision: str = ""


# -- chat --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """What is None is left to the model's defaults (the registry's chat parameters)."""

    messages: list[ChatMessage]
    language: str | None = None  # a hint; the model otherwise follows the user's language
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a fresh random seed for each request
    stop: tuple[str, ...] = ()  # the reply ends before the first of these
    request_id: str = ""  # the id ``chat_cancel`` stops it by


@dataclass(frozen=True)
class ChatReply:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    trimmed_messages: int = 0  # older turns left out to fit the context window
    cached_tokens: int = 0  # prompt tokens the model already held from an earlier request


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a streamed reply; the last one carries the finish reason ("stop", "length") and
    the reply's token counts (0 on the pieces before it)."""

    text: str
    finish_reason: str = ""  # empty while the reply goes on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


# -- cancel models -----------------------------------------------------------------


@dataclass(frozen=True)
class CancelRequest:
    request_id: str


@dataclass(frozen=True)
class Cancelled:
    cancelled: int  # 1 when a running request was stopped
