"""The facade's server, ``python -m api_facade [--host H] [--port P] [--workers N]``: the one way it
is started (``milo-voice serve``, the image, the tests and benchmarks).

uvicorn's own handling of forwarded headers is off. By default it believes ``X-Forwarded-For``
from 127.0.0.1 and rewrites the client's address with it, so that a caller behind a local proxy,
or on the host itself, could pick the address its rate limit is counted against. The facade reads
forwarded headers itself, and only from the proxies ``MILO_TRUSTED_PROXIES`` names
(``auth.ratelimit.client_ip``). It listens on loopback unless told otherwise.
"""

from __future__ import annotations

import argparse

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api_facade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run(
        "api_facade.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
