"""Request and response bodies of the facade's routes, with their validation and examples."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

Language = Literal["mg", "fr", "en"]
MAX_TEXT_CHARS = 5000
MAX_BATCH_TEXTS = 64


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return text


class ErrorDetail(BaseModel):
    code: str  # stable, for programs: "payload_too_large", "rate_limited", ...
    message: str  # for people: what was wrong and what to do
    field: str | None = None  # the request field at fault, where there is one


class ErrorResponse(BaseModel):
    """Every error the facade answers off the OpenAI-compatible routes."""

    error: ErrorDetail
    request_id: str  # also in the X-Request-ID header and in the facade's log line of the error


class TranslateRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Manao ahoana daholo ianareo.", "source": "mg", "target": "fr"}]}
    )

    text: str | list[str] = Field(description="one text, or a list of texts translated in one call")
    source: Language
    target: Language

    @field_validator("text")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("must hold at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise ValueError(f"at most {MAX_BATCH_TEXTS} texts per call")
        for text in texts:
            _not_blank(text)
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"a text is longer than {MAX_TEXT_CHARS} characters")
        return value

    @field_validator("target")
    @classmethod
    def _different(cls, target: str, info: object) -> str:
        source = getattr(info, "data", {}).get("source")
        if source == target:
            raise ValueError("must differ from source")
        return target

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else self.text


class Translated(BaseModel):
    text: str
    origin: Literal["model", "phrasebook", "cache"] = Field(description="where this translation came from")


class TranslateResponse(BaseModel):
    source: Language
    target: Language
    translations: list[Translated]
    translation: str | None = Field(None, description="the one translation, when one text was sent")


SpeechLanguage = Literal["mg", "fr"]
AudioFormatName = Literal["wav", "ogg", "opus", "mp3", "flac", "pcm"]
# Formats whose pieces, each encoded alone, join into one playable stream.
StreamableFormat = Literal["wav", "pcm", "mp3", "ogg", "opus"]
STREAMABLE_FORMATS: tuple[str, ...] = get_args(StreamableFormat)
MAX_TTS_CHARS = 2000


class TtsRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Tamin'ny 2024 dia tonga izy.", "language": "mg", "format": "wav"}]}
    )

    text: str = Field(max_length=MAX_TTS_CHARS)
    language: SpeechLanguage
    voice: str = Field("default", description="the language's voice ('default' or its registry name)")
    speed: float = Field(1.0, ge=0.25, le=4.0)
    format: AudioFormatName = "wav"
    stream: bool = Field(False, description="send audio sentence by sentence as it is synthesised")

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:
        return _not_blank(text)

    @field_validator("stream")
    @classmethod
    def _streamable(cls, stream: bool, info: object) -> bool:
        audio_format = getattr(info, "data", {}).get("format")
        if stream and audio_format not in STREAMABLE_FORMATS:
            raise ValueError(f"format {audio_format!r} cannot be streamed; use one of {list(STREAMABLE_FORMATS)}")
        return stream


SttResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class SttSegment(BaseModel):
    start: float
    end: float
    text: str


class SttResponse(BaseModel):
    text: str
    language: str
    language_probability: float
    confidence: float
    duration: float
    segments: list[SttSegment] | None = None


SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_MESSAGE_CHARS = 8000


class ChatBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"message": "Manao ahoana ianao?", "language": "mg", "mode": "text"}]}
    )

    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN, description="created when absent")
    mode: Literal["text", "voice"] = "text"
    backend: Literal["local", "cloud"] | None = Field(
        None, description="local model or the OpenAI-compatible cloud backend (default from settings)"
    )
    language: SpeechLanguage | None = Field(None, description="reply language hint; voice mode speaks it")
    max_tokens: int | None = Field(None, ge=1, le=1024, description="left out: the model's default")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="left out: the model's default")
    stream: bool = Field(False, description="Server-Sent Events: token events, then audio events in voice mode")
    voice_format: AudioFormatName = "wav"

    @field_validator("message")
    @classmethod
    def _message(cls, message: str) -> str:
        return _not_blank(message)


class ChatAudio(BaseModel):
    format: str
    sample_rate: int
    duration: float
    data: str = Field(description="base64 of the audio file")


class ChatAnswer(BaseModel):
    session_id: str
    reply: str
    mode: str
    turns: int = Field(description="turns stored in the session, this one included")
    prompt_tokens: int
    completion_tokens: int
    audio: ChatAudio | None = None


class VoiceOptions(BaseModel):
    """``POST /v1/voice``'s fields beside the audio (form fields, or JSON members beside ``audio``)."""

    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN, description="created when absent")
    language: SpeechLanguage | Literal["auto"] = Field(
        "auto", description="the question's language; the reply is spoken in it (auto: heard, then the reply's own)"
    )
    output: Literal["audio", "events"] = Field(
        "audio", description="audio: the reply's audio as it is spoken; events: Server-Sent Events of it all"
    )
    format: StreamableFormat = Field("wav", description="audio format of the reply (events: of each piece)")
    speed: float = Field(1.0, ge=0.25, le=4.0)
    backend: Literal["local", "cloud"] | None = None
    max_tokens: int | None = Field(None, ge=1, le=1024, description="left out: the model's default")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="left out: the model's default")


class VoiceAudio(ChatAudio):
    """One piece of a spoken reply, in the order spoken."""

    index: int
    text: str
    language: str


class SessionTurn(BaseModel):
    role: str
    content: str


class SessionView(BaseModel):
    session_id: str
    turns: list[SessionTurn]


class TtsBatchRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"texts": ["Salama.", "Misaotra betsaka."], "language": "mg", "format": "mp3", "packaging": "zip"}
            ]
        }
    )

    texts: list[str] = Field(min_length=1, max_length=32)
    language: SpeechLanguage
    speed: float = Field(1.0, ge=0.25, le=4.0)
    format: AudioFormatName = "wav"
    packaging: Literal["json", "zip"] = Field("json", description="JSON of base64 clips, or a zip of audio files")

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        for text in texts:
            _not_blank(text)
            if len(text) > MAX_TTS_CHARS:
                raise ValueError(f"a text is longer than {MAX_TTS_CHARS} characters")
        return texts


class Clip(BaseModel):
    index: int
    text: str
    format: str
    sample_rate: int
    duration: float
    data: str = Field(description="base64 of the audio file")


class TtsBatchResponse(BaseModel):
    clips: list[Clip]


# -- admin: API tokens -------------------------------------------------------------

Scope = Literal["stt", "tts", "translate", "chat", "admin"]
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "mobile-app", "tier": "standard", "scopes": ["stt", "tts", "chat"]}]}
    )

    name: str = Field(pattern=TOKEN_NAME_PATTERN)
    tier: str = Field(default="standard", max_length=64)
    scopes: list[Scope] = Field(min_length=1)
    expires_in_s: float | None = Field(default=None, gt=0, description="the token stops working after this long")


class TokenRotate(BaseModel):
    grace_s: float | None = Field(
        default=None, ge=0, description="how long the current secret keeps working (default: the configured grace)"
    )


class TokenView(BaseModel):
    name: str
    tier: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    active_secrets: int
    key_ids: list[str]


class IssuedTokenView(TokenView):
    token: str = Field(description="the secret token; shown this once, never stored")
