"""OpenAI's request and response bodies, as the OpenAI-compatible routes take and answer them.

The shapes follow OpenAI's API reference (chat completions and their chunks, audio speech and
transcriptions, models, errors); fields Milo Voice does not serve are left out, so an SDK
sees only what is true.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.records import MAX_STOP_CHARS, MAX_STOP_STRINGS

CHAT_MODEL, STT_MODEL, TTS_MODEL = "milo-chat", "milo-stt", "milo-tts"
# The routes that answer in OpenAI's shapes, errors included (an SDK reads ``error.message``).
OPENAI_PATHS = ("/v1/chat/completions", "/v1/audio/", "/v1/models")


# -- errors ------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str  # "invalid_request_error", "authentication_error", "rate_limit_error", "server_error", ...
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
    request_id: str


def error_type(status: int) -> str:
    """OpenAI's error type for an HTTP status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


# -- models ------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "milo-voice"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- chat completions --------------------------------------------------------------


class ChatCompletionMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "milo-chat", "messages": [{"role": "user", "content": "Salama!"}]}]}
    )

    model: str = CHAT_MODEL
    messages: list[ChatCompletionMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="left out: the model's default")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="left out: the model's default")
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the reply ends before the first")
    stream: bool = False

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[ChatCompletionMessage]) -> list[ChatCompletionMessage]:
        if any(not m.content.strip() for m in messages):
            raise ValueError("a message is empty")
        if messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        return messages

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and (
            len(stops) > MAX_STOP_STRINGS or any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops)
        ):
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings of 1 to {MAX_STOP_CHARS} characters")
        return stops


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str  # "stop", "length"


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]


# -- audio -------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "milo-tts", "input": "Bonjour à tous.", "voice": "fr"}]}
    )

    model: str = TTS_MODEL
    input: str = Field(max_length=2000)
    voice: str = Field("mg", description="'mg' or 'fr', or a voice name such as 'mms-tts-fra'")
    response_format: Literal["mp3", "opus", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    # audio: the file's bytes as each sentence is spoken (flac: whole, it cannot be joined);
    # sse: speech.audio.delta events, each a whole file of one sentence.
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _input(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be empty or only whitespace")
        return text


class Transcription(BaseModel):
    text: str


class TranscriptionSegment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


class VerboseTranscription(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
