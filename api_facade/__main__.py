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
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import uvicorn


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """Several workers: a folder for their metrics (``api_facade.metrics``), removed afterwards, and
    ``MILO_METRICS_PORT`` served here, from all of them (a worker each could not share the port)."""
    if workers <= 1:
        yield
        return
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = given or tempfile.mkdtemp(prefix="milo-facade-metrics-")
    if given:  # an operator's folder: what a previous run left would add up with this one's
        for stale in os.scandir(folder):
            if stale.name.endswith(".db"):
                os.remove(stale.path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client is imported anywhere
    print(f"api_facade: {workers} workers share their metrics in {folder}", flush=True)
    from api_facade.settings import Settings

    server = None
    if (port := Settings().metrics_port) is not None:
        from prometheus_client import start_http_server

        from api_facade import metrics

        server, _ = start_http_server(port, registry=metrics.registry())
    try:
        yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api_facade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    with shared_metrics(args.workers):
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
