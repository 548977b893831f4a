"""``python -m pytriton_app``: serve every model of the registry on Triton's standard ports."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from milo_voice.roles.llama_libraries import load_first

load_first()  # before PyTriton's native extensions: see milo_voice/roles/llama_libraries.py

from pytriton_app.server import Ports, serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (a supervisor, a test) takes the same way out as Ctrl+C: PyTriton stops Triton and
    # frees its shared memory, and the chat engines stop, instead of the process just ending.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        serve(Ports(args.http_port, args.grpc_port, args.metrics_port))


if __name__ == "__main__":
    main()
