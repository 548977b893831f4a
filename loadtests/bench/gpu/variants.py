"""The registry variants the GPU benchmark serves: the committed registry, with the benchmark's fixed
generation lengths, then the variant's overlays, written as TOML.

A variant is overlays joined by "+" (``stt-text+stt-x2+stt-q1``), each a partial registry in
``overlays/<name>.toml`` applied in order: a model's keys replace the registry's, except its
``params``, which are merged key by key. Besides the files:

- ``configured``: nothing changed (the committed registry);
- ``tuned``: the batch sizes and instance counts that ``phase tune`` picked;
- a model's name (``chat``): that model alone;
- ``NAMED`` variants, shorthands for the overlays that earlier runs measured together.

The benchmark runs on a GPU host, where a model's ``gpu_batching`` replaces its batching: overlays
that change batching change ``gpu_batching``.

Seeded weights stop at random places, so every variant fixes the generation lengths: STT decodes
``STT_TOKENS`` per window (the reference's workload), translation ``TRANSLATE_TOKENS``, chat
``max_tokens``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from loadtests.bench import fixed_lengths as fixed_lengths_roles
from loadtests.bench.gpu.common import REGISTRY, STT_TOKENS, TRANSLATE_TOKENS

OVERLAYS = Path(__file__).parent / "overlays"
# What the GPU runs found for the audit table: STT text only, 2 instances of batch 8, 1 ms queue
# delay (features and encoder in torch on the GPU); translation computed in float16 (beam 2 kept).
NAMED = {"audit": "stt-text+stt-x2+stt-q1+translate-fp16"}
Models = dict[str, dict[str, Any]]


def overlay_names(variant: str) -> list[str]:
    return NAMED.get(variant, variant).split("+")


def bench_models(tuned: Models | None = None, variant: str = "configured") -> Models:
    """The committed registry with fixed generation lengths, then ``variant``'s overlays."""
    models: Models = tomllib.loads(REGISTRY.read_text())["models"]
    apply(models, fixed_lengths())
    for name in overlay_names(variant):
        path = OVERLAYS / f"{name}.toml"
        if name == "configured":
            continue
        if name == "tuned":
            apply(models, tuned_overlay(tuned or {}))
        elif path.exists():
            apply(models, tomllib.loads(path.read_text()).get("models", {}))
        elif name in models:  # one model alone
            models = {name: models[name]}
        else:
            known = sorted(p.stem for p in OVERLAYS.glob("*.toml"))
            raise ValueError(f"unknown overlay {name!r} (overlays: {known}; or configured, tuned, a model's name)")
    return models


MERGED = ("params", "gpu_batching")  # tables an overlay changes key by key


def apply(models: Models, overlay: Models) -> None:
    """``overlay`` on ``models``: its keys replace theirs, its ``params`` and ``gpu_batching`` are
    merged key by key."""
    for name, changes in overlay.items():
        table = models[name]
        for key, value in changes.items():
            if key in MERGED:
                table.setdefault(key, {}).update(value)
            else:
                table[key] = value


def fixed_lengths() -> Models:
    return {
        "stt": {"implementation": fixed_lengths_roles.STT, "params": {"max_new_tokens": STT_TOKENS}},
        "translate": {
            "implementation": fixed_lengths_roles.TRANSLATE,
            "params": {"max_decoding_length": TRANSLATE_TOKENS},
        },
        "chat": {"implementation": fixed_lengths_roles.CHAT},
    }


def tuned_overlay(tuned: dict[str, dict[str, Any]]) -> Models:
    return {
        name: {
            "gpu_batching": {
                "max_batch_size": change["max_batch_size"],
                "preferred_batch_sizes": change["preferred_batch_sizes"],
            },
            "instances": {"count": change["instances"], "kind": "auto"},
        }
        for name, change in tuned.items()
    }


def dump_registry(models: Models) -> str:
    """A variant as a registry file (TOML)."""
    header = "# Written by loadtests.bench.gpu: a benchmark variant of model_repository/registry.toml.\n"
    return header + tomli_w.dumps({"models": models})
