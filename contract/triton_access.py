"""The key that opens Triton's inference endpoints where a deployment exposes Triton itself.

Triton restricts an API to requests that carry a header of the operator's choosing
(``--http-restricted-api`` and ``--grpc-restricted-protocol``, ``<apis>:<header>=<value>``);
over gRPC the client sends it as metadata prefixed with ``triton-grpc-protocol-``. The header is
PyTriton's own (``TritonSecurityConfig``), so one key works with both servers and with PyTriton's
clients. Health and model metadata stay open: load balancers and the facade's readiness need them.
"""

from __future__ import annotations

from typing import Literal

ACCESS_HEADER = "triton-access-token"
GRPC_PREFIX = "triton-grpc-protocol-"
# What the key guards: inference, and the management APIs PyTriton guards by default.
RESTRICTED_APIS = ("inference", "shared-memory", "model-repository", "statistics", "trace", "logging")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def restriction(key: str) -> str:
    """The value of Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol``."""
    return f"{','.join(RESTRICTED_APIS)}:{ACCESS_HEADER}={key}"


def access_headers(key: str | None, protocol: Literal["http", "grpc"]) -> dict[str, str]:
    """What a client sends with each restricted call (nothing without a key)."""
    if not key:
        return {}
    return {(GRPC_PREFIX if protocol == "grpc" else "") + ACCESS_HEADER: key}


def check_exposure(bind: str, key: str | None) -> None:
    """Triton listens beyond loopback only with a key: else anyone who reaches it skips the
    facade's tokens, limits and priorities. ``ValueError`` says what to set."""
    if bind not in LOOPBACK and not key:
        raise ValueError(
            f"MILO_TRITON_BIND={bind} exposes Triton beyond this host: set MILO_TRITON_KEY (a long random "
            "string, the same for the facade) so that its inference endpoints need it"
        )
