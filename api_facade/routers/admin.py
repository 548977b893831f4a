"""/v1/admin/tokens: create, list, rotate and revoke API tokens (the admin scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from api_facade.auth.access import access
from api_facade.auth.tokens import IssuedToken, TokenError, TokenService
from api_facade.dependencies import SettingsDep
from api_facade.errors import ApiError
from api_facade.openapi import AUTH, BODY, FOUND, STORE, error_responses
from api_facade.protocol import TOKEN_NAME_PATTERN, IssuedTokenView, TokenCreate, TokenRotate, TokenView

router = APIRouter(tags=["admin"], dependencies=[Depends(access("admin"))])
TokenName = Annotated[str, Path(pattern=TOKEN_NAME_PATTERN)]


def get_tokens(request: Request) -> TokenService:
    return request.app.state.tokens


def _issued(issued: IssuedToken) -> IssuedTokenView:
    return IssuedTokenView(token=issued.token, **issued.record.public())  # type: ignore[arg-type]


@router.get("/v1/admin/tokens", response_model=list[TokenView], responses=error_responses(AUTH, STORE))
async def list_tokens(tokens: Annotated[TokenService, Depends(get_tokens)]) -> list[TokenView]:
    return [TokenView(**record.public()) for record in await tokens.list()]  # type: ignore[arg-type]


@router.post(
    "/v1/admin/tokens",
    response_model=IssuedTokenView,
    status_code=201,
    responses=error_responses(AUTH, BODY, STORE, (409,)),
)
async def create_token(body: TokenCreate, tokens: Annotated[TokenService, Depends(get_tokens)]) -> IssuedTokenView:
    try:
        issued = await tokens.create(body.name, body.tier, tuple(body.scopes), body.expires_in_s)
    except TokenError as exc:
        status, code = (409, "conflict") if "already exists" in str(exc) else (422, "invalid_request")
        raise ApiError(status, code, str(exc)) from None
    return _issued(issued)


@router.post(
    "/v1/admin/tokens/{name}/rotate",
    response_model=IssuedTokenView,
    responses=error_responses(AUTH, BODY, FOUND, STORE),
)
async def rotate_token(
    name: TokenName,
    tokens: Annotated[TokenService, Depends(get_tokens)],
    settings: SettingsDep,
    body: TokenRotate | None = None,
) -> IssuedTokenView:
    grace = body.grace_s if body and body.grace_s is not None else settings.token_rotation_grace_s
    try:
        return _issued(await tokens.rotate(name, grace))
    except TokenError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.delete("/v1/admin/tokens/{name}", status_code=204, responses=error_responses(AUTH, FOUND, STORE))
async def revoke_token(name: TokenName, tokens: Annotated[TokenService, Depends(get_tokens)]) -> Response:
    if not await tokens.revoke(name):
        raise ApiError(404, "not_found", f"no token named {name!r}")
    return Response(status_code=204)
