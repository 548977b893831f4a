"""Every request body capped and read against a deadline, before anything below parses it.

The outermost middleware. A declared ``Content-Length`` over the route's limit gets 413 before a
byte of the body is read. A body that turns out longer, or that has not arrived by the deadline
(a client trickling bytes to hold a connection), ends there: the app below sees its client gone
(``disconnect.py`` cancels its work) and this middleware answers 413 or 408 itself, in the
facade's error shape. Upload routes take ``max_upload_body_bytes`` and ``upload_body_timeout_s``;
every other body ``max_json_bytes`` and ``json_body_timeout_s``.
"""

from __future__ import annotations

import asyncio

from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from api_facade.errors import REQUEST_ID_HEADER, ApiError, error_response, new_request_id
from api_facade.http_middleware import HttpMiddleware
from api_facade.settings import Settings

UPLOAD_PATHS = frozenset({"/v1/stt", "/v1/voice", "/v1/audio/transcriptions"})


class BodyLimits(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: Settings = scope["app"].state.settings
        upload = scope["path"] in UPLOAD_PATHS
        limit = settings.max_upload_body_bytes if upload else settings.max_json_bytes
        timeout_s = settings.upload_body_timeout_s if upload else settings.json_body_timeout_s
        too_large = ApiError(413, "payload_too_large", f"the body is larger than this route's limit of {limit} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _answer(scope, receive, send, too_large)
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        received, body_done, started = 0, False, False
        refusal: ApiError | None = None

        async def guarded_receive() -> Message:
            nonlocal received, body_done, refusal
            if refusal is not None:
                return {"type": "http.disconnect"}
            if body_done:  # the body is in: what is left to receive is the client leaving
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                message_text = f"the request body did not arrive within {timeout_s:g} s"
                refusal = ApiError(408, "body_timeout", message_text)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusal = too_large
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, guarded_receive, tracked_send)
        if refusal is not None and not started:
            await _answer(scope, receive, send, refusal)


async def _answer(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode()
    scope.setdefault("state", {})["request_id"] = new_request_id(given)
    error.headers = {**error.headers, "Connection": "close"}  # the rest of the body is not read
    await error_response(HTTPConnection(scope), error)(scope, receive, send)
