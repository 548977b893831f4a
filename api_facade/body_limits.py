"""Every request body capped and read against a deadline, as whatever is below reads it.

A body past its route's limit (by its ``Content-Length``, before a byte is read, or as it arrives
undeclared), or that has not arrived by the deadline (a client trickling bytes to hold a
connection), is refused where it is read: receiving the next part of it raises ``BodyRefused``,
which the error handlers answer with 413 or 408 in the facade's error shape (and ``Connection:
close``: the rest of the body is never read). Upload routes take ``max_upload_body_bytes`` and
``upload_body_timeout_s``; every other body ``max_json_bytes`` and ``json_body_timeout_s``.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from api_facade.errors import ApiError
from api_facade.http_middleware import HttpMiddleware
from api_facade.settings import Settings

UPLOAD_PATHS = frozenset({"/v1/stt", "/v1/voice", "/v1/audio/transcriptions"})


class BodyRefused(ApiError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message, headers={"Connection": "close"})


class BodyLimits(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: Settings = scope["app"].state.settings
        upload = scope["path"] in UPLOAD_PATHS
        limit = settings.max_upload_body_bytes if upload else settings.max_json_bytes
        timeout_s = settings.upload_body_timeout_s if upload else settings.json_body_timeout_s
        declared = dict(scope["headers"]).get(b"content-length", b"")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        received, body_done = 0, False

        def too_large() -> BodyRefused:
            return BodyRefused(413, "payload_too_large", f"the body is larger than this route's limit of {limit} bytes")

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # the body is in: what is left to receive is the client leaving
                return await receive()
            if declared.isdigit() and int(declared) > limit:
                raise too_large()
            try:
                async with asyncio.timeout_at(deadline):  # no task of its own, as ``wait_for`` makes
                    message = await receive()
            except TimeoutError:
                late = f"the request body did not arrive within {timeout_s:g} s"
                raise BodyRefused(408, "body_timeout", late) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large()
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)
