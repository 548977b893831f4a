"""Who may call a route, how often, and at which Triton priority: one dependency per route family.

Every ``/v1/*`` route depends on ``access(family)``, which, in order:
1. authenticates the bearer token unless auth is off (over HTTP, ``AuthenticateFirst`` has done it
   before the body was read); a call without a valid token counts against its client address's
   limit (429 beyond it, so guessing tokens is throttled), then gets its 401;
2. checks the token's scopes (403);
3. counts the call against the caller's limit for its tier (429): a token's own budget, or,
   auth off, the client address's (which also has the address limit). A flood of bad tokens
   from an address therefore never spends the budget of a valid token sent from it.
and returns the ``Caller``, whose tier gives the Triton priority and queue timeout.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the dependency of
# ``_for_caller``'s inner function as an object, not a string naming a local variable.
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from api_facade.auth.ratelimit import LimitState, RateLimiter, client_ip, parse_limit, tightest
from api_facade.auth.tokens import SCOPES, InvalidTokenError, Principal, TokenService
from api_facade.conversation import Conversations
from api_facade.dependencies import get_conversations, get_triton
from api_facade.errors import ApiError
from api_facade.metrics import AUTH_FAILURES, RATE_LIMITED
from api_facade.settings import ROUTE_FAMILIES, Settings
from client import CallOptions, TritonPool

# The scopes each family needs; "models" (the OpenAI model list) needs a valid token only, a spoken
# turn all three it goes through.
FAMILY_SCOPES: dict[str, tuple[str, ...]] = {"stt": ("stt",), "tts": ("tts",), "translate": ("translate",),
                                             "chat": ("chat",), "voice": ("stt", "chat", "tts"),
                                             "admin": ("admin",), "models": ()}  # fmt: skip
# Browsers cannot set headers on a WebSocket: they send the token as a subprotocol instead.
TOKEN_SUBPROTOCOL = "bearer."
RATE_LIMIT_HEADERS = "rate_limit_headers"
UNAUTHENTICATED = "unauthenticated"  # the family under which calls without a valid token are counted
AUTHENTICATED = "principal_found"  # the request state's key for the principal AuthenticateFirst found


@dataclass(frozen=True)
class Caller:
    principal: Principal
    ip: str
    options: CallOptions
    owner: str  # whose sessions it reaches: its token's, or (auth off) its address's


def _anonymous(settings: Settings) -> Principal:
    # With auth off every caller is one "anonymous" principal of the anonymous tier, without admin.
    return Principal("anonymous", settings.anonymous_tier, frozenset(s for s in SCOPES if s != "admin"))


def _bearer(request: HTTPConnection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and request.scope["type"] == "websocket":
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",")]
        token = next((p.removeprefix(TOKEN_SUBPROTOCOL) for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), "")
        scheme = "bearer"
    if scheme.lower() != "bearer" or not token.strip():
        AUTH_FAILURES.labels("missing").inc()
        raise ApiError(
            401, "unauthenticated", "send an API token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="milo-voice"'},
        )  # fmt: skip
    return token.strip()


async def authenticate(request: HTTPConnection, settings: Settings) -> Principal:
    """The caller: the principal ``AuthenticateFirst`` found for this request, else its token's
    (verified now: a WebSocket), else, auth off, the anonymous one. ``ApiError`` 401 without one."""
    if not settings.auth_on:
        return _anonymous(settings)
    found = request.scope.get("state", {}).get(AUTHENTICATED)
    if isinstance(found, Principal):
        return found
    tokens: TokenService = request.app.state.tokens
    try:
        return await tokens.verify(_bearer(request))
    except InvalidTokenError as exc:
        AUTH_FAILURES.labels("invalid").inc()
        raise ApiError(
            401, "invalid_token", f"the API token is not valid: {exc}",
            headers={"WWW-Authenticate": 'Bearer realm="milo-voice", error="invalid_token"'},
        ) from None  # fmt: skip


def _refuse(state: LimitState, family: str, kind: str) -> ApiError:
    RATE_LIMITED.labels(family, kind).inc()
    retry_after = str(max(1, state.reset_s))
    return ApiError(
        429, "rate_limited", f"too many {family} requests for this {kind}; retry in {retry_after} s",
        headers={**state.headers(), "Retry-After": retry_after},
    )  # fmt: skip


class Access:
    """The dependency of one route family. One instance per family, so FastAPI runs it once a request."""

    def __init__(self, family: str) -> None:
        if family not in ROUTE_FAMILIES:
            raise ValueError(f"unknown route family {family!r}")
        self.family = family

    async def __call__(self, request: HTTPConnection) -> Caller:
        settings: Settings = request.app.state.settings
        ip = _address(request)
        try:
            principal = await authenticate(request, settings)
        except ApiError:
            await count_failed_authentication(request)
            raise
        request.state.principal = principal.name
        for scope in FAMILY_SCOPES[self.family]:
            if scope not in principal.scopes:
                hint = " (admin routes need auth on: MILO_AUTH_ENABLED=true)" if not settings.auth_on else ""
                raise ApiError(403, "insufficient_scope", f"this token lacks the {scope!r} scope{hint}")

        owner = f"token:{principal.name}" if settings.auth_on else f"client:{ip}"
        states = [] if settings.auth_on else [await _count_address(request, self.family, ip)]
        states.append(await _count_for_caller(request, self.family, principal, owner))
        setattr(request.state, RATE_LIMIT_HEADERS, tightest(states).headers())
        tier = settings.tier(principal.tier)
        options = CallOptions(priority=tier.priority, queue_timeout_us=int(tier.queue_timeout_s * 1_000_000))
        return Caller(principal, ip, options, owner)


def _address(connection: HTTPConnection) -> str:
    peer = connection.client.host if connection.client else None
    return client_ip(peer, connection.headers.get("x-forwarded-for"), connection.app.state.trusted_proxies)


async def _count_address(connection: HTTPConnection, family: str, ip: str) -> LimitState:
    """One call against the client address's limit (``ApiError`` 429 beyond it)."""
    settings: Settings = connection.app.state.settings
    limiter: RateLimiter = connection.app.state.rate_limiter
    state = await limiter.hit(parse_limit(settings.ip_rate_limit), "ip", family, ip)
    if not state.allowed:
        raise _refuse(state, family, "client address")
    return state


