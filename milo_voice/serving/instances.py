"""Build role instances from the registry: weights of a profile, placed on a device, warmed up.

Both servers build their instances here: the PyTriton host for every model at once
(devices round-robin), a stock Triton server's Python backend one instance at a time on
the device Triton chose.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from milo_voice.registry import Instances, ModelSpec, Registry, models_dir
from milo_voice.roles.chat import ChatDefaults, CloudChat, LocalChat
from milo_voice.roles.generation import EngineObserver
from milo_voice.serving.gpu_turns import gpu_turn
from milo_voice.serving.tensor_io import chat_service
from milo_voice.serving.warmup import warm_up
from milo_voice.settings import server_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def cuda_device_count() -> int:
    """GPUs that the CUDA driver sees (0 without a driver).

    Asked of the driver itself rather than of an inference library: loading a library's CUDA
    toolkit only to count devices can clash with another library's toolkit in the same process.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class DevicePlanner:
    """Places instances on GPUs round-robin across every model, so load spreads evenly."""

    def __init__(self, gpu_count: int | None = None) -> None:
        self.gpu_count = cuda_device_count() if gpu_count is None else gpu_count
        self._next = 0

    def place(self, kind: str) -> Device:
        if kind == "cpu" or (kind == "auto" and self.gpu_count == 0):
            return Device("cpu")
        if self.gpu_count == 0:
            raise RuntimeError("the registry asks for a GPU instance but no CUDA device is visible")
        device = Device("cuda", self._next % self.gpu_count)
        self._next += 1
        return device


CLOUD_CHAT = "chat_cloud"


def cloud_chat(concurrency: int = 8, defaults: ChatDefaults | None = None) -> CloudChat:
    settings = server_settings()
    if not settings.chat_cloud_url:
        raise RuntimeError("the cloud chat backend needs MILO_CHAT_CLOUD_URL")
    return CloudChat(
        settings.chat_cloud_url,
        settings.chat_cloud_model,
        settings.chat_cloud_key,
        concurrency=concurrency,
        defaults=defaults or ChatDefaults(),
    )


def with_cloud_chat(registry: Registry) -> Registry:
    """The registry plus ``chat_cloud`` (and its stream) when MILO_CHAT_CLOUD_URL names a server.

    The cloud backend is served by Triton like the local one, so the facade reaches both
    the same way and both show in Triton's metrics. One instance on the CPU: it only waits
    on the network, with ``slots`` requests in flight to the remote server.
    """
    if not server_settings().chat_cloud_url:
        return registry
    chat = registry.by_role("chat")
    cloud = dataclasses.replace(
        chat,
        name=CLOUD_CHAT,
        description="Chat through an OpenAI-compatible server",
        instances=Instances(1, "cpu"),
        implementation="",
    )
    return Registry(models={**registry.models, CLOUD_CHAT: cloud})


def _cpu_threads() -> int:
    """Threads per CPU instance: ``MILO_CPU_THREADS``, else the cores this process may run on.
    Not the libraries' own default: CTranslate2 starts 4 threads, which on 2 cores made a Whisper
    transcription slower (docs/benchmarks.md, "Spoken turn")."""
    return server_settings().cpu_threads or len(os.sched_getaffinity(0))


Role = TypeVar("Role")


def role_class(spec: ModelSpec, base: type[Role]) -> type[Role]:
    """``base``, or the registry's ``implementation`` of it, which must be a subclass."""
    if not spec.implementation:
        return base
    module, _, name = spec.implementation.partition(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"model {spec.name!r}: {spec.implementation} is not a subclass of {base.__name__}")
    return cls


