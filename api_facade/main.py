"""The REST facade: friendly JSON routes mapped onto Triton inference calls. It holds no model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api_facade import errors, metrics
from api_facade.cache import MemoryCache, RedisCache
from api_facade.phrasebook import Phrasebook
from api_facade.routers import chat, health, openai_compat, stt, translate, tts
from api_facade.sessions import MemorySessionStore, RedisSessionStore
from api_facade.settings import get_settings
from client import AsyncMiloTritonClient
from milo_voice.registry import active_profile, load_registry


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.triton = AsyncMiloTritonClient(
        settings.triton_url,
        protocol=settings.triton_protocol,  # type: ignore[arg-type]
        grpc_url=settings.triton_grpc_url,
        timeout_s=settings.triton_timeout_s,
    )
    app.state.translation_cache = (
        RedisCache(settings.redis_url, settings.translation_cache_ttl_s)
        if settings.redis_url
        else MemoryCache(settings.translation_cache_entries)
    )
    app.state.phrasebook = Phrasebook.load()
    app.state.sessions = (
        RedisSessionStore(settings.redis_url, settings.session_ttl_s)
        if settings.redis_url
        else MemorySessionStore(settings.session_ttl_s)
    )
    profile = active_profile()
    registry = load_registry()
    app.state.translate_revision = f"{profile}:{registry.by_role('translate').weights(profile).revision}"
    app.state.voices = registry.by_role("tts").weights(profile).voices
    yield
    await app.state.sessions.close()
    await app.state.translation_cache.close()
    await app.state.triton.close()


app = FastAPI(
    title="Milo Voice",
    version="0.1.0",
    description="Speech to text, text to speech, translation and chat for Malagasy and French.",
    lifespan=lifespan,
)
errors.install(app)
metrics.install(app)
app.include_router(health.router)
app.include_router(translate.router)
app.include_router(tts.router)
app.include_router(stt.router)
app.include_router(chat.router)
app.include_router(openai_compat.router)
