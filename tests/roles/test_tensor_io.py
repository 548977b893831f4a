"""The server-free tensor handlers that both servers use, and the Python backend adapter around them."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from contract import tensors
from milo_voice.registry import Registry
from milo_voice.serving.instances import Device
from milo_voice.serving.python_backend import TritonPythonModel, device_of
from milo_voice.serving.tensor_io import BatchHandler, ModelFailure, StreamHandler, isolated


def test_instances_go_where_triton_placed_them() -> None:
    assert device_of({"model_instance_kind": "GPU", "model_instance_device_id": "1"}) == Device("cuda", 1)
    assert device_of({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == Device("cpu")


class FakeTensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []

    def send(self, response: Any = None, flags: int = 0) -> None:
        self.sent.append((response, flags))


class FakeRequest:
    """The part of ``pb_utils.InferenceRequest`` the adapter uses."""

    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs
        self.sender = Sender()

    def get_response_sender(self) -> Sender:
        return self.sender

    def is_cancelled(self) -> bool:
        return False


def fake_pb_utils() -> SimpleNamespace:
    """The names of ``triton_python_backend_utils`` the adapter calls, recording what it builds."""
    return SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: (
            FakeTensor(name, request.inputs[name]) if name in request.inputs else None
        ),
        Tensor=FakeTensor,
        InferenceResponse=lambda output_tensors=(), error=None: SimpleNamespace(
            outputs={t.name: t.value for t in output_tensors}, error=error
        ),
        TritonError=lambda message: message,
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=1,
    )


def adapter(io: tensors.ModelIO, registry: Registry, embedded_dir: object) -> TritonPythonModel:
    spec = registry.by_role(io.name.removesuffix("_stream"))
    config = {"parameters": {"milo_model": {"string_value": spec.name}, "milo_io": {"string_value": io.name}}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU"}, pb_utils=fake_pb_utils())
    return model


@pytest.mark.integration
def test_the_ready_line_says_where_the_instance_is_how_it_batches_and_what_its_load_took(
    registry: Registry, embedded_dir: object, caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator reads in Triton's log (and the GPU benchmark collects, ``ready-*.txt``)."""
    config = {"parameters": {"milo_model": {"string_value": "tts"}, "milo_io": {"string_value": "tts"}}}
    args = {"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_name": "tts",
            "model_instance_name": "tts_0_0"}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="milo_voice.serving.python_backend"):
        TritonPythonModel().initialize(args, pb_utils=fake_pb_utils())
    ready = [record.getMessage() for record in caplog.records if " ready (" in record.getMessage()]
    assert len(ready) == 1, ready
    pattern = r"tts ready \(tts, instance tts_0_0 on cpu, batches\), loaded in \d+\.\d s"
    pattern += r" \(0\.0 s of it waiting for the GPU\)"
    assert re.fullmatch(pattern, ready[0]), ready[0]


@pytest.mark.integration
def test_the_python_backend_adapter_batches_requests_and_streams(registry: Registry, embedded_dir: object) -> None:
    """The adapter on the embedded weights: one call, several requests, one batch, answers in order."""
    model = adapter(tensors.TRANSLATE, registry, embedded_dir)
    assert isinstance(model.handler, BatchHandler)

    def request(text: str, source: str) -> FakeRequest:
        column = lambda v: np.array([[v.encode()]], dtype=np.object_)  # noqa: E731
        return FakeRequest(text=column(text), source=column(source), target=column("fr"))

    responses = model.execute([request("Misaotra betsaka tompoko.", "mg"), request("Hello everyone.", "en")])
    assert responses is not None
    translations = [r.outputs["translation"][0][0].decode() for r in responses]
    assert translations == ["Merci beaucoup monsieur.", "Bonjour à tous."]
    assert all(r.outputs["error"][0][0] == b"" for r in responses)

    stream = adapter(tensors.TTS_STREAM, registry, embedded_dir)
    assert isinstance(stream.handler, StreamHandler)
    column = lambda v: np.array([v.encode()], dtype=np.object_)  # noqa: E731
    good, bad = (
        FakeRequest(text=column("Salama. Veloma."), language=column("mg")),
        FakeRequest(text=column("Salama."), language=column("zz")),
    )
    assert stream.execute([good, bad]) is None
    pieces = [response.outputs["spoken_text"][0] for response, _flags in good.sender.sent[:-1]]
    assert pieces == [b"Salama.", b"Veloma."]
    assert good.sender.sent[-1] == (None, 1)
    # A refused stream answers one piece, its error in the error tensor (no Triton error to parse).
    ((refusal, flags), final) = bad.sender.sent
    assert flags == 0 and refusal.error is None and final == (None, 1)
    assert refusal.outputs["error"][0] == b"language 'zz' is not one of ['mg', 'fr']"


