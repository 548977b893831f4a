"""POST /v1/chat with sessions and a voice mode; GET and DELETE /v1/chat/sessions/{id}."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from api_facade.audio import encode
from api_facade.auth.access import ChatTriton, access
from api_facade.conversation import ChatTurn, Conversations
from api_facade.dependencies import ConversationsDep, SessionsDep, SettingsDep
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS, TOKENS, ChatTiming
from api_facade.protocol import SESSION_ID_PATTERN, ChatAnswer, ChatAudio, ChatBody, SessionTurn, SessionView
from client import Speech, TritonPool

router = APIRouter(tags=["chat"])
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
# Triton model of each backend; the host serves "chat_cloud" when a cloud URL is configured.
CHAT_MODELS = {"local": "chat", "cloud": "chat_cloud"}


def _audio(speech: Speech, audio_format: str) -> ChatAudio:
    return ChatAudio(
        format=audio_format,
        sample_rate=speech.sample_rate,
        duration=round(speech.duration, 3),
        data=base64.b64encode(encode(speech.audio, speech.sample_rate, audio_format)).decode(),
    )


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post("/v1/chat", response_model=ChatAnswer, response_model_exclude_none=True)
async def chat(
    body: ChatBody, triton: ChatTriton, conversations: ConversationsDep, settings: SettingsDep
) -> ChatAnswer | StreamingResponse:
    turn = await conversations.turn(body.session_id, body.message, body.language, body.max_tokens, body.temperature)
    model = CHAT_MODELS[body.backend or settings.chat_default_backend]
    if body.stream:
        return StreamingResponse(_stream(body, turn, triton, conversations, model), media_type="text/event-stream")

    with ChatTiming("/v1/chat"):
        result = await triton.chat(turn.request, model=model)
    TOKENS.inc(result.completion_tokens)
    stored_turns = await conversations.answered(turn, result.text)
    audio = None
    if body.mode == "voice" and result.text.strip():
        speech = await triton.synthesize(result.text, conversations.voice_language(body.language))
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        audio = _audio(speech, body.voice_format)
    return ChatAnswer(
        session_id=turn.session_id,
        reply=result.text,
        mode=body.mode,
        turns=stored_turns,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        audio=audio,
    )


async def _stream(
    body: ChatBody, turn: ChatTurn, triton: TritonPool, conversations: Conversations, model: str
) -> AsyncIterator[bytes]:
    yield _sse("session", {"session_id": turn.session_id})
    pieces: list[str] = []
    try:
        with ChatTiming("/v1/chat") as timing:
            async for delta in triton.chat_stream(turn.request, model):
                if delta.text:
                    pieces.append(delta.text)
                    timing.token()
                    yield _sse("token", {"text": delta.text})
        reply = "".join(pieces).strip()
        await conversations.answered(turn, reply)
        if body.mode == "voice" and reply:
            async for speech in triton.synthesize_stream(reply, conversations.voice_language(body.language)):
                AUDIO_SECONDS.labels("out").inc(speech.duration)
                yield _sse("audio", _audio(speech, body.voice_format).model_dump())
        yield _sse("done", {"session_id": turn.session_id, "reply": reply})
    except Exception as exc:  # the status line is sent: the stream reports the failure itself
        yield _sse("error", {"code": "stream_failed", "message": str(exc)})


@router.get("/v1/chat/sessions/{session_id}", response_model=SessionView, dependencies=[Depends(access("chat"))])
async def get_session(session_id: SessionId, sessions: SessionsDep) -> SessionView:
    turns = await sessions.load(session_id, stale_ok=True)
    if turns is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r} (never created, deleted or expired)")
    return SessionView(session_id=session_id, turns=[SessionTurn(role=t.role, content=t.content) for t in turns])


@router.delete("/v1/chat/sessions/{session_id}", status_code=204, dependencies=[Depends(access("chat"))])
async def delete_session(session_id: SessionId, sessions: SessionsDep) -> None:
    if not await sessions.delete(session_id):
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
