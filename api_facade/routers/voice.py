"""POST /v1/voice: a spoken question, answered by a spoken reply that streams as it is spoken.

The question is transcribed, the chat streams its reply, and each finished sentence is
synthesised while the next is written: the first audio leaves long before the reply ends.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from api_facade.audio import MEDIA_TYPES
from api_facade.auth.access import VoiceConversations, VoiceTriton
from api_facade.dependencies import SettingsDep, VadDep
from api_facade.errors import ApiError
from api_facade.openapi import AUTH, BODY, MODEL, error_responses
from api_facade.protocol import VoiceOptions
from api_facade.uploads import decode_checked, read_audio_upload, transcribe_heard, upload_request_body
from api_facade.voice.reply import ReplyEvent, Voice, spoken_reply
from api_facade.voice.streams import ClosingStream, FirstAudio, reply_audio, reply_events, sse

router = APIRouter(tags=["voice"])
ROUTE = "/v1/voice"

# Form fields arrive as text, so every field is a string here; VoiceOptions validates them.
REQUEST_BODY = upload_request_body(
    {name: {"type": "string"} for name in VoiceOptions.model_json_schema()["properties"]}
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "output=audio: the reply's audio as it is spoken (headers X-Session-Id, X-Transcript, "
        "X-Transcript-Language); output=events: Server-Sent Events session, transcript, token, audio, done, error",
        "content": {"text/event-stream": {}, **{media: {} for media in MEDIA_TYPES.values()}},
    }
}


def _options(fields: dict[str, str]) -> VoiceOptions:
    try:
        return VoiceOptions.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _prepend(first: ReplyEvent, rest: AsyncIterator[ReplyEvent]) -> AsyncIterator[ReplyEvent]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


@router.post(
    ROUTE,
    openapi_extra=REQUEST_BODY,
    responses={**RESPONSES, **error_responses(AUTH, BODY, MODEL)},
    response_class=StreamingResponse,
)
async def voice(
    request: Request, triton: VoiceTriton, conversations: VoiceConversations, settings: SettingsDep, vad: VadDep
) -> StreamingResponse:
    upload = await read_audio_upload(request, settings)
    received = time.perf_counter()
    options = _options(upload.fields)
    samples = await decode_checked(upload.audio, settings)
    # Never an answer to a question nobody asked.
    heard = await transcribe_heard(samples, options.language, triton, vad)
    if heard is None:
        raise ApiError(422, "no_speech", "no speech was heard in the audio", "audio")
    if not heard.text.strip():
        raise ApiError(422, "no_speech", "no words were recognised in the audio", "audio")
    asked = None if options.language == "auto" else options.language
    language = asked or heard.language
    turn = await conversations.turn(options.session_id, heard.text, language, options.max_tokens, options.temperature)
    voice = Voice(asked, heard.language, settings.voice_default_language, options.speed)
    reply = spoken_reply(triton, turn.request, voice, conversations.model(options.backend))
    # The reply's first event before the status line: a refused chat gets its own error status.
    try:
        first = await anext(reply)
    except BaseException:
        await reply.aclose()  # type: ignore[attr-defined]
        raise
    events = _prepend(first, reply)
    first_audio = FirstAudio(ROUTE, received)
    if options.output == "events":

        async def body() -> AsyncIterator[bytes]:
            yield sse("session", {"session_id": turn.session_id})
            transcript = {"text": heard.text, "language": heard.language, "duration": round(heard.duration, 3)}
            yield sse("transcript", transcript)
            async for chunk in reply_events(events, turn, conversations, options.format, ROUTE, first_audio):
                yield chunk

        return ClosingStream(body(), reply, media_type="text/event-stream")
    headers = {
        "X-Session-Id": turn.session_id,
        "X-Transcript": urllib.parse.quote(heard.text),
        "X-Transcript-Language": heard.language,
    }
    audio = reply_audio(events, turn, conversations, options.format, ROUTE, first_audio)
    return ClosingStream(audio, reply, media_type=MEDIA_TYPES[options.format], headers=headers)
