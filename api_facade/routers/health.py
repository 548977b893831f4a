"""Liveness (the process answers) and readiness (Triton has every required model ready).

With several Triton servers, the facade is ready while every required model is ready on at
least one server in rotation; a server out of rotation makes the state ``degraded`` (still
200: requests are served) and is named under ``endpoints``. So does a Redis outage (``redis``:
``down``): the facade still serves by each store's outage policy, and every replica shares the
one Redis, so taking them all out of rotation would only turn 503s into refused connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api_facade.dependencies import SettingsDep, TritonDep
from api_facade.errors import RETRY_AFTER_S
from api_facade.redis_connection import RedisConnection, RedisUnavailableError

router = APIRouter(tags=["health"])


# HEAD answers where GET does (load balancers probe with it); the schema lists the GET.
@router.get("/health", summary="Liveness: the facade process answers")
@router.head("/health", include_in_schema=False)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: every required model is ready in Triton (503 naming those that are not)",
    responses={503: {"description": "The same body, status `not_ready`, with `Retry-After`"}},
)
@router.head("/ready", include_in_schema=False)
async def ready(
    request: Request,
    triton: TritonDep,
    settings: SettingsDep,
) -> Any:
    # Asked together: a server that answers none of them costs one health bound, not one per model.
    names = list(settings.required_models)
    models = dict(zip(names, await asyncio.gather(*(triton.is_model_ready(name) for name in names)), strict=True))
    not_ready = [name for name, ok in models.items() if not ok]
    redis: RedisConnection | None = request.app.state.redis
    if redis is not None:  # a cheap probe: an idle facade learns of an outage, and of its end, here too
        with contextlib.suppress(RedisUnavailableError):
            await redis.run("ready", redis.client.ping)
    redis_down = redis is not None and not redis.up
    status = "not_ready" if not_ready else "degraded" if triton.degraded or redis_down else "ready"
    body = {"status": status, "models": models, "not_ready": not_ready, "endpoints": triton.status()}
    if weights := request.app.state.served_revisions.view():
        body["weights"] = weights  # as the models last said (a content hash of their weights)
    if redis is not None:
        body["redis"] = "up" if redis.up else "down"
    if processes := settings.supervised_processes():
        body["processes"] = processes
    if not_ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return body
