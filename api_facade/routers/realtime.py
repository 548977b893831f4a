"""WebSocket /v1/realtime: a live spoken conversation (events: ``api_facade.realtime_protocol``).

The handshake is checked like a REST call of the "voice" family (client address limit, token,
scopes); each reply counts against the token's voice limit. A browser, which cannot set the
Authorization header on a WebSocket, offers the token as the subprotocol ``bearer.<token>``
beside ``realtime``, which the server selects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api_facade.auth.access import Caller, access, count_call
from api_facade.dependencies import get_conversations, get_settings, get_triton, get_vad
from api_facade.errors import REQUEST_ID_HEADER, ApiError, error_response, new_request_id
from api_facade.voice.realtime import RealtimeConversation

router = APIRouter(tags=["voice"])
SUBPROTOCOL = "realtime"


async def _refuse(websocket: WebSocket, error: ApiError) -> None:
    """The handshake answered with the error's status and body, where the server can; else closed."""
    try:
        await websocket.send_denial_response(error_response(websocket, error))  # type: ignore[arg-type]
    except RuntimeError:  # a server without the denial-response extension
        await websocket.close(code=1008, reason=error.message[:120])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    settings = get_settings(websocket)
    # The HTTP middleware that names requests does not see WebSockets.
    websocket.state.request_id = new_request_id(websocket.headers.get(REQUEST_ID_HEADER))
    try:
        caller: Caller = await access("voice")(websocket)
    except ApiError as error:
        await _refuse(websocket, error)
        return
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def send(event: dict[str, object]) -> None:
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client has left
                await websocket.send_json(event)

    async def allow_response() -> ApiError | None:
        try:
            await count_call(websocket, "voice", caller)
        except ApiError as error:
            return error
        return None

    conversation = RealtimeConversation(
        get_triton(websocket).with_options(caller.options),
        get_conversations(websocket).owned_by(caller.owner),
        get_vad(websocket),
        settings,
        send,
        allow_response,
    )
    ends = time.monotonic() + settings.realtime_max_session_s
    await conversation.start()
    try:
        while True:
            left = ends - time.monotonic()
            try:
                message = await asyncio.wait_for(websocket.receive(), min(left, settings.realtime_idle_timeout_s))
            except TimeoutError:
                ended = left <= settings.realtime_idle_timeout_s
                if not ended and conversation.busy:
                    continue  # the client waits for the server, which is still answering: not idle
                code, what = ("session_expired", "the session's time is up") if ended else ("idle_timeout", "no frame")
                await conversation.error(code, what)
                await websocket.close(code=1000, reason=code)
                return
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            if frame is not None and len(frame) > settings.realtime_max_frame_bytes:
                limit = settings.realtime_max_frame_bytes
                await conversation.error("frame_too_large", f"a frame is at most {limit} bytes; send smaller chunks")
            elif isinstance(frame, bytes):
                await conversation.audio(frame)
            elif isinstance(frame, str):
                await conversation.event(frame)
    except WebSocketDisconnect:
        return
    finally:
        await conversation.close()
