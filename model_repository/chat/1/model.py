# Generated from model_repository/registry.toml by `milo-voice models triton-configs`; do not edit.
"""Triton Python backend entry point: the Milo Voice adapter that the PyTriton host shares."""

from milo_voice.roles.llama_libraries import load_first

load_first()  # before any other native extension: see milo_voice/roles/llama_libraries.py

from milo_voice.serving.python_backend import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
