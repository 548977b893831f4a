"""The registry variants the GPU benchmark serves: the committed registry with fixed generation lengths,
changed as the variant says, written as TOML."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import tomli_w

from loadtests.bench.gpu.common import REGISTRY, STT_TOKENS, TRANSLATE_TOKENS


def dump_registry(models: dict[str, dict[str, Any]]) -> str:
    """A variant as a registry file (TOML)."""
    header = "# Written by loadtests.bench.gpu: a benchmark variant of model_repository/registry.toml.\n"
    return header + tomli_w.dumps({"models": models})


def bench_models(tuned: dict[str, dict[str, Any]] | None = None, variant: str = "configured") -> dict[str, Any]:
    """The committed registry with fixed generation lengths, changed as ``variant`` says."""
    models = tomllib.loads(REGISTRY.read_text())["models"]
    models["stt"]["params"]["fixed_new_tokens"] = STT_TOKENS
    models["translate"]["params"].update(min_decoding_length=TRANSLATE_TOKENS, max_decoding_length=TRANSLATE_TOKENS)
    models["chat"]["params"]["ignore_eos"] = True
    if variant == "unbatched":
        for table in models.values():
            table.update(max_batch_size=1, preferred_batch_sizes=[], max_queue_delay_us=0)
        models["chat"]["params"].update(slots=1, gpu_slots=1)  # chat batches in the role: one slot
    elif variant == "tuned":
        for name, change in (tuned or {}).items():
            models[name].update(
                max_batch_size=change["max_batch_size"],
                preferred_batch_sizes=change["preferred_batch_sizes"],
                instances={"count": change["instances"], "kind": "auto"},
            )
    elif variant.startswith("stt-"):
        # Only STT is measured; the facade still expects every role in the registry.
        # stt-[large-v3-][no-timestamps][-x2][-b32][-numpy][-q5|-q1][-ct2enc][-ct2dec]
        stt = models["stt"]
        stt["params"]["timestamps"] = "no-timestamps" not in variant
        if "-x2" in variant:
            # Two instances (with the stock server, two processes: CPU work in parallel), each
            # batching up to 8: the knee of the in-process curve (docs/benchmarks.md, section 4).
            stt.update(max_batch_size=8, preferred_batch_sizes=[4, 8], instances={"count": 2, "kind": "auto"})
        if variant.endswith("-numpy") or "-numpy-" in variant:
            stt["params"]["features"] = "numpy"  # faster-whisper's NumPy features, one window at a time
        if "-q5" in variant:
            stt["max_queue_delay_us"] = 5000
        if "-b32" in variant:  # batches up to 32: with the torch encoder the curve goes on past 8
            stt.update(max_batch_size=32, preferred_batch_sizes=[8, 16, 32])
        if "-q1" in variant:
            stt["max_queue_delay_us"] = 1000
        if "-ct2enc" in variant:
            # CTranslate2's own encoder (no flash attention), and so its decoder too
            stt["params"].update(encoder="ctranslate2", decoder="ctranslate2")
        if "-ct2dec" in variant:
            stt["params"]["decoder"] = "ctranslate2"  # CTranslate2's decoder (no CUDA graphs)
    elif variant == "audit":
        # What the GPU runs found for the audit table: STT text only, 2 instances of batch 8, 1 ms
        # queue delay, features and encoder in torch on the GPU; translation computed in float16 (beam 2 kept).
        models = bench_models(None, "stt-no-timestamps-x2-q1")
        models["translate"]["params"]["gpu_compute_type"] = "float16"
    elif variant.startswith("translate-"):
        # Only translation is measured: translate-base, translate-beam1, translate-fp16.
        params = models["translate"]["params"]
        params["gpu_compute_type"] = "int8_float16"  # the first runs' setting
        if variant == "translate-beam1":
            params["beam_size"] = 1
        elif variant == "translate-fp16":
            params["gpu_compute_type"] = "float16"
        elif variant != "translate-base":
            raise ValueError(f"unknown variant {variant!r}")
    elif variant.startswith("chat-"):
        # Only chat is measured (chat-unbatched: one slot; chat-sN: N slots; chat-xN: N instances).
        if variant == "chat-unbatched":
            models["chat"]["params"].update(slots=1, gpu_slots=1)
        elif re.fullmatch(r"chat-s\d+", variant):
            slots = int(variant.removeprefix("chat-s"))
            models["chat"]["params"].update(slots=slots, gpu_slots=slots)
        elif re.fullmatch(r"chat-x\d+", variant):
            models["chat"]["instances"] = {"count": int(variant.removeprefix("chat-x")), "kind": "auto"}
        else:
            raise ValueError(f"unknown variant {variant!r}")
    elif variant in models:  # one model alone, e.g. "chat"
        models = {variant: models[variant]}
    elif variant != "configured":
        raise ValueError(f"unknown variant {variant!r}")
    return models
