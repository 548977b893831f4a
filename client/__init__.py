"""Typed client for Milo Voice's models over Triton: one server or a pool, asyncio or blocking.

The records it sends and returns are the contract's (``contract.records``).
"""

from client.blocking import MiloTritonClient
from client.calls import CallOptions, ModelCalls
from client.errors import TritonBusyError, TritonUnavailableError
from client.pool import TritonPool
from client.triton import AsyncMiloTritonClient
from contract.records import (
    ChatDelta,
    ChatMessage,
    ChatReply,
    ChatRequest,
    InputError,
    Segment,
    Speech,
    Transcription,
    Translation,
)

__all__ = [
    "AsyncMiloTritonClient",
    "CallOptions",
    "ChatDelta",
    "ChatMessage",
    "ChatReply",
    "ChatRequest",
    "InputError",
    "MiloTritonClient",
    "ModelCalls",
    "Segment",
    "Speech",
    "Transcription",
    "Translation",
    "TritonBusyError",
    "TritonPool",
    "TritonUnavailableError",
]
