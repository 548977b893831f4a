"""The model server's health check: every model of the registry ready, not Triton's server readiness."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from milo_voice.registry import load_registry
from milo_voice.serving import readiness


@pytest.fixture
def triton() -> Iterator[tuple[str, set[str]]]:
    """An HTTP server answering /v2/models/<name>/ready as Triton does for the models in its set."""
    ready: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            ok = self.path == "/v2/health/ready" or (len(parts) == 4 and parts[3] == "ready" and parts[2] in ready)
            self.send_response(200 if ok else 400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ready
    finally:
        server.shutdown()
        server.server_close()


def test_ready_only_once_every_served_model_is(
    triton: tuple[str, set[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, ready = triton
    served = readiness.served_model_names(load_registry(), "pytriton")
    assert {"stt", "tts", "translate", "chat", "chat_stream", "chat_cancel"} <= set(served)
    # The stock server runs each model in its own process: no model that needs a shared one.
    assert "chat_cancel" not in readiness.served_model_names(load_registry(), "tritonserver")
    assert readiness.main(["--url", url, "--server", "pytriton"]) == 1  # the server is ready, no model yet
    assert capsys.readouterr().err.strip() == f"not ready: {', '.join(served)}"
    ready.update(served[:-1])
    assert readiness.main(["--url", url, "--server", "pytriton"]) == 1
    assert capsys.readouterr().err.strip() == f"not ready: {served[-1]}"
    ready.add(served[-1])
    assert readiness.main(["--url", url, "--server", "pytriton"]) == 0
    assert readiness.main(["--url", "http://127.0.0.1:9", "--server", "pytriton"]) == 1  # nothing listens
