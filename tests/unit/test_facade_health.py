"""The facade's liveness and readiness (readiness asks Triton; here no Triton runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import facade_client, free_port


@pytest.fixture
def facade() -> Iterator[TestClient]:
    with facade_client(f"127.0.0.1:{free_port()}") as client:
        yield client


def test_health_answers(facade: TestClient) -> None:
    response = facade.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_is_503_naming_the_models_when_triton_is_down(facade: TestClient) -> None:
    response = facade.get("/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert sorted(response.json()["not_ready"]) == ["chat", "stt", "translate", "tts"]
