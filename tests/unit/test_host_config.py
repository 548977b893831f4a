"""How the host places instances and configures Triton, from the registry (no server started)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from pytriton.model_config.common import TimeoutAction

from contract import tensors
from milo_voice.registry import Registry
from milo_voice.roles.chat import CloudChat
from milo_voice.serving.instances import DevicePlanner
from milo_voice.serving.tensor_io import RunningRequests
from pytriton_app.server import (
    EXIT_TIMEOUT_FLOOR_S,
    INSTANCE_UNLOAD_S,
    MAX_BLOCKING_INSTANCES,
    callables_for,
    exit_timeout_s,
    model_config,
    plan_bindings,
    served_name,
)
from tests.conftest import REPO


def test_instances_go_round_robin_over_gpus() -> None:
    planner = DevicePlanner(gpu_count=2)
    placed = [str(planner.place("auto")) for _ in range(5)]
    assert placed == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert str(planner.place("cpu")) == "cpu"


def test_cpu_when_no_gpu() -> None:
    planner = DevicePlanner(gpu_count=0)
    assert str(planner.place("auto")) == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        planner.place("gpu")


def test_batcher_follows_the_registry(registry: Registry) -> None:
    spec = registry["stt"]
    config = model_config(spec, tensors.STT)
    assert config.max_batch_size == spec.batching.max_batch_size
    assert config.batcher.max_queue_delay_microseconds == spec.batching.max_queue_delay_us
    assert config.batcher.priority_levels == 2
    assert config.batcher.default_queue_policy.max_queue_size == spec.batching.max_queue_size
    assert config.batcher.default_queue_policy.default_timeout_microseconds == spec.batching.queue_timeout_us
    assert config.batcher.default_queue_policy.timeout_action == TimeoutAction.REJECT
    assert config.batcher.default_queue_policy.allow_timeout_override


def test_streaming_models_are_decoupled(registry: Registry) -> None:
    for role, io in (("chat", tensors.CHAT_STREAM), ("tts", tensors.TTS_STREAM)):
        config = model_config(registry[role], io)
        assert config.decoupled and not config.batching
        assert served_name(registry[role], io) == io.name


def test_every_tensor_has_a_triton_type() -> None:
    for io in tensors.MODELS.values():
        for spec in (*io.inputs, *io.outputs):
            assert spec.triton_dtype in ("BYTES", "FP32", "INT32", "INT64")


def test_gpu_hosts_take_the_registry_gpu_count(registry: Registry) -> None:
    instances = registry["tts"].instances
    assert instances.count_on(0) == instances.count == 1
    assert instances.count_on(1) == instances.gpu_count == 4
    stt = registry["stt"].instances
    assert stt.count_on(0) == stt.count == 1
    assert stt.count_on(1) == stt.gpu_count == 2
    assert registry["translate"].instances.count_on(1) == registry["translate"].instances.count


def test_gpu_hosts_take_the_registry_gpu_batching(registry: Registry) -> None:
    stt = registry["stt"]
    on_cpu, on_gpu = model_config(stt, tensors.STT, gpus=0), model_config(stt, tensors.STT, gpus=1)
    assert on_cpu.max_batch_size == stt.batching.max_batch_size == 8
    assert on_gpu.max_batch_size == 32 and on_gpu.batcher.preferred_batch_size == [8, 16, 32]
    # The keys gpu_batching leaves out stay the CPU's: the queue's policy and priorities.
    assert on_gpu.batcher.max_queue_delay_microseconds == stt.batching.max_queue_delay_us
    assert on_gpu.batcher.priority_levels == 2
    assert on_gpu.batcher.default_queue_policy.max_queue_size == stt.batching.max_queue_size
    translate = registry["translate"]
    assert translate.batching_on(1).max_queue_delay_us < translate.batching_on(0).max_queue_delay_us
    assert registry["chat"].batching_on(1) == registry["chat"].batching  # none given: the same everywhere


def test_a_chat_process_loads_only_the_chat_roles_libraries(embedded_dir: Path) -> None:
    """The servers import each role's libraries where that role is built: a process serving chat
    loads no torch, CTranslate2 or FFmpeg (llama.cpp's CUDA build was seen to crash at load beside them)."""
    code = (
        "import sys, pytriton_app.server, milo_voice.serving.python_backend\n"
        "from milo_voice.registry import load_registry\n"
        "from milo_voice.serving.instances import Device, load_instance\n"
        "load_instance(load_registry().by_role('chat'), 'embedded', Device('cpu')).instance.close()\n"
        "print(sorted(m for m in ('torch', 'av', 'ctranslate2', 'faster_whisper', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_registry_implementation_is_built_in_the_roles_place(registry: Registry, embedded_dir: Path) -> None:
    """``implementation``: a subclass of the role's class, built with the same arguments (how the
    benchmarks fix generation lengths from outside the roles); anything else is refused."""
    from loadtests.bench import fixed_lengths
    from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator
    from milo_voice.roles.chat import LocalChat
    from milo_voice.serving.instances import Device, build_instance, role_class

    spec = dataclasses.replace(registry["translate"], implementation=fixed_lengths.TRANSLATE)
    assert type(build_instance(spec, "embedded", Device("cpu"))) is FixedLengthTranslator
    assert type(build_instance(registry["translate"], "embedded", Device("cpu"))).__name__ == "Translator"
    wrong = dataclasses.replace(registry["chat"], implementation=fixed_lengths.TRANSLATE)
    with pytest.raises(ValueError, match="not a subclass of LocalChat"):
        role_class(wrong, LocalChat)
    missing = dataclasses.replace(registry["chat"], implementation="loadtests.bench.fixed_lengths.chat:Nothing")
    with pytest.raises(ValueError, match="not a subclass"):
        role_class(missing, LocalChat)


def _chat(slots: int) -> CloudChat:
    return CloudChat("http://127.0.0.1:9", "model", concurrency=slots)


@pytest.mark.parametrize(("slots", "role_instances", "expected"), [(4, 1, 4), (8, 1, 8), (16, 1, 8), (16, 2, 8)])
def test_blocking_chat_gets_an_instance_per_slot_up_to_the_cap(
    registry: Registry, slots: int, role_instances: int, expected: int
) -> None:
    instances = [_chat(slots) for _ in range(role_instances)]
    blocking = callables_for(tensors.CHAT, registry["chat"], instances, RunningRequests())
    assert len(blocking) == expected <= MAX_BLOCKING_INSTANCES
    # Streams are one decoupled instance over every slot, however many.
    assert len(callables_for(tensors.CHAT_STREAM, registry["chat"], instances, RunningRequests())) == 1


def test_triton_may_take_as_long_to_stop_as_its_largest_model_takes_to_unload(registry: Registry) -> None:
    chat_only = Registry({"chat": registry["chat"]})
    bindings = plan_bindings(chat_only, {"chat": [_chat(16)]})
    assert {b.name: len(b.callables) for b in bindings}["chat"] == MAX_BLOCKING_INSTANCES
    assert exit_timeout_s(bindings) >= MAX_BLOCKING_INSTANCES * INSTANCE_UNLOAD_S
    assert exit_timeout_s([]) == EXIT_TIMEOUT_FLOOR_S
