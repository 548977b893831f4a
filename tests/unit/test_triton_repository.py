"""The native Triton repository's config.pbtxt files: generated from the registry, committed up to
date, and valid against Triton's own ModelConfig schema (the protobuf that tritonclient ships)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from milo_voice.registry import DEFAULT_REGISTRY, Instances, Registry, load_registry
from milo_voice.triton_repository import (
    CHAT_MODEL_PY,
    MODEL_PY,
    render_config,
    served_models,
    stale_configs,
    write_configs,
)

ROOT = DEFAULT_REGISTRY.parent


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(DEFAULT_REGISTRY)


def test_committed_configs_are_up_to_date(registry: Registry) -> None:
    assert stale_configs(registry, ROOT) == [], "run `milo-voice models triton-configs` and commit the files"


def test_every_served_model_has_a_config(registry: Registry) -> None:
    names = {io.name for _spec, io in served_models(registry)}
    assert names == {"stt", "tts", "tts_stream", "translate", "chat", "chat_stream"}
    assert all((ROOT / name / "config.pbtxt").is_file() for name in names)


def test_configs_parse_as_triton_model_configs_with_the_registry_settings(registry: Registry) -> None:
    for spec, io in served_models(registry):
        config = text_format.Parse(render_config(spec, io), model_config_pb2.ModelConfig())
        assert config.name == io.name and config.backend == "python"
        assert [t.name for t in config.input] == [t.name for t in io.inputs]
        assert [t.name for t in config.output] == [t.name for t in io.outputs]
        assert config.instance_group[0].count == spec.instances.count
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
        assert config.parameters["milo_model"].string_value == spec.name
        assert config.parameters["milo_io"].string_value == io.name
        if io.streaming:
            assert config.model_transaction_policy.decoupled
            assert config.max_batch_size == 0
            assert not config.HasField("dynamic_batching")
        else:
            batching, policy = config.dynamic_batching, config.dynamic_batching.default_queue_policy
            assert config.max_batch_size == spec.batching.max_batch_size
            assert list(batching.preferred_batch_size) == list(spec.batching.preferred_batch_sizes)
            assert batching.priority_levels == spec.batching.priority_levels
            assert policy.max_queue_size == spec.batching.max_queue_size
            assert policy.default_timeout_microseconds == spec.batching.queue_timeout_us
            assert policy.allow_timeout_override
            assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT


def test_a_registry_change_makes_the_check_fail_until_regenerated(registry: Registry, tmp_path: Path) -> None:
    write_configs(registry, tmp_path)
    assert stale_configs(registry, tmp_path) == []
    changed_spec = dataclasses.replace(registry["tts"], instances=Instances(3, "gpu"))
    changed = Registry(models={**registry.models, "tts": changed_spec})
    assert {p.parent.name for p in stale_configs(changed, tmp_path)} == {"tts", "tts_stream"}
    write_configs(changed, tmp_path)
    text = (tmp_path / "tts" / "config.pbtxt").read_text()
    assert text_format.Parse(text, model_config_pb2.ModelConfig()).instance_group[0].kind == (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
    )


def test_every_model_has_the_python_backend_entry_point(registry: Registry, tmp_path: Path) -> None:
    for spec, io in served_models(registry):
        entry = ROOT / io.name / "1" / "model.py"
        # A chat model's process loads llama.cpp first (milo_voice/roles/llama_libraries.py).
        assert entry.read_text() == (CHAT_MODEL_PY if spec.role == "chat" else MODEL_PY)
    from milo_voice.serving.python_backend import TritonPythonModel

    for source in (MODEL_PY, CHAT_MODEL_PY):
        namespace: dict[str, object] = {}
        exec(compile(source, "model.py", "exec"), namespace)
        assert namespace["TritonPythonModel"] is TritonPythonModel
    (tmp_path / "stt" / "1").mkdir(parents=True)
    (tmp_path / "stt" / "1" / "model.py").write_text("# edited by hand\n")
    write_configs(registry, tmp_path)
    assert stale_configs(registry, tmp_path) == []
    (tmp_path / "stt" / "1" / "model.py").write_text("# edited by hand\n")
    assert stale_configs(registry, tmp_path) == [tmp_path / "stt" / "1" / "model.py"]


def test_an_image_can_pin_every_instance_to_gpus(registry: Registry, tmp_path: Path) -> None:
    """``triton-configs --instance-kind gpu --out DIR``: the GPU image's own repository."""
    write_configs(registry, tmp_path, instance_kind="gpu")
    for spec, io in served_models(registry):
        config = text_format.Parse((tmp_path / io.name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        # The count for GPU hosts (TTS: 4) where the registry gives one, the plain count elsewhere.
        assert config.instance_group[0].count == (spec.instances.gpu_count or spec.instances.count)
        # So with the batching: GPU hosts' where the registry gives it (STT: up to 32).
        if not io.streaming:
            assert config.max_batch_size == spec.batching_on(1).max_batch_size
            assert config.dynamic_batching.max_queue_delay_microseconds == spec.batching_on(1).max_queue_delay_us
    assert registry["tts"].instances.gpu_count == 4
    assert registry["stt"].batching_on(1).max_batch_size == 32
    # The committed repository keeps the registry's kinds, so it loads on CPU-only machines too.
    assert stale_configs(registry, ROOT) == []