async def count_failed_authentication(connection: HTTPConnection) -> None:
    """A call without a valid token, against its address's limit for such calls on any route: 429
    past it, so that tokens cannot be guessed at speed; never against a valid token's budget."""
    await _count_address(connection, UNAUTHENTICATED, _address(connection))


async def _count_for_caller(connection: HTTPConnection, family: str, principal: Principal, owner: str) -> LimitState:
    """One call against ``owner``'s budget for its tier: a token's, or an anonymous address's."""
    settings: Settings = connection.app.state.settings
    limiter: RateLimiter = connection.app.state.rate_limiter
    limit = parse_limit(settings.tier(principal.tier).limit_for(family))
    state = await limiter.hit(limit, "caller", family, owner)
    if not state.allowed:
        raise _refuse(state, family, "token" if owner.startswith("token:") else "client address")
    return state


async def count_call(connection: HTTPConnection, family: str, caller: Caller) -> None:
    """One more call of ``family`` by an already admitted caller (a realtime conversation's reply);
    ``ApiError`` 429 beyond its tier's limit."""
    await _count_for_caller(connection, family, caller.principal, caller.owner)


@cache
def access(family: str) -> Access:
    return Access(family)


def _for_caller(family: str, build: Callable[[HTTPConnection, Caller], object]) -> object:
    """A dependency that admits the caller of ``family`` and gives ``build(request, caller)``."""
    caller_of = access(family)

    async def dependency(request: HTTPConnection, caller: Annotated[Caller, Depends(caller_of)]) -> object:
        return build(request, caller)

    return dependency


@cache
def triton_for(family: str) -> object:
    """Dependency: the Triton client bound to the caller's priority and queue timeout."""
    return _for_caller(family, lambda request, caller: get_triton(request).with_options(caller.options))


@cache
def conversations_for(family: str) -> object:
    """Dependency: the chat sessions of the caller (``Conversations.owned_by``)."""
    return _for_caller(family, lambda request, caller: get_conversations(request).owned_by(caller.owner))


# The Triton client of each route family, bound to the caller's priority and queue timeout.
SttTriton = Annotated[TritonPool, Depends(triton_for("stt"))]
TtsTriton = Annotated[TritonPool, Depends(triton_for("tts"))]
TranslateTriton = Annotated[TritonPool, Depends(triton_for("translate"))]
ChatTriton = Annotated[TritonPool, Depends(triton_for("chat"))]
VoiceTriton = Annotated[TritonPool, Depends(triton_for("voice"))]
# The caller's own chat sessions, for the routes that keep them.
ChatConversations = Annotated[Conversations, Depends(conversations_for("chat"))]
VoiceConversations = Annotated[Conversations, Depends(conversations_for("voice"))]
