"""Typed client for Milo Voice: one method per model over Triton (HTTP or gRPC, sync or asyncio)."""

from client.pool import TritonPool
from client.results import ChatDelta, ChatResult, Segment, SpeechResult, TranscriptionResult, TranslationResult
from client.triton import (
    AsyncMiloTritonClient,
    CallOptions,
    ChatSampling,
    MiloTritonClient,
    ModelInputError,
    TritonBusyError,
    TritonUnavailableError,
)

__all__ = [
    "AsyncMiloTritonClient",
    "CallOptions",
    "ChatDelta",
    "ChatResult",
    "ChatSampling",
    "MiloTritonClient",
    "ModelInputError",
    "Segment",
    "SpeechResult",
    "TranscriptionResult",
    "TranslationResult",
    "TritonBusyError",
    "TritonPool",
    "TritonUnavailableError",
]
