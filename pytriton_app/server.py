"""The PyTriton host: every model of the registry in one Triton server.

Start order: build every instance (weights loaded, placed on its device), warm each
one up with a real call, then start Triton and bind them all. Triton reports a model
ready only once it is bound, so a ready model is always a warm one.
"""

from __future__ import annotations

import logging
import os
import socket
import sysconfig
from dataclasses import dataclass
from typing import Any

from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
from pytriton.model_config.common import TimeoutAction
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from contract import tensors
from contract.triton_access import RESTRICTED_APIS, check_exposure
from milo_voice.registry import ModelSpec, Registry, active_profile, load_registry
from milo_voice.serving import kernels_metrics, weights_metrics
from milo_voice.serving.chat_metrics import PrometheusChatMetrics
from milo_voice.serving.instances import DevicePlanner, load_instance, with_cloud_chat
from milo_voice.serving.shared_memory import remove_orphaned_segments
from milo_voice.serving.tensor_io import (
    GenerationHandler,
    RunningRequests,
    cancel_handler,
    chat_cancel_handler,
    chat_stream_handler,
    handler_for,
)
from milo_voice.settings import server_settings
from pytriton_app import handshake
from pytriton_app.infer import infer_callable
from pytriton_app.metrics import MetricsRelay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def prefer_running_libpython() -> None:
    """Make Triton's Python stub load this interpreter's libpython, not the system's.

    PyTriton starts ``tritonserver`` as a child process; with a pyenv-built Python the
    stub otherwise picks up the distribution's libpython and dies on start
    (``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and not current.startswith(libdir):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def _tensor(spec: tensors.TensorSpec) -> Tensor:
    return Tensor(name=spec.name, dtype=spec.dtype, shape=spec.shape, optional=spec.optional)


def model_config(spec: ModelSpec, io: tensors.ModelIO, gpus: int = 0) -> ModelConfig:
    b = spec.batching_on(gpus)
    if io.streaming:
        # Streams are answered one request at a time per instance: no batching.
        return ModelConfig(batching=False, decoupled=True)
    if io.shared_process_only:  # chat_cancel: tiny calls, no queue policy of its own
        return ModelConfig(max_batch_size=b.max_batch_size, batcher=DynamicBatcher())
    return ModelConfig(
        max_batch_size=b.max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=b.max_queue_delay_us,
            preferred_batch_size=list(b.preferred_batch_sizes) or None,
            priority_levels=b.priority_levels,
            default_priority_level=b.default_priority_level,
            default_queue_policy=QueuePolicy(
                timeout_action=TimeoutAction.REJECT,
                allow_timeout_override=True,
                max_queue_size=b.max_queue_size,
                default_timeout_microseconds=b.queue_timeout_us,
            ),
        ),
    )


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_role_instances(spec: ModelSpec, profile: str, planner: DevicePlanner) -> list[Any]:
    count = spec.instances.count_on(planner.gpu_count)
    observer = PrometheusChatMetrics(spec.name) if spec.role == "chat" else None
    places = [planner.place(spec.instances.kind) for _ in range(count)]
    instances = [load_instance(spec, profile, device, observer).instance for device in places]
    weights_metrics.publish(spec, profile)
    if spec.role == "translate":
        for instance in instances:  # each instance timed its own choice
            kernels_metrics.publish(spec.name, instance.step_kernels)
    return instances


def load_all(registry: Registry, profile: str, planner: DevicePlanner) -> dict[str, list[Any]]:
    """Every model's instances, loaded and warmed up, by registry name."""
    return {name: build_role_instances(spec, profile, planner) for name, spec in registry.models.items()}


def served_name(spec: ModelSpec, io: tensors.ModelIO) -> str:
    """Triton name of ``io`` for ``spec``: "chat_stream" for the chat role's stream, and so on."""
    return io.name if spec.name == spec.role else f"{spec.name}{io.name.removeprefix(spec.role)}"


# A blocking chat request needs a Triton instance of its own for as long as it decodes (PyTriton
# answers a non-decoupled call only as a whole). Past 8 instances, unloading them outlasts
# Triton's exit timeout. So at most 8: blocking requests beyond them wait in Triton's queue,
# while streams (``chat_stream``, one decoupled instance) use every slot.
MAX_BLOCKING_INSTANCES = 8


