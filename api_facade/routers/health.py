"""Liveness (the process answers) and readiness (Triton has every required model ready).

With several Triton servers, the facade is ready while every required model is ready on at
least one server in rotation; a server out of rotation makes the state ``degraded`` (still
200: requests are served) and is named under ``endpoints``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api_facade.dependencies import get_triton
from api_facade.errors import RETRY_AFTER_S
from api_facade.settings import Settings, get_settings
from client import TritonPool

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the facade process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: every required model is ready in Triton (503 naming those that are not)")
async def ready(
    triton: Annotated[TritonPool, Depends(get_triton)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Any:
    models = {name: await triton.is_model_ready(name) for name in settings.required_models}
    not_ready = [name for name, ok in models.items() if not ok]
    status = "not_ready" if not_ready else "degraded" if triton.degraded else "ready"
    body = {"status": status, "models": models, "not_ready": not_ready, "endpoints": triton.status()}
    if not_ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return body