def build_instance(spec: ModelSpec, profile: str, device: Device, chat_observer: EngineObserver | None = None) -> Any:
    """One instance of ``spec``'s role on ``device``, with the weights of ``profile``.

    ``chat_observer`` receives a local chat engine's measurements (the server's metrics).
    """
    path = spec.path(profile, models_dir())
    weights = spec.weights(profile)
    params = spec.params
    gpu = device.kind == "cuda"
    # Each role's libraries load only where that role is built (a chat process needs no torch).
    if spec.role == "stt":
        from milo_voice.roles.stt import SpeechToText, SttOptions

        options = SttOptions.from_params(params, "float16" if gpu else "int8", _cpu_threads(), on_gpu=gpu)
        return role_class(spec, SpeechToText)(str(path), device.kind, device.index, options)
    if spec.role == "tts":
        from milo_voice.roles.tts import TextToSpeech
        from milo_voice.roles.voices import voice_location

        voices = {lang: voice_location(path, voice) for lang, voice in weights.voices.items()}
        return role_class(spec, TextToSpeech)(voices, device=str(device))
    if spec.role == "translate":
        from milo_voice.roles.nllb.kernels import StepKernels
        from milo_voice.roles.translate import Translator

        return role_class(spec, Translator)(
            path,
            device=device.kind,
            device_index=device.index,
            compute_type=params.get("gpu_compute_type", "int8_float16") if gpu else "int8",
            languages=tuple(params.get("languages", ("mg", "fr", "en"))),
            beam_size=_beam_size(params),
            max_decoding_length=int(params.get("max_decoding_length", 256)),
            intra_threads=_cpu_threads(),
            engine=_translate_engine(params),
            search_sentences=_optional_int(params.get("gpu_search_sentences" if gpu else "search_sentences")),
            search_graphs=bool(params.get("gpu_search_graphs", True)),
            kernels=StepKernels.from_params(params),
        )
    if spec.role == "chat":
        if spec.name == CLOUD_CHAT or server_settings().chat_backend == "cloud":
            role_class(spec, CloudChat)  # an implementation of the local backend cannot be the cloud one
            return cloud_chat(int(params.get("slots", 8)), ChatDefaults.of(params))
        return role_class(spec, LocalChat)(
            path / "model.gguf",
            n_ctx=int(params.get("n_ctx", 4096)),
            slots=int(params.get("gpu_slots" if gpu else "slots", 4)),
            batch_tokens=int(params.get("batch_tokens", 512)),
            max_queued=spec.batching.max_queue_size or 256,
            n_gpu_layers=-1 if gpu else 0,  # full offload where a GPU exists
            main_gpu=device.index,
            n_threads=_cpu_threads() or None,
            observer=chat_observer,
            defaults=ChatDefaults.of(params),
            step_prompt_tokens=_optional_int(params.get("gpu_step_prompt_tokens" if gpu else "step_prompt_tokens")),
        )
    raise ValueError(f"unknown role {spec.role!r}")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _beam_size(params: dict[str, Any]) -> int:
    return int(params.get("beam_size", 2))


def _translate_engine(params: dict[str, Any]) -> Any:
    return params.get("engine", "auto")


def loads_alone(spec: ModelSpec, device: Device) -> bool:
    """Whether ``spec``'s load on ``device`` times the GPU, and so has it to itself (``gpu_turns``):
    translation's search choosing its step's kernels."""
    if spec.role != "translate" or device.kind != "cuda":
        return False
    from milo_voice.roles.nllb.kernels import StepKernels
    from milo_voice.roles.translate import times_the_gpu_at_load

    params = spec.params
    kernels = StepKernels.from_params(params)
    return times_the_gpu_at_load(_translate_engine(params), device.kind, _beam_size(params), kernels)


@dataclass(frozen=True)
class Loaded:
    """An instance ready to serve, and what its load took."""

    instance: Any  # what the servers' handlers take: the role, or for chat a ``ChatService`` around it
    seconds: float  # built and warmed up, its wait for the GPU included
    waited_s: float  # of which waiting for the GPU (``gpu_turns``)
    alone: bool  # whether it had the GPU to itself (its load times it)

    def __str__(self) -> str:
        alone = ", alone" if self.alone else ""
        return f"loaded in {self.seconds:.1f} s ({self.waited_s:.1f} s of it waiting for the GPU{alone})"


def load_instance(spec: ModelSpec, profile: str, device: Device, chat_observer: EngineObserver | None = None) -> Loaded:
    """``build_instance``, then one real call, so that the first user pays no load cost; on a GPU,
    beside the other loads there, or alone where it times the GPU (``gpu_turns``)."""
    started = time.perf_counter()
    alone = loads_alone(spec, device)
    with gpu_turn(device.kind, device.index, alone) as waited:
        instance = build_instance(spec, profile, device, chat_observer)
        warm_up(spec.role, instance)
    served = chat_service(spec, instance) if spec.role == "chat" else instance
    loaded = Loaded(served, time.perf_counter() - started, waited, alone)
    log.info("%s instance on %s %s", spec.name, device, loaded)
    return loaded
