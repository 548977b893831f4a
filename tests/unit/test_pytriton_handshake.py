"""The proxy the host sends Triton waits for a model's first instance (``pytriton_app/handshake.py``).

Each test imports the proxy's ``communication.py`` as Triton's stub does, from the files PyTriton
sends with a model, and lets the first instance's handshake server start late.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from pytriton.models.model import Model

from pytriton_app import handshake

SETTINGS = {"data_socket": "/tmp/none", "authkey": "a2V5"}
LATE_S = 1.5  # the proxy's own handshake gives up after 1 s


def proxy_module(folder: Path, patient: bool) -> ModuleType:
    files = Model.get_proxy_model_files(
        SimpleNamespace(model_version=1, SCRIPT_FILES_TO_COPY=Model.SCRIPT_FILES_TO_COPY)
    )  # type: ignore[arg-type]
    path = folder / ("patient.py" if patient else "original.py")
    path.write_bytes(files["file:1/communication.py"])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def installed() -> Iterator[None]:
    original = Model.get_proxy_model_files
    handshake.install()
    installed = Model.get_proxy_model_files
    handshake.install()  # a second install wraps nothing twice
    assert Model.get_proxy_model_files is installed
    yield
    Model.get_proxy_model_files = original  # type: ignore[method-assign]


def serve_late(module: ModuleType, path: Path, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        time.sleep(LATE_S)
        server = module.HandshakeServer(path, SETTINGS)
        server.start()
        stop.wait()
        server.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_late_first_instance_fails_the_proxy_as_pytriton_ships_it(tmp_path: Path) -> None:
    module = proxy_module(tmp_path, patient=False)
    stop = threading.Event()
    thread = serve_late(module, tmp_path / "chat-config.sock", stop)
    try:
        with pytest.raises(TimeoutError):
            module.get_config_from_handshake_server(tmp_path / "chat-config.sock")
    finally:
        stop.set()
        thread.join()


def test_the_patient_proxy_waits_for_a_late_first_instance(installed: None, tmp_path: Path) -> None:
    module = proxy_module(tmp_path, patient=True)
    assert module.get_config_from_handshake_server.__name__ == "patient_handshake"
    assert module.get_config_from_handshake_server.__defaults__ == (handshake.HANDSHAKE_WAIT_S,)
    stop = threading.Event()
    thread = serve_late(module, tmp_path / "chat-config.sock", stop)
    try:
        started = time.monotonic()
        assert module.get_config_from_handshake_server(tmp_path / "chat-config.sock") == SETTINGS
        assert time.monotonic() - started >= LATE_S - 0.1
    finally:
        stop.set()
        thread.join()


def test_the_patient_proxy_asks_again_while_the_socket_is_bound_but_not_listening(
    installed: None, tmp_path: Path
) -> None:
    module = proxy_module(tmp_path, patient=True)
    path = tmp_path / "chat-config.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))  # there, refusing connections, as between the server's bind and listen
    stop = threading.Event()

    def listen_late() -> None:
        time.sleep(LATE_S)
        bound.listen()
        connection, _ = bound.accept()
        with connection:
            assert connection.recv(64) == b"get_config\n"
            payload = b'{"data_socket": "/tmp/none", "authkey": "a2V5"}'
            connection.sendall(len(payload).to_bytes(4, "big") + payload[:10])
            time.sleep(0.2)  # the answer in two pieces: the proxy reads it whole
            connection.sendall(payload[10:])
        stop.wait()

    thread = threading.Thread(target=listen_late)
    thread.start()
    try:
        assert module.get_config_from_handshake_server(path) == SETTINGS
    finally:
        stop.set()
        thread.join()
        bound.close()


def test_the_patient_proxy_gives_up_when_no_first_instance_comes(installed: None, tmp_path: Path) -> None:
    module = proxy_module(tmp_path, patient=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1 s"):
        module.get_config_from_handshake_server(tmp_path / "chat-config.sock", timeout_s=1.0)
    assert 1.0 <= time.monotonic() - started < 3.0
