"""Instances load on a GPU one at a time, whichever process loads them.

The stock server loads its models side by side, each instance in a process of its own, and a
load ends with work on the GPU that is timed or recorded: translation's engine times its step's
kernels and keeps the faster (``milo_voice/roles/nllb/tuning.py``), STT's decoder and the search
capture CUDA graphs, and every instance answers a first call (``warmup.py``). Timed beside another
model's warm-up, a way read 1.5 to 5 times its time on a quiet GPU, and the slower attention was
kept in two of four loads (docs/benchmarks.md, section 4, "Two STT instances beside every model;
translation's kernels chosen beside other loads"). So a load on a GPU holds that GPU's turn: a
lock on a file per device, which every process of the host takes (``fcntl.flock``: the kernel
lets it go with the process, however that ends). Loads on the CPU, and on other GPUs, go on
side by side. A stock server's instance waiting for its turn waits in its ``initialize``, which
Triton lets take longer than the Python backend's stub timeout (30 s): a model whose
``initialize`` slept 45 s loaded.

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
def gpu_turn(device_kind: str, device_index: int, lock_dir: Path = LOCK_DIR) -> Iterator[float]:
    """Hold GPU ``device_index``'s turn (nothing to hold off a GPU); yields the seconds waited."""
    if device_kind != "cuda":
        yield 0.0
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"cuda{device_index}.lock").open("a") as handle:
        started = time.perf_counter()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for cuda:%d, where another instance is loading", device_index)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
