"""Translation with step-level batching on the stock Triton server, through the real facade: a
translation-only host whose role decodes on its own thread (the torch engine on the CPU, four
rows of search) and answers each request through its response sender, Triton's queue short.

Requests sent together, and requests of several rows, get the answers CTranslate2 gives in
process; a refused row is answered in its place while the other rows decode; requests past the
rows and Triton's queue are answered busy (503, Retry-After) while the others are served.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import MiloTritonClient
from contract import codec, tensors
from contract.records import InputError, TranslateRequest, Translation
from loadtests.bench import triton_counters
from milo_voice.registry import load_registry, model_section
from milo_voice.roles.translate import Translator
from milo_voice.triton_repository import write_configs
from tests.conftest import TritonHost, facade_process, free_port, running_host
from tests.roles.test_nllb_torch import REQUESTS

pytestmark = pytest.mark.integration

SENTENCES = 4  # the sentences the search holds
BATCH = 3  # requests (or rows) Triton hands over at once
TEXTS = [(r.text, r.source, r.target) for r in REQUESTS]
# Requests that may wait in Triton's queue: every text sent together. They can all arrive before its
# batcher takes the first batch out, and until then each counts against the queue's bound.
QUEUE = len(TEXTS)


def stepwise_registry(path: Path) -> Path:
    """The registry's translation entry with step-level batching, its queue short."""
    section = model_section("translate")
    section = re.sub(r"max_queue_size = \d+", f"max_queue_size = {QUEUE}", section)
    section = re.sub(r"max_batch_size = \d+", f"max_batch_size = {BATCH}", section)
    section = re.sub(r"\npreferred_batch_sizes = \[[^\]]*\]", "", section)
    params = f'params = {{ step_batching = true, engine = "torch", search_sentences = {SENTENCES},'
    section = re.sub(r"params = \{", params, section)
    path.write_text(section)
    return path


@dataclass(frozen=True)
class Stack:
    host: TritonHost
    facade: str
    repository: Path


