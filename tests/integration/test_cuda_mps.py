"""CUDA MPS around the stock server: the daemon runs for the server's lifetime and the server's
processes are pointed at it. The machine has no GPU and no driver utilities, so a stand-in
``nvidia-cuda-mps-control`` records how it is called; the server is the real tritonserver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from milo_voice.serving.cuda_mps import MpsUnavailable, cuda_mps
from tests.conftest import REPO, free_port


def stand_in_control(folder: Path) -> Path:
    """A ``nvidia-cuda-mps-control`` that appends its arguments, its input and its pipe folder to ``calls``."""
    control = folder / "bin" / "nvidia-cuda-mps-control"
    control.parent.mkdir(parents=True)
    control.write_text(f'#!/bin/sh\necho "$* $(cat 2>/dev/null) pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {folder / "calls"}\n')
    control.chmod(0o755)
    return control


def test_mps_is_refused_clearly_where_the_machine_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control on it
    with pytest.raises(MpsUnavailable, match="nvidia-cuda-mps-control is not on this machine"), cuda_mps(tmp_path):
        pass
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_the_daemon_runs_for_the_block_and_quits_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    control = stand_in_control(tmp_path)
    monkeypatch.setenv("PATH", f"{control.parent}:{os.environ['PATH']}")
    with cuda_mps(tmp_path / "work"):
        assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "work" / "mps" / "pipe")
    started, stopped = (tmp_path / "calls").read_text().splitlines()
    assert started.startswith("-d") and started.endswith(f"pipe={tmp_path / 'work' / 'mps' / 'pipe'}")
    assert "quit" in stopped
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_the_stock_server_runs_under_mps_when_asked(tmp_path: Path) -> None:
    control = stand_in_control(tmp_path)
    repository, workdir = tmp_path / "repository", tmp_path / "work"
    repository.mkdir()
    http = free_port()
    env = {**os.environ, "PATH": f"{control.parent}:{os.environ['PATH']}", "MILO_CUDA_MPS": "true",
           "MILO_PROFILE": "embedded"}  # fmt: skip
    command = [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(workdir),
               "--model-repository", str(repository), "--http-port", str(http),
               "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]  # fmt: skip
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with_server = launcher.poll() is None and _children(launcher.pid)
            if with_server and httpx.get(f"http://127.0.0.1:{http}/v2/health/live", timeout=2).status_code == 200:
                break
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            time.sleep(0.5)
        (server,) = _children(launcher.pid)
        environment = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert f"CUDA_MPS_PIPE_DIRECTORY={workdir / 'mps' / 'pipe'}".encode() in environment
        assert (tmp_path / "calls").read_text().splitlines()[0].startswith("-d")  # before the server
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and "quit" in calls[1]


def test_the_stock_server_asked_for_mps_without_it_exits_with_the_reason(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MILO_CUDA_MPS": "true", "MILO_PROFILE": "embedded"}
    done = subprocess.run(
        [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "nvidia-cuda-mps-control is not on this machine" in done.stderr, done.stderr[-2000:]
