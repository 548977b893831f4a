"""Starting what the load tests and benchmarks measure: free ports, readiness, a uvicorn app, Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from milo_voice.local_stack import REPO, free_port, wait_ok

__all__ = ["REPO", "free_port", "wait_ok"]


# The facade's app factory, as uvicorn takes it (``--factory``).
@contextlib.contextmanager
def uvicorn_app(
    app: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/health",
    timeout_s: float = 120,
) -> Iterator[str]:
    """``app`` ("module:attribute") served by uvicorn in its own process; yields its base URL."""
    with _http_server(
        lambda port: [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)],
        log_path, env, ready_path, timeout_s,
    ) as url:  # fmt: skip
        yield url


@contextlib.contextmanager
def facade_server(
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/health",
    timeout_s: float = 120,
    workers: int = 1,
) -> Iterator[str]:
    """The facade in its own process, started as every deployment starts it (``python -m
    api_facade``); yields its base URL."""
    with _http_server(
        lambda port: [sys.executable, "-m", "api_facade", "--port", str(port), "--workers", str(workers)],
        log_path,
        env,
        ready_path,
        timeout_s,
    ) as url:
        yield url


@contextlib.contextmanager
def _http_server(
    command: Callable[[int], list[str]], log_path: Path, env: dict[str, str] | None, ready_path: str, timeout_s: float
) -> Iterator[str]:
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command(port), cwd=REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_ok(f"http://127.0.0.1:{port}{ready_path}", timeout_s, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """A real redis-server on a loopback port, that a test may kill and start again on the same
    port and data: append-only file, fsync on every write, so a kill loses nothing acknowledged."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is missing: run `make setup`")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir",
             str(self.workdir), "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server did not listen on {self.port}")

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does (no shutdown save)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, 10)
            self.process = None


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tokens_cli(env: dict[str, str], *args: str) -> str:
    """``milo-voice tokens ARGS`` in its own process with ``env``; its last line (the token, when one is issued)."""
    result = subprocess.run(
        [sys.executable, "-m", "milo_voice.cli", "tokens", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip().splitlines()[-1]
