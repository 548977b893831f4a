"""NVIDIA's Multi-Process Service (MPS) for the stock server's model processes.

The stock server runs each model's Python stub as a process of its own. Without MPS, processes
that share a GPU take turns on it in time slices: a small model's short steps (translation's beam
search, a token of chat) wait behind another process's work even when the GPU has room for both.
Under MPS their kernels run side by side. The daemon (``nvidia-cuda-mps-control``, shipped with
the driver) is started for the server's lifetime, with its pipe and log folders in a folder of
ours, and told to quit after: processes started while it runs find it through
``CUDA_MPS_PIPE_DIRECTORY``.

PyTriton's host computes every model in one process, where MPS changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"


class MpsUnavailable(RuntimeError):
    """The machine has no MPS control daemon (no NVIDIA driver utilities on PATH)."""


@contextlib.contextmanager
def cuda_mps(folder: Path) -> Iterator[None]:
    """The MPS daemon, running for the block, its folders under ``folder``; processes started in
    the block (their environment taken from ``os.environ``) use it."""
    control = shutil.which(CONTROL)
    if control is None:
        raise MpsUnavailable(f"{CONTROL} is not on this machine (it comes with NVIDIA's driver utilities)")
    folders = {"CUDA_MPS_PIPE_DIRECTORY": folder / "mps" / "pipe", "CUDA_MPS_LOG_DIRECTORY": folder / "mps" / "log"}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    settings = {name: str(path) for name, path in folders.items()}
    before = {name: os.environ.get(name) for name in settings}
    subprocess.run([control, "-d"], env={**os.environ, **settings}, check=True, timeout=60)
    os.environ.update(settings)
    try:
        yield
    finally:
        subprocess.run([control], input=b"quit\n", env={**os.environ, **settings}, check=False, timeout=60)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
