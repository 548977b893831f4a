"""The facade's liveness and readiness (readiness asks Triton; here no Triton runs)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api_facade.main import app
from api_facade.settings import get_settings
from tests.conftest import free_port


@pytest.fixture
def facade(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("MILO_TRITON_URL", f"127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    with TestClient(app) as client:
        yield client
    get_settings.cache_clear()


def test_health_answers(facade: TestClient) -> None:
    response = facade.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_is_503_naming_the_models_when_triton_is_down(facade: TestClient) -> None:
    response = facade.get("/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert sorted(response.json()["not_ready"]) == ["chat", "stt", "translate", "tts"]
