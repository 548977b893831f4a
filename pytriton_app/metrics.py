"""The host's metrics port: Triton's own metrics and the host's (the chat engine's) on one page.

PyTriton's tritonserver serves only Triton's metrics. The host runs it on a loopback port
and answers the public metrics port itself, appending what this process measures in
``prometheus_client``, so Prometheus scrapes one target as before.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)


class MetricsRelay:
    """``GET /metrics`` on ``port``: Triton's page from ``triton_port`` plus this process's registry."""

    def __init__(self, port: int, triton_port: int, address: str = "0.0.0.0", timeout_s: float = 5.0) -> None:
        triton_url = f"http://127.0.0.1:{triton_port}/metrics"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    with urllib.request.urlopen(triton_url, timeout=timeout_s) as response:
                        triton = response.read()
                except OSError as exc:  # Triton starting or gone: the host's own series still answer
                    log.warning("Triton's metrics unavailable: %s", exc)
                    triton = f"# Triton's metrics unavailable: {exc}\n".encode()
                body = triton + generate_latest(REGISTRY)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-relay", daemon=True)

    def __enter__(self) -> MetricsRelay:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
