"""Every error the facade answers, mapped to HTTP in one place, in one shape:

    {"error": {"code": "...", "message": "...", "field": "..."}, "request_id": "..."}

and on the OpenAI-compatible routes in OpenAI's (which its SDKs read), with the same code:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": "..."}, "request_id": "..."}

The request id is also in the ``X-Request-ID`` header and in the log line of the
error, so a user's report can be found in the logs.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from api_facade.http_middleware import HttpMiddleware
from api_facade.metrics import BUSY
from api_facade.openai_protocol import OPENAI_PATHS, OpenAIErrorDetail, error_type
from api_facade.protocol import ErrorDetail
from api_facade.redis_connection import RedisUnavailableError
from client import InputError, TritonBusyError, TritonUnavailableError

log = logging.getLogger("api_facade")
REQUEST_ID_HEADER = "X-Request-ID"
RETRY_AFTER_S = 5
# A full queue drains within seconds: ask busy clients back sooner than for an outage.
BUSY_RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error with its HTTP status, a stable code and, where it applies, the field at fault.
    ``internal``: what went wrong inside (hosts, ports, library errors), for the log line of the
    request id only, never for the client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        internal: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.internal = internal


def new_request_id(given: str | None) -> str:
    """The id a request goes by: the client's ``X-Request-ID`` (bounded), else a fresh one."""
    return (given or uuid.uuid4().hex)[:64]


def request_id(request: HTTPConnection) -> str:
    return getattr(request.state, "request_id", "") or "-"


def _body(request: HTTPConnection, error: ApiError) -> dict[str, Any]:
    if request.url.path.startswith(OPENAI_PATHS):
        detail = OpenAIErrorDetail(
            message=error.message, type=error_type(error.status), param=error.field, code=error.code
        )
        return detail.model_dump()
    return ErrorDetail(code=error.code, message=error.message, field=error.field or None).model_dump(exclude_none=True)


def error_response(request: HTTPConnection, error: ApiError) -> JSONResponse:
    rid = request_id(request)
    # A 503 with Retry-After is an answer by policy (a queue full, a dependency away, which its
    # owner logs once per outage): one line per request at ERROR would bury the real faults.
    planned = error.status == 503 and "Retry-After" in error.headers
    level = logging.ERROR if error.status >= 500 and not planned else logging.INFO
    log.log(
        level,
        "request %s %s %s -> %d %s: %s%s",
        rid,
        request.scope.get("method", "WEBSOCKET"),
        request.url.path,
        error.status,
        error.code,
        error.message,
        f" ({error.internal})" if error.internal else "",
    )
    return JSONResponse(
        {"error": _body(request, error), "request_id": rid},
        status_code=error.status,
        headers={**error.headers, REQUEST_ID_HEADER: rid},
    )


# What FastAPI says of a body it could not read as JSON at all (its HTTPException's detail).
FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"
# Pydantic's error types for a body that is not an object where one was expected.
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type"})


def _invalid_request(request: Request, error: Any) -> ApiError:
    """The answer to the first of a request's validation errors: 400 for a body that is not JSON
    (with where it broke), 415 for a body sent as something else, 422 naming the field at fault."""
    location = tuple(error.get("loc", ("body",)))
    if error.get("type") == "json_invalid":
        at = f" at character {location[1]}" if len(location) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "it does not parse")
        return ApiError(400, "invalid_json", f"the body is not valid JSON: {reason}{at}", "body")
    content_type = request.headers.get("content-type", "")
    if location == ("body",) and error.get("type") in _NOT_AN_OBJECT and "json" not in content_type:
        message = f"send the body as application/json (it came as {content_type or 'no content type'})"
        return ApiError(415, "unsupported_media", message, "body")
    field = _field_of(location)
    message = str(error.get("msg", "invalid request")).removeprefix("Value error, ")
    return ApiError(422, "invalid_request", f"{field}: {message}", field)


def _field_of(location: tuple[Any, ...]) -> str:
    # ("body", "text") -> "text"; ("body", "messages", 0, "content") -> "messages.0.content"
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _retry_later(code: str, message: str, after_s: int, exc: Exception) -> ApiError:
    return ApiError(503, code, message, headers={"Retry-After": str(after_s)}, internal=repr(exc))


# What the model servers and stores raise, and what each means to a client. Subclasses first.
MAPPED: tuple[type[Exception], ...] = (
    InputError, TritonBusyError, TritonUnavailableError, RedisUnavailableError, TimeoutError,
)  # fmt: skip


def as_api_error(exc: Exception) -> ApiError:
    """The answer to ``exc``, one of ``MAPPED`` (on HTTP routes and on the realtime WebSocket alike)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InputError):
        return ApiError(422, "invalid_input", str(exc))
    if isinstance(exc, TritonBusyError):
        BUSY.inc()
        return _retry_later("model_busy", "the model is at capacity; retry shortly", BUSY_RETRY_AFTER_S, exc)
    if isinstance(exc, TritonUnavailableError):
        message = "the model server cannot take this request now; retry shortly"
        return _retry_later("model_unavailable", message, RETRY_AFTER_S, exc)
    if isinstance(exc, RedisUnavailableError):
        # Only stores that must not guess get here: tokens (fail closed) and session writes.
        message = "a store this request needs cannot be reached; retry shortly"
        return _retry_later("store_unavailable", message, RETRY_AFTER_S, exc)
    if isinstance(exc, TimeoutError):
        return ApiError(504, "model_timeout", "the model server did not answer in time")
    raise TypeError(f"{type(exc).__name__} has no mapping") from exc


class RequestIds(HttpMiddleware):
    """The outermost middleware: every request gets its id before anything can refuse it, and every
    response carries it, with the RateLimit-* headers of the caller's tightest limit (set by the
    access dependency)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        state["request_id"] = new_request_id(given)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = state["request_id"]
                for name, value in state.get("rate_limit_headers", {}).items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_id)


def install(app: FastAPI) -> None:
    """Every exception turned into the one error shape."""

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        return error_response(request, _invalid_request(request, first))

    async def on_mapped(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, as_api_error(exc))

    for mapped in MAPPED:
        app.add_exception_handler(mapped, on_mapped)  # type: ignore[arg-type]

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # the body's reading refused (body_limits.py)
            return error_response(request, exc.__cause__)
        if exc.status_code == 400 and exc.detail == FASTAPI_UNPARSABLE_BODY:  # e.g. not UTF-8
            return error_response(request, ApiError(400, "invalid_json", "the body is not JSON in UTF-8", "body"))
        codes = {
            404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
            413: "payload_too_large", 415: "unsupported_media",
        }  # fmt: skip
        # The headers too: a 405's Allow names the methods the path takes.
        code = codes.get(exc.status_code, "http_error")
        return error_response(
            request, ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request_id(request))
        return error_response(request, ApiError(500, "internal_error", "unexpected error; see the logs"))
