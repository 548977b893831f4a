"""The events of ``WebSocket /v1/realtime``, named after OpenAI's Realtime API where they fit.

Client to server: JSON text frames (below), and binary frames of raw audio, the same as
``input_audio_buffer.append`` without the base64. Audio in is 16 kHz mono PCM16 little-endian;
audio out is mono PCM16 at the voice's rate, given in each ``response.audio.delta``.

Server to client (each a JSON object with ``type`` and ``event_id``):
``session.created``, ``session.updated``, ``input_audio_buffer.speech_started`` /
``speech_stopped`` / ``committed`` / ``cleared``,
``conversation.item.input_audio_transcription.partial`` (Milo's: the whole transcript so far,
while the user speaks) and ``.completed``, ``response.created``,
``response.audio_transcript.delta``, ``response.audio.delta``, ``response.audio.done``,
``response.done`` (status ``completed``, ``cancelled`` or ``failed``) and ``error``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from api_facade.protocol import SESSION_ID_PATTERN


class ServerVad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.05, le=0.95)
    silence_duration_ms: int = Field(500, ge=100, le=5000)
    prefix_padding_ms: int = Field(300, ge=0, le=2000)


class SessionConfig(BaseModel):
    """What a client may set; each field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN, description="continue a stored chat session")
    language: Literal["mg", "fr", "auto"] | None = None
    # None (JSON null): no turn detection; the client ends each turn with input_audio_buffer.commit.
    turn_detection: ServerVad | None = ServerVad()
    partial_transcripts: bool | None = None
    speed: float | None = Field(None, ge=0.25, le=4.0)
    max_response_output_tokens: int | None = Field(None, ge=1, le=1024, description="unset: the model's default")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="unset: the model's default")


class SessionUpdate(BaseModel):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionConfig


class AudioAppend(BaseModel):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str = Field(description="base64 of 16 kHz mono PCM16")


class AudioCommit(BaseModel):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class AudioClear(BaseModel):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


class ResponseCancel(BaseModel):
    type: Literal["response.cancel"]
    event_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate | AudioAppend | AudioCommit | AudioClear | ResponseCancel, Field(discriminator="type")
]
CLIENT_EVENT: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
