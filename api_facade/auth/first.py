"""Tokens checked from the headers before anything reads a body.

FastAPI reads and parses a JSON body before a route's dependencies run, so the access dependency
alone would check a token only after reading what its caller sent. With auth on, this middleware
checks the token of every HTTP request under ``/v1/`` first: without a valid one the request is
counted against its address (429 past the limit) and answered 401 here, its body never read; the
principal found is kept for the access dependency, which checks scopes and counts the call.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from api_facade.auth.access import AUTHENTICATED, authenticate, count_failed_authentication
from api_facade.errors import ApiError, error_response
from api_facade.http_middleware import HttpMiddleware
from api_facade.settings import Settings

PROTECTED_PREFIX = "/v1/"


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
            # Connection: close, as the body is not read.
            answer.headers = {**answer.headers, "Connection": "close"}
            await error_response(connection, answer)(scope, receive, send)
            return
        scope.setdefault("state", {})[AUTHENTICATED] = principal
        await self.app(scope, receive, send)
