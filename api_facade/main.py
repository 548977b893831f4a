"""The REST facade: friendly JSON routes mapped onto Triton inference calls. It holds no model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import start_http_server

from api_facade import access_log, errors, metrics, openapi, pages
from api_facade.auth.first import AuthenticateFirst
from api_facade.auth.ratelimit import RateLimiter, parse_networks
from api_facade.auth.tokens import TokenService, open_token_store
from api_facade.body_limits import BodyLimits
from api_facade.cache import MemoryCache, RedisCache
from api_facade.conversation import Conversations
from api_facade.disconnect import CancelOnDisconnect
from api_facade.errors import RequestIds
from api_facade.metrics import MeasureRequests
from api_facade.phrasebook import Phrasebook
from api_facade.redis_connection import RedisConnection
from api_facade.routers import admin, chat, health, openai_compat, realtime, stt, translate, tts, voice
from api_facade.served_weights import ServedRevisions
from api_facade.sessions import MemorySessionStore, RedisSessionStore
from api_facade.settings import Settings
from client import TritonPool

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


def _configure_logging() -> None:
    access_log.install()
    # uvicorn configures its own loggers only: without this, the facade's records (outages, request
    # errors) would reach stderr through Python's last-resort handler, warnings and up, unlabelled.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for name in ("api_facade", "client"):  # ours at INFO; libraries (HTTP clients) only warn
            logging.getLogger(name).setLevel(logging.INFO)


def triton_pool(settings: Settings) -> TritonPool:
    return TritonPool(
        settings.triton_urls,
        protocol=settings.triton_protocol,  # type: ignore[arg-type]
        grpc_urls=settings.triton_grpc_urls,
        timeout_s=settings.triton_timeout_s,
        probe_interval_s=settings.triton_probe_interval_s,
        on_retry=metrics.count_retry,
        access_key=settings.triton_key,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI, given_triton: TritonPool | None) -> AsyncIterator[None]:
    _configure_logging()
    settings: Settings = app.state.settings
    app.state.triton = given_triton or triton_pool(settings)
    if given_triton is None:
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
    app.state.served_revisions = ServedRevisions()
    app.state.sessions = (
        RedisSessionStore(redis, settings.session_ttl_s)
        if redis is not None
        else MemorySessionStore(settings.session_ttl_s)
    )
    app.state.conversations = Conversations(app.state.sessions, settings)
    app.state.tokens = TokenService(open_token_store(redis, settings.data_dir), tuple(settings.tiers))
    app.state.rate_limiter = RateLimiter(redis)
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    metrics_server = None
    refreshing: asyncio.Task[None] | None = None
    if metrics.MULTIPROCESS_DIR is not None:  # one of several workers (the parent serves metrics_port)
        metrics.forget_gone_workers()
        refreshing = asyncio.create_task(metrics.refresh_forever(app))
    elif settings.metrics_port is not None:
        metrics_server, _ = start_http_server(settings.metrics_port)
    _announce_access(settings)
    yield
    if refreshing is not None:
        refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refreshing
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    await app.state.tokens.store.close()
    await app.state.sessions.close()
    await app.state.translation_cache.close()
    if given_triton is None:  # the caller's own pool is the caller's to close
        await app.state.triton.close()
    if redis is not None:
        await redis.close()


def create_app(settings: Settings | None = None, triton: TritonPool | None = None) -> FastAPI:
    """The facade. ``settings``: read from the environment (``MILO_*``) when not given. ``triton``:
    where model calls go; by default a pool over the settings' Triton servers, made at start and
    closed at the end (a given one is the caller's: tests pass a transport that needs no server).

    Served by ``uvicorn --factory api_facade.main:create_app``.
    """
    app = FastAPI(
        title="Milo Voice",
        version="0.1.0",
        description="Speech to text, text to speech, translation and chat for Malagasy and French.",
        lifespan=lambda app: _lifespan(app, triton),
        docs_url=None,  # pages.install serves /docs and /redoc from local files
        redoc_url=None,
    )
    app.state.settings = settings or Settings()
    errors.install(app)
    metrics.install(app)
    openapi.install(app)
    pages.install(app)
    # The last added is the outermost. From the outside in: every request gets its id, then is
    # measured whatever answers it; a token is checked before any body is read; no body is read
    # past its route's limit or deadline; a client that leaves cancels everything below, Triton
    # call included.
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(BodyLimits)
    app.add_middleware(AuthenticateFirst)
    app.add_middleware(MeasureRequests)
    app.add_middleware(RequestIds)
    for router in (health, translate, tts, stt, chat, voice, realtime, openai_compat, admin):
        app.include_router(router.router)
    return app
