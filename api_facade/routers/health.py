"""Liveness (the process answers) and readiness (Triton has every required model ready)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api_facade.dependencies import get_triton
from api_facade.errors import RETRY_AFTER_S
from api_facade.settings import Settings, get_settings
from client import AsyncMiloTritonClient

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the facade process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: every required model is ready in Triton (503 naming those that are not)")
async def ready(
    triton: Annotated[AsyncMiloTritonClient, Depends(get_triton)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Any:
    models = {name: await triton.is_model_ready(name) for name in settings.required_models}
    not_ready = [name for name, ok in models.items() if not ok]
    body = {"status": "ready" if not not_ready else "not_ready", "models": models, "not_ready": not_ready}
    if not_ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return body
