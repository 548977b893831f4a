"""Tokens checked from the headers before anything reads a body.

FastAPI reads and parses a JSON body before a route's dependencies run, so the access dependency
alone would check a token only after reading what its caller sent. With auth on, this middleware
checks the token of every HTTP request under ``/v1/`` first. Without a valid one, the request is
counted against its address (429 past the limit) and answered 401 here, its body never parsed
(``_refuse``: a small one is read and dropped, a larger one not read at all). The principal
found is kept for the access dependency, which checks scopes and counts the call. A token store
that cannot be reached gets 503 with Retry-After here, as there: tokens fail closed.
"""

from __future__ import annotations

import asyncio

from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from api_facade.auth.access import AUTHENTICATED, authenticate, count_failed_authentication
from api_facade.errors import MAPPED, ApiError, as_api_error, error_response
from api_facade.http_middleware import HttpMiddleware
from api_facade.settings import Settings

PROTECTED_PREFIX = "/v1/"
# A refused request's body up to this size is read and dropped before the answer (``_refuse``).
DRAIN_BYTES = 64 * 1024
DRAIN_S = 1.0


class AuthenticateFirst(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: Settings = scope["app"].state.settings
        if not settings.auth_on or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        try:
            principal = await authenticate(connection, settings)
        except ApiError as refused:
            answer = refused
            try:
                await count_failed_authentication(connection)
            except ApiError as limited:
                answer = limited
            await _refuse(connection, answer, receive, send)
            return
        except MAPPED as unavailable:  # the token store away: tokens fail closed, 503 with Retry-After
            await _refuse(connection, as_api_error(unavailable), receive, send)
            return
        scope.setdefault("state", {})[AUTHENTICATED] = principal
        await self.app(scope, receive, send)


async def _refuse(connection: HTTPConnection, error: ApiError, receive: Receive, send: Send) -> None:
    """Answer ``error`` without reading the body into anything. A small declared body is drained
    first (read and dropped, for at most ``DRAIN_S``): a server that closes a connection with
    unread bytes in it resets it, and the client may then lose the answer. Any other body is left
    unread and the connection closed."""
    declared = connection.headers.get("content-length", "")
    drained = declared.isdigit() and int(declared) <= DRAIN_BYTES and await _drain(receive)
    if not drained:
        error.headers = {**error.headers, "Connection": "close"}
    await error_response(connection, error)(connection.scope, receive, send)


async def _drain(receive: Receive) -> bool:
    """Read the request's body to its end and drop it; False if it did not end within DRAIN_S."""

    async def read_to_end() -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read_to_end(), DRAIN_S)
    except TimeoutError:
        return False
    return True
