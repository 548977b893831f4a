"""Loads on one GPU take turns across processes (``milo_voice/serving/gpu_turns.py``); the lock
needs no GPU, only the device's label, so real processes contend for it here."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

from milo_voice.serving.gpu_turns import gpu_turn

# A process that holds a device's turn for a while, writing when it got it and when it let it go;
# where given a start file, it asks for the turn only once that file is there (all ask at once).
HOLDER = """
import sys, time
from pathlib import Path
from milo_voice.serving.gpu_turns import gpu_turn
kind, index, lock_dir, out, hold, *start = sys.argv[1:]
Path(out + ".ready").touch()
while start and not Path(start[0]).exists():
    time.sleep(0.01)
with gpu_turn(kind, int(index), Path(lock_dir)) as waited:
    got = time.time()
    Path(out + ".got").write_text(str(got))
    time.sleep(float(hold))
    Path(out).write_text(f"{got} {time.time()} {waited}")
"""
HOLD_S = 0.8


def _holders(
    tmp_path: Path, devices: list[tuple[str, int]], hold_s: float = HOLD_S
) -> list[tuple[float, float, float]]:
    locks, start = str(tmp_path / "locks"), tmp_path / "start"
    processes = []
    try:
        for n, (kind, index) in enumerate(devices):
            out = str(tmp_path / f"{n}.txt")
            command = [sys.executable, "-c", HOLDER, kind, str(index), locks, out, str(hold_s), str(start)]
            processes.append(subprocess.Popen(command))
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"{n}.txt.ready").exists() for n in range(len(devices))):
            assert time.monotonic() < deadline, "the holders did not start"
            time.sleep(0.01)
        start.touch()  # every holder asks for its turn now
        for process in processes:
            assert process.wait(timeout=30) == 0
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
    spans = [tuple(float(x) for x in (tmp_path / f"{n}.txt").read_text().split()) for n in range(len(devices))]
    return sorted(spans)  # type: ignore[arg-type]


def test_processes_loading_on_one_gpu_take_turns(tmp_path: Path) -> None:
    spans = _holders(tmp_path, [("cuda", 0)] * 3)
    for (_, let_go, _), (got_next, _, _) in itertools.pairwise(spans):
        assert got_next >= let_go, spans  # no two held the turn at once
    assert max(waited for _, _, waited in spans) >= HOLD_S, spans  # the last waited for the others


def test_other_gpus_and_the_cpu_do_not_wait(tmp_path: Path) -> None:
    spans = _holders(tmp_path, [("cuda", 0), ("cuda", 1), ("cpu", 0), ("cpu", 0)], hold_s=2.0)
    assert max(got for got, _, _ in spans) < min(let_go for _, let_go, _ in spans), spans  # all at once
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["cuda0.lock", "cuda1.lock"]


def test_a_process_killed_in_its_turn_lets_the_next_one_go(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "cuda", "0", str(tmp_path), str(tmp_path / "held.txt"), "60"]
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "held.txt.got").exists():  # it holds the turn now
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        with gpu_turn("cuda", 0, tmp_path) as waited:
            assert waited < 5
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait(timeout=10)