@pytest.mark.integration
def test_a_request_that_fails_inside_the_model_fails_alone(embedded_dir: Path, tmp_path: Path) -> None:
    """The embedded NLLB without its limits file: a sentence beyond its 128 positions passes the
    checks and makes its batch fail inside CTranslate2; split, only that request is refused."""
    from milo_voice.roles.translate import LIMITS_FILE, Translator
    from milo_voice.serving.tensor_io import translate_handler

    shutil.copytree(embedded_dir / "translate", tmp_path / "translate", ignore=shutil.ignore_patterns(LIMITS_FILE))
    handler = translate_handler(Translator(tmp_path / "translate"))
    endless = " ".join(["Misaotra betsaka tompoko"] * 40)
    texts = ["Misaotra betsaka tompoko.", endless, "Hello everyone.", "Salama."]
    column = lambda values: np.array([[v.encode()] for v in values], dtype=np.object_)  # noqa: E731
    sources = ["en" if t.startswith("Hello") else "mg" for t in texts]
    (outputs,) = handler([{"text": column(texts), "source": column(sources), "target": column(["fr"] * 4)}])
    errors = [e[0].decode() for e in outputs["error"]]
    assert errors[0] == errors[2] == errors[3] == ""
    assert errors[1].startswith("the model could not process this request: RuntimeError")
    translations = [t[0].decode() for t in outputs["translation"]]
    assert translations[0] == "Merci beaucoup monsieur." and translations[2] == "Bonjour à tous."
    assert translations[1] == "" and translations[3]


def test_a_batch_whose_every_request_fails_is_the_models_failure(caplog: pytest.LogCaptureFixture) -> None:
    def compute(requests: list[int]) -> list[int]:
        if any(r < 0 for r in requests):
            raise RuntimeError("negative")
        return [r * 2 for r in requests]

    with caplog.at_level(logging.WARNING, logger="milo_voice.serving.tensor_io"):
        outcome = isolated(compute, [1, -1, 2, -2, 3])
    assert [r if isinstance(r, int) else "failed" for r in outcome] == [2, "failed", 4, "failed", 6]
    # Each split is said (its halves cost the batch's time again), then what failed alone.
    said = [record.getMessage() for record in caplog.records]
    assert said[0] == "a batch of 5 failed (RuntimeError: negative): computing its halves"
    assert said[-1] == "2 of 5 requests of a batch failed alone; the others were answered"
    with pytest.raises(RuntimeError, match="negative"):
        isolated(compute, [-1, -2])
    # Alone in its batch, a failing request gets the answer it gets among others, not the call's error.
    (alone,) = isolated(compute, [-1])
    assert isinstance(alone, ModelFailure) and str(alone.error) == "negative"


def test_a_translation_cut_by_the_output_limit_is_that_requests_422_message(embedded_dir: Path) -> None:
    from milo_voice.roles.translate import Translator
    from milo_voice.serving.tensor_io import translate_handler

    handler = translate_handler(Translator(embedded_dir / "translate", max_decoding_length=8))
    column = lambda values: np.array([[v.encode()] for v in values], dtype=np.object_)  # noqa: E731
    texts, sources, targets = column(["Merci.", "Hello everyone."]), column(["fr", "en"]), column(["mg", "fr"])
    (outputs,) = handler([{"text": texts, "source": sources, "target": targets}])
    errors = [e[0].decode() for e in outputs["error"]]
    assert errors[0].startswith("the translation of a sentence reached the model's output limit of 8 tokens")
    assert errors[1] == "" and outputs["translation"][1][0].decode() == "Bonjour à tous."
    # Only the cut request: the same call with it alone answers its error, it does not fail the call.
    (alone,) = handler([{"text": column(["Merci."]), "source": column(["fr"]), "target": column(["mg"])}])
    assert "output limit" in alone["error"][0][0].decode()


def test_a_tts_stream_cancelled_before_it_starts_synthesises_nothing(embedded_dir: Path) -> None:
    """tts_cancel may reach the host before the stream does: the stream is stopped when it comes;
    cancelled while it runs, it stops before its next sentence."""
    from milo_voice.roles.tts import TextToSpeech
    from milo_voice.serving.tensor_io import RunningRequests, tts_stream_handler

    cancels = RunningRequests()
    from tests.conftest import embedded_voices

    handler = tts_stream_handler(TextToSpeech(embedded_voices(embedded_dir)), cancels)
    column = lambda value: np.array([value.encode()], dtype=np.object_)  # noqa: E731
    request = {"text": column("Salama. Veloma. Misaotra."), "language": column("mg"), "request_id": column("early")}
    assert cancels.cancel("early") is False  # nothing running under that id yet
    assert list(handler.stream(request)) == []
    stream = handler.stream(request)  # the id was taken once: this one runs
    first = next(stream)
    assert first["spoken_text"][0] == b"Salama."
    assert cancels.cancel("early") is True
    assert list(stream) == []
