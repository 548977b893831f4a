# Generated from model_repository/registry.toml by `milo-voice models triton-configs`; do not edit.
"""Triton Python backend entry point: the Milo Voice adapter that the PyTriton host shares."""

from milo_voice.serving.python_backend import TritonPythonModel

__all__ = ["TritonPythonModel"]
