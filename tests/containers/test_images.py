"""The project's images, built and run with the machine's container engine (docker, or podman set
up by ``deploy/containers/engine.sh``), from a Debian base made here where no registry answers.

Opt-in (``make test-containers`` sets ``MILO_CONTAINER_TESTS=1``): a first build takes a few
minutes, and the tests need root for debootstrap and the engine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, free_port

FACADE = "milo-voice/facade:0.1.0"

pytestmark = pytest.mark.skipif(
    os.environ.get("MILO_CONTAINER_TESTS") != "1", reason="container tests run with `make test-containers`"
)


def engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``$ENGINE ARGS`` as the project's scripts run it (the same engine, podman's settings)."""
    command = '. deploy/containers/engine.sh && "$ENGINE" "$@"'
    done = subprocess.run(
        ["bash", "-c", command, "engine", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode == 3:
        pytest.skip(done.stderr.strip())
    if check and done.returncode != 0:
        raise AssertionError(f"{args}: {done.stderr[-2000:]}")
    return done


def script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> None:
    """``deploy/containers/NAME ARGS`` as make runs it: skipped, saying why, where no container
    engine can be had (exit 3); its output in the failure otherwise."""
    done = subprocess.run(
        ["bash", f"deploy/containers/{name}", *args], cwd=REPO, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode == 3:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def facade_image() -> str:
    script("images.sh", "facade")
    return FACADE


@pytest.fixture
def facade_container(facade_image: str) -> Iterator[tuple[str, str]]:
    name, port = f"milo-facade-test-{os.getpid()}", free_port()
    # A Triton address where nothing listens: the facade must say so, not hang.
    published = f"127.0.0.1:{port}:8080"
    engine("run", "-d", "--name", name, "-p", published, "-e", "MILO_TRITON_URL=127.0.0.1:9", facade_image)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        engine("rm", "-f", name, check=False)


def test_the_facade_image_serves_and_is_healthy(facade_container: tuple[str, str]) -> None:
    name, base = facade_container
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail(engine("logs", name, check=False).stderr[-3000:])
    assert engine("healthcheck", "run", name, check=False).returncode == 0  # the image's own check
    assert httpx.get(f"{base}/playground", timeout=10).status_code == 200
    assert httpx.get(f"{base}/docs/assets/swagger-ui.css", timeout=10).status_code == 200
    # The image serves the production profile: tokens are on, and a call without one gets its
    # 401 with the JSON error body before anything else is tried.
    answer = httpx.post(f"{base}/v1/translate", json={"text": "Tongasoa", "source": "mg", "target": "fr"}, timeout=60)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthenticated", answer.text


def test_the_facade_image_runs_as_nobody_with_no_torch_and_no_secrets(facade_container: tuple[str, str]) -> None:
    name, _ = facade_container
    assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
    no_torch = engine("exec", name, "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    environment = engine("exec", name, "env").stdout
    for word in ("TOKEN", "KEY", "SECRET", "PASSWORD"):
        assert not [line for line in environment.splitlines() if word in line.split("=")[0].upper()], environment
    # Nothing secret was copied in: no .env, key or token file under the application's folder.
    found = engine("exec", name, "find", "/opt/milo", "-name", ".env", "-o", "-name", "*.pem", "-o", "-name", "*.key")
    assert found.stdout.strip() == ""
