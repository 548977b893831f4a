"""Shared fixtures: embedded weights, espeak-ng clips, free ports and a real PyTriton host."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loadtests import payloads
from loadtests.processes import facade_server, redis_server, stop
from milo_voice.child_processes import HOST_STOP_S
from milo_voice.registry import Registry, load_registry, models_dir
from milo_voice.weights.embedded import build_embedded

REPO = Path(__file__).resolve().parent.parent
_SEGMENTS_AT_START = pytest.StashKey[set[str]]()
REPOSITORY_MODELS = ("stt", "tts", "tts_stream", "translate", "chat", "chat_stream")
SERVED_MODELS = (
    *REPOSITORY_MODELS, "tts_cancel", "chat_cancel", "chat_cloud", "chat_cloud_stream", "chat_cloud_cancel",
)  # fmt: skip


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="session")
def embedded_dir(registry: Registry) -> Path:
    """The embedded weights (built by `make models`; built here if a test runs alone)."""
    build_embedded(registry, models_dir())
    return models_dir() / "embedded"


def speak(text: str, voice: str = "fr+m3", words_per_minute: int = 120) -> np.ndarray:
    """Speech made by espeak-ng, as 16 kHz mono float32 (what STT takes)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make setup`")
    return payloads.spoken(text, voice, words_per_minute)


def raw_request(base: str, head: str, body_pieces: list[bytes], pause_s: float) -> tuple[int, dict[str, object], float]:
    """``head`` then each piece after ``pause_s``; the status, the JSON body and the seconds taken."""
    address = urlsplit(base)
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(head.encode())
        try:
            for piece in body_pieces:
                time.sleep(pause_s)
                connection.sendall(piece)
        except OSError:  # the server answered and closed while the client was still sending
            pass
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")
    return status, body, time.monotonic() - started


def metric_value(base: str, name: str, **labels: str) -> float:
    """The value of one sample of the facade's /metrics (0 where it has none yet)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def embedded_voices(embedded_dir: Path) -> dict[str, str | Path]:
    """The embedded profile's TTS voices as the registry names them (a VITS folder, or Pico's)."""
    from milo_voice.roles.voices import voice_location

    names = load_registry().by_role("tts").weights("embedded").voices
    return {language: voice_location(embedded_dir / "tts", name) for language, name in names.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


@contextmanager
def facade_client(
    triton_url: str, grpc_url: str | None = None, peer: tuple[str, int] = ("testclient", 50000), **env: str
) -> Iterator[TestClient]:
    """The facade in process (``create_app``), its lifespan run; ``env``: its settings, as the
    ``MILO_*`` variables a deployment sets (read as a deployment's are)."""
    from api_facade.main import create_app
    from api_facade.settings import Settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MILO_TRITON_URL", triton_url)
        if grpc_url:
            patch.setenv("MILO_TRITON_GRPC_URL", grpc_url)
        patch.delenv("MILO_REDIS_URL", raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings()
    with TestClient(create_app(settings), client=peer) as client:
        yield client


@pytest.fixture(scope="session")
def openai_server(embedded_dir: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback, serving the embedded GGUF.

    A real peer for the cloud chat backend: the same protocol a hosted provider speaks.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_dir / "chat" / "model.gguf"),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/v1/models", 120, process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass(frozen=True)
class TritonHost:
    http: int
    grpc: int
    metrics: int
    models: tuple[str, ...] = SERVED_MODELS
    server: str = "pytriton"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"


@contextmanager
def facade_process(triton: TritonHost, log_path: Path, **env: str) -> Iterator[str]:
    """The facade as a real uvicorn server in its own process; yields its base URL once it answers."""
    full_env = {"MILO_TRITON_URL": triton.http_url, "MILO_TRITON_GRPC_URL": triton.grpc_url, "PYTHONUNBUFFERED": "1"}
    with facade_server(log_path, {**full_env, **env}, timeout_s=60) as url:
        yield url


@contextmanager
def running_host(host: TritonHost, command: list[str], log_path: Path, **env: str) -> Iterator[TritonHost]:
    """A Triton server in a subprocess, yielded once every model of ``host`` is ready."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            for model in host.models:
                wait_http_ok(f"http://{host.http_url}/v2/models/{model}/ready", 420, process)
            yield host
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{host.server} did not start: {exc}\n{log_path.read_text()[-4000:]}")
        finally:
            stop(process, HOST_STOP_S)
            # A host stopped by SIGTERM frees what it holds: PyTriton's shared memory among it.
            leftovers = sorted(Path("/dev/shm").glob(f"pytrtion{process.pid}-*"))
            assert not leftovers, f"{host.server} left shared memory behind: {leftovers}"


@pytest.fixture(scope="session")
def triton_host(
    embedded_dir: Path, openai_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonHost]:
    """The real PyTriton host, in a subprocess, serving every model on the embedded weights,
    and the cloud chat backend pointed at the loopback OpenAI-compatible server."""
    host = TritonHost(free_port(), free_port(), free_port())
    command = [sys.executable, "-m", "pytriton_app", "--http-port", str(host.http),
               "--grpc-port", str(host.grpc), "--metrics-port", str(host.metrics)]  # fmt: skip
    log_path = tmp_path_factory.mktemp("triton") / "host.log"
    with running_host(host, command, log_path, MILO_PROFILE="embedded", MILO_CHAT_CLOUD_URL=openai_server) as ready:
        yield ready


@pytest.fixture(scope="session")
def native_triton_host(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHost]:
    """The stock ``tritonserver`` binary of the nvidia-pytriton wheel on ``model_repository/``:
    the Python backend runs the repository's ``1/model.py`` adapters on the embedded weights."""
    host = TritonHost(free_port(), free_port(), free_port(), models=REPOSITORY_MODELS, server="tritonserver")
    workdir = tmp_path_factory.mktemp("tritonserver")
    command = [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(workdir),
               "--http-port", str(host.http), "--grpc-port", str(host.grpc),
               "--metrics-port", str(host.metrics)]  # fmt: skip
    env = {"MILO_PROFILE": "embedded", "MILO_CHAT_CLOUD_URL": ""}
    with running_host(host, command, workdir / "server.log", **env) as ready:
        yield ready


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the tests' own use."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


# -- nothing left behind ----------------------------------------------------------------------

SEGMENT_PREFIXES = ("psm_", "pytrtion", "milo_")
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _stack_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(SEGMENT_PREFIXES)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SEGMENTS_AT_START] = _stack_segments()
    # Orphans (a Triton stub whose server died) are given to this process, not to init, so the check
    # below sees them as its children.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run fails if it leaves a process it started, or a shared memory segment, behind."""
    import psutil

    children = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, os.WNOHANG)  # an orphan given to us that has ended
            elif "multiprocessing.resource_tracker" not in " ".join(process.cmdline()):
                children.append(process)
    _gone, alive = psutil.wait_procs(children, timeout=15)
    time.sleep(1)  # resource trackers remove their segments once their process is gone
    segments = _stack_segments() - session.config.stash.get(_SEGMENTS_AT_START, set())
    if alive or segments:
        left = [f"process {p.pid} {' '.join(p.cmdline()[:4])}" for p in alive] + [f"/dev/shm/{s}" for s in segments]
        print("\nthe test run left behind:\n  " + "\n  ".join(left), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
