"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The longest a model host may take to stop once asked: Triton unloads a model's instances one
# after another (``pytriton_app.server.exit_timeout_s``), and a GPU host has 32 chat instances.
HOST_STOP_S = 150.0


def stop_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: in the child, ask the kernel for SIGTERM when the
    parent dies, even by SIGKILL (Linux; elsewhere nothing). The child then stops the way it
    stops on SIGTERM, freeing what it holds."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_members(group: int) -> list[int]:
    """The processes of process group ``group`` (Linux ``/proc``)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after it.
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group:
                members.append(int(stat.parent.name))
    return members


def _is_resource_tracker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def kill_group(group: int) -> None:
    """SIGKILL every process of ``group`` but multiprocessing's resource trackers.

    A tracker ignores SIGINT and SIGTERM and, once the process it serves is gone, removes the
    shared memory that process left (PyTriton's ``psm_*`` segments); killed with the rest, it
    could not, and the segments would stay.
    """
    for pid in _group_members(group):
        if not _is_resource_tracker(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
