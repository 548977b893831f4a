"""POST /v1/translate end to end: the facade in process, a real PyTriton host, a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import TritonHost, facade_client, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def api(triton_host: TritonHost) -> Iterator[TestClient]:
    with facade_client(triton_host.http_url) as client:
        yield client


def test_one_text(api: TestClient) -> None:
    response = api.post(
        "/v1/translate", json={"text": "Où se trouve l'hôpital le plus proche?", "source": "fr", "target": "mg"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["translation"] == "Aiza ny hopitaly akaiky indrindra?"
    assert body["translations"] == [{"text": "Aiza ny hopitaly akaiky indrindra?", "origin": "model"}]
    assert response.headers["X-Request-ID"]


def test_batch_keeps_order(api: TestClient) -> None:
    texts = ["Misaotra betsaka tompoko.", "Veloma ary mandra-pihaona.", "Mila rano sy sakafo izahay."]
    response = api.post("/v1/translate", json={"text": texts, "source": "mg", "target": "en"})
    assert response.status_code == 200
    body = response.json()
    assert "translation" not in body
    assert [t["text"] for t in body["translations"]] == [
        "Thank you very much sir.",
        "Goodbye and see you soon.",
        "We need water and food.",
    ]


def test_phrasebook_wins_over_the_model(api: TestClient) -> None:
    response = api.post("/v1/translate", json={"text": "manao ahoana daholo !", "source": "mg", "target": "fr"})
    assert response.json()["translations"] == [{"text": "Bonjour à tous", "origin": "phrasebook"}]


def test_second_translation_comes_from_the_cache(api: TestClient) -> None:
    body = {"text": "Tiako ny mozika sy ny dihy.", "source": "mg", "target": "fr"}
    first = api.post("/v1/translate", json=body).json()["translations"][0]
    second = api.post("/v1/translate", json=body).json()["translations"][0]
    assert first == {"text": "J'aime la musique et la danse.", "origin": "model"}
    assert second == {"text": "J'aime la musique et la danse.", "origin": "cache"}


def test_redis_cache_is_shared_and_survives_a_restart(triton_host: TritonHost, redis_url: str) -> None:
    body = {"text": "Ny ankizy dia mianatra any an-tsekoly isan'andro.", "source": "mg", "target": "en"}
    with facade_client(triton_host.http_url, MILO_REDIS_URL=redis_url) as first_facade:
        assert first_facade.post("/v1/translate", json=body).json()["translations"][0]["origin"] == "model"
    keys = redis.Redis.from_url(redis_url).keys("milo:translate:*")
    assert keys
    with facade_client(triton_host.http_url, MILO_REDIS_URL=redis_url) as restarted:
        # A new facade reads the cache once the model has said which weights it runs (any reply).
        other = {**body, "text": "Misaotra betsaka tompoko."}
        assert restarted.post("/v1/translate", json=other).json()["translations"][0]["origin"] == "model"
        cached = restarted.post("/v1/translate", json=body).json()["translations"][0]
    assert cached == {"text": "The children study at school every day.", "origin": "cache"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "", "source": "mg", "target": "fr"}, "text"),
        ({"text": "   \n", "source": "mg", "target": "fr"}, "text"),
        ({"text": [], "source": "mg", "target": "fr"}, "text"),
        ({"text": ["Salama", " "], "source": "mg", "target": "fr"}, "text"),
        ({"text": "Salama", "source": "xx", "target": "fr"}, "source"),
        ({"text": "Salama", "source": "mg", "target": "mg"}, "target"),
        ({"source": "mg", "target": "fr"}, "text"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: TestClient, body: dict[str, object], field: str) -> None:
    response = api.post("/v1/translate", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


def test_a_long_text_is_translated_whole_and_a_sentence_beyond_the_limit_is_a_422(api: TestClient) -> None:
    sentences = ["Misaotra betsaka tompoko.", "Veloma ary mandra-pihaona.", "Mila rano sy sakafo izahay."] * 7
    response = api.post("/v1/translate", json={"text": " ".join(sentences), "source": "mg", "target": "en"})
    assert response.status_code == 200
    assert response.json()["translation"].count("Thank you very much sir.") == 7
    endless = " ".join(["Misaotra betsaka tompoko"] * 40)
    refused = api.post("/v1/translate", json={"text": [endless, "Salama"], "source": "mg", "target": "fr"})
    assert refused.status_code == 422
    assert "limit of" in refused.json()["error"]["message"]


def test_request_id_is_in_the_error_log(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="api_facade"):
        response = api.post(
            "/v1/translate", json={"text": " ", "source": "mg", "target": "fr"}, headers={"X-Request-ID": "trace-42"}
        )
    assert response.headers["X-Request-ID"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"
    assert any("trace-42" in record.getMessage() and "422" in record.getMessage() for record in caplog.records)


def test_not_json_is_a_400_saying_where_it_broke(api: TestClient) -> None:
    response = api.post("/v1/translate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert (
        response.json()["error"]["code"] == "invalid_json" and "at character 1" in response.json()["error"]["message"]
    )


def test_triton_down_is_a_503_with_retry_after() -> None:
    with facade_client(f"127.0.0.1:{free_port()}") as client:
        response = client.post("/v1/translate", json={"text": "Salama tompoko", "source": "mg", "target": "fr"})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "model_unavailable"
