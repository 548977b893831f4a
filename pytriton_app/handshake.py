"""PyTriton's start-up handshake between a model's instances, made to wait for the first one.

Triton starts a model's instances at once, each in a Python stub running PyTriton's proxy
(``pytriton/proxy/model.py``, sent to Triton with the model). The first instance starts the
model's data store, then opens a Unix socket that hands its settings to the others; each other
instance asks it once, within one second of its own start, and fails the model's load if:

- the socket is not there yet: the first instance's stub started later, or its data store took
  longer to start (both happen on a loaded machine: a host started again under load, its other
  models already serving);
- the socket is there but not listening yet: bound, not yet accepting (connection refused).

A failed load stopped the whole Triton of the host, requests in flight waited for its exit
timeout, and the host started Triton again. Here each other instance asks again until the first
one answers, for up to ``HANDSHAKE_WAIT_S``: the proxy's own ``communication.py`` goes to Triton
with ``patient_handshake`` appended, under the name the proxy imports.
"""

from __future__ import annotations

import inspect
import pathlib

from pytriton.models.model import Model

# Longer than any stub's start seen here (seconds on two busy cores); short enough that a model
# whose first instance died still fails its load, and the host's start with it.
HANDSHAKE_WAIT_S = 60.0
PROXY_MODULE = "communication.py"
PROXY_FUNCTION = "get_config_from_handshake_server"


def patient_handshake(socket_path: pathlib.Path, timeout_s: float = HANDSHAKE_WAIT_S) -> dict[str, object]:
    """The first instance's settings, asked for until it answers or ``timeout_s`` runs out.

    Runs inside Triton's Python stub, appended to the proxy's module: it imports what it needs
    itself and reads no name of this module but `pathlib` (the proxy imports it too); its default
    is written into the appended source.
    """
    import json
    import socket
    import time

    def read_exactly(sock: socket.socket, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionResetError("the handshake server closed the connection")
            chunks += chunk
        return bytes(chunks)

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.connect(str(socket_path))
                sock.sendall(b"get_config\n")
                size = int.from_bytes(read_exactly(sock, 4), "big")
                return dict(json.loads(read_exactly(sock, size)))
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no answer on {socket_path} within {timeout_s:.0f} s") from exc
            time.sleep(0.01)


def appended_source() -> bytes:
    """What goes after the proxy's module: ``patient_handshake``, under the proxy's name for its handshake."""
    function = inspect.getsource(patient_handshake).replace("= HANDSHAKE_WAIT_S", f"= {HANDSHAKE_WAIT_S!r}")
    return f"\n\n# Appended by pytriton_app/handshake.py.\n{function}\n{PROXY_FUNCTION} = patient_handshake\n".encode()


def install() -> None:
    """Send Triton the patient proxy with every model PyTriton loads from now on (idempotent)."""
    original = Model.get_proxy_model_files
    if getattr(original, "patient_handshake", False):
        return
    appended = appended_source()  # once: every model's proxy gets the same

    def proxy_files(self: Model) -> dict[str, bytes]:
        files = dict(original(self))
        key = f"file:{self.model_version}/{PROXY_MODULE}"
        files[key] += appended
        return files

    proxy_files.patient_handshake = True  # type: ignore[attr-defined]
    Model.get_proxy_model_files = proxy_files  # type: ignore[method-assign]
