"""What a call to Triton can fail with, told apart by Triton's status codes.

A request the model refuses comes back in its ``error`` tensor (``contract.records.InputError``);
everything here is the transport's or the server's: unreachable, not ready, busy, too slow.
"""

from __future__ import annotations

from tritonclient.utils import InferenceServerException


class TritonUnavailableError(ConnectionError):
    """Triton could not be reached, or the model is not there or not ready: try another server."""


class TritonBusyError(TritonUnavailableError):
    """The model's queue is full, or the request waited in it past its queue timeout: retry soon."""


# gRPC status names and HTTP statuses meaning "not here, not now". A server that refuses the
# caller's key (MILO_TRITON_KEY, contract/triton_access.py) is, to this caller, not there: another
# server may take the call, and the operator reads why in the log and in the endpoint's status.
_UNAVAILABLE = {"UNAVAILABLE", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "503", "404", "403", "401"}
_TIMED_OUT = {"DEADLINE_EXCEEDED", "504"}
# Triton answers both a full queue and a model that is not ready with UNAVAILABLE; only its own
# message tells the full queue (and a queue timeout) apart, and only a model not ready is a reason
# to take a server out of rotation.
_QUEUE_REFUSALS = ("exceeds maximum queue size", "timeout expired")


def classify(exc: InferenceServerException) -> Exception:
    """The error a caller acts on: ``TritonBusyError``, ``TritonUnavailableError``, ``TimeoutError``,
    or ``exc`` itself (a server fault, or a request the server could not take)."""
    code = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if code in _UNAVAILABLE:
        busy = any(marker in message.lower() for marker in _QUEUE_REFUSALS)
        return (TritonBusyError if busy else TritonUnavailableError)(message)
    if code in _TIMED_OUT:
        return TimeoutError(message)
    return exc
