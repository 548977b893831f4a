"""POST /v1/chat with sessions and a voice mode; GET and DELETE /v1/chat/sessions/{id}."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from api_facade.auth.access import ChatConversations, ChatTriton
from api_facade.conversation import ChatTurn, Conversations
from api_facade.dependencies import SettingsDep
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS, TOKENS, ChatTiming
from api_facade.openapi import AUTH, BODY, FOUND, MODEL, STORE, error_responses
from api_facade.protocol import SESSION_ID_PATTERN, ChatAnswer, ChatBody, SessionTurn, SessionView
from api_facade.voice.language import reply_language
from api_facade.voice.reply import Voice, spoken_reply
from api_facade.voice.streams import FirstAudio, encoded_audio, reply_events, sse
from client import TritonPool

router = APIRouter(tags=["chat"])
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
ROUTE = "/v1/chat"


@router.post(
    ROUTE, response_model=ChatAnswer, response_model_exclude_none=True, responses=error_responses(AUTH, BODY, MODEL)
)
async def chat(
    body: ChatBody, triton: ChatTriton, conversations: ChatConversations, settings: SettingsDep
) -> ChatAnswer | StreamingResponse:
    started = time.perf_counter()
    turn = await conversations.turn(body.session_id, body.message, body.language, body.max_tokens, body.temperature)
    model = conversations.model(body.backend)
    if body.stream and body.mode == "voice":
        voice = Voice(body.language, None, settings.voice_default_language)
        reply = spoken_reply(triton, turn.request, voice, model)
        return StreamingResponse(
            _session_first(
                turn, reply_events(reply, turn, conversations, body.voice_format, ROUTE, FirstAudio(ROUTE, started))
            ),
            media_type="text/event-stream",
        )
    if body.stream:
        return StreamingResponse(_text_stream(turn, triton, conversations, model), media_type="text/event-stream")

    with ChatTiming(ROUTE):
        result = await triton.chat(turn.request, model=model)
    TOKENS.inc(result.completion_tokens)
    stored_turns = await conversations.answered(turn, result.text)
    audio = None
    if body.mode == "voice" and result.text.strip():
        language = reply_language(body.language, None, result.text, settings.voice_default_language)
        speech = await triton.synthesize(result.text, language)
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        audio = encoded_audio(speech, body.voice_format)
    return ChatAnswer(
        session_id=turn.session_id,
        reply=result.text,
        mode=body.mode,
        turns=stored_turns,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        audio=audio,
    )


async def _session_first(turn: ChatTurn, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield sse("session", {"session_id": turn.session_id})
    async for chunk in events:
        yield chunk


async def _text_stream(
    turn: ChatTurn, triton: TritonPool, conversations: Conversations, model: str
) -> AsyncIterator[bytes]:
    yield sse("session", {"session_id": turn.session_id})
    pieces: list[str] = []
    finish_reason = "stop"
    try:
        with ChatTiming(ROUTE) as timing:
            async for delta in triton.chat_stream(turn.request, model):
                if delta.text:
                    pieces.append(delta.text)
                    timing.token()
                    yield sse("token", {"text": delta.text})
                finish_reason = delta.finish_reason or finish_reason
        reply = "".join(pieces).strip()
        turns = await conversations.answered(turn, reply)
        yield sse(
            "done", {"session_id": turn.session_id, "reply": reply, "turns": turns, "finish_reason": finish_reason}
        )
    except Exception as exc:  # the status line is sent: the stream reports the failure itself
        yield sse("error", {"code": "stream_failed", "message": str(exc)})


@router.get("/v1/chat/sessions/{session_id}", response_model=SessionView, responses=error_responses(AUTH, FOUND, STORE))
async def get_session(session_id: SessionId, conversations: ChatConversations) -> SessionView:
    turns = await conversations.history(session_id, stale_ok=True)
    if turns is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r} (never created, deleted or expired)")
    return SessionView(session_id=session_id, turns=[SessionTurn(role=t.role, content=t.content) for t in turns])


@router.delete("/v1/chat/sessions/{session_id}", status_code=204, responses=error_responses(AUTH, FOUND, STORE))
async def delete_session(session_id: SessionId, conversations: ChatConversations) -> None:
    if not await conversations.forget(session_id):
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
