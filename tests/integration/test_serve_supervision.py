"""``milo-voice serve`` killed outright: its Triton host and facade stop with it, nothing is left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO, free_port, wait_http_ok
from tests.integration.test_chat_serving import chat_only_registry
from tests.integration.test_scale_out import translate_only_registry

pytestmark = pytest.mark.integration


def test_serve_killed_by_sigkill_leaves_no_process_and_no_shared_memory(embedded_dir: Path, tmp_path: Path) -> None:
    registry = translate_only_registry(tmp_path / "registry.toml")
    ports = [free_port() for _ in range(4)]
    env = {
        **os.environ, "MILO_REGISTRY": str(registry), "MILO_PROFILE": "embedded",
        "MILO_REQUIRED_MODELS": '["translate"]', "PYTHONUNBUFFERED": "1", "MILO_DATA_DIR": str(tmp_path),
    }  # fmt: skip
    env.pop("MILO_CHAT_CLOUD_URL", None)
    env.pop("MILO_REDIS_URL", None)
    command = [
        sys.executable, "-m", "milo_voice.cli", "serve", "--host", "127.0.0.1", "--http-port", str(ports[0]),
        "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--facade-port", str(ports[3]),
        "--redis-port", str(free_port()),
    ]  # fmt: skip
    descendants: list[psutil.Process] = []
    # A serve killed outright cannot remove its scratch folder (and the host's workspace in it):
    # its temporary files go into a folder of the test's, short (the host's sockets are in it, and
    # a socket's path holds at most 107 bytes), removed at the end.
    with tempfile.TemporaryDirectory(prefix="milo-sv-") as folder, (tmp_path / "serve.log").open("wb") as log:
        env["TMPDIR"] = folder
        serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http_ok(f"http://127.0.0.1:{ports[3]}/ready", 300, serve)
            descendants = psutil.Process(serve.pid).children(recursive=True)  # host, its Triton, facade
            hosts = [p.pid for p in descendants if "pytriton_app" in " ".join(p.cmdline())]
            assert hosts and any("api_facade" in " ".join(p.cmdline()) for p in descendants)
            assert any("redis-server" in " ".join(p.cmdline()) for p in descendants)
            serve.send_signal(signal.SIGKILL)
            serve.wait(timeout=10)
            _stopped, alive = psutil.wait_procs(descendants, timeout=60)
            assert alive == [], [p.cmdline()[:3] for p in alive]
        finally:  # whatever the test found, nothing of it stays
            if serve.poll() is None:
                serve.kill()
            for process in descendants:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        time.sleep(0.5)
        for pid in hosts:  # the host stopped the SIGTERM way: it freed its shared memory
            assert not sorted(Path("/dev/shm").glob(f"pytrtion{pid}-*"))
        # What serve kept of its own lies in its scratch folder, the host's workspace among it.
        (serve_scratch,) = Path(folder).glob("milo-serve-*")
        assert (serve_scratch / "state.json").exists() and (serve_scratch / "pytriton").is_dir()


def test_chat_sessions_survive_a_restart_of_serve(embedded_dir: Path, tmp_path: Path) -> None:
    """``milo-voice serve`` starts its own Redis, append-only under the data folder, and the
    facade keeps its state there: a session made before a restart is there after it."""
    ports = [free_port() for _ in range(5)]
    env = {
        **os.environ, "MILO_REGISTRY": str(chat_only_registry(tmp_path / "registry.toml")),
        "MILO_PROFILE": "embedded", "MILO_REQUIRED_MODELS": '["chat"]', "PYTHONUNBUFFERED": "1",
        "MILO_DATA_DIR": str(tmp_path / "data"),
    }  # fmt: skip
    env.pop("MILO_CHAT_CLOUD_URL", None)
    env.pop("MILO_REDIS_URL", None)
    command = [
        sys.executable, "-m", "milo_voice.cli", "serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
        "--metrics-port", str(ports[2]), "--facade-port", str(ports[3]), "--redis-port", str(ports[4]),
    ]  # fmt: skip
    facade = f"http://127.0.0.1:{ports[3]}"

    def served(log: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        @contextlib.contextmanager
        def running() -> Iterator[subprocess.Popen[bytes]]:
            with log.open("wb") as out:
                serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
                try:
                    wait_http_ok(f"{facade}/ready", 300, serve)
                    yield serve
                finally:
                    serve.send_signal(signal.SIGINT)
                    try:
                        serve.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        serve.kill()  # the test fails, and leaves nothing behind (serve's children die with it)
                        serve.wait(timeout=10)
                        raise

        return running()

    with served(tmp_path / "first.log"):
        body = {"message": "Salama", "session_id": "kept", "max_tokens": 4, "temperature": 0}
        assert httpx.post(f"{facade}/v1/chat", json=body, timeout=120).json()["turns"] == 2
    first_log = (tmp_path / "first.log").read_text()
    assert f"state: Redis at redis://127.0.0.1:{ports[4]}/0, its data in {tmp_path / 'data' / 'redis'}" in first_log
    with served(tmp_path / "second.log"):
        kept = httpx.get(f"{facade}/v1/chat/sessions/kept", timeout=30)
        assert kept.status_code == 200 and [t["role"] for t in kept.json()["turns"]] == ["user", "assistant"]
