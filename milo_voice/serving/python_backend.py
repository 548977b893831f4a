"""A stock Triton server's Python backend model, around the same role classes as the PyTriton host.

``model_repository/<model>/1/model.py`` re-exports ``TritonPythonModel``. Triton's Python
stub creates one per instance of the model: it reads which registry model it serves from
the ``milo_model`` parameter of ``config.pbtxt``, loads that role's weights on the device
Triton placed the instance on, warms it up, and then serves requests with the handlers
of ``tensor_io``, the ones PyTriton binds. The PyTriton host and a stock server therefore
answer the same requests with the same tensors.

``triton_python_backend_utils`` exists only inside the stub, so it is imported there and
passed in; tests hand in their own module of the same interface.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from typing import Any

import numpy as np

from contract import tensors
from milo_voice.registry import active_profile, load_registry
from milo_voice.serving.batch_metrics import BatchClock, TritonBatchMetrics
from milo_voice.serving.chat_metrics import TritonChatMetrics
from milo_voice.serving.instances import Device, load_instance, with_cloud_chat
from milo_voice.serving.kernels_metrics import TritonKernelsMetric
from milo_voice.serving.search_metrics import TritonSearchMetrics
from milo_voice.serving.stepwise import StepwiseHandler, step_batching
from milo_voice.serving.tensor_io import (
    BatchHandler,
    GenerationHandler,
    Handler,
    Inputs,
    Outputs,
    StreamHandler,
    handler_for,
    join_queued,
)
from milo_voice.serving.weights_metrics import TritonWeightsMetric

log = logging.getLogger(__name__)


def device_of(args: dict[str, str]) -> Device:
    """Where Triton placed this instance (``KIND_GPU`` or ``KIND_AUTO`` on a GPU host: a GPU)."""
    if args.get("model_instance_kind") == "GPU":
        return Device("cuda", int(args.get("model_instance_device_id", "0")))
    return Device("cpu")


class TritonPythonModel:
    """One instance of one served model, as Triton's Python backend drives it."""

    pb_utils: Any = None  # triton_python_backend_utils, set on initialize

    def initialize(self, args: dict[str, str], pb_utils: Any = None) -> None:
        if pb_utils is None:
            import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found,no-redef]
        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        spec = with_cloud_chat(load_registry()).models[parameters["milo_model"]]
        self.io = tensors.MODELS[parameters["milo_io"]]
        model_name = args.get("model_name", spec.name)
        metrics_api = getattr(pb_utils, "MetricFamily", None) is not None
        chat = metrics_api and spec.role == "chat"
        observer = TritonChatMetrics(pb_utils, model_name) if chat else None
        device = device_of(args)
        loaded = load_instance(spec, active_profile(), device, observer)
        self.instance = loaded.instance
        if metrics_api:
            self._weights_metric = TritonWeightsMetric(pb_utils, spec, active_profile())
        kernels = self.instance.step_kernels if spec.role == "translate" else None  # chosen at load
        if metrics_api and spec.role == "translate":
            self._kernels_metric = TritonKernelsMetric(pb_utils, model_name, kernels)
        if step_batching(spec, device):
            search = TritonSearchMetrics(pb_utils, model_name) if metrics_api else None
            self.handler: Handler | StepwiseHandler = StepwiseHandler(self.io, self.instance.stepwise(), search)
        else:
            self.handler = handler_for(self.io, spec, self.instance)
        if isinstance(self.handler, BatchHandler):
            self._batch_metrics = TritonBatchMetrics(pb_utils, model_name) if metrics_api else None
            self._clock = BatchClock(self.handler, self._batch_metrics.report if self._batch_metrics else None)
        if isinstance(self.handler, StepwiseHandler) and "step_switch_interval_ms" in spec.params:
            # The role's thread lets the GIL go while it waits for each step on the GPU, and the
            # threads that take requests and send responses take it; the interpreter makes them
            # hand it back after its switch interval, 5 ms unless set, a step's length on a GPU.
            sys.setswitchinterval(float(spec.params["step_switch_interval_ms"]) / 1000)
        self._outbox: queue.SimpleQueue[tuple[Any, Outputs | Exception, bool] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        if isinstance(self.handler, GenerationHandler | StepwiseHandler):
            self._sender = threading.Thread(target=self._send_responses, name="responses", daemon=True)
            self._sender.start()
        batching = (
            "step-level batching" if isinstance(self.handler, StepwiseHandler)
            else "continuous batching" if isinstance(self.handler, GenerationHandler)
            else "a stream a request" if isinstance(self.handler, StreamHandler)
            else "batches"
        )  # fmt: skip
        instance = args.get("model_instance_name")
        ready = f"{args.get('model_name')} ready ({spec.role}, instance {instance} on {device}, {batching})"
        ready += f", {loaded}"
        if kernels is not None:
            ready += f"; its search steps attend by the {kernels.attention} way, best logits in {kernels.top}"
            if kernels.timed_ms:
                ready += f" (timed at load, ms a call: {kernels.timed_ms})"
        # Into Triton's own log where the stub has its logger: this process's INFO goes nowhere there.
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(ready)
        else:
            log.info(ready)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if isinstance(self.handler, GenerationHandler | StepwiseHandler):
            self._generate(requests, self.handler)
            return None  # each request is answered through its response sender
        if isinstance(self.handler, StreamHandler):
            for request in requests:
                self._stream(request, self.handler)
            return None  # a decoupled model answers through each request's response sender
        return self._batch(requests)

    def _inputs(self, request: Any) -> Inputs:
        inputs = {}
        for spec in self.io.inputs:
            tensor = self.pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                inputs[spec.name] = tensor.as_numpy()
        return inputs

    def _response(self, outputs: Outputs) -> Any:
        return self.pb_utils.InferenceResponse(
            output_tensors=[self.pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]
        )

    def _batch(self, requests: list[Any]) -> list[Any]:
        """Every request of the call computed as one batch, as the PyTriton host does."""
        with self._clock.timing() as handler:
            try:
                return [self._response(outputs) for outputs in handler([self._inputs(r) for r in requests])]
            except Exception as exc:  # one failure answers every request; the server lives on
                log.exception("batch of %d failed", len(requests))
                error = self.pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
                return [self.pb_utils.InferenceResponse(error=error) for _ in requests]

    def _generate(self, requests: list[Any], handler: GenerationHandler | StepwiseHandler) -> None:
        """Start every request, and return once each holds a slot (or has ended).

        The role decodes the requests together with those already running; their outputs
        go out through each request's response sender (``chat`` one response, the stream
        one per piece, a translation one). Returning only once they hold a slot (chat's, or
        rows of the translation search) keeps the requests that find every slot busy in
        Triton's queue, where priorities and the queue's bound apply.
        """
        started = []
        for request in requests:
            sender = request.get_response_sender()

            def emit(outputs: Outputs | Exception, final: bool, sender: Any = sender) -> None:
                self._outbox.put((sender, outputs, final))

            started.append(handler.start(self._inputs(request), emit, request.is_cancelled))
        for request in started:
            request.dequeued.wait()

    def _send_responses(self) -> None:
        """Responses go out on this thread, so the role's thread never waits on Triton's IPC.

        Pieces of one stream that queued up while this thread was sending go out joined
        (``handler.merge``): a busy server sends fewer, larger responses.
        """
        final_flag = self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        merge = self.handler.merge if isinstance(self.handler, GenerationHandler) else None
        while (item := self._outbox.get()) is not None:
            waiting = [item]
            while not self._outbox.empty():
                waiting.append(self._outbox.get_nowait())
            stop = waiting[-1] is None
            items = [i for i in waiting if i is not None]
            for sender, outputs, final in join_queued(items, merge):
                self._send(sender, outputs, final_flag if final else 0)
            if stop:
                break

    def _send(self, sender: Any, outputs: Outputs | Exception, flags: int) -> None:
        try:
            if isinstance(outputs, Exception):  # a fault: a refused input is answered in its error tensor
                log.error("request failed: %s", outputs)
                error = self.pb_utils.TritonError(f"{type(outputs).__name__}: {outputs}")
                sender.send(self.pb_utils.InferenceResponse(error=error), flags=flags)
            else:
                sender.send(self._response(outputs), flags=flags)
        except Exception:  # a request whose client is gone; the others go on
            log.exception("could not send a response")

    def _stream(self, request: Any, handler: StreamHandler) -> None:
        sender = request.get_response_sender()
        final = self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        pieces = handler.stream(self._inputs(request))
        try:
            for outputs in pieces:
                if request.is_cancelled():  # the client went away: free the instance now
                    break
                sender.send(self._response(outputs))
            sender.send(flags=final)
        except Exception as exc:  # the client gets the error; the server lives on
            log.exception("stream failed")  # a refused input is answered in its error tensor
            error = self.pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            sender.send(self.pb_utils.InferenceResponse(error=error), flags=final)
        finally:
            pieces.close()

    def finalize(self) -> None:
        if isinstance(self.handler, StepwiseHandler):
            self.handler.close()
        # The role first: what it still holds fails through the outbox, then the sender stops.
        close = getattr(self.instance, "close", None)
        if close is not None:
            close()
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=10)
        log.info("%s instance unloaded", self.io.name)
