"""Scale-out: one facade in front of two PyTriton hosts, one of which dies under load.

Both hosts serve the real translate model on the embedded weights. The facade (a real uvicorn
process) spreads calls over both (in turn when both are idle), probes their health, and when one
host is killed mid-load it sends the calls that host dropped to the other: every request of the
run is answered, and ``/ready`` reports the degraded state naming the lost host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from milo_voice.child_processes import HOST_STOP_S, kill_group
from milo_voice.registry import model_section
from milo_voice.serving.shared_memory import remove_orphaned_segments
from tests.conftest import REPO, TritonHost, facade_process, free_port, wait_http_ok

pytestmark = pytest.mark.integration
REQUESTS = 240
KILL_AFTER = 60


def translate_only_registry(path: Path) -> Path:
    """The committed registry's translate entry, alone: hosts that start in seconds."""
    path.write_text(model_section("translate"))
    return path


@contextmanager
def translate_host(registry: Path, log_path: Path) -> Iterator[tuple[TritonHost, subprocess.Popen[bytes]]]:
    host = TritonHost(free_port(), free_port(), free_port(), models=("translate",))
    env = {**os.environ, "MILO_REGISTRY": str(registry), "MILO_PROFILE": "embedded", "PYTHONUNBUFFERED": "1"}
    env.pop("MILO_CHAT_CLOUD_URL", None)
    # PyTriton's workspace in a folder removed at the end: a host killed outright leaves its own.
    # (Short: the host's sockets are in it, and a socket's path holds at most 107 bytes.)
    with tempfile.TemporaryDirectory(prefix="milo-pt-") as workspace, log_path.open("wb") as log:
        env["PYTRITON_HOME"] = workspace
        # Its own process group: killing the group kills the host and its tritonserver together,
        # as when a machine or a container dies.
        process = subprocess.Popen(
            [sys.executable, "-m", "pytriton_app", "--http-port", str(host.http),
             "--grpc-port", str(host.grpc), "--metrics-port", str(host.metrics)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield host, process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=HOST_STOP_S)


def test_the_facade_spreads_load_and_survives_losing_a_host(embedded_dir: Path, tmp_path: Path) -> None:
    registry = translate_only_registry(tmp_path / "registry.toml")
    with ExitStack() as stack:
        (first, _), (second, second_process) = (
            stack.enter_context(translate_host(registry, tmp_path / f"host{i}.log")) for i in (1, 2)
        )
        for host, number in ((first, 1), (second, 2)):
            log = tmp_path / f"host{number}.log"
            try:
                wait_http_ok(f"http://{host.http_url}/v2/models/translate/ready", 300)
            except TimeoutError as exc:
                pytest.fail(f"host {number} did not start: {exc}\n{log.read_text()[-3000:]}")
        env = {
            "MILO_TRITON_URL": f"{first.http_url},{second.http_url}",
            "MILO_TRITON_GRPC_URL": f"{first.grpc_url},{second.grpc_url}",
            "MILO_REQUIRED_MODELS": json.dumps(["translate"]),
            # A probe slower than the run: the calls themselves must find the dead host and fail over.
            "MILO_TRITON_PROBE_INTERVAL_S": "30",
            "MILO_ANONYMOUS_TIER": "premium",
        }
        facade = stack.enter_context(facade_process(first, tmp_path / "facade.log", **env))
        ready = httpx.get(f"{facade}/ready").json()
        assert ready["status"] == "ready"
        assert [e["healthy"] for e in ready["endpoints"]] == [True, True]

        # One caller at a time finds both hosts idle: the calls take them in turn.
        for i in range(6):
            body = {"text": f"Manao ahoana {i}.", "source": "mg", "target": "fr"}
            assert httpx.post(f"{facade}/v1/translate", json=body, timeout=120).status_code == 200
        assert [e["served"] for e in httpx.get(f"{facade}/ready").json()["endpoints"]] == [3, 3]

        done = threading.Event()
        answered = 0
        lock = threading.Lock()

        def call(i: int) -> tuple[int, str]:
            nonlocal answered
            # Texts never sent before: the facade's translation cache must not answer them.
            body = {"text": f"Misaotra betsaka tompoko {i}.", "source": "mg", "target": "fr"}
            response = httpx.post(f"{facade}/v1/translate", json=body, timeout=120)
            with lock:
                answered += 1
                if answered == KILL_AFTER:
                    done.set()
            return response.status_code, response.text

        def kill_second_host() -> None:
            done.wait(120)
            served_before_kill.extend(e["served"] for e in httpx.get(f"{facade}/ready").json()["endpoints"])
            # Outright, the host and its Triton (as a dead machine or container), but for the resource
            # trackers, which remove the shared memory they served (a dead container's /dev/shm goes too).
            kill_group(second_process.pid)

        served_before_kill: list[int] = []
        killer = threading.Thread(target=kill_second_host)
        killer.start()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(REQUESTS)))
        killer.join()

        failed = [(status, text) for status, text in results if status != 200]
        assert failed == [], f"{len(failed)} of {REQUESTS} requests failed, first: {failed[:2]}"
        assert all(count > KILL_AFTER // 4 for count in served_before_kill), served_before_kill

        ready = httpx.get(f"{facade}/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded"
        lost = next(e for e in body["endpoints"] if e["url"] == second.http_url)
        kept = next(e for e in body["endpoints"] if e["url"] == first.http_url)
        assert not lost["healthy"] and lost["last_error"]
        assert kept["healthy"] and kept["served"] > served_before_kill[0]

        metrics = httpx.get(f"{facade}/metrics").text
        assert f'milo_triton_endpoint_up{{endpoint="{second.http_url}"}} 0.0' in metrics
        assert f'milo_triton_endpoint_up{{endpoint="{first.http_url}"}} 1.0' in metrics
        # The calls the dead host dropped (in flight, or refused before it left the rotation) went to the other.
        retried = f'milo_triton_retries_total{{endpoint="{second.http_url}"}} '
        assert float(metrics.split(retried, 1)[1].split()[0]) >= 1

        # The killed host could not free its shared memory; the next host to start removes it.
        second_process.wait(timeout=30)  # reaped: a zombie still counts as a running process
        left = sorted(Path("/dev/shm").glob(f"pytrtion{second_process.pid}-*"))
        assert left, "a host killed outright leaves its segments"
        assert set(left) <= set(remove_orphaned_segments())
        assert not any(path.exists() for path in left)
