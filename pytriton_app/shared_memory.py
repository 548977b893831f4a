"""PyTriton's shared memory segments that a killed host left behind.

PyTriton names its segments ``/dev/shm/pytrtion<pid>-...`` after the host process and frees
them when the host stops (SIGTERM and Ctrl+C take that way out). A host killed outright
(SIGKILL, the OOM killer) cannot: its segments stay, megabytes each, until someone removes
them. Every host does that when it starts, for the segments whose process is gone.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

SHM = Path("/dev/shm")
SEGMENT = re.compile(r"pytrtion(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphaned_segments(root: Path = SHM) -> list[Path]:
    """Remove the segments of PyTriton hosts that no longer run; return what was removed."""
    removed = []
    for path in sorted(root.glob("pytrtion*")):
        match = SEGMENT.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another host removed it first
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d shared memory segments of PyTriton hosts that were killed", len(removed))
    return removed
