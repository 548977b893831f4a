"""One Triton server (KServe v2) as the transport of Milo Voice's calls, over HTTP or gRPC, asyncio.

    >>> async with AsyncMiloTritonClient("localhost:8001", protocol="grpc") as milo:
    ...     (await milo.translate("Manao ahoana daholo ianareo.", "mg", "fr")).text

Streaming models (``chat_stream``, ``tts_stream``) are decoupled: Triton serves them
over gRPC streams only, so streams go over gRPC whatever the protocol of the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal

import aiohttp
import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from tritonclient.utils import InferenceServerException

from client.calls import CallOptions, ModelCalls
from client.errors import TritonUnavailableError, classify
from contract import codec, tensors
from contract.triton_access import access_headers

Protocol = Literal["http", "grpc"]
# aiohttp accepts compressed answers unless told otherwise, and Triton then gzips each one (a TTS
# answer is its audio: hundreds of kilobytes): the server compresses and the caller inflates,
# CPU on both ends that a local network does not pay back.
ANSWERS_AS_THEY_ARE = {"Accept-Encoding": "identity"}
# What a health check that finds no server raises.
_UNREACHABLE = (InferenceServerException, ConnectionError, OSError, aiohttp.ClientError, asyncio.TimeoutError)
# A health check answered later than this counts as "no": a server that takes the connection and
# then says nothing (one being killed) must not hold the facade's /ready or the pool's probe. The
# calls have no session-wide limit (each model call has its own deadline), so this is their only one.
HEALTH_TIMEOUT_S = 2.0


class AsyncMiloTritonClient(ModelCalls):
    """The calls of ``ModelCalls`` to one Triton server. ``url`` is ``host:port`` (8000 for HTTP,
    8001 for gRPC by default); streams use ``grpc_url`` (by default the HTTP port + 1).
    ``access_key``: the key of a Triton that guards its inference endpoints (``MILO_TRITON_KEY``)."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        grpc_url: str | None = None,
        timeout_s: float = 60.0,
        access_key: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._headers = access_headers(access_key, protocol) | (ANSWERS_AS_THEY_ARE if protocol == "http" else {})
        self._stream_headers = access_headers(access_key, "grpc")
        if protocol == "http":
            # No session-wide limit: each call's own deadline (``deadline_s``) bounds it.
            self._client: Any = httpclient_aio.InferenceServerClient(url, conn_timeout=None)
        else:
            self._client = grpcclient_aio.InferenceServerClient(url)
        self._module: Any = httpclient if protocol == "http" else grpcclient
        self.grpc_url = grpc_url or (url if protocol == "grpc" else _next_port(url))
        # Held in a dict, not an attribute: views of this client (``with_options``, shallow copies)
        # share it, so the one a view's stream opens is the one ``close`` closes.
        self._stream_clients: dict[str, Any] = {}

    async def close(self) -> None:
        await self.wait_background()
        for streams in self._stream_clients.values():
            await streams.close()
        self._stream_clients.clear()
        await self._client.close()

    async def __aenter__(self) -> AsyncMiloTritonClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- health ----------------------------------------------------------------------

    async def is_live(self) -> bool:
        return await _answers_yes(self._client.is_server_live())

    async def is_server_ready(self) -> bool:
        """Triton's ``/v2/health/ready``: every model loaded (the host runs with strict readiness)."""
        return await _answers_yes(self._client.is_server_ready())

    async def is_model_ready(self, model: str) -> bool:
        return await _answers_yes(self._client.is_model_ready(model))

    # -- the transport -----------------------------------------------------------------

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        deadline = deadline_s(self.timeout_s, options.queue_timeout_us)
        try:
            # A timeout scope, not ``wait_for``: no task of its own for each call.
            async with asyncio.timeout(deadline):
                result = await self._client.infer(
                    io.name,
                    _infer_inputs(self._module, inputs, io),
                    outputs=[self._module.InferRequestedOutput(spec.name) for spec in io.outputs],
                    **_scheduling(options),
                    **({"client_timeout": deadline} if self.protocol == "grpc" else {}),
                    headers=self._headers or None,
                )
        except InferenceServerException as exc:
            raise classify(exc) from exc
        except TimeoutError:
            raise TimeoutError(f"Triton at {self.url} did not answer within {deadline:g} s") from None
        except (OSError, aiohttp.ClientError) as exc:
            # Refused (no server there) or cut (the server went away while answering).
            raise TritonUnavailableError(f"cannot reach Triton at {self.url}: {exc!r}") from exc
        return {spec.name: result.as_numpy(spec.name) for spec in io.outputs}

    async def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        # A stream is scheduled as a call is (priority, queue timeout), with one deadline for all of it.
        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": io.name,
                "inputs": _infer_inputs(grpcclient, inputs, io),
                "outputs": [grpcclient.InferRequestedOutput(spec.name) for spec in io.outputs],
                "enable_empty_final_response": True,
                **_scheduling(options),
            }

        deadline = deadline_s(self.timeout_s, options.queue_timeout_us)
        streams = self._streams()
        responses = streams.stream_infer(requests(), stream_timeout=deadline, headers=self._stream_headers or None)
        try:
            async for result, error in responses:
                if error is not None:
                    raise classify(error)
                response = result.get_response()
                if response.outputs:
                    yield {spec.name: result.as_numpy(spec.name) for spec in io.outputs}
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

    def _streams(self) -> Any:
        """One gRPC client for every stream: each stream is a call on its HTTP/2 connection,
        where a client (channel) per stream opened a connection and its handshakes every time."""
        if self.grpc_url not in self._stream_clients:
            self._stream_clients[self.grpc_url] = grpcclient_aio.InferenceServerClient(self.grpc_url)
        return self._stream_clients[self.grpc_url]


def deadline_s(compute_s: float, queue_timeout_us: int | None) -> float:
    """How long a call may take: the time it may queue, then ``compute_s`` to be computed.

    A request that waits out its queue timeout is then refused by Triton (busy, retry later)
    before the caller gives up on it, instead of the caller timing out first.
    """
    return compute_s + (queue_timeout_us or 0) / 1_000_000


def _scheduling(options: CallOptions) -> dict[str, Any]:
    """tritonclient's keyword arguments for Triton's priority and queue timeout."""
    scheduling: dict[str, Any] = {"priority": options.priority}
    if options.queue_timeout_us is not None:
        scheduling["timeout"] = options.queue_timeout_us
    return scheduling


def _infer_inputs(module: Any, inputs: codec.Arrays, io: tensors.ModelIO) -> list[Any]:
    types = {spec.name: spec.triton_dtype for spec in io.inputs}
    tensors_in = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        tensors_in.append(tensor)
    return tensors_in


def _next_port(url: str) -> str:
    host, _, port = url.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else url


async def _answers_yes(check: Awaitable[Any]) -> bool:
    """A health check's answer; False where no server answers, or none within ``HEALTH_TIMEOUT_S``."""
    try:
        return bool(await asyncio.wait_for(check, HEALTH_TIMEOUT_S))
    except _UNREACHABLE:
        return False
