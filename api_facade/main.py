"""The REST facade. For now it answers liveness and readiness; the model routes come next.

It holds no model: readiness is Triton's readiness of every required model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from api_facade.settings import Settings, get_settings
from client import AsyncMiloTritonClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.triton = AsyncMiloTritonClient(
        settings.triton_url,
        protocol=settings.triton_protocol,
        timeout_s=settings.triton_timeout_s,  # type: ignore[arg-type]
    )
    yield
    await app.state.triton.close()


app = FastAPI(title="Milo Voice", version="0.1.0", lifespan=lifespan)


def triton(request: Request) -> AsyncMiloTritonClient:
    return request.app.state.triton


@app.get("/health", summary="Liveness: the facade process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ready", summary="Readiness: every required model is ready in Triton")
async def ready(
    client: Annotated[AsyncMiloTritonClient, Depends(triton)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Any:
    models = {name: await client.is_model_ready(name) for name in settings.required_models}
    not_ready = [name for name, ok in models.items() if not ok]
    body = {"status": "ready" if not not_ready else "not_ready", "models": models, "not_ready": not_ready}
    if not_ready:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return body
