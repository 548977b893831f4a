"""The records of text generation, shared by the llama.cpp engine, the chat role and the servers.

A generation reports to a sink: ``TextPiece`` as the text comes, then ``Finished`` (or
``Failed``) once. The records import nothing heavy, so code that only reads events needs
no llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True)
class Sampling:
    """How one generation picks its tokens; ``temperature`` 0 is greedy."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None  # None: a fresh random seed


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int  # prompt tokens found in the slot's cache, not evaluated again
    queue_seconds: float  # submitted -> took a slot
    first_token_seconds: float  # submitted -> first token sampled (0 when none)


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = TextPiece | Finished | Failed
Sink = Callable[[Event], None]


class EngineObserver:
    """Hooks for metrics; the serving layer overrides them (the engine imports no metrics library)."""

    def admitted(self, queue_seconds: float) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def tokens(self, count: int) -> None: ...

    def slots_busy(self, busy: int) -> None: ...
