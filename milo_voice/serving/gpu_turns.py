"""Loads that time work on a GPU have that GPU to themselves; other loads share it.

The stock server loads its models side by side, each instance in a process of its own, and a few
loads time the GPU to choose how they run: translation's search times its step's kernels and
keeps the faster (``milo_voice/roles/nllb/tuning.py``). Timed beside other models' warm-ups, the
slower way was kept in two loads of four (docs/benchmarks.md, section 4, "Two STT instances
beside every model; translation's kernels chosen beside other loads"). Loading every instance
alone cured that but made a stack's start much longer ("every goal in one lease, through two
facade processes"), though the other loads only need the GPU's memory and their own
processes: their CUDA graphs, weights and first calls are the same beside another load.

So each GPU has a lock file taken by every process of the host that loads on it
(``fcntl.flock``: the kernel lets it go with the process, however that ends): a load that times
the GPU takes it alone, and waits until no other load is under way there; any other load takes
it shared, beside others. A load that times waits past the others already loading, and those
asking while it waits may go first: at a start, the loads are few and it waits at most until
they end. Loads on the CPU, and on other GPUs, never wait. A stock server's instance waiting
here waits in its ``initialize``, which Triton lets take longer than the Python backend's stub
timeout (30 s): a model whose ``initialize`` slept 45 s loaded.

The lock files stay in ``LOCK_DIR`` (empty files, one per GPU index, as under /run/lock): a file
removed while another process waits on it would let a third take a turn of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR = Path(tempfile.gettempdir()) / "milo-voice-gpu-loads"


@contextlib.contextmanager
def gpu_turn(device_kind: str, device_index: int, alone: bool, lock_dir: Path = LOCK_DIR) -> Iterator[float]:
    """Hold GPU ``device_index`` for a load: ``alone`` (no other load there meanwhile) or beside
    other loads that do not time it (nothing to hold off a GPU); yields the seconds waited."""
    if device_kind != "cuda":
        yield 0.0
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if alone else fcntl.LOCK_SH
    with (lock_dir / f"cuda{device_index}.lock").open("a") as handle:
        started = time.perf_counter()
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting_for = "the loads under way there" if alone else "a load that times it"
            log.info("waiting for cuda:%d: %s", device_index, waiting_for)
            fcntl.flock(handle, mode)
        try:
            yield time.perf_counter() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
