"""Typed client for Milo Voice: one method per model over Triton (HTTP or gRPC, sync or asyncio)."""

from client.pool import TritonPool
from client.results import ChatResult, Segment, SpeechResult, TranscriptionResult, TranslationResult
from client.triton import (
    AsyncMiloTritonClient,
    CallOptions,
    MiloTritonClient,
    ModelInputError,
    TritonBusyError,
    TritonUnavailableError,
)

__all__ = [
    "AsyncMiloTritonClient",
    "CallOptions",
    "ChatResult",
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
