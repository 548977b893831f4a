"""Typed client for Milo Voice's models over Triton (KServe v2), HTTP or gRPC, sync or asyncio.

    >>> from client import MiloTritonClient
    >>> milo = MiloTritonClient("localhost:8001", protocol="grpc")
    >>> milo.translate("Manao ahoana daholo ianareo.", "mg", "fr").text

Streaming models (``chat_stream``, ``tts_stream``) are decoupled: Triton serves them
over gRPC streams only, so the streaming methods open a gRPC stream whatever the
protocol of the rest of the client.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, Literal, TypeVar

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

from client import tensors
from client.results import ChatDelta, ChatResult, Segment, SpeechResult, TranscriptionResult, TranslationResult

log = logging.getLogger(__name__)
Protocol = Literal["http", "grpc"]
Message = dict[str, str]
# How long a client waits for a chat_cancel call (it is sent when a chat call is given up).
CANCEL_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """How Triton schedules a request: its priority level and how long it may wait in the queue.

    ``priority`` 0 means the model's default level; 1 is served first. A request still
    queued after ``queue_timeout_us`` is rejected by Triton (the model must allow the
    override, which the registry's queue policy does).
    """

    priority: int = 0
    queue_timeout_us: int | None = None


class ModelInputError(ValueError):
    """The model refused this request's input (the message says why)."""


class TritonUnavailableError(ConnectionError):
    """Triton could not be reached, or the model is not ready or its queue is full."""


class TritonBusyError(TritonUnavailableError):
    """The model's queue is full, or the request waited in it past its queue timeout: retry soon."""


# -- building requests -----------------------------------------------------------


def _as_array(spec: tensors.TensorSpec, value: Any, batched: bool) -> np.ndarray:
    """A one-request tensor; batching models take a leading batch axis, streaming ones do not."""
    if spec.dtype is np.bytes_:
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
    array = np.array([value], dtype=np.object_ if spec.dtype is np.bytes_ else spec.dtype)
    return array[None, ...] if batched else array


def _stt_inputs(audio: np.ndarray, language: str) -> dict[str, Any]:
    return {"audio": tensors.encode_audio(np.asarray(audio, dtype=np.float32).ravel()), "language": language}


@dataclasses.dataclass(frozen=True)
class ChatSampling:
    """How a chat reply is sampled; what is None is left to the model's defaults."""

    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()


def _chat_inputs(
    messages: Sequence[Message],
    language: str | None,
    max_tokens: int | None,
    temperature: float | None,
    sampling: ChatSampling | None,
    request_id: str,
) -> dict[str, Any]:
    values: dict[str, Any] = {"messages": json.dumps(list(messages), ensure_ascii=False), "request_id": request_id}
    if language:
        values["language"] = language
    if max_tokens is not None:
        values["max_tokens"] = max_tokens
    if temperature is not None:
        values["temperature"] = temperature
    sampling = sampling or ChatSampling()
    if sampling.top_p is not None:
        values["top_p"] = sampling.top_p
    if sampling.seed is not None:
        values["seed"] = sampling.seed
    if sampling.stop:
        values["stop"] = json.dumps(list(sampling.stop), ensure_ascii=False)
    return values


def _tts_stream_inputs(text: str, language: str, speed: float, request_id: str) -> dict[str, Any]:
    return {"text": text, "language": language, "speed": speed, "request_id": request_id}


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _delta(outputs: dict[str, np.ndarray]) -> ChatDelta:
    return ChatDelta(_first(outputs, "token"), _first(outputs, "finish_reason") or None)


def _first(outputs: dict[str, np.ndarray], name: str) -> Any:
    value = outputs[name].reshape(-1)[0] if outputs[name].ndim > 1 else outputs[name][0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _check_error(outputs: dict[str, np.ndarray]) -> None:
    if "error" in outputs:
        error = _first(outputs, "error")
        if error:
            raise ModelInputError(error)


def _transcription(outputs: dict[str, np.ndarray]) -> TranscriptionResult:
    _check_error(outputs)
    return TranscriptionResult(
        text=_first(outputs, "text"),
        language=_first(outputs, "language"),
        language_probability=float(_first(outputs, "language_probability")),
        confidence=float(_first(outputs, "confidence")),
        duration=float(_first(outputs, "duration")),
        segments=[Segment(**s) for s in json.loads(_first(outputs, "segments"))],
    )


def _speech(outputs: dict[str, np.ndarray]) -> SpeechResult:
    _check_error(outputs)
    samples = int(_first(outputs, "num_samples"))
    return SpeechResult(
        audio=outputs["audio"].reshape(-1)[:samples].astype(np.float32),
        sample_rate=int(_first(outputs, "sample_rate")),
        spoken_text=_first(outputs, "spoken_text"),
    )


def _stream_speech(outputs: dict[str, np.ndarray]) -> SpeechResult:
    return SpeechResult(
        audio=outputs["audio"].reshape(-1).astype(np.float32),
        sample_rate=int(_first(outputs, "sample_rate")),
        spoken_text=_first(outputs, "spoken_text"),
    )


def _translation(outputs: dict[str, np.ndarray]) -> TranslationResult:
    _check_error(outputs)
    return TranslationResult(text=_first(outputs, "translation"), score=float(_first(outputs, "score")))


def _chat(outputs: dict[str, np.ndarray]) -> ChatResult:
    _check_error(outputs)
    return ChatResult(
        text=_first(outputs, "text"),
        completion_tokens=int(_first(outputs, "completion_tokens")),
        prompt_tokens=int(_first(outputs, "prompt_tokens")),
        finish_reason=_first(outputs, "finish_reason"),
    )


def _translate_error(exc: InferenceServerException) -> Exception:
    text = str(exc)
    lowered = text.lower()
    if "exceeds maximum queue size" in lowered or "timeout expired" in lowered:
        return TritonBusyError(text)
    unavailable = (
        "unavailable", "not ready", "failed to connect", "connection refused",
        "unknown model",
    )  # fmt: skip
    if any(marker in lowered for marker in unavailable):
        return TritonUnavailableError(text)
    return exc


def _call_options(
    defaults: CallOptions, priority: int | None, timeout_us: int | None, protocol: str, timeout_s: float
) -> dict[str, Any]:
    """Keyword arguments of tritonclient's ``infer``: Triton priority and queue timeout, gRPC deadline."""
    options: dict[str, Any] = {"priority": defaults.priority if priority is None else priority}
    timeout_us = defaults.queue_timeout_us if timeout_us is None else timeout_us
    if timeout_us is not None:
        options["timeout"] = timeout_us
    if protocol == "grpc":
        options["client_timeout"] = _deadline_s(timeout_s, timeout_us)
    return options


def _deadline_s(compute_s: float, queue_timeout_us: int | None) -> float:
    """How long a call may take: the time it may queue, then ``compute_s`` to be computed.

    A request that waits out its queue timeout is then refused by Triton (busy, retry later)
    before the caller gives up on it, instead of the caller timing out first.
    """
    return compute_s + (queue_timeout_us or 0) / 1_000_000


def _tensor_inputs(module: Any, io: tensors.ModelIO, values: dict[str, Any]) -> list[Any]:
    inputs = []
    for spec in io.inputs:
        if spec.name not in values:
            if spec.optional:
                continue
            raise ValueError(f"model {io.name} needs input {spec.name!r}")
        array = _as_array(spec, values[spec.name], batched=not io.streaming)
        tensor = module.InferInput(spec.name, list(array.shape), spec.triton_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _requested_outputs(module: Any, io: tensors.ModelIO) -> list[Any]:
    return [module.InferRequestedOutput(t.name) for t in io.outputs]


def _outputs(result: Any, io: tensors.ModelIO) -> dict[str, np.ndarray]:
    return {t.name: result.as_numpy(t.name) for t in io.outputs}


# -- sync client -----------------------------------------------------------------


_Client = TypeVar("_Client", bound="_WithOptions")


class _WithOptions:
    """What the sync and asyncio clients share: the call options they send, and views with others."""

    options: CallOptions = CallOptions()

    def with_options(self: _Client, options: CallOptions) -> _Client:
        """A view of this client whose calls carry ``options``; it shares the connections (do not close it)."""
        view = copy.copy(self)
        view.options = options
        return view


class MiloTritonClient(_WithOptions):
    """Blocking client. ``url`` is ``host:port`` (8000 for HTTP, 8001 for gRPC by default).

    Safe to share between threads: tritonclient's HTTP client is not (it runs on
    gevent), so each thread gets its own HTTP connection; the gRPC client is shared.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        grpc_url: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._module: Any = httpclient if protocol == "http" else grpcclient
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        self._grpc = grpcclient.InferenceServerClient(url) if protocol == "grpc" else None
        # Decoupled models only speak gRPC: by default the gRPC port is the HTTP port + 1.
        self.grpc_url = grpc_url or (url if protocol == "grpc" else _next_port(url))

    @property
    def _client(self) -> Any:
        if self._grpc is not None:
            return self._grpc
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpclient.InferenceServerClient(
                self.url, network_timeout=self.timeout_s, connection_timeout=self.timeout_s
            )
            self._local.client = client
            with self._opened_lock:
                self._opened.append(client)
        return client

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
        with self._opened_lock:
            for client in self._opened:
                client.close()
            self._opened.clear()

    def __enter__(self) -> MiloTritonClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # health
    def is_live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def is_model_ready(self, model: str) -> bool:
        try:
            return bool(self._client.is_model_ready(model))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def infer(
        self, io: tensors.ModelIO, values: dict[str, Any], priority: int | None = None, timeout_us: int | None = None
    ) -> dict[str, np.ndarray]:
        """One request to any non-streaming model; returns its output tensors by name."""
        kwargs = _call_options(self.options, priority, timeout_us, self.protocol, self.timeout_s)
        try:
            result = self._client.infer(
                io.name,
                _tensor_inputs(self._module, io, values),
                outputs=_requested_outputs(self._module, io),
                **kwargs,
            )
        except InferenceServerException as exc:
            raise _translate_error(exc) from exc
        except TimeoutError:
            raise
        except OSError as exc:  # connection refused or reset: no server there
            raise TritonUnavailableError(f"cannot reach Triton at {self.url}: {exc}") from exc
        return _outputs(result, io)

    # models
    def transcribe(self, audio: np.ndarray, language: str = "auto", priority: int | None = None) -> TranscriptionResult:
        """``audio``: mono float samples at 16 kHz."""
        return _transcription(self.infer(tensors.STT, _stt_inputs(audio, language), priority))

    def synthesize(self, text: str, language: str, speed: float = 1.0, priority: int | None = None) -> SpeechResult:
        values = {"text": text, "language": language, "speed": speed}
        return _speech(self.infer(tensors.TTS, values, priority))

    def translate(self, text: str, source: str, target: str, priority: int | None = None) -> TranslationResult:
        values = {"text": text, "source": source, "target": target}
        return _translation(self.infer(tensors.TRANSLATE, values, priority))

    def chat(
        self,
        messages: Sequence[Message],
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        priority: int | None = None,
        model: str = tensors.CHAT.name,
        sampling: ChatSampling | None = None,
    ) -> ChatResult:
        """``model``: "chat" (local) or "chat_cloud" (the OpenAI-compatible backend, where served)."""
        values = _chat_inputs(messages, language, max_tokens, temperature, sampling, _new_request_id())
        return _chat(self.infer(_named(tensors.CHAT, model), values, priority))

    def chat_stream(
        self,
        messages: Sequence[Message],
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str = tensors.CHAT.name,
        sampling: ChatSampling | None = None,
    ) -> Iterator[ChatDelta]:
        """The reply piece by piece; closing the iterator early stops the generation on the server."""
        request_id = _new_request_id()
        values = _chat_inputs(messages, language, max_tokens, temperature, sampling, request_id)
        finished = False
        try:
            for outputs in self._stream(_named(tensors.CHAT_STREAM, f"{model}_stream"), values):
                delta = _delta(outputs)
                finished = delta.finish_reason is not None
                if delta.text or finished:
                    yield delta
        finally:
            if not finished:
                self.cancel_chat(request_id, model)

    def cancel_chat(self, request_id: str, model: str = tensors.CHAT.name) -> bool:
        """Stop a running chat request by its id (PyTriton host); False where nothing was stopped."""
        return self._cancel(_named(tensors.CHAT_CANCEL, f"{model}_cancel"), request_id)

    def _cancel(self, io: tensors.ModelIO, request_id: str) -> bool:
        try:
            outputs = self.infer(io, {"request_id": request_id})
        except (InferenceServerException, ConnectionError, OSError, TimeoutError) as exc:
            # A stock tritonserver has no cancel models: it sees the cancelled request itself.
            log.debug("%s of %s not served: %s", io.name, request_id, exc)
            return False
        return bool(_first(outputs, "cancelled"))

    def synthesize_stream(self, text: str, language: str, speed: float = 1.0) -> Iterator[SpeechResult]:
        """Audio sentence by sentence; closing the iterator early stops the synthesis on the server."""
        request_id = _new_request_id()
        values = _tts_stream_inputs(text, language, speed, request_id)
        finished = False
        try:
            for outputs in self._stream(tensors.TTS_STREAM, values):
                speech = _stream_speech(outputs)
                if speech.sample_rate:  # 0 marks a filler piece
                    yield speech
            finished = True
        finally:
            if not finished:
                self._cancel(tensors.TTS_CANCEL, request_id)

    def _stream(self, io: tensors.ModelIO, values: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        """Responses of a decoupled model as they arrive, over a gRPC stream."""
        responses: queue.Queue[Any] = queue.Queue()
        stream_client = grpcclient.InferenceServerClient(self.grpc_url)
        done = threading.Event()

        def on_response(result: Any, error: Any) -> None:
            responses.put(error if error is not None else result)

        try:
            stream_client.start_stream(callback=on_response, stream_timeout=self.timeout_s)
            stream_client.async_stream_infer(
                io.name,
                _tensor_inputs(grpcclient, io, values),
                outputs=_requested_outputs(grpcclient, io),
                enable_empty_final_response=True,
            )
            while not done.is_set():
                item = responses.get(timeout=self.timeout_s)
                if isinstance(item, InferenceServerException):
                    raise _stream_error(item)
                response = item.get_response()
                if response.outputs:
                    yield _outputs(item, io)
                if (
                    response.parameters.get("triton_final_response")
                    and response.parameters["triton_final_response"].bool_param
                ):
                    done.set()
        finally:
            stream_client.stop_stream(cancel_requests=not done.is_set())
            stream_client.close()


def _stream_error(exc: InferenceServerException) -> Exception:
    # Validation errors raised inside a stream arrive as Triton errors carrying the message.
    message = str(exc)
    for marker in ("InputError: ", "ValueError: "):
        if marker in message:
            return ModelInputError(message.split(marker, 1)[1].strip().splitlines()[0])
    return _translate_error(exc)


def _named(io: tensors.ModelIO, name: str) -> tensors.ModelIO:
    """The same tensors under another served name (the cloud chat backend)."""
    return io if io.name == name else dataclasses.replace(io, name=name)


def _next_port(url: str) -> str:
    host, _, port = url.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else url


# -- asyncio client --------------------------------------------------------------


class AsyncMiloTritonClient(_WithOptions):
    """The asyncio twin of ``MiloTritonClient``, for servers such as the REST facade."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        grpc_url: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        if protocol == "http":
            # No session-wide limit: each call's own deadline (``_deadline_s``) bounds it.
            self._client: Any = httpclient_aio.InferenceServerClient(url, conn_timeout=None)
        else:
            self._client = grpcclient_aio.InferenceServerClient(url)
        self.grpc_url = grpc_url or (url if protocol == "grpc" else _next_port(url))
        self._cancels: set[asyncio.Task[bool]] = set()
        self._stream_client: Any = None

    async def close(self) -> None:
        if self._cancels:
            await asyncio.gather(*self._cancels, return_exceptions=True)
        if self._stream_client is not None:
            await self._stream_client.close()
        await self._client.close()

    def _streams(self) -> Any:
        """One gRPC client for every stream: each stream is a call on its HTTP/2 connection,
        where a client (channel) per stream opened a connection and its handshakes every time."""
        if self._stream_client is None:
            self._stream_client = grpcclient_aio.InferenceServerClient(self.grpc_url)
        return self._stream_client

    async def __aenter__(self) -> AsyncMiloTritonClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def is_live(self) -> bool:
        try:
            return bool(await self._client.is_server_live())
        except (InferenceServerException, ConnectionError, OSError):
            return False

    async def is_server_ready(self) -> bool:
        """Triton's ``/v2/health/ready``: every model loaded (the host runs with strict readiness)."""
        try:
            return bool(await self._client.is_server_ready())
        except (InferenceServerException, ConnectionError, OSError, aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def is_model_ready(self, model: str) -> bool:
        try:
            return bool(await self._client.is_model_ready(model))
        except (InferenceServerException, ConnectionError, OSError, aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def infer(
        self, io: tensors.ModelIO, values: dict[str, Any], priority: int | None = None, timeout_us: int | None = None
    ) -> dict[str, np.ndarray]:
        kwargs = _call_options(self.options, priority, timeout_us, self.protocol, self.timeout_s)
        deadline = _deadline_s(self.timeout_s, kwargs.get("timeout"))
        module = httpclient if self.protocol == "http" else grpcclient
        try:
            result = await asyncio.wait_for(
                self._client.infer(
                    io.name, _tensor_inputs(module, io, values), outputs=_requested_outputs(module, io), **kwargs
                ),
                deadline,
            )
        except InferenceServerException as exc:
            raise _translate_error(exc) from exc
        except (TimeoutError, asyncio.TimeoutError):
            raise TimeoutError(f"Triton at {self.url} did not answer within {deadline:g} s") from None
        except (OSError, aiohttp.ClientError) as exc:
            # Refused (no server there) or cut (the server went away while answering).
            raise TritonUnavailableError(f"cannot reach Triton at {self.url}: {exc!r}") from exc
        return _outputs(result, io)

    async def transcribe(
        self, audio: np.ndarray, language: str = "auto", priority: int | None = None
    ) -> TranscriptionResult:
        return _transcription(await self.infer(tensors.STT, _stt_inputs(audio, language), priority))

    async def synthesize(
        self, text: str, language: str, speed: float = 1.0, priority: int | None = None
    ) -> SpeechResult:
        return _speech(await self.infer(tensors.TTS, {"text": text, "language": language, "speed": speed}, priority))

    async def translate(self, text: str, source: str, target: str, priority: int | None = None) -> TranslationResult:
        values = {"text": text, "source": source, "target": target}
        return _translation(await self.infer(tensors.TRANSLATE, values, priority))

    async def chat(
        self,
        messages: Sequence[Message],
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        priority: int | None = None,
        model: str = tensors.CHAT.name,
        sampling: ChatSampling | None = None,
    ) -> ChatResult:
        """A whole reply; a call cancelled midway (its client left) stops the generation on the server."""
        request_id = _new_request_id()
        values = _chat_inputs(messages, language, max_tokens, temperature, sampling, request_id)
        try:
            return _chat(await self.infer(_named(tensors.CHAT, model), values, priority))
        except asyncio.CancelledError:
            self._cancel_in_background(request_id, model)
            raise

    async def chat_stream(
        self,
        messages: Sequence[Message],
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str = tensors.CHAT.name,
        sampling: ChatSampling | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """The reply piece by piece; closing the iterator early stops the generation on the server."""
        request_id = _new_request_id()
        values = _chat_inputs(messages, language, max_tokens, temperature, sampling, request_id)
        finished = False
        try:
            async for outputs in self._stream(_named(tensors.CHAT_STREAM, f"{model}_stream"), values):
                delta = _delta(outputs)
                finished = delta.finish_reason is not None
                if delta.text or finished:
                    yield delta
        finally:
            if not finished:
                self._cancel_in_background(request_id, model)

    async def cancel_chat(self, request_id: str, model: str = tensors.CHAT.name) -> bool:
        """Stop a running chat request by its id (PyTriton host); False where nothing was stopped."""
        return await self._cancel(_named(tensors.CHAT_CANCEL, f"{model}_cancel"), request_id)

    async def _cancel(self, io: tensors.ModelIO, request_id: str) -> bool:
        try:
            outputs = await asyncio.wait_for(self.infer(io, {"request_id": request_id}), CANCEL_TIMEOUT_S)
        except (InferenceServerException, ConnectionError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            # A stock tritonserver has no cancel models: it sees the cancelled request itself.
            log.debug("%s of %s not served: %s", io.name, request_id, exc)
            return False
        return bool(_first(outputs, "cancelled"))

    def _cancel_in_background(self, request_id: str, model: str) -> None:
        self._in_background(self.cancel_chat(request_id, model))

    def _in_background(self, call: Coroutine[Any, Any, bool]) -> None:
        # The caller is being cancelled: it must not wait for this call.
        task = asyncio.get_running_loop().create_task(call)
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def synthesize_stream(self, text: str, language: str, speed: float = 1.0) -> AsyncIterator[SpeechResult]:
        """Audio sentence by sentence; closing the iterator early stops the synthesis on the server."""
        request_id = _new_request_id()
        values = _tts_stream_inputs(text, language, speed, request_id)
        finished = False
        try:
            async for outputs in self._stream(tensors.TTS_STREAM, values):
                speech = _stream_speech(outputs)
                if speech.sample_rate:  # 0 marks a filler piece
                    yield speech
            finished = True
        finally:
            if not finished:
                self._in_background(self._cancel(tensors.TTS_CANCEL, request_id))

    async def _stream(self, io: tensors.ModelIO, values: dict[str, Any]) -> AsyncIterator[dict[str, np.ndarray]]:
        # A stream is scheduled as a call is: the caller's priority level and queue timeout, and
        # the same deadline for the whole stream.
        options = _call_options(self.options, None, None, "grpc", self.timeout_s)
        deadline = options.pop("client_timeout")

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": io.name,
                "inputs": _tensor_inputs(grpcclient, io, values),
                "outputs": _requested_outputs(grpcclient, io),
                "enable_empty_final_response": True,
                **options,
            }

        responses = self._streams().stream_infer(requests(), stream_timeout=deadline)
        try:
            async for result, error in responses:
                if error is not None:
                    raise _stream_error(error)
                response = result.get_response()
                if response.outputs:
                    yield _outputs(result, io)
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"stream from {self.grpc_url} timed out") from exc
            raise TritonUnavailableError(f"stream from {self.grpc_url} failed: {exc.details()}") from exc
        finally:
            # Ends the call whichever way the stream ends; a caller that left early thereby tells
            # the server (the stock server's model sees its request cancelled).
            responses.cancel()
