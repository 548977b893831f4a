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
# OpenAI's own voice names, which SDK examples use: each speaks the input's language.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse"}
)
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


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """A part of a kind the chat does not read (an image, audio): refused by the route."""

    model_config = ConfigDict(extra="allow")
    type: str


class ChatCompletionMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | OtherPart]

    def text(self) -> str:
        """The message's text: its content, or its text parts joined by line breaks."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    def unread_parts(self) -> list[str]:
        """The kinds of its parts the chat cannot read."""
        if isinstance(self.content, str):
            return []
        return [part.type for part in self.content if not isinstance(part, TextPart)]


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
    # Taken so that asking for them is answered (400, ``unsupported``) rather than ignored.
    n: int = Field(1, ge=1, description="1 only: one reply a request")
    tools: list[dict[str, object]] | None = Field(None, description="not served")
    tool_choice: str | dict[str, object] | None = Field(None, description="not served")
    functions: list[dict[str, object]] | None = Field(None, description="not served")
    function_call: str | dict[str, object] | None = Field(None, description="not served")
    logprobs: bool | None = Field(None, description="not served")
    response_format: dict[str, object] | None = Field(None, description="'text' only")
    stream_options: dict[str, object] | None = Field(None, description="include_usage: a last chunk with the usage")

    def unsupported(self) -> tuple[str, str] | None:
        """The first option asked for that Milo Voice does not serve: (field, why), or None."""
        if self.n != 1:
            return "n", "one reply a request: n must be 1"
        for name in ("tools", "tool_choice", "functions", "function_call"):
            if getattr(self, name):
                return name, "tool and function calls are not served"
        if self.logprobs:
            return "logprobs", "log probabilities are not served"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only text replies are served (no JSON mode or schema)"
        for i, message in enumerate(self.messages):
            if unread := message.unread_parts():
                return f"messages.{i}.content", f"only text parts are read, not {', '.join(sorted(set(unread)))}"
        return None

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[ChatCompletionMessage]) -> list[ChatCompletionMessage]:
        if any(not m.text().strip() and not m.unread_parts() for m in messages):
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
    usage: Usage | None = None  # on the last chunk only (no choices), with stream_options.include_usage


# -- audio -------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "milo-tts", "input": "Bonjour à tous.", "voice": "fr"}]}
    )

    model: str = TTS_MODEL
    input: str = Field(max_length=2000)
    voice: str = Field(
        "mg",
        description="'mg' or 'fr', a voice name such as 'mms-tts-fra', or one of OpenAI's voice names "
        "(alloy, ash, ...): those speak the input's language as read from its words, else the default",
    )
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
