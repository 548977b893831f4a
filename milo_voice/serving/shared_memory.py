"""Shared memory segments that a killed model host left behind.

PyTriton names its segments ``/dev/shm/pytrtion<pid>-...`` after the host process; the stock
server's Python backend is given the prefix ``milo_<pid>_`` after its launcher's process
(``serving/tritonserver.py``). Both free them when they stop (SIGTERM and Ctrl+C take that way
out). A host killed outright (SIGKILL, the OOM killer) cannot: its segments stay, megabytes
each, until someone removes them. Every host does that when it starts, and ``milo-voice serve``
after a host it supervises died, for the segments whose process is gone.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")
SEGMENT = re.compile(r"(?:pytrtion(\d+)-|milo_(\d+)_)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphaned_segments(root: Path = SHM) -> list[Path]:
    """Remove the segments of model hosts that no longer run; return what was removed."""
    removed = []
    for path in sorted([*root.glob("pytrtion*"), *root.glob("milo_*")]):
        match = SEGMENT.match(path.name)
        if match is None or _alive(int(match.group(1) or match.group(2))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another host removed it first
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d shared memory segments of model hosts that were killed", len(removed))
    return removed
