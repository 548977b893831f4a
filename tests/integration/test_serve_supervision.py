"""``milo-voice serve`` killed outright: its Triton host and facade stop with it, nothing is left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, free_port, wait_http_ok
from tests.integration.test_scale_out import translate_only_registry

pytestmark = pytest.mark.integration


def test_serve_killed_by_sigkill_leaves_no_process_and_no_shared_memory(embedded_dir: Path, tmp_path: Path) -> None:
    registry = translate_only_registry(tmp_path / "registry.toml")
    ports = [free_port() for _ in range(4)]
    env = {
        **os.environ, "MILO_REGISTRY": str(registry), "MILO_PROFILE": "embedded",
        "MILO_REQUIRED_MODELS": '["translate"]', "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    env.pop("MILO_CHAT_CLOUD_URL", None)
    command = [
        sys.executable, "-m", "milo_voice.cli", "serve", "--host", "127.0.0.1", "--http-port", str(ports[0]),
        "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--facade-port", str(ports[3]),
    ]  # fmt: skip
    descendants: list[psutil.Process] = []
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http_ok(f"http://127.0.0.1:{ports[3]}/ready", 300, serve)
            descendants = psutil.Process(serve.pid).children(recursive=True)  # host, its Triton, facade
            hosts = [p.pid for p in descendants if "pytriton_app" in " ".join(p.cmdline())]
            assert hosts and any("api_facade" in " ".join(p.cmdline()) for p in descendants)
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
