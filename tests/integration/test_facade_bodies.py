"""Bodies against the real server (``python -m api_facade`` under uvicorn, raw sockets where a
client misbehaves): each route's size limit holds before the body is read, declared or not, and
a body that does not arrive in time ends with 408 instead of holding the connection."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TritonHost, facade_process, metric_value, raw_request

pytestmark = pytest.mark.integration

HELLO = {"text": "Manao ahoana", "source": "mg", "target": "fr"}


@pytest.fixture(scope="module")
def facade(triton_host: TritonHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("bodies") / "facade.log"
    env = {"MILO_MAX_JSON_BYTES": "2000", "MILO_JSON_BODY_TIMEOUT_S": "1", "MILO_MAX_UPLOAD_BYTES": "50000"}
    with facade_process(triton_host, log, **env) as url:
        yield url


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(facade: str) -> None:
    head = "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
    status, body, seconds = raw_request(facade, head, [], 0)
    assert status == 413 and seconds < 2
    assert body["error"]["code"] == "payload_too_large" and "2000 bytes" in body["error"]["message"]
    assert body["request_id"]


def test_an_undeclared_body_is_cut_at_the_limit(facade: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(50):
            yield b"a" * 100
        yield b'", "source": "mg", "target": "fr"}'

    response = httpx.post(f"{facade}/v1/translate", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "2000 bytes" in response.json()["error"]["message"]
    # An upload route has its own, larger limit: the audio's, with room for base64 and framing.
    upload_limit = 50000 * 4 // 3 + 65536
    upload = httpx.post(f"{facade}/v1/stt", files={"file": ("a.wav", b"\0" * 150000, "audio/wav")}, timeout=30)
    assert upload.status_code == 413 and f"{upload_limit} bytes" in upload.json()["error"]["message"]


def test_json_nested_beyond_the_parser_is_a_400_not_a_500(facade: str) -> None:
    body = '{"audio": ' + "[" * 5000 + "]" * 5000 + "}"
    response = httpx.post(f"{facade}/v1/stt", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and error["message"] == "the body is nested too deeply"


def test_a_trickled_body_ends_with_408_at_its_deadline(facade: str) -> None:
    body = json.dumps(HELLO).encode()
    head = (
        "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    status, answer, seconds = raw_request(facade, head, [body[i : i + 1] for i in range(len(body))], 0.2)
    assert status == 408 and answer["error"]["code"] == "body_timeout"
    assert seconds < 4  # the deadline (1 s), not the client's pace (about 10 s for this body)
    # A body that arrives in time is served as before.
    assert httpx.post(f"{facade}/v1/translate", json=HELLO, timeout=30).status_code == 200


def test_refused_bodies_are_counted_as_refusals_not_as_clients_that_left(facade: str) -> None:
    count = "milo_http_request_duration_seconds_count"
    labels = {"route": "/v1/translate", "method": "POST"}
    before = {status: metric_value(facade, count, **labels, status=status) for status in ("413", "408", "499", "500")}
    cancelled = metric_value(facade, "milo_requests_cancelled_total")
    head = "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    assert raw_request(facade, head.format(5000), [], 0)[0] == 413
    assert raw_request(facade, head.format(50), [b"{"], 1.5)[0] == 408
    after = {status: metric_value(facade, count, **labels, status=status) for status in before}
    assert after["413"] == before["413"] + 1 and after["408"] == before["408"] + 1
    assert after["499"] == before["499"] and after["500"] == before["500"]
    assert metric_value(facade, "milo_requests_cancelled_total") == cancelled
