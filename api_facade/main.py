"""The REST facade: friendly JSON routes mapped onto Triton inference calls. It holds no model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import start_http_server

from api_facade import errors, metrics
from api_facade.cache import MemoryCache, RedisCache
from api_facade.disconnect import CancelOnDisconnect
from api_facade.phrasebook import Phrasebook
from api_facade.ratelimit import RateLimiter, parse_networks
from api_facade.redis_connection import RedisConnection
from api_facade.routers import admin, chat, health, openai_compat, stt, translate, tts
from api_facade.sessions import MemorySessionStore, RedisSessionStore
from api_facade.settings import Settings, get_settings
from api_facade.tokens import TokenService, open_token_store
from client import TritonPool
from milo_voice.registry import active_profile, load_registry

log = logging.getLogger("api_facade")


def _announce_access(settings: Settings) -> None:
    if settings.auth_on:
        store = "Redis" if settings.redis_url else settings.data_dir / "tokens.json"
        log.info("API tokens required on /v1/* (tokens kept in %s)", store)
    else:
        log.warning(
            "API tokens are OFF (embedded quick start): every caller is anonymous, tier %r. To require tokens: "
            "`milo-voice tokens create NAME --tier standard --scopes stt,tts,translate,chat` and restart the "
            "facade with MILO_AUTH_ENABLED=true",
            settings.anonymous_tier,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # uvicorn configures its own loggers only: without this, the facade's records (outages, request
    # errors) would reach stderr through Python's last-resort handler, warnings and up, unlabelled.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for name in ("api_facade", "client"):  # ours at INFO; libraries (HTTP clients) only warn
            logging.getLogger(name).setLevel(logging.INFO)
    settings = get_settings()
    app.state.triton = TritonPool(
        settings.triton_urls,
        protocol=settings.triton_protocol,  # type: ignore[arg-type]
        grpc_urls=settings.triton_grpc_urls,
        timeout_s=settings.triton_timeout_s,
        probe_interval_s=settings.triton_probe_interval_s,
        on_retry=metrics.count_retry,
    )
    await app.state.triton.start()
    # One Redis connection for every store; each store says what it does while Redis is down.
    redis = RedisConnection(settings.redis_url) if settings.redis_url else None
    app.state.redis = redis
    app.state.translation_cache = (
        RedisCache(redis, settings.translation_cache_ttl_s, settings.translation_cache_entries)
        if redis is not None
        else MemoryCache(settings.translation_cache_entries)
    )
    app.state.phrasebook = Phrasebook.load()
    app.state.sessions = (
        RedisSessionStore(redis, settings.session_ttl_s)
        if redis is not None
        else MemorySessionStore(settings.session_ttl_s)
    )
    profile = active_profile()
    # A model server may serve some roles only (a chat-only deployment): what is absent stays empty.
    models = {spec.role: spec for spec in load_registry().models.values()}
    translate = models.get("translate")
    app.state.translate_revision = f"{profile}:{translate.weights(profile).revision}" if translate else profile
    app.state.voices = models["tts"].weights(profile).voices if "tts" in models else {}
    app.state.tokens = TokenService(open_token_store(redis, settings.data_dir), tuple(settings.tiers))
    app.state.rate_limiter = RateLimiter(redis)
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.metrics_port)
    _announce_access(settings)
    yield
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    await app.state.tokens.store.close()
    await app.state.sessions.close()
    await app.state.translation_cache.close()
    await app.state.triton.close()
    if redis is not None:
        await redis.close()


app = FastAPI(
    title="Milo Voice",
    version="0.1.0",
    description="Speech to text, text to speech, translation and chat for Malagasy and French.",
    lifespan=lifespan,
)
errors.install(app)
metrics.install(app)
# Outermost: a client that leaves cancels everything below, Triton call included.
app.add_middleware(CancelOnDisconnect)
app.include_router(health.router)
app.include_router(translate.router)
app.include_router(tts.router)
app.include_router(stt.router)
app.include_router(chat.router)
app.include_router(openai_compat.router)
app.include_router(admin.router)
