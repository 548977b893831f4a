"""OpenAI-compatible routes, so that existing SDKs work unchanged against Milo Voice.

POST /v1/audio/transcriptions   (multipart, like OpenAI's)
POST /v1/audio/speech           (JSON, returns the audio file)
POST /v1/chat/completions       (with ``stream`` as OpenAI's SSE chunks and [DONE])
GET  /v1/models
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api_facade.access import access, triton_for
from api_facade.audio import MEDIA_TYPES, encode
from api_facade.dependencies import get_voices
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS, TOKENS, ChatTiming
from api_facade.routers.stt import transcribe_upload
from api_facade.settings import Settings, get_settings
from api_facade.subtitles import to_srt, to_vtt
from client import ChatMessage, ChatRequest, TritonPool
from milo_voice.roles.chat import MAX_STOP_CHARS, MAX_STOP_STRINGS

router = APIRouter(tags=["openai-compatible"])
CHAT_MODEL, STT_MODEL, TTS_MODEL = "milo-chat", "milo-stt", "milo-tts"


@router.get("/v1/models", dependencies=[Depends(access("models"))])
async def models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "milo-voice"}
            for name in (CHAT_MODEL, STT_MODEL, TTS_MODEL)
        ],
    }


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    triton: Annotated[TritonPool, Depends(triton_for("stt"))],
    settings: Annotated[Settings, Depends(get_settings)],
    file: Annotated[UploadFile, File(description="the audio file")],
    model: Annotated[str, Form()] = STT_MODEL,
    language: Annotated[Literal["mg", "fr"] | None, Form()] = None,
    response_format: Annotated[Literal["json", "text", "srt", "verbose_json", "vtt"], Form()] = "json",
) -> Any:
    result = await transcribe_upload(await file.read(), language or "auto", settings, triton)
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "srt":
        return PlainTextResponse(to_srt(result.segments))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(result.segments))
    if response_format == "json":
        return {"text": result.text}
    return {
        "task": "transcribe",
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": i,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
            }
            for i, s in enumerate(result.segments)
        ],
    }


class SpeechBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "milo-tts", "input": "Bonjour à tous.", "voice": "fr"}]}
    )

    model: str = TTS_MODEL
    input: str = Field(max_length=2000)
    voice: str = Field("mg", description="'mg' or 'fr', or a voice name such as 'mms-tts-fra'")
    response_format: Literal["mp3", "opus", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)

    @field_validator("input")
    @classmethod
    def _input(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be empty or only whitespace")
        return text


@router.post("/v1/audio/speech", response_class=Response)
async def speech(
    body: SpeechBody,
    triton: Annotated[TritonPool, Depends(triton_for("tts"))],
    voices: Annotated[dict[str, str], Depends(get_voices)],
) -> Response:
    by_name = {name: language for language, name in voices.items()}
    language = body.voice if body.voice in voices else by_name.get(body.voice)
    if language is None:
        raise ApiError(422, "invalid_request", f"voice: one of {sorted([*voices, *by_name])}", "voice")
    result = await triton.synthesize(body.input, language, body.speed)
    AUDIO_SECONDS.labels("out").inc(result.duration)
    return Response(
        encode(result.audio, result.sample_rate, body.response_format), media_type=MEDIA_TYPES[body.response_format]
    )


class ChatCompletionMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "milo-chat", "messages": [{"role": "user", "content": "Salama!"}]}]}
    )

    model: str = CHAT_MODEL
    messages: list[ChatCompletionMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
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

    def chat_request(self) -> ChatRequest:
        # The validator has made ``stop`` a list (or None).
        return ChatRequest(
            messages=[ChatMessage(m.role, m.content) for m in self.messages],
            max_tokens=self.max_completion_tokens or self.max_tokens or 256,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop or ()),
        )


def _chunk(completion_id: str, created: int, model: str, delta: dict[str, str], finish: str | None) -> bytes:
    body = {
        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }  # fmt: skip
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionBody, triton: Annotated[TritonPool, Depends(triton_for("chat"))]
) -> dict[str, Any] | StreamingResponse:
    request = body.chat_request()
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:

        async def events() -> AsyncIterator[bytes]:
            yield _chunk(completion_id, created, body.model, {"role": "assistant", "content": ""}, None)
            finish_reason = "stop"
            with ChatTiming("/v1/chat/completions") as timing:
                async for delta in triton.chat_stream(request):
                    if delta.text:
                        timing.token()
                        yield _chunk(completion_id, created, body.model, {"content": delta.text}, None)
                    finish_reason = delta.finish_reason or finish_reason
            yield _chunk(completion_id, created, body.model, {}, finish_reason)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with ChatTiming("/v1/chat/completions"):
        result = await triton.chat(request)
    TOKENS.inc(result.completion_tokens)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
