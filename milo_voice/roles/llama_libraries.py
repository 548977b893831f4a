"""llama.cpp's shared libraries, loaded before any other native extension of the process.

On a CUDA host (H200, llama.cpp built with CUDA 13), loading a model crashed the process
(SIGSEGV in ``llama_model_load_from_file``) whenever another native extension had been loaded
first: any one of grpcio, pyzmq, gevent, python-rapidjson, aiohttp, torch, PyAV or CTranslate2.
With llama.cpp's libraries loaded first, the same process loads and serves the model. A process
that may serve chat (the PyTriton host, the stock server's chat models) calls ``load_first``
before it imports anything else.
"""

from __future__ import annotations

import contextlib


def load_first() -> bool:
    """Load llama.cpp's libraries now (llama-cpp-python loads them when imported); False without it."""
    with contextlib.suppress(ImportError):
        import llama_cpp  # noqa: F401

        return True
    return False
