"""A load that times a GPU has it to itself; other loads on it go side by side, across processes
(``milo_voice/serving/gpu_turns.py``). The lock needs no GPU, only the device's label, so real
processes contend for it here."""

from __future__ import annotations

import dataclasses
import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

from milo_voice.registry import load_registry
from milo_voice.serving.gpu_turns import gpu_turn
from milo_voice.serving.instances import Device, Loaded, loads_alone

# A process that holds a device for a while, alone or shared, writing when it got it and when it
# let it go; where given a start file, it asks only once that file is there (all ask at once).
HOLDER = """
import sys, time
from pathlib import Path
from milo_voice.serving.gpu_turns import gpu_turn
kind, index, how, lock_dir, out, hold, *start = sys.argv[1:]
Path(out + ".ready").touch()
while start and not Path(start[0]).exists():
    time.sleep(0.01)
with gpu_turn(kind, int(index), how == "alone", Path(lock_dir)) as waited:
    got = time.time()
    Path(out + ".got").write_text(str(got))
    time.sleep(float(hold))
    Path(out).write_text(f"{got} {time.time()} {waited}")
"""
HOLD_S = 0.8
Span = tuple[float, float, float]  # got it, let it go, seconds waited


def _holders(tmp_path: Path, loads: list[tuple[str, int, str]], hold_s: float = HOLD_S) -> list[Span]:
    """Each load's span, in the order given; the loads are (device kind, index, "alone" or "shared")."""
    locks, start = str(tmp_path / "locks"), tmp_path / "start"
    processes = []
    try:
        for n, (kind, index, how) in enumerate(loads):
            out = str(tmp_path / f"{n}.txt")
            command = [sys.executable, "-c", HOLDER, kind, str(index), how, locks, out, str(hold_s), str(start)]
            processes.append(subprocess.Popen(command))
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"{n}.txt.ready").exists() for n in range(len(loads))):
            assert time.monotonic() < deadline, "the holders did not start"
            time.sleep(0.01)
        start.touch()  # every holder asks now
        for process in processes:
            assert process.wait(timeout=30) == 0
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
    return [tuple(float(x) for x in (tmp_path / f"{n}.txt").read_text().split()) for n in range(len(loads))]  # type: ignore[misc]


def _apart(first: Span, second: Span) -> bool:
    return first[1] <= second[0] or second[1] <= first[0]


def test_loads_that_time_one_gpu_take_turns(tmp_path: Path) -> None:
    spans = sorted(_holders(tmp_path, [("cuda", 0, "alone")] * 3))
    for (_, let_go, _), (got_next, _, _) in itertools.pairwise(spans):
        assert got_next >= let_go, spans  # no two held it at once
    assert max(waited for _, _, waited in spans) >= HOLD_S, spans  # the last waited for the others


def test_other_loads_share_the_gpu(tmp_path: Path) -> None:
    spans = _holders(tmp_path, [("cuda", 0, "shared")] * 3, hold_s=2.0)
    assert max(got for got, _, _ in spans) < min(let_go for _, let_go, _ in spans), spans  # all at once


def test_a_load_that_times_the_gpu_has_it_to_itself(tmp_path: Path) -> None:
    alone, *shared = _holders(tmp_path, [("cuda", 0, "alone")] + [("cuda", 0, "shared")] * 3)
    assert all(_apart(alone, other) for other in shared), (alone, shared)
    # The others went side by side, whether before or after it.
    before = [span for span in shared if span[1] <= alone[0]]
    after = [span for span in shared if span[0] >= alone[1]]
    for group in (before, after):
        if len(group) > 1:
            assert max(got for got, _, _ in group) < min(let_go for _, let_go, _ in group), group


def test_other_gpus_and_the_cpu_do_not_wait(tmp_path: Path) -> None:
    loads = [("cuda", 0, "alone"), ("cuda", 1, "alone"), ("cpu", 0, "alone"), ("cpu", 0, "shared")]
    spans = _holders(tmp_path, loads, hold_s=2.0)
    assert max(got for got, _, _ in spans) < min(let_go for _, let_go, _ in spans), spans  # all at once
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["cuda0.lock", "cuda1.lock"]


def test_a_process_killed_while_it_loads_lets_the_next_one_go(tmp_path: Path) -> None:
    for how, then_alone in (("alone", False), ("shared", True)):
        out = tmp_path / f"held-{how}.txt"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, "cuda", "0", how, str(tmp_path), str(out), "60"])
        try:
            deadline = time.monotonic() + 30
            while not Path(f"{out}.got").exists():  # it holds the GPU now
                assert time.monotonic() < deadline and holder.poll() is None
                time.sleep(0.05)
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            started = time.monotonic()
            with gpu_turn("cuda", 0, then_alone, tmp_path) as waited:
                assert waited < 5
            assert time.monotonic() - started < 5
        finally:
            holder.kill()
            holder.wait(timeout=10)


def test_only_translation_choosing_its_kernels_on_a_gpu_loads_alone() -> None:
    models = load_registry().models
    translate, gpu = models["translate"], Device("cuda", 0)
    assert loads_alone(translate, gpu)  # the registry leaves both ways to "auto"
    assert not loads_alone(translate, Device("cpu"))
    named = {**translate.params, "gpu_step_attention": "products", "gpu_step_top": "one_pass"}
    assert not loads_alone(dataclasses.replace(translate, params=named), gpu)
    one_named = {**translate.params, "gpu_step_attention": "products"}
    assert loads_alone(dataclasses.replace(translate, params=one_named), gpu)
    ctranslate2_only = {**translate.params, "engine": "ctranslate2"}
    assert not loads_alone(dataclasses.replace(translate, params=ctranslate2_only), gpu)
    assert not any(loads_alone(models[name], gpu) for name in ("stt", "tts", "chat"))


def test_a_load_says_what_it_took_and_whether_it_had_the_gpu_to_itself() -> None:
    # The ready line's end on the stock server (the GPU benchmark reads it, ``ready-*.txt``).
    assert str(Loaded(object(), 12.34, 3.21, True)) == "loaded in 12.3 s (3.2 s of it waiting for the GPU, alone)"
    assert str(Loaded(object(), 7.0, 0.0, False)) == "loaded in 7.0 s (0.0 s of it waiting for the GPU)"
