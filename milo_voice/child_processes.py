"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: in the child, ask the kernel for SIGTERM when the
    parent dies, even by SIGKILL (Linux; elsewhere nothing). The child then stops the way it
    stops on SIGTERM, freeing what it holds."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
