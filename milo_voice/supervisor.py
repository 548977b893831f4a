"""``milo-voice serve``'s processes: started, watched, and started again when they die.

The model host (the PyTriton host or the stock tritonserver's launcher) and the facade run as
children of ``serve``. When one dies on its own:

- everything it started goes at once (its process group is killed: a Triton server whose
  host is gone would keep calls in flight waiting on a dead process), but for the resource
  trackers, which remove the shared memory their processes left; the segments named after
  dead hosts are removed too;
- it is started again after a backoff (1 s, doubling up to 30 s; back to 1 s once it has
  stayed up for a minute), so a host that cannot start does not spin;
- the other process stays up: the facade answers 503 ``model_unavailable`` with Retry-After
  and its ``/ready`` turns 503 while the host is away, and serves again once it is back.

The state of each process (``starting``, ``running``, ``restarting``, how many restarts,
the last exit code) is written as JSON to ``state_file`` after every change; the facade
shows it under ``/ready`` and as metrics (``MILO_SUPERVISOR_STATE`` points it there).
Children never outlive ``serve``: each gets the parent-death signal and its own group.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from milo_voice.child_processes import HOST_STOP_S, kill_group, stop_with_parent
from milo_voice.serving.shared_memory import remove_orphaned_segments

log = logging.getLogger("milo_voice.serve")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0


def answers_200(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return check


def accepts_connections(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return check


@dataclass
class Child:
    """One supervised process: how to start it and how to tell that it is ready."""

    name: str
    command: Sequence[str]
    env: dict[str, str]
    ready_checks: Sequence[Callable[[], bool]] = ()
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    pending_checks: list[Callable[[], bool]] = field(default_factory=list)

    def view(self) -> dict[str, object]:
        return {"state": self.state, "restarts": self.restarts, "last_exit": self.last_exit,
                "pid": self.process.pid if self.process else None}  # fmt: skip


class Supervisor:
    def __init__(self, state_file: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: list[Child] = []
        self.state_file = state_file
        self._clock = clock

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            list(child.command),
            env=child.env,
            preexec_fn=stop_with_parent,  # nothing outlives serve, even serve killed outright
            process_group=0,  # its own group: when it dies, what it started can go with it
        )
        child.started_at = self._clock()
        child.pending_checks = list(child.ready_checks)
        child.state = "starting" if child.pending_checks else "running"
        self._write_state()

    def wait_ready(self, child: Child, timeout_s: float) -> bool:
        """Block until ``child`` is ready (the first start); False if it died or timed out."""
        deadline = self._clock() + timeout_s
        while self._clock() < deadline:
            if child.process is None or child.process.poll() is not None:
                return False
            self._advance_checks(child)
            if child.state == "running":
                return True
            time.sleep(0.5)
        return False

    def tick(self) -> None:
        """One round: notice deaths, restart what is due, follow readiness."""
        now = self._clock()
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is not None:
                self._died(child, process)
            elif child.state == "restarting" and now >= child.restart_at:
                log.warning("starting %s again (restart %d)", child.name, child.restarts)
                self.start(child)
            elif child.state == "starting":
                self._advance_checks(child)
            elif child.state == "running" and now - child.started_at >= STABLE_AFTER_S:
                child.backoff_s = FIRST_BACKOFF_S

    def _advance_checks(self, child: Child) -> None:
        while child.pending_checks and child.pending_checks[0]():
            child.pending_checks.pop(0)
        if not child.pending_checks and child.state == "starting":
            child.state = "running"
            log.info("%s is ready", child.name)
            self._write_state()

    def _died(self, child: Child, process: subprocess.Popen[bytes]) -> None:
        child.last_exit = process.returncode
        child.process = None
        # What it started (Triton, its Python stubs) goes now: calls in flight fail at once.
        kill_group(process.pid)
        remove_orphaned_segments()
        child.restarts += 1
        child.state = "restarting"
        child.restart_at = self._clock() + child.backoff_s
        log.error("%s exited with %s; starting it again in %.0f s", child.name, process.returncode, child.backoff_s)
        child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
        self._write_state()

    def stop_all(self, timeout_s: float = HOST_STOP_S) -> None:
        """SIGTERM for each child (each stops the Ctrl-C way: the host stops Triton and frees its
        memory), then SIGKILL for what is left. Not SIGINT: a shell starting serve in the
        background has it ignored, and children inherit that."""
        running = [c for c in reversed(self.children) if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.terminate()
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            kill_group(child.process.pid)  # anything of its group still there
            child.state = "stopped"
        remove_orphaned_segments()  # those of a child that had to be killed
        self._write_state()

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        state = {"updated": time.time(), "processes": {c.name: c.view() for c in self.children}}
        scratch = self.state_file.with_suffix(".tmp")
        scratch.write_text(json.dumps(state))
        scratch.replace(self.state_file)  # readers never see half a file