def callables_for(io: tensors.ModelIO, spec: ModelSpec, instances: list[Any], running: RunningRequests) -> list[Any]:
    """PyTriton's instances of ``io``: one per role instance; for the chat role, which serves many
    requests at once, one per slot (at most ``MAX_BLOCKING_INSTANCES``) for ``chat`` and a single
    one over every instance for the rest.
    ``running`` holds the model's running streams, which its cancel model stops."""
    if io.name == tensors.CHAT_CANCEL.name:
        return [infer_callable(chat_cancel_handler(instances))]
    if io.name == tensors.CHAT_STREAM.name:
        return [infer_callable(chat_stream_handler(instances))]
    if io.name == tensors.TTS_CANCEL.name:
        return [infer_callable(cancel_handler(io, running.cancel))]
    handlers = [handler_for(io, spec, instance, running) for instance in instances]
    if not all(isinstance(h, GenerationHandler) and not h.streaming for h in handlers):
        return [infer_callable(handler, served_name(spec, io)) for handler in handlers]
    per_request = [infer_callable(h) for h in handlers for _ in range(h.concurrency)]
    # Over the cap, every role instance keeps its share.
    return per_request[:: -(-len(per_request) // MAX_BLOCKING_INSTANCES)]


@dataclass(frozen=True)
class Binding:
    """One Triton model of the host: its name, tensors, settings and PyTriton instances."""

    name: str
    io: tensors.ModelIO
    spec: ModelSpec
    callables: list[Any]


def plan_bindings(registry: Registry, instances: dict[str, list[Any]]) -> list[Binding]:
    bindings = []
    for spec in registry.models.values():
        running = RunningRequests()
        for io in tensors.ROLE_MODELS[spec.role]:
            callables = callables_for(io, spec, instances[spec.name], running)
            bindings.append(Binding(served_name(spec, io), io, spec, callables))
    return bindings


def bind_all(triton: Triton, bindings: list[Binding], gpus: int = 0) -> list[str]:
    for b in bindings:
        triton.bind(
            model_name=b.name,
            infer_func=b.callables,
            inputs=[_tensor(t) for t in b.io.inputs],
            outputs=[_tensor(t) for t in b.io.outputs],
            config=model_config(b.spec, b.io, gpus),
            strict=True,
        )
    return [b.name for b in bindings]


# Triton unloads a model's instances one after another, and under PyTriton each takes about 2 s
# (Triton's backend thread and the proxy's request server each poll once a second). The chat
# model has one instance per slot: with 16 slots, Triton's default exit timeout (30 s) ran out
# before the last were finalised; Triton exited and their stubs outlived it, shared memory and all.
INSTANCE_UNLOAD_S = 3
EXIT_TIMEOUT_FLOOR_S = 30


def exit_timeout_s(bindings: list[Binding]) -> int:
    """How long Triton may take to stop: in-flight requests, then the largest model's unloading."""
    most = max((len(b.callables) for b in bindings), default=1)
    return max(EXIT_TIMEOUT_FLOOR_S, 10 + INSTANCE_UNLOAD_S * most)


def triton_config(ports: Ports, metrics_port: int, exit_timeout: int) -> TritonConfig:
    settings = server_settings()
    return TritonConfig(
        http_address=settings.triton_bind,
        http_port=ports.http,
        grpc_address=settings.triton_bind,
        grpc_port=ports.grpc,
        metrics_port=metrics_port,
        metrics_address="127.0.0.1",
        allow_metrics=True,
        allow_cpu_metrics=True,
        # P50/P95/P99 per model as Prometheus summaries (nv_inference_request_summary_us, ...).
        metrics_config=["summary_latencies=true"],
        exit_on_error=True,
        exit_timeout_secs=exit_timeout,
        log_verbose=settings.triton_log_verbose,
    )


def serve(ports: Ports = Ports(), registry: Registry | None = None, profile: str | None = None) -> None:
    """Start Triton with every model and block until interrupted."""
    prefer_running_libpython()
    remove_orphaned_segments()
    registry = with_cloud_chat(registry or load_registry())
    profile = profile or active_profile()
    # Triton's metrics go to a loopback port; the host serves the public one (``MetricsRelay``).
    triton_metrics_port = free_loopback_port()
    settings = server_settings()
    check_exposure(settings.triton_bind, settings.triton_key)
    # Without a key, PyTriton guards its management APIs with a random token of its own.
    security = None
    if settings.triton_key:
        security = TritonSecurityConfig(access_token=settings.triton_key, restricted_endpoints=list(RESTRICTED_APIS))
    planner = DevicePlanner()
    log.info("profile %s, %d GPU(s) visible", profile, planner.gpu_count)
    # Load before Triton starts: Triton answers "server ready" as soon as it runs, so
    # clients must also wait on each model's own readiness (``/v2/models/<name>/ready``).
    instances = load_all(registry, profile, planner)
    handshake.install()
    try:
        bindings = plan_bindings(registry, instances)
        config = triton_config(ports, triton_metrics_port, exit_timeout_s(bindings))
        triton_server = Triton(config=config, security_config=security)
        with MetricsRelay(ports.metrics, triton_metrics_port), triton_server as triton:
            bound = bind_all(triton, bindings, planner.gpu_count)
            served = ", ".join(bound)
            log.info("serving %s on http :%d, grpc :%d, metrics :%d", served, ports.http, ports.grpc, ports.metrics)
            triton.serve()
    finally:
        close_all(instances)


def close_all(instances: dict[str, list[Any]]) -> None:
    """Stop what runs threads of its own (the chat engines), so the host exits cleanly."""
    for served in instances.values():
        for instance in served:
            close = getattr(instance, "close", None)
            if close is not None:
                close()
