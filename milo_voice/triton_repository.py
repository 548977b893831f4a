"""The stock Triton repository, generated from the registry (one source of truth).

Every served model gets ``model_repository/<model>/config.pbtxt`` and ``1/model.py``, the
Python backend's entry point (``milo_voice.serving.python_backend``). The PyTriton host
builds the same settings in memory; a stock Triton server reads them from the files. Both
come from ``registry.toml`` (batching, queues, priorities, instances) and ``contract.tensors``
(inputs and outputs), so the two servers cannot drift apart. ``milo-voice models
triton-configs`` writes the files; ``--check`` fails when a committed file differs from
what the registry says (the test suite runs that check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contract import tensors
from milo_voice.registry import ModelSpec, Registry

HEADER = "# Generated from model_repository/registry.toml by `milo-voice models triton-configs`; do not edit.\n"
DATA_TYPES = {np.bytes_: "TYPE_STRING", np.float32: "TYPE_FP32", np.int32: "TYPE_INT32", np.int64: "TYPE_INT64"}
# Registry instance kinds to Triton's: "auto" lets Triton put instances on GPUs when it has any.
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _entry_point(first: str = "") -> str:
    """A model's ``model.py``; ``first``: what runs before the adapter is imported."""
    late = "  # noqa: E402" if first else ""
    return f"""{HEADER.rstrip()}
\"\"\"Triton Python backend entry point: the Milo Voice adapter that the PyTriton host shares.\"\"\"

{first}from milo_voice.serving.python_backend import TritonPythonModel{late}

__all__ = ["TritonPythonModel"]
"""


MODEL_PY = _entry_point()
# A chat model's process loads llama.cpp before any other native extension (see llama_libraries).
CHAT_MODEL_PY = _entry_point(
    "from milo_voice.roles.llama_libraries import load_first\n\n"
    "load_first()  # before any other native extension: see milo_voice/roles/llama_libraries.py\n\n"
)


def served_models(registry: Registry) -> list[tuple[ModelSpec, tensors.ModelIO]]:
    """Every Triton model of the registry: each role's models (a stream shares its role's spec).

    Models that only work where a role's models share one process (``chat_cancel``) are left
    out: the Python backend runs each model in its own.
    """
    return [
        (spec, io)
        for spec in registry.models.values()
        for io in tensors.ROLE_MODELS[spec.role]
        if not io.shared_process_only
    ]


def _tensors(kind: str, specs: tuple[tensors.TensorSpec, ...]) -> str:
    blocks = []
    for spec in specs:
        optional = "\n    optional: true" if spec.optional else ""
        dims = ", ".join(str(d) for d in spec.shape)
        blocks.append(
            f'  {{\n    name: "{spec.name}"\n    data_type: {DATA_TYPES[spec.dtype]}\n'
            f"    dims: [ {dims} ]{optional}\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def render_config(spec: ModelSpec, io: tensors.ModelIO, instance_kind: str | None = None) -> str:
    """The ``config.pbtxt`` text of ``io`` served with ``spec``'s settings.

    ``instance_kind`` ("gpu", "cpu", "auto") replaces the registry's, for an image that
    knows its hardware: the GPU model-server image pins every instance to ``KIND_GPU``.
    """
    # A GPU image's repository takes the registry's batching and count for GPU hosts.
    b = spec.batching_on(1) if instance_kind == "gpu" else spec.batching
    lines = [HEADER, f'name: "{io.name}"\n', 'backend: "python"\n']
    if io.streaming:
        # Streams answer one request at a time per instance, in several responses.
        lines += ["max_batch_size: 0\n", "model_transaction_policy {\n  decoupled: true\n}\n"]
    else:
        lines.append(f"max_batch_size: {b.max_batch_size}\n")
    lines += [_tensors("input", io.inputs), _tensors("output", io.outputs)]
    kind = INSTANCE_KINDS[instance_kind or spec.instances.kind]
    count = spec.instances.count_on(1) if instance_kind == "gpu" else spec.instances.count
    lines.append(f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n")
    if not io.streaming:
        preferred = ", ".join(str(n) for n in b.preferred_batch_sizes)
        lines.append(
            "dynamic_batching {\n"
            + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
            + f"  max_queue_delay_microseconds: {b.max_queue_delay_us}\n"
            + (f"  priority_levels: {b.priority_levels}\n" if b.priority_levels else "")
            + (f"  default_priority_level: {b.default_priority_level}\n" if b.priority_levels else "")
            + "  default_queue_policy {\n"
            + "    timeout_action: REJECT\n"
            + f"    default_timeout_microseconds: {b.queue_timeout_us}\n"
            + "    allow_timeout_override: true\n"
            + f"    max_queue_size: {b.max_queue_size}\n"
            + "  }\n}\n"
        )
    # The Python backend adapter reads which registry model (its role and weights) and
    # which of the role's models (its tensors) it serves.
    for key, value in (("milo_model", spec.name), ("milo_io", io.name)):
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n')
    return "".join(lines)


def expected_files(registry: Registry, root: Path, instance_kind: str | None = None) -> dict[Path, str]:
    files = {}
    for spec, io in served_models(registry):
        files[root / io.name / "config.pbtxt"] = render_config(spec, io, instance_kind)
        files[root / io.name / "1" / "model.py"] = CHAT_MODEL_PY if spec.role == "chat" else MODEL_PY
    return files


def write_configs(registry: Registry, root: Path, instance_kind: str | None = None) -> list[Path]:
    written = []
    for path, text in expected_files(registry, root, instance_kind).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def stale_configs(registry: Registry, root: Path) -> list[Path]:
    """Committed files that differ from (or lack) what the registry generates."""
    return [
        path for path, text in expected_files(registry, root).items() if not path.exists() or path.read_text() != text
    ]
