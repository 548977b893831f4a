"""POST /v1/chat with sessions and a voice mode; GET and DELETE /v1/chat/sessions/{id}."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from api_facade.access import access, triton_for
from api_facade.audio import encode
from api_facade.dependencies import get_sessions
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS, TOKENS, ChatTiming
from api_facade.protocol import SESSION_ID_PATTERN, ChatAnswer, ChatAudio, ChatBody, SessionTurn, SessionView
from api_facade.sessions import SessionStore, Turn, trim_to_budget
from api_facade.settings import Settings, get_settings
from client import ChatMessage, ChatRequest, Speech, TritonPool

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


async def _conversation(body: ChatBody, sessions: SessionStore, settings: Settings) -> tuple[str, int, list[Turn]]:
    """The session id, how many turns it already stores, and the turns to send to the model."""
    session_id = body.session_id or uuid.uuid4().hex
    history = await sessions.load(session_id) or []
    turns = [*history, Turn("user", body.message)]
    # The model's own context: what is left of n_ctx once the reply and the system prompt have room.
    budget = settings.chat_n_ctx - body.max_tokens - settings.chat_system_prompt_tokens
    return session_id, len(history), trim_to_budget(turns, budget)


def _request(body: ChatBody, turns: list[Turn]) -> ChatRequest:
    messages = [ChatMessage(t.role, t.content) for t in turns]
    return ChatRequest(messages, body.language, body.max_tokens, body.temperature)


@router.post("/v1/chat", response_model=ChatAnswer, response_model_exclude_none=True)
async def chat(
    body: ChatBody,
    triton: Annotated[TritonPool, Depends(triton_for("chat"))],
    sessions: Annotated[SessionStore, Depends(get_sessions)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> ChatAnswer | StreamingResponse:
    session_id, stored_turns, context = await _conversation(body, sessions, settings)
    speak_language = body.language or settings.voice_default_language
    model = CHAT_MODELS[body.backend or settings.chat_default_backend]
    if body.stream:
        return StreamingResponse(
            _stream(body, triton, sessions, session_id, context, speak_language, model),
            media_type="text/event-stream",
        )

    with ChatTiming("/v1/chat"):
        result = await triton.chat(_request(body, context), model=model)
    TOKENS.inc(result.completion_tokens)
    # An empty reply is returned as it is (never invented) and not stored: the user may ask again.
    if result.text.strip():
        await sessions.append(session_id, [Turn("user", body.message), Turn("assistant", result.text)])
        stored_turns += 2
    audio = None
    if body.mode == "voice" and result.text.strip():
        speech = await triton.synthesize(result.text, speak_language)
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        audio = _audio(speech, body.voice_format)
    return ChatAnswer(
        session_id=session_id,
        reply=result.text,
        mode=body.mode,
        turns=stored_turns,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        audio=audio,
    )


async def _stream(
    body: ChatBody,
    triton: TritonPool,
    sessions: SessionStore,
    session_id: str,
    context: list[Turn],
    speak_language: str,
    model: str,
) -> AsyncIterator[bytes]:
    yield _sse("session", {"session_id": session_id})
    pieces: list[str] = []
    try:
        with ChatTiming("/v1/chat") as timing:
            async for delta in triton.chat_stream(_request(body, context), model):
                if delta.text:
                    pieces.append(delta.text)
                    timing.token()
                    yield _sse("token", {"text": delta.text})
        reply = "".join(pieces).strip()
        if reply:
            await sessions.append(session_id, [Turn("user", body.message), Turn("assistant", reply)])
        if body.mode == "voice" and reply:
            async for speech in triton.synthesize_stream(reply, speak_language):
                AUDIO_SECONDS.labels("out").inc(speech.duration)
                yield _sse("audio", _audio(speech, body.voice_format).model_dump())
        yield _sse("done", {"session_id": session_id, "reply": reply})
    except Exception as exc:  # the status line is sent: the stream reports the failure itself
        yield _sse("error", {"code": "stream_failed", "message": str(exc)})


@router.get("/v1/chat/sessions/{session_id}", response_model=SessionView, dependencies=[Depends(access("chat"))])
async def get_session(session_id: SessionId, sessions: Annotated[SessionStore, Depends(get_sessions)]) -> SessionView:
    turns = await sessions.load(session_id, stale_ok=True)
    if turns is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r} (never created, deleted or expired)")
    return SessionView(session_id=session_id, turns=[SessionTurn(role=t.role, content=t.content) for t in turns])


@router.delete("/v1/chat/sessions/{session_id}", status_code=204, dependencies=[Depends(access("chat"))])
async def delete_session(session_id: SessionId, sessions: Annotated[SessionStore, Depends(get_sessions)]) -> None:
    if not await sessions.delete(session_id):
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
