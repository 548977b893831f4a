"""Both real servers, each in a subprocess, called with tritonclient over HTTP and gRPC.

Every test runs against the PyTriton host and against the stock ``tritonserver`` binary
serving ``model_repository/`` through its Python backend adapters: same answers, same
batching, same metrics, and the facade works unchanged against either.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio

from client import AsyncMiloTritonClient, ChatMessage, ChatRequest, InputError, MiloTritonClient
from client.triton import _infer_inputs
from contract import codec, tensors
from contract.records import TtsRequest
from loadtests.bench import triton_counters
from milo_voice.serving import readiness
from tests.conftest import TritonHost, facade_client, speak

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return speak("Bonjour, je voudrais acheter du riz au marché.")


@pytest.fixture(scope="module", params=["pytriton", "tritonserver"])
def server(request: pytest.FixtureRequest) -> TritonHost:
    """The PyTriton host, then the stock tritonserver: every test of this module runs on both."""
    return request.getfixturevalue("triton_host" if request.param == "pytriton" else "native_triton_host")


@pytest.fixture(params=["http", "grpc"])
def milo(request: pytest.FixtureRequest, server: TritonHost) -> Any:
    url = server.http_url if request.param == "http" else server.grpc_url
    with MiloTritonClient(url, protocol=request.param, grpc_url=server.grpc_url) as client:
        yield client


def metrics(host: TritonHost) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{host.metrics}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} not in metrics"
    return float(match.group(1))


def test_every_model_is_ready_on_both_protocols(server: TritonHost) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.is_server_ready() and grpc.is_server_ready()
    for model in server.models:
        assert http.is_model_ready(model), model
        assert grpc.is_model_ready(model), model
    # The model server's health check (its images run it) says the same.
    assert readiness.main(["--url", f"http://{server.http_url}", "--server", server.server]) == 0
    config = http.get_model_config("stt")
    assert config["max_batch_size"] == 8
    assert int(config["dynamic_batching"]["priority_levels"]) == 2
    assert grpc.get_model_config("chat_stream").config.model_transaction_policy.decoupled


def test_triton_listens_on_loopback_only(server: TritonHost) -> None:
    """Clients reach the models through the facade (tokens, limits, priorities) unless a
    deployment opens Triton on purpose (MILO_TRITON_BIND)."""
    import ipaddress

    import psutil

    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in (server.http, server.grpc)
    }
    assert {port for _, port in listening} == {server.http, server.grpc}

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # gRPC listens as ::ffff:127.0.0.1
        return (mapped or address).is_loopback

    assert all(loopback(ip) for ip, _ in listening), listening


def test_raw_tritonclient_translate(server: TritonHost) -> None:
    """A plain tritonclient user needs nothing from Milo Voice's client."""
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name, value in (("text", "Manao ahoana daholo ianareo."), ("source", "mg"), ("target", "fr")):
        tensor = httpclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
        inputs.append(tensor)
    result = client.infer("translate", inputs)
    assert result.as_numpy("translation")[0][0].decode() == "Bonjour à tous."
    assert result.as_numpy("error")[0][0] == b""


def test_stt(milo: MiloTritonClient, clip: np.ndarray) -> None:
    result = milo.transcribe(clip, "auto")
    assert result.language == "fr"
    assert "bonjour" in result.text.lower()
    assert 0 < result.confidence <= 1
    assert result.segments


def test_tts(milo: MiloTritonClient) -> None:
    speech = milo.synthesize("Tamin'ny 2024 dia tonga izy.", "mg")
    assert speech.sample_rate == 16000
    assert 1.5 < speech.duration < 6
    assert speech.spoken_text.startswith("Tamin'ny efatra amby roapolo sy roa arivo")


def test_translate(milo: MiloTritonClient) -> None:
    assert milo.translate("Bonjour à tous.", "fr", "mg").text == "Manao ahoana daholo ianareo."


def test_chat_and_streams(milo: MiloTritonClient) -> None:
    request = ChatRequest([ChatMessage("user", "What is the capital of France?")], max_tokens=16, temperature=0.0)
    reply = milo.chat(request)
    assert reply.text and reply.completion_tokens > 0
    tokens = list(milo.chat_stream(request))
    assert len(tokens) > 2
    clips = list(milo.synthesize_stream("Salama. Manao ahoana ianao?", "mg"))
    assert [c.spoken_text for c in clips] == ["Salama.", "Manao ahoana ianao?"]


