"""What the OpenAPI schema says beyond the routes' own bodies: the errors each route answers, in
the shape it answers them (the facade's, or OpenAI's on the OpenAI-compatible routes), and the
bearer token that every ``/v1/`` route takes.

Routes declare their errors by what they do (``error_responses(AUTH, BODY, MODEL)``), so that the
schema lists what a client can meet and nothing else; FastAPI's own 422 body, which the facade
never sends, is replaced where a route declares its 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api_facade.protocol import ErrorResponse

BEARER = "bearer"
PROTECTED_PREFIX = "/v1/"
ERROR_DESCRIPTIONS = {
    400: "The body is not JSON in UTF-8, or is nested too deeply",
    401: "No valid API token (when auth is on)",
    403: "The token lacks a scope the route needs",
    404: "Nothing of that id belongs to the caller",
    408: "The body did not arrive within the route's deadline",
    409: "A token of that name already exists",
    413: "The body, or the audio in it, is over the route's limit (the message states the limit)",
    415: "The body's content type, or the audio's format, is not one the route takes",
    422: "A field is missing or invalid (`field` names it)",
    429: "Over the caller's rate limit; `Retry-After` and `RateLimit-*` say when to come back",
    503: "A model or a store cannot take the request now; `Retry-After` says when to try again",
    504: "The model server did not answer in time",
}
AUTH = (401, 403, 429)  # every /v1/ route
BODY = (400, 408, 413, 415, 422)  # a route that reads a body
MODEL = (503, 504)  # a route that calls a model
FOUND = (404, 422)  # a route with an id in its path
STORE = (503,)  # a route that needs Redis where it is configured


def error_responses(*groups: tuple[int, ...], shape: type[BaseModel] = ErrorResponse) -> dict[int | str, Any]:
    """The ``responses`` of a route that answers the statuses of ``groups``, each in ``shape``."""
    statuses = sorted({status for group in groups for status in group})
    return {status: {"model": shape, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def install(app: FastAPI) -> None:
    """The app's schema, made once, with the bearer scheme on every ``/v1/`` operation."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            document.setdefault("components", {})["securitySchemes"] = {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`milo-voice tokens create`), needed when auth is on",
                }
            }
            for path, operations in document["paths"].items():
                if path.startswith(PROTECTED_PREFIX):
                    for operation in operations.values():
                        operation["security"] = [{BEARER: []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
