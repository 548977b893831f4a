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
import threading
from typing import Any

import numpy as np

from contract import tensors
from contract.records import ModelBusy
from milo_voice.registry import active_profile, load_registry
from milo_voice.serving.chat_metrics import TritonChatMetrics
from milo_voice.serving.instances import Device, load_instance, with_cloud_chat
from milo_voice.serving.stepwise import StepwiseHandler
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

# A request decoded step by step is asked whether its client has gone at one execution in this many.
CANCEL_CHECK_EXECUTIONS = 16


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
        metrics = getattr(pb_utils, "MetricFamily", None) is not None and spec.role == "chat"
        observer = TritonChatMetrics(pb_utils, args.get("model_name", spec.name)) if metrics else None
        self.instance = load_instance(spec, active_profile(), device_of(args), observer)
        if getattr(pb_utils, "MetricFamily", None) is not None:
            self._weights_metric = TritonWeightsMetric(pb_utils, spec, active_profile())
        wait_us = int(parameters.get("milo_step_wait_us", 0))
        # Step-level batching (Triton's iterative sequences): the role decodes on a thread of its own.
        self.handler: Handler | StepwiseHandler = (
            StepwiseHandler(self.io, self.instance.stepwise(int(parameters["milo_max_waiting"]) or None), wait_us / 1e6)
            if wait_us
            else handler_for(self.io, spec, self.instance)
        )
        self._executions = 0
        self._outbox: queue.SimpleQueue[tuple[Any, Outputs | Exception, bool] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        if isinstance(self.handler, GenerationHandler):
            self._sender = threading.Thread(target=self._send_responses, name="chat-responses", daemon=True)
            self._sender.start()
        log.info("%s ready (%s, instance %s)", args.get("model_name"), spec.role, args.get("model_instance_name"))

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if isinstance(self.handler, StepwiseHandler):
            return self._steps(requests, self.handler)
        if isinstance(self.handler, GenerationHandler):
            self._generate(requests, self.handler)
            return None  # each request is answered through its response sender
        if isinstance(self.handler, StreamHandler):
            for request in requests:
                self._stream(request, self.handler)
            return None  # a decoupled model answers through each request's response sender
        return self._batch(requests, self.handler)

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

    def _batch(self, requests: list[Any], handler: BatchHandler) -> list[Any]:
        """Every request of the call computed as one batch, as the PyTriton host does."""
        try:
            return [self._response(outputs) for outputs in handler([self._inputs(r) for r in requests])]
        except Exception as exc:  # one failure answers every request; the server lives on
            log.exception("batch of %d failed", len(requests))
            error = self.pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [self.pb_utils.InferenceResponse(error=error) for _ in requests]

    def _steps(self, requests: list[Any], handler: StepwiseHandler) -> list[Any]:
        """Hand the new requests to the role, wait until one of this call's requests is answered (or
        the handler's wait), answer those done and reschedule the others (answered None here, as
        Triton asks). They come back in the next execution, with the requests that arrived."""
        self._executions += 1
        keys = [request.correlation_id() for request in requests]
        errors: dict[int, Any] = {}
        for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
            new = not handler.holds(key)
            # Asking whether a client has gone is a round trip to the server: at a request's first
            # execution, then at one execution in CANCEL_CHECK_EXECUTIONS.
            if (new or (self._executions + hash(key)) % CANCEL_CHECK_EXECUTIONS == 0) and request.is_cancelled():
                handler.cancel(key)
                errors[i] = self.pb_utils.TritonError("the request was cancelled", self.pb_utils.TritonError.CANCELLED)
            elif new:
                handler.take(key, self._inputs(request))
        handler.wait([key for i, key in enumerate(keys) if i not in errors])
        responses: list[Any] = []
        for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
            outputs = None if i in errors else handler.answer(key)
            if isinstance(outputs, ModelBusy):  # the client's TritonBusyError: a 503, retry soon
                errors[i] = self.pb_utils.TritonError(
                    f"Exceeds maximum queue size: {outputs}", self.pb_utils.TritonError.UNAVAILABLE
                )
            elif isinstance(outputs, Exception):  # the role failed while decoding it; the server lives on
                errors[i] = self.pb_utils.TritonError(f"{type(outputs).__name__}: {outputs}")
            if i in errors:
                responses.append(self.pb_utils.InferenceResponse(error=errors[i]))
            elif outputs is not None:
                responses.append(self._response(outputs))
            else:
                request.set_release_flags(self.pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
        return responses

    def _generate(self, requests: list[Any], handler: GenerationHandler) -> None:
        """Start every request, and return once each holds a slot (or has ended).

        The role decodes the requests together with those already running; their outputs
        go out through each request's response sender (``chat`` one response, the stream
        one per piece). Returning only once they hold a slot keeps the requests that find
        every slot busy in Triton's queue, where priorities and the queue's bound apply.
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
                log.error("chat request failed: %s", outputs)
                error = self.pb_utils.TritonError(f"{type(outputs).__name__}: {outputs}")
                sender.send(self.pb_utils.InferenceResponse(error=error), flags=flags)
            else:
                sender.send(self._response(outputs), flags=flags)
        except Exception:  # a request whose client is gone; the others go on
            log.exception("could not send a chat response")

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
