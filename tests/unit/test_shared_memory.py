"""A killed model host's shared memory segments are removed by the next host that starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from milo_voice.serving.shared_memory import remove_orphaned_segments


def test_only_the_segments_of_hosts_that_are_gone_are_removed(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(ended.stdout)
    names = [
        f"pytrtion{gone}-a1-b2", f"pytrtion{gone}-c3", f"milo_{gone}_chat_0_0",
        f"pytrtion{os.getpid()}-d4", f"milo_{os.getpid()}_tts_0_0", "psm_1234", "pytrtionX-e5", "milo_x_y",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"\0" * 16)
    removed = remove_orphaned_segments(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])
