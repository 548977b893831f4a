"""OpenAI-compatible routes, so that existing SDKs work unchanged against Milo Voice.

POST /v1/audio/transcriptions   (multipart, like OpenAI's)
POST /v1/audio/speech           (JSON, returns the audio file)
POST /v1/chat/completions       (with ``stream`` as OpenAI's SSE chunks and [DONE])
GET  /v1/models

Bodies are OpenAI's (``api_facade.openai_protocol``), and so are errors on these routes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse

from api_facade.audio import MEDIA_TYPES, encode
from api_facade.auth.access import ChatTriton, SttTriton, TtsTriton, access
from api_facade.dependencies import ConversationsDep, SettingsDep, VadDep
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS, TOKENS, ChatTiming
from api_facade.openai_protocol import (
    CHAT_MODEL,
    OPENAI_VOICES,
    STT_MODEL,
    TTS_MODEL,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChunkDelta,
    ModelCard,
    ModelList,
    OpenAIError,
    PromptTokensDetails,
    SpeechRequest,
    Transcription,
    TranscriptionSegment,
    Usage,
    VerboseTranscription,
)
from api_facade.openapi import AUTH, BODY, FOUND, MODEL, error_responses
from api_facade.protocol import STREAMABLE_FORMATS
from api_facade.sessions import Turn
from api_facade.subtitles import to_srt, to_vtt
from api_facade.uploads import transcribe_upload
from api_facade.voice.language import reply_language
from api_facade.voice.streams import streamed_speech

# What Whisper is restricted to here (the registry's STT languages).
TRANSCRIBED_LANGUAGES = ("mg", "fr")

router = APIRouter(tags=["openai-compatible"])


MODELS = (CHAT_MODEL, STT_MODEL, TTS_MODEL)


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[Depends(access("models"))],
    responses=error_responses(AUTH, shape=OpenAIError),
)
async def models() -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in MODELS])


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelCard,
    dependencies=[Depends(access("models"))],
    responses=error_responses(AUTH, FOUND, shape=OpenAIError),
)
async def model(model_id: str) -> ModelCard:
    if model_id not in MODELS:
        raise ApiError(404, "model_not_found", f"no model {model_id!r}; the models are {', '.join(MODELS)}", "model")
    return ModelCard(id=model_id)


@router.post(
    "/v1/audio/transcriptions",
    response_model=Transcription | VerboseTranscription,
    responses=error_responses(AUTH, BODY, MODEL, shape=OpenAIError),
)
async def transcriptions(
    triton: SttTriton,
    settings: SettingsDep,
    vad: VadDep,
    file: Annotated[UploadFile, File(description="the audio file")],
    model: Annotated[str, Form()] = STT_MODEL,
    language: Annotated[str | None, Form(description="mg or fr; left out: detected")] = None,
    response_format: Annotated[Literal["json", "text", "srt", "verbose_json", "vtt"], Form()] = "json",
) -> Transcription | VerboseTranscription | Response:
    if language not in (None, *TRANSCRIBED_LANGUAGES):
        served = " and ".join(TRANSCRIBED_LANGUAGES)
        message = f"language {language!r} is not transcribed: {served} are (leave it out to detect which)"
        raise ApiError(400, "unsupported_language", message, "language")
    result = await transcribe_upload(await file.read(), language or "auto", settings, triton, vad)
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "srt":
        return PlainTextResponse(to_srt(result.segments))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(result.segments))
    if response_format == "json":
        return Transcription(text=result.text)
    segments = [
        TranscriptionSegment(
            id=i, start=s.start, end=s.end, text=s.text, avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob
        )
        for i, s in enumerate(result.segments)
    ]
    return VerboseTranscription(language=result.language, duration=result.duration, text=result.text, segments=segments)


@router.post(
    "/v1/audio/speech", response_class=Response, responses=error_responses(AUTH, BODY, MODEL, shape=OpenAIError)
)
async def speech(body: SpeechRequest, triton: TtsTriton, settings: SettingsDep) -> Response:
    voices = settings.voices
    by_name = {name: language for language, name in voices.items()}
    language = body.voice if body.voice in voices else by_name.get(body.voice)
    if body.voice in OPENAI_VOICES:  # the input's own language where its words say it, else the default
        language = reply_language(None, None, body.input, settings.voice_default_language)
    if language is None:
        choices = ", ".join(sorted([*voices, *by_name]))
        message = f"voice {body.voice!r} is not served: {choices}, or one of OpenAI's voice names"
        raise ApiError(400, "unsupported_voice", message, "voice")
    if body.response_format in STREAMABLE_FORMATS or body.stream_format == "sse":
        # Sentence by sentence: an SDK's streaming response gets the first sentence at once.
        sse_events = body.stream_format == "sse"
        return await streamed_speech(triton, body.input, language, body.speed, body.response_format, sse_events)
    result = await triton.synthesize(body.input, language, body.speed)
    AUDIO_SECONDS.labels("out").inc(result.duration)
    return Response(
        encode(result.audio, result.sample_rate, body.response_format), media_type=MEDIA_TYPES[body.response_format]
    )


def _sse(chunk: ChatCompletionChunk) -> bytes:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n".encode()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=error_responses(AUTH, BODY, MODEL, shape=OpenAIError),
)
async def chat_completions(
    body: ChatCompletionRequest, triton: ChatTriton, conversations: ConversationsDep
) -> ChatCompletion | StreamingResponse:
    if unsupported := body.unsupported():
        field, why = unsupported
        raise ApiError(400, "unsupported_parameter", f"{field}: {why}", field)
    # The validator has made ``stop`` a list (or None); what is None is left to the model's defaults.
    # A "developer" message is what newer models call the system message.
    request = conversations.request(
        [Turn("system" if m.role == "developer" else m.role, m.text()) for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=tuple(body.stop or ()),
    )
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: ChunkDelta, finish_reason: str | None = None) -> bytes:
        choice = ChatCompletionChunkChoice(delta=delta, finish_reason=finish_reason)
        return _sse(ChatCompletionChunk(id=completion_id, created=created, model=body.model, choices=[choice]))

    if body.stream:

        async def events() -> AsyncIterator[bytes]:
            yield chunk(ChunkDelta(role="assistant", content=""))
            finish_reason, last = "stop", None
            with ChatTiming("/v1/chat/completions") as timing:
                async for delta in triton.chat_stream(request):
                    if delta.text:
                        timing.token()
                        yield chunk(ChunkDelta(content=delta.text))
                    finish_reason, last = delta.finish_reason or finish_reason, delta
            yield chunk(ChunkDelta(), finish_reason)
            if body.stream_options and body.stream_options.get("include_usage") and last is not None:
                TOKENS.inc(last.completion_tokens)
                usage = _usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
                yield _sse(
                    ChatCompletionChunk(id=completion_id, created=created, model=body.model, choices=[], usage=usage)
                )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with ChatTiming("/v1/chat/completions"):
        reply = await triton.chat(request)
    TOKENS.inc(reply.completion_tokens)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[ChatCompletionChoice(message=AssistantMessage(content=reply.text), finish_reason=reply.finish_reason)],
        usage=_usage(reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens),
    )


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )
