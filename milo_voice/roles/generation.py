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
    """How one generation picks its tokens; ``temperature`` 0 is greedy. A chat request's values
    come resolved (``ChatDefaults``): the engine has no defaults of its own for them."""

    temperature: float
    top_p: float
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None  # None: a fresh random seed
    # End-of-generation tokens never sampled: the reply runs to ``max_tokens`` (as llama.cpp's
    # server offers per request; load tests use it for replies of a known length).
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    pieces: bool = True  # report the text as it comes (``TextPiece``), not only in the result


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
    """Hooks for metrics, called on the engine's thread; the serving layer overrides them
    (the engine imports no metrics library). They must return at once."""

    def capacity(self, change: int) -> None:
        """How many conversations the engine decodes at once: +slots at start, -slots when it closes."""

    def slots_busy(self, change: int) -> None:
        """+1 when a conversation takes a slot, -1 when it leaves."""

    def tokens(self, count: int) -> None:
        """Tokens sampled in one step."""

    def first_token(self, seconds: float) -> None:
        """A request's first token, ``seconds`` after it was submitted."""

    def admitted(self, queue_seconds: float) -> None:
        """A request took a slot ``queue_seconds`` after it was submitted."""
