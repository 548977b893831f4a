"""``milo-voice tokens create|list|rotate|revoke``: the same operations as /v1/admin/tokens.

The store is the one the facade uses (``MILO_REDIS_URL`` or the token file under
``MILO_DATA_DIR``), so a revocation here reaches every running replica on its next request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

from api_facade.auth.tokens import SCOPES, TokenError, TokenService, open_token_store
from api_facade.redis_connection import RedisConnection, RedisUnavailableError
from api_facade.settings import settings_from_environment

# An operator's command can wait for a Redis slow to accept a connection (one in a container
# network just made was seen to take over the 1 s a request of the facade waits).
REDIS_TIMEOUT_S = 10.0


def _run(action: Callable[[TokenService], Awaitable[int]]) -> int:
    async def main() -> int:
        settings = settings_from_environment()
        redis = RedisConnection(settings.redis_url, timeout_s=REDIS_TIMEOUT_S) if settings.redis_url else None
        service = TokenService(open_token_store(redis, settings.data_dir), tuple(settings.tiers))
        try:
            return await action(service)
        except (TokenError, RedisUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            await service.store.close()
            if redis is not None:
                await redis.close()

    return asyncio.run(main())


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "never"


def _create(args: argparse.Namespace) -> int:
    async def action(service: TokenService) -> int:
        scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
        issued = await service.create(args.name, args.tier, scopes, args.expires_in)
        expires = _when(issued.record.expires_at)
        print(f"token {args.name!r} (tier {args.tier}, scopes {', '.join(scopes)}, expires {expires})")
        print("shown once, store it now:", file=sys.stderr)
        print(issued.token)
        return 0

    return _run(action)


def _list(args: argparse.Namespace) -> int:
    async def action(service: TokenService) -> int:
        records = [r.public() for r in await service.list()]
        if args.json:
            print(json.dumps(records, indent=1))
            return 0
        print(f"{'name':<24} {'tier':<10} {'scopes':<32} {'created':<19}  {'expires':<19}  secrets")
        for r in records:
            print(
                f"{r['name']:<24} {r['tier']:<10} {','.join(r['scopes']):<32} {_when(r['created_at']):<19}  "  # type: ignore[arg-type]
                f"{_when(r['expires_at']):<19}  {r['active_secrets']}"  # type: ignore[arg-type]
            )
        return 0

    return _run(action)


def _rotate(args: argparse.Namespace) -> int:
    grace = args.grace if args.grace is not None else settings_from_environment().token_rotation_grace_s

    async def action(service: TokenService) -> int:
        issued = await service.rotate(args.name, grace)
        print(f"token {args.name!r} rotated; the previous secret keeps working for {grace:g} s", file=sys.stderr)
        print(issued.token)
        return 0

    return _run(action)


def _revoke(args: argparse.Namespace) -> int:
    async def action(service: TokenService) -> int:
        if not await service.revoke(args.name):
            print(f"error: no token named {args.name!r}", file=sys.stderr)
            return 1
        print(f"token {args.name!r} revoked")
        return 0

    return _run(action)


def add_token_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tokens = commands.add_parser("tokens", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", help="issue a token (printed once)")
    create.add_argument("name")
    create.add_argument("--tier", default="standard")
    create.add_argument("--scopes", default="stt,tts,translate,chat", help=f"comma-separated, of {','.join(SCOPES)}")
    create.add_argument("--expires-in", type=float, default=None, metavar="SECONDS")
    create.set_defaults(func=_create)
    listing = tokens.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    rotate = tokens.add_parser("rotate", help="issue a new secret; the old one works for the grace period")
    rotate.add_argument("name")
    rotate.add_argument("--grace", type=float, default=None, metavar="SECONDS")
    rotate.set_defaults(func=_rotate)
    revoke = tokens.add_parser("revoke", help="delete a token; refused from the next request on")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)
