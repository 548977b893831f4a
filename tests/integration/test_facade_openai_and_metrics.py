"""OpenAI-compatible routes driven by the official ``openai`` package, and the facade's metrics."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import openai
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from api_facade.audio import encode
from tests.conftest import TritonHost, facade_client, speak

pytestmark = pytest.mark.integration


@pytest.fixture
def api(triton_host: TritonHost) -> Iterator[TestClient]:
    with facade_client(triton_host.http_url, triton_host.grpc_url) as client:
        yield client


@pytest.fixture
def sdk(api: TestClient) -> openai.OpenAI:
    # The SDK speaks HTTP through the facade's in-process client (an httpx.Client).
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=api, max_retries=0)


def test_models(sdk: openai.OpenAI) -> None:
    assert {m.id for m in sdk.models.list()} == {"milo-chat", "milo-stt", "milo-tts"}
    assert sdk.models.retrieve("milo-stt").id == "milo-stt"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


def test_what_sdk_examples_send_is_served_or_refused_clearly(sdk: openai.OpenAI) -> None:
    """OpenAI's voice names, content as a list of text parts and a developer message are served;
    options Milo Voice does not serve are a 400 naming them, never silently ignored."""
    spoken = sdk.audio.speech.create(model="milo-tts", voice="alloy", input="Bonjour à tous.", response_format="wav")
    assert sf.read(io.BytesIO(spoken.content))[0].size > 0
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    messages = [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": parts}]
    completion = sdk.chat.completions.create(model="milo-chat", messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    ask = {"model": "milo-chat", "messages": [{"role": "user", "content": "Salama"}]}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    image = [{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]
    for extra, param in (
        ({"n": 2}, "n"),
        ({"tools": [tool]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": image}]}, "messages.0.content"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(**{**ask, **extra})  # type: ignore[call-overload]
        assert refused.value.code == "unsupported_parameter" and refused.value.param == param
    with pytest.raises(openai.BadRequestError) as english:
        sdk.audio.transcriptions.create(model="milo-stt", file=("a.wav", b"RIFF"), language="en")
    assert english.value.code == "unsupported_language" and "mg and fr" in english.value.message


def test_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model="milo-chat", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_chat_completion_stream(sdk: openai.OpenAI) -> None:
    """The stream says the same text and finish reason as the whole reply ("length" when cut at max_tokens)."""
    for max_tokens in (3, 64):
        ask = {"model": "milo-chat", "messages": [{"role": "user", "content": "Bonjour"}], "temperature": 0.0}
        whole = sdk.chat.completions.create(**ask, max_tokens=max_tokens)
        chunks = list(sdk.chat.completions.create(**ask, max_tokens=max_tokens, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.strip() == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert whole.choices[0].finish_reason == ("length" if max_tokens == 3 else "stop")
    # Asked for, the usage comes in a last chunk of its own, as in the whole reply.
    counted = list(
        sdk.chat.completions.create(**ask, max_tokens=64, stream=True, stream_options={"include_usage": True})
    )
    assert counted[-1].choices == [] and counted[-1].usage is not None
    assert counted[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert counted[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_completion_sampling_options(sdk: openai.OpenAI) -> None:
    """seed, top_p and stop reach the model: a seed repeats its reply, a stop string ends it."""
    ask = {"model": "milo-chat", "messages": [{"role": "user", "content": "Count from one to ten."}]}
    first = sdk.chat.completions.create(**ask, max_tokens=24, temperature=1.2, top_p=0.9, seed=11)
    again = sdk.chat.completions.create(**ask, max_tokens=24, temperature=1.2, top_p=0.9, seed=11)
    assert first.choices[0].message.content == again.choices[0].message.content
    greedy = sdk.chat.completions.create(**ask, max_tokens=24, temperature=0.0).choices[0].message.content
    word = greedy.split()[2]
    stopped = sdk.chat.completions.create(**ask, max_tokens=24, temperature=0.0, stop=[word])
    assert word not in stopped.choices[0].message.content
    assert greedy.startswith(stopped.choices[0].message.content)
    assert stopped.choices[0].finish_reason == "stop"


def test_speech_and_transcription(sdk: openai.OpenAI) -> None:
    audio = sdk.audio.speech.create(model="milo-tts", voice="fr", input="Bonjour à tous.", response_format="wav")
    samples, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 16000 and samples.size / rate > 0.5

    clip = encode(speak("Bonjour, je voudrais acheter du riz au marché."), 16000, "mp3")
    transcript = sdk.audio.transcriptions.create(model="milo-stt", file=("clip.mp3", clip), language="fr")
    assert "bonjour" in transcript.text.lower()
    verbose = sdk.audio.transcriptions.create(model="milo-stt", file=("clip.mp3", clip), response_format="verbose_json")
    assert verbose.language == "fr" and verbose.duration > 2


def test_sdk_errors_are_422_in_openais_error_shape(sdk: openai.OpenAI, api: TestClient) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as empty:
        sdk.chat.completions.create(model="milo-chat", messages=[{"role": "user", "content": "  "}])
    # The SDK reads OpenAI's error body: its message, type, param and code come through.
    assert empty.value.type == "invalid_request_error" and empty.value.code == "invalid_request"
    assert empty.value.param == "messages" and "a message is empty" in empty.value.message
    with pytest.raises(openai.BadRequestError) as voice:
        sdk.audio.speech.create(model="milo-tts", voice="nobody", input="Salama")
    assert voice.value.code == "unsupported_voice" and voice.value.param == "voice"
    # The facade's own routes keep the facade's shape.
    own = api.post("/v1/translate", json={"text": "", "source": "mg", "target": "fr"}).json()["error"]
    assert set(own) >= {"code", "message"} and "type" not in own


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}\{{{selector}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_move_with_traffic(api: TestClient) -> None:
    before = api.get("/metrics").text
    body = {"text": "Antananarivo no renivohitr'i Madagasikara.", "source": "mg", "target": "fr"}
    api.post("/v1/translate", json=body)
    api.post("/v1/translate", json=body)
    api.post("/v1/tts", json={"text": "Salama.", "language": "mg"})
    api.post("/v1/chat", json={"message": "Salama", "max_tokens": 8})
    api.post("/v1/translate", json={"text": "", "source": "mg", "target": "fr"})
    after = api.get("/metrics").text
    count = "milo_http_request_duration_seconds_count"
    route = {"route": "/v1/translate", "method": "POST"}
    assert metric(after, count, **route, status="200") - metric(before, count, **route, status="200") == 2
    assert metric(after, count, **route, status="422") - metric(before, count, **route, status="422") == 1
    assert metric(after, "milo_translation_lookups_total", outcome="hit") > metric(
        before, "milo_translation_lookups_total", outcome="hit"
    )
    assert metric(after, "milo_audio_seconds_total", direction="out") > metric(
        before, "milo_audio_seconds_total", direction="out"
    )
    assert metric(after, "milo_chat_tokens_generated_total") > metric(before, "milo_chat_tokens_generated_total")
    assert metric(after, "milo_chat_active_sessions") >= 1
    assert "milo_http_requests_in_flight" in after