def test_bad_input_in_a_batch_does_not_fail_its_neighbours(milo: MiloTritonClient) -> None:
    with pytest.raises(InputError, match="empty"):
        milo.translate("   ", "mg", "fr")
    with pytest.raises(InputError, match="language"):
        milo.synthesize("Salama", "xx")
    with pytest.raises(InputError, match="empty"):
        milo.transcribe(np.zeros(0, dtype=np.float32), "fr")
    # The raw call returns the tensors: the refusal is in ``error``, the other outputs are empty.
    outputs = milo.infer_tensors(tensors.CHAT, {"messages": np.array([[b"not json"]], dtype=np.object_)})
    assert b"Expecting value" in outputs["error"].reshape(-1)[0]
    assert outputs["text"].reshape(-1)[0] == b""

    def mixed(i: int) -> str:
        try:
            return milo.translate("Bonjour à tous." if i % 2 else " ", "fr", "mg").text
        except InputError:
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(mixed, range(32)))
    assert answers == ["refused" if i % 2 == 0 else "Manao ahoana daholo ianareo." for i in range(32)]


def test_answers_come_back_uncompressed_over_http(server: TritonHost) -> None:
    """Triton gzips an answer its caller accepts compressed, as aiohttp does by default; the
    client asks for answers as they are. Between the client and the server, a proxy that passes
    everything through records what each side said: the same TTS call made the way aiohttp does
    by default comes back gzipped, the client's comes back as it is."""
    import aiohttp
    from aiohttp import web

    seen: list[tuple[str | None, str | None]] = []  # (what the caller accepted, how Triton encoded)

    async def run() -> None:
        async with aiohttp.ClientSession(auto_decompress=False) as upstream:

            async def forward(request: web.Request) -> web.Response:
                headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
                url = f"http://{server.http_url}{request.path_qs}"
                async with upstream.request(request.method, url, headers=headers, data=await request.read()) as answer:
                    body = await answer.read()
                    if request.path.endswith("/infer"):
                        seen.append((request.headers.get("Accept-Encoding"), answer.headers.get("Content-Encoding")))
                    kept = {
                        k: v
                        for k, v in answer.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding")
                    }
                    return web.Response(status=answer.status, body=body, headers=kept)

            app = web.Application()
            app.router.add_route("*", "/{path:.*}", forward)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                async with AsyncMiloTritonClient(f"127.0.0.1:{port}", grpc_url=server.grpc_url) as milo:
                    speech = await milo.synthesize("Bonjour à tous, et bienvenue au marché.", "fr")
                    assert speech.duration > 0.5
                    # The same call as aiohttp makes it by default: the client's inputs, its session.
                    inputs = codec.pack_request(tensors.TTS, TtsRequest("Bonjour à tous.", "fr"))
                    plain = httpclient_aio.InferenceServerClient(f"127.0.0.1:{port}")
                    try:
                        await plain.infer(tensors.TTS.name, _infer_inputs(httpclient, inputs, tensors.TTS))
                    finally:
                        await plain.close()
            finally:
                await runner.cleanup()

    asyncio.run(run())
    client_call, default_call = seen
    assert client_call == ("identity", None)
    assert default_call[0] is not None and "gzip" in default_call[0] and default_call[1] == "gzip"


def test_asyncio_client(server: TritonHost, clip: np.ndarray) -> None:
    async def run() -> None:
        async with AsyncMiloTritonClient(server.http_url, grpc_url=server.grpc_url) as milo:
            results = await asyncio.gather(
                milo.translate("Hello everyone.", "en", "fr"),
                milo.transcribe(clip, "fr"),
                milo.synthesize("Bonjour.", "fr"),
            )
            assert results[0].text == "Bonjour à tous."
            assert "bonjour" in results[1].text.lower()
            assert results[2].duration > 0.2
            tokens = [t async for t in milo.chat_stream(ChatRequest([ChatMessage("user", "Hi")], max_tokens=8))]
            assert tokens

    asyncio.run(run())


