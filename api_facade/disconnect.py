"""Cancel a request's work when its client goes away.

A client that hangs up while its request waits in a model's queue should not cost a
batch slot. This ASGI middleware reads the connection's messages itself, hands them on
to the app, and cancels the app's task when ``http.disconnect`` arrives before the
response was sent: the pending Triton call is cancelled with it (over gRPC, Triton then
drops the request from its queue; over HTTP the connection to Triton is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Message, Receive, Scope, Send

from api_facade.http_middleware import HttpMiddleware
from api_facade.metrics import CANCELLED

log = logging.getLogger("api_facade")


class CancelOnDisconnect(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:

        # What the connection gave, or the error receiving raised (a body refused by body_limits.py),
        # which the app then meets where it reads.
        inbox: asyncio.Queue[Message | Exception] = asyncio.Queue()
        client_left = asyncio.Event()
        response_sent = False

        async def read_connection() -> None:
            while True:
                try:
                    message = await receive()
                except Exception as exc:
                    inbox.put_nowait(exc)
                    return
                inbox.put_nowait(message)
                if message["type"] == "http.disconnect":
                    client_left.set()
                    return

        async def next_message() -> Message:
            message = await inbox.get()
            if isinstance(message, Exception):
                raise message
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal response_sent
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_sent = True

        reader = asyncio.create_task(read_connection())
        work = asyncio.create_task(self.app(scope, next_message, send_tracked))
        left = asyncio.create_task(client_left.wait())
        try:
            await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and not response_sent:
                CANCELLED.inc()
                log.info("client left during %s %s: request cancelled", scope.get("method"), scope.get("path"))
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        finally:
            for task in (reader, left):
                task.cancel()
