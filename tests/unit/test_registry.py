"""The model registry: both profiles for every role, batching and instances parsed and checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from milo_voice.registry import PROFILES, ROLES, Registry, load_registry


def test_every_role_has_both_profiles(registry: Registry) -> None:
    assert sorted(spec.role for spec in registry.models.values()) == sorted(ROLES)
    for spec in registry.models.values():
        for profile in PROFILES:
            weights = spec.weights(profile)
            assert weights.source and weights.format and weights.revision
        assert spec.weights("production").scheme == "hf"
        assert spec.batching.max_batch_size >= 1
        assert spec.batching.priority_levels >= 1
        assert 1 <= spec.batching.default_priority_level <= spec.batching.priority_levels
        assert spec.batching.max_queue_size > 0
        # Without a default queue timeout Triton ignores the per-request ones the facade sends.
        assert spec.batching.queue_timeout_us > 0
        assert spec.instances.count >= 1


def test_production_names_the_real_models(registry: Registry) -> None:
    assert "large-v3-turbo" in registry["stt"].weights("production").source
    assert "hf:Systran/faster-whisper-large-v3" in registry["stt"].weights("production").alternatives
    assert registry["tts"].weights("production").voices == {"mg": "mms-tts-mlg", "fr": "mms-tts-fra"}
    assert registry["translate"].weights("production").source == "hf:facebook/nllb-200-distilled-600M"
    assert registry["chat"].weights("production").format == "gguf"
    assert registry["chat"].params["n_ctx"] == 4096


def test_bad_registry_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text(
        '[models.x]\nrole = "dance"\nmax_batch_size = 1\nmax_queue_delay_us = 0\ninstances = { count = 1 }\n'
    )
    with pytest.raises(ValueError, match="unknown role"):
        load_registry(bad)
    bad.write_text(
        '[models.x]\nrole = "stt"\nmax_batch_size = 1\nmax_queue_delay_us = 0\npriority_levels = 2\n'
        "default_priority_level = 3\ninstances = { count = 1 }\n"
    )
    with pytest.raises(ValueError, match="default_priority_level"):
        load_registry(bad)
    bad.write_text(
        '[models.x]\nrole = "stt"\nmax_batch_size = 8\nmax_queue_delay_us = 0\ninstances = { count = 1 }\n'
        "gpu_batching = { max_batch_size = 32, queue_delay = 5 }\n"
    )
    with pytest.raises(ValueError, match="gpu_batching has unknown keys"):
        load_registry(bad)
    bad.write_text(
        '[models.x]\nrole = "stt"\nmax_batch_size = 8\nmax_queue_delay_us = 0\ninstances = { count = 1 }\n'
        "gpu_batching = { preferred_batch_sizes = [16] }\n"
    )
    with pytest.raises(ValueError, match=r"preferred batch size outside 1\.\.8"):
        load_registry(bad)


@pytest.mark.parametrize(
    ("model", "refusal"),
    [
        ('role = "stt"\nparams = { gpu_step_batching = true }', "gpu_step_batching is for translation's torch engine"),
        ('role = "translate"\nparams = { gpu_step_batching = true, engine = "ctranslate2" }',
         "gpu_step_batching needs the torch engine (engine 'auto' or 'torch' or 'torch+ctranslate2'), "
         "not 'ctranslate2'"),
        # On a CPU "auto" is CTranslate2 alone: the torch engine must be asked for.
        ('role = "translate"\nparams = { step_batching = true }',
         "step_batching needs the torch engine (engine 'torch' or 'torch+ctranslate2'), not 'auto'"),
        ('role = "translate"\nparams = { gpu_step_batching = true, beam_size = 1 }',
         "gpu_step_batching needs beam_size 2 or more"),
    ],
)  # fmt: skip
def test_step_batching_is_refused_where_no_torch_engine_searches(tmp_path: Path, model: str, refusal: str) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text(f"[models.x]\n{model}\nmax_batch_size = 8\nmax_queue_delay_us = 0\ninstances = {{ count = 1 }}\n")
    with pytest.raises(ValueError, match=re.escape(f"model 'x': {refusal}")):
        load_registry(bad)
    # The same model decoding whole batches is read.
    bad.write_text(bad.read_text().replace("step_batching = true", "step_batching = false"))
    assert load_registry(bad)["x"].params


def test_an_unknown_way_for_translation_s_steps_is_refused_when_read(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    entry = '[models.x]\nrole = "translate"\nmax_batch_size = 8\nmax_queue_delay_us = 0\ninstances = {{ count = 1 }}\n'
    bad.write_text(entry.format() + 'params = { gpu_step_attention = "flash" }\n')
    with pytest.raises(ValueError, match="model 'x': step attention 'flash'"):
        load_registry(bad)
    bad.write_text(entry.format() + 'params = { gpu_step_attention = "products", gpu_step_top = "two_passes" }\n')
    assert load_registry(bad)["x"].params["gpu_step_top"] == "two_passes"


def test_an_implementation_must_name_a_class_in_a_module(tmp_path: Path) -> None:
    entry = '[models.x]\nrole = "stt"\nmax_batch_size = 1\nmax_queue_delay_us = 0\ninstances = { count = 1 }\n'
    path = tmp_path / "registry.toml"
    path.write_text(entry + 'implementation = "a.module:Class"\n')
    assert load_registry(path)["x"].implementation == "a.module:Class"
    for bad in ("a.module.Class", "a module:Class", ":Class", "a.module:"):
        path.write_text(entry + f'implementation = "{bad}"\n')
        with pytest.raises(ValueError, match="is not 'module:Class'"):
            load_registry(path)