def test_requests_are_batched_across_clients(server: TritonHost, clip: np.ndarray) -> None:
    before = metrics(server)
    counts = {
        m: (metric(before, "nv_inference_count", m), metric(before, "nv_inference_exec_count", m))
        for m in ("stt", "translate")
    }
    # PyTriton guards the statistics API with a token of its own (tests/integration/test_triton_key.py).
    statistics_api = server.server == "tritonserver"
    batches_before = triton_counters.read_batch_stats(server.http_url) if statistics_api else {}
    sentences = ["Bonjour à tous.", "Merci beaucoup monsieur.", "Comment allez-vous?", "Au revoir et à bientôt."]

    # Two cores decode a whole batch of 30-second windows at once: allow for the queue.
    def stt_call(i: int) -> str:
        with MiloTritonClient(server.http_url, timeout_s=300) as c:
            return c.transcribe(clip[: clip.size - 800 * (i % 4)], "fr").text

    def translate_call(i: int) -> str:
        with MiloTritonClient(server.grpc_url, protocol="grpc", timeout_s=300) as c:
            return c.translate(sentences[i % 4], "fr", "mg").text

    with ThreadPoolExecutor(32) as pool:
        stt_texts = list(pool.map(stt_call, range(16)))
        translations = list(pool.map(translate_call, range(64)))
    assert all("bonjour" in t.lower() for t in stt_texts)
    assert translations[0] == "Manao ahoana daholo ianareo."

    after = metrics(server)
    by_batch = (
        triton_counters.by_batch(batches_before, triton_counters.read_batch_stats(server.http_url))
        if statistics_api
        else {}
    )
    for model, requests_sent in (("stt", 16), ("translate", 64)):
        inferences = metric(after, "nv_inference_count", model) - counts[model][0]
        executions = metric(after, "nv_inference_exec_count", model) - counts[model][1]
        print(f"{model}: {inferences:.0f} inferences in {executions:.0f} executions")
        assert inferences == requests_sent
        assert executions <= inferences / 2, f"{model} was not batched: {executions} executions"
        # The model's process timed the same batches (milo_voice/serving/batch_metrics.py): a
        # batch's time in it and the role's part, which the GPU benchmark sets beside Triton's.
        own = triton_counters.stretch(triton_counters.parse(before), triton_counters.parse(after))[model]
        print(f"{model}: a batch {own['batch_ms']} ms in the model's process, {own['role_ms']} ms in the role")
        assert own["batch_executions"] == executions
        assert 0 < own["role_ms"] <= own["batch_ms"]
        if not statistics_api:
            continue
        # The statistics API's executions by batch size (what the GPU benchmark sets against the
        # same batches in process) account for the same executions and requests.
        sizes = by_batch[model]
        assert sum(row["executions"] for row in sizes.values()) == executions
        assert sum(size * row["executions"] for size, row in sizes.items()) == requests_sent
        assert all(row["ms"] > 0 for row in sizes.values())
    assert "nv_inference_queue_duration_us" in after


def test_fifty_concurrent_mixed_requests(server: TritonHost, clip: np.ndarray) -> None:
    def call(i: int) -> bool:
        protocol = "http" if i % 2 else "grpc"
        url = server.http_url if protocol == "http" else server.grpc_url
        # Two cores serve 50 requests at once: allow for the queue.
        with MiloTritonClient(url, protocol=protocol, grpc_url=server.grpc_url, timeout_s=300) as c:
            kind = i % 5
            if kind == 0:
                return bool(c.transcribe(clip, "auto").text)
            if kind == 1:
                return c.synthesize("Manao ahoana ianao?", "mg").duration > 0.3
            if kind == 2:
                return c.translate("Misaotra betsaka tompoko.", "mg", "en").text == "Thank you very much sir."
            if kind == 3:
                return bool(c.chat(ChatRequest([ChatMessage("user", "Salama")], max_tokens=8)).text)
            return len(list(c.chat_stream(ChatRequest([ChatMessage("user", "Bonjour")], max_tokens=6)))) > 0

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, range(50)))
    assert all(results)


def test_facade_is_ready_against_the_real_host(server: TritonHost) -> None:
    with facade_client(server.http_url) as facade:
        response = facade.get("/ready")
    assert response.status_code == 200
    assert response.json()["not_ready"] == []


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue()


def test_facade_routes_work_unchanged_on_either_server(server: TritonHost, clip: np.ndarray) -> None:
    """The same facade, only its Triton URLs changed: every route answers the same way."""
    with facade_client(server.http_url, server.grpc_url) as facade:
        body = {"text": "Misaotra betsaka tompoko.", "source": "mg", "target": "en"}
        translated = facade.post("/v1/translate", json=body)
        speech = facade.post("/v1/tts", json={"text": "Salama tompoko.", "language": "mg", "format": "pcm"})
        heard = facade.post("/v1/stt", json={"audio": base64.b64encode(wav_bytes(clip)).decode(), "language": "fr"})
        chat = facade.post("/v1/chat", json={"message": "Salama", "max_tokens": 8})
        refused = facade.post("/v1/translate", json={"text": "Salama", "source": "zz", "target": "fr"})
    assert translated.status_code == 200, translated.text
    assert translated.json()["translations"][0]["text"] == "Thank you very much sir."
    assert speech.status_code == 200 and len(speech.content) > 16000
    assert heard.status_code == 200, heard.text
    assert "bonjour" in heard.json()["text"].lower()
    assert chat.status_code == 200, chat.text
    assert chat.json()["reply"]
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "source"