@pytest.fixture(scope="module")
def stack(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("translate-steps")
    repository = workdir / "repository"
    repository.mkdir()
    registry = stepwise_registry(repository / "registry.toml")
    write_configs(load_registry(registry), repository)
    host = TritonHost(free_port(), free_port(), free_port(), models=("translate",), server="tritonserver")
    ports = ["--http-port", str(host.http), "--grpc-port", str(host.grpc), "--metrics-port", str(host.metrics)]
    command = [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(workdir), *ports]
    env = {"MILO_PROFILE": "embedded", "MILO_REGISTRY": str(registry), "MILO_CHAT_CLOUD_URL": ""}
    with running_host(host, command, workdir / "host.log", **env) as ready:
        facade_env = {"MILO_REQUIRED_MODELS": '["translate"]', "MILO_TRITON_PROTOCOL": "grpc",
                      "MILO_TRITON_URL": ready.grpc_url}  # fmt: skip
        with facade_process(ready, workdir / "facade.log", **facade_env) as url:
            yield Stack(ready, url, repository)
    # Every request it rescheduled was let go: the server unloaded the model and stopped in time.
    assert "Exit timeout expired" not in (workdir / "host.log").read_text()


@pytest.fixture(scope="module")
def reference(embedded_dir: Path) -> Translator:
    """CTranslate2 in process, in float32 as the torch engine computes on the CPU."""
    return Translator(embedded_dir / "translate", compute_type="float32", engine="ctranslate2")


def expected(reference: Translator, text: str, source: str, target: str) -> str:
    answer = reference.translate_batch([TranslateRequest(text, source, target)])[0]
    assert isinstance(answer, Translation)
    return answer.text


def test_requests_sent_together_get_ctranslate2s_answers(stack: Stack, reference: Translator) -> None:
    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [
                client.post(f"{stack.facade}/v1/translate", json={"text": text, "source": source, "target": target})
                for text, source, target in TEXTS  # the queue holds them all
            ]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(responses), [
        r.text for r in responses if r.status_code != 200
    ]
    from_model = 0
    for (text, source, target), response in zip(TEXTS, responses, strict=True):
        if response.json()["translations"][0]["origin"] == "model":  # not the phrasebook's
            assert response.json()["translation"] == expected(reference, text, source, target)
            from_model += 1
    assert from_model >= len(TEXTS) - 2
    # The Python backend served them with step-level batching (the registry's parameter took).
    assert "step-level batching" in (stack.repository.parent / "host.log").read_text()
    # Its search's counters reach Triton's metrics port once the search is idle (the last answer
    # may reach the client first).
    deadline = time.monotonic() + 10
    while (search := _search_counters(stack)).get("search_steps", 0.0) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert search.get("search_steps", 0.0) > 0 and search["search_seconds"] > 0
    assert search["search_steps"] <= search["search_sentences"] <= SENTENCES * search["search_steps"]


def _search_counters(stack: Stack) -> dict[str, float]:
    return triton_counters.read(f"http://127.0.0.1:{stack.host.metrics}/metrics").get("translate", {})


def test_a_refused_request_is_answered_beside_requests_that_decode(stack: Stack, reference: Translator) -> None:
    """A refused request gets its error tensor while the others decode; so does a refused row of a
    request of several rows, whose other rows are translated."""
    rows = [TranslateRequest(*TEXTS[3]), TranslateRequest("Bonjour", "fr", "fr"), TranslateRequest(*TEXTS[4])]
    with MiloTritonClient(stack.host.http_url) as client:

        async def together() -> list[Translation | Exception]:
            calls = (client.calls.translate(r.text, r.source, r.target) for r in rows)
            return list(await asyncio.gather(*calls, return_exceptions=True))

        answers = client.run(together())
        packed = [codec.pack_request(tensors.TRANSLATE, row) for row in rows]
        outputs = client.infer_tensors(
            tensors.TRANSLATE, {name: np.concatenate([p[name] for p in packed]) for name in packed[0]}
        )
    assert isinstance(answers[1], InputError) and "both 'fr'" in str(answers[1])
    assert isinstance(answers[0], Translation) and answers[0].text == expected(reference, *TEXTS[3])
    assert isinstance(answers[2], Translation) and answers[2].text == expected(reference, *TEXTS[4])
    errors = [e.decode() if isinstance(e, bytes) else str(e) for e in outputs["error"].ravel()]
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in outputs["translation"].ravel()]
    assert errors[0] == errors[2] == "" and "both 'fr'" in errors[1]
    assert texts[0] == answers[0].text and texts[2] == answers[2].text


def test_requests_past_the_rows_and_the_queue_are_answered_busy(stack: Stack, reference: Translator) -> None:
    """Requests wait for rows in Triton's queue, not the role's: a burst of twice what the rows,
    the batch handed over and the queue hold gets some 503s with Retry-After (Triton's full queue)
    and the others answered in full; after the burst, a request is served again. (Each text is new
    to the facade's cache, so that every one reaches the model.)"""
    long_text, source, target = TEXTS[3]  # two sentences
    texts = [f"{long_text} {n}" for n in range(2 * (SENTENCES // 2 + BATCH + QUEUE))]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            bodies = [{"text": text, "source": source, "target": target} for text in texts]
            return list(await asyncio.gather(*(client.post(f"{stack.facade}/v1/translate", json=b) for b in bodies)))

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {200, 503}, [r.text for r in responses]
    for text, response in zip(texts, responses, strict=True):
        if response.status_code == 503:
            assert response.headers["Retry-After"] and response.json()["error"]["code"] == "model_busy"
        else:
            assert response.json()["translation"] == expected(reference, text, source, target)
    refused = next(text for text, response in zip(texts, responses, strict=True) if response.status_code == 503)
    after = httpx.post(f"{stack.facade}/v1/translate", json={"text": refused, "source": source, "target": target})
    assert after.status_code == 200 and after.json()["translation"] == expected(reference, refused, source, target)
