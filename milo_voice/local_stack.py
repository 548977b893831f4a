"""The whole stack on this machine, on free loopback ports, as ``make serve`` runs it: for the
commands and benchmarks that measure a stack they start and stop themselves."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from milo_voice.child_processes import HOST_STOP_S

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Until ``url`` answers 200; fails early when ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


@dataclass(frozen=True)
class LocalStack:
    facade: str  # base URL
    triton_http: str  # host:port
    triton_grpc: str
    metrics: str  # host:port of Triton's Prometheus metrics
    pid: int  # the ``milo-voice serve`` process: the host and the facade run under it


@contextlib.contextmanager
def local_stack(
    log_path: Path,
    env: dict[str, str] | None = None,
    server: str = "pytriton",
    repository: Path | None = None,
    facade_workers: int = 1,
) -> Iterator[LocalStack]:
    """``milo-voice serve`` on free ports (``server``: pytriton or tritonserver), yielded once the
    facade is ready, and stopped the Ctrl-C way afterwards. No Redis: each run starts from nothing
    and never meets a developer's own stack's Redis."""
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "facade")}
    command = [
        sys.executable, "-m", "milo_voice.cli", "serve", "--host", "127.0.0.1", "--server", server,
        "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
        "--metrics-port", str(ports["metrics"]), "--facade-port", str(ports["facade"]), "--no-redis",
        "--facade-workers", str(facade_workers),
        *(["--model-repository", str(repository)] if repository else []),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        full_env = {**os.environ, **(env or {})}
        process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{ports['facade']}"
        try:
            print(f"starting the stack (log: {log_path}) ...", flush=True)
            wait_ok(f"{url}/ready", 900, process)
            yield LocalStack(
                url, f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['metrics']}",
                process.pid,
            )  # fmt: skip
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=HOST_STOP_S + 30)
            except subprocess.TimeoutExpired:
                process.kill()
