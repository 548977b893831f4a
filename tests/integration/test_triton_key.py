"""A Triton opened to its own clients guards its inference endpoints with ``MILO_TRITON_KEY``:
health and model metadata stay open, inference and the model statistics need the key, over HTTP and
gRPC alike; the facade calls with the key; and a Triton told to listen beyond loopback without a
key refuses to start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract.triton_access import access_headers
from milo_voice.registry import model_section
from tests.conftest import REPO, TritonHost, facade_process, free_port, running_host

pytestmark = pytest.mark.integration
KEY = "a-long-random-key-for-this-test"


@pytest.fixture(scope="module")
def keyed(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHost]:
    """The PyTriton host with translation and chat only (it starts in seconds), and a key."""
    folder = tmp_path_factory.mktemp("keyed")
    registry = folder / "registry.toml"
    registry.write_text(model_section("translate") + "\n" + model_section("chat"))
    host = TritonHost(free_port(), free_port(), free_port(), models=("translate", "chat", "chat_stream"))
    command = [sys.executable, "-m", "pytriton_app", "--http-port", str(host.http),
               "--grpc-port", str(host.grpc), "--metrics-port", str(host.metrics)]  # fmt: skip
    env = {"MILO_PROFILE": "embedded", "MILO_REGISTRY": str(registry), "MILO_TRITON_KEY": KEY}
    with running_host(host, command, folder / "host.log", MILO_CHAT_CLOUD_URL="", **env) as ready:
        yield ready


def translate_inputs(module: object) -> list[object]:
    inputs = []
    for name, value in (("text", "Manao ahoana daholo ianareo."), ("source", "mg"), ("target", "fr")):
        tensor = module.InferInput(name, [1, 1], "BYTES")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def test_inference_and_the_model_list_need_the_key_health_and_metadata_do_not(keyed: TritonHost) -> None:
    http = httpclient.InferenceServerClient(keyed.http_url)
    grpc = grpcclient.InferenceServerClient(keyed.grpc_url)
    assert http.is_server_live() and http.is_model_ready("translate") and grpc.is_model_ready("translate")
    assert http.get_model_metadata("translate")["name"] == "translate"
    for client, module, protocol in ((http, httpclient, "http"), (grpc, grpcclient, "grpc")):
        with pytest.raises(InferenceServerException) as refused:
            client.infer("translate", translate_inputs(module))
        # HTTP 403; gRPC UNAVAILABLE, both saying what is restricted.
        assert "restricted" in refused.value.message().lower(), (refused.value.status(), refused.value.message())
        with pytest.raises(InferenceServerException):
            client.infer("translate", translate_inputs(module), headers={"triton-access-token": "a-wrong-key"})
        answer = client.infer("translate", translate_inputs(module), headers=access_headers(KEY, protocol))  # type: ignore[arg-type]
        assert answer.as_numpy("translation")[0][0].decode() == "Bonjour à tous."
    # The models served, with their counters: the statistics API, which needs the key. (PyTriton's
    # repository index is empty: it loads its models from a workspace of its own.)
    with pytest.raises(InferenceServerException):
        http.get_inference_statistics()
    listed = http.get_inference_statistics(headers=access_headers(KEY, "http"))["model_stats"]
    assert {"translate", "chat", "chat_stream"} <= {model["name"] for model in listed}


def test_the_facade_calls_with_the_key_and_without_it_answers_503(keyed: TritonHost, tmp_path: Path) -> None:
    # Not a phrasebook entry, so the model is called.
    hello = {"text": "Le marché du village ouvre demain matin.", "source": "fr", "target": "mg"}
    chat = {"messages": [{"role": "user", "content": "Salama"}], "max_tokens": 8, "stream": True}
    with facade_process(keyed, tmp_path / "keyed.log", MILO_TRITON_KEY=KEY) as base:
        assert httpx.post(f"{base}/v1/translate", json=hello, timeout=60).status_code == 200
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=chat, timeout=60) as streamed:
            assert streamed.status_code == 200
            assert any(line.startswith("data: ") and "content" in line for line in streamed.iter_lines())
    with facade_process(keyed, tmp_path / "keyless.log") as base:
        refused = httpx.post(f"{base}/v1/translate", json=hello, timeout=60)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert KEY not in refused.text


def test_a_triton_exposed_without_a_key_does_not_start(tmp_path: Path) -> None:
    env = {"MILO_TRITON_BIND": "0.0.0.0", "MILO_TRITON_KEY": "", "PATH": "/usr/bin:/bin", "MILO_PROFILE": "embedded"}
    for command in (
        [sys.executable, "-m", "pytriton_app", "--http-port", str(free_port())],
        [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(tmp_path)],
    ):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert "set MILO_TRITON_KEY" in done.stderr, done.stderr[-2000:]
