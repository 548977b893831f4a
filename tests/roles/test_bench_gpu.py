"""The GPU benchmark's pieces that run anywhere: production-shaped model writers (at toy sizes,
read back by the real loaders), fixed generation lengths, registry variants, tuning, metrics."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from contract.records import SttRequest
from loadtests.bench import fixed_lengths, shapes, triton_counters
from loadtests.bench.fixed_lengths.chat import FixedLengthChat
from loadtests.bench.fixed_lengths.stt import FixedLengthSpeechToText
from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator
from loadtests.bench.gpu import common, tune, variants
from milo_voice.registry import Registry, load_registry
from milo_voice.roles.stt import SpeechToText, SttOptions

TOY_WHISPER = shapes.WhisperShape(d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=2, ffn_dim=128)


@pytest.fixture(scope="module")
def toy_whisper(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    target = tmp_path_factory.mktemp("shapes") / "stt"
    shapes.build_whisper(target, TOY_WHISPER, embedded_dir / "stt" / "tokenizer.json")
    return target


def test_whisper_shape_is_read_by_faster_whisper_with_128_mel_bins(toy_whisper: Path) -> None:
    stt = SpeechToText(str(toy_whisper), options=SttOptions(max_new_tokens=8))
    assert stt.whisper.feat_kwargs["feature_size"] == 128
    assert stt.model.n_mels == 128
    assert stt.model.is_multilingual


def test_torch_encoder_reads_deduplicated_weights_of_a_seeded_shape(toy_whisper: Path) -> None:
    """Seeded shapes have many equal tensors (zero biases) that model.bin stores once, as aliases."""
    import ctranslate2
    import torch

    from milo_voice.roles.ctranslate2_files import read_model_bin
    from milo_voice.roles.whisper.encoder import WhisperEncoder

    names = read_model_bin(toy_whisper / "model.bin", prefix="encoder/")
    assert "encoder/conv1/bias" in names and "encoder/layer_0/self_attention/linear_0/bias" in names
    stt = SpeechToText(str(toy_whisper), options=SttOptions(compute_type="float32", encoder="ctranslate2"))
    features = np.random.default_rng(5).standard_normal((2, 128, 3000)).astype(np.float32)
    expected = np.array(stt.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    got = WhisperEncoder.from_model_dir(toy_whisper)(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)


def test_bfloat16_weights_are_read_from_their_bits() -> None:
    import torch

    from milo_voice.roles.ctranslate2_files import weight_tensor

    value = torch.tensor([[1.5, -2.25], [0.0078125, 3.0]], dtype=torch.bfloat16)
    bits = value.view(torch.int16).numpy().view(np.uint16)  # how read_model_bin returns bfloat16
    assert torch.equal(weight_tensor({"w": bits}, "w", torch.device("cpu"), torch.float32), value.float())


def test_torch_decoder_decodes_a_seeded_shape_like_ctranslate2(toy_whisper: Path) -> None:
    """The decoder's zero biases and its output projection are aliases in a seeded model.bin."""
    from milo_voice.roles.ctranslate2_files import read_model_bin

    names = read_model_bin(toy_whisper / "model.bin", prefix="decoder/")
    assert "decoder/projection/weight" in names and "decoder/layer_1/attention/linear_1/bias" in names
    audio = [np.full(16000, 0.01, np.float32), np.random.default_rng(2).normal(0, 0.1, 48000).astype(np.float32)]
    requests = [SttRequest(a, "fr") for a in audio] + [SttRequest(audio[1], "auto")]
    results = {}
    for torch_decoder in (False, True):
        stt = FixedLengthSpeechToText(
            str(toy_whisper),
            options=SttOptions(
                compute_type="float32",
                max_new_tokens=12,
                encoder="torch",
                decoder="torch" if torch_decoder else "ctranslate2",
            ),
        )
        results[torch_decoder] = stt.transcribe_batch(requests)
    for got, expected in zip(results[True], results[False], strict=True):
        assert (got.text, got.language, got.tokens) == (expected.text, expected.language, expected.tokens)
        assert [(s.start, s.end) for s in got.segments] == [(s.start, s.end) for s in expected.segments]
        assert got.confidence == pytest.approx(expected.confidence, abs=1e-3)


@pytest.mark.parametrize("new_tokens", [4, 32])
def test_fixed_length_stt_decodes_max_new_tokens_per_window(toy_whisper: Path, new_tokens: int) -> None:
    stt = FixedLengthSpeechToText(str(toy_whisper), options=SttOptions(max_new_tokens=new_tokens))
    short, long = np.full(16000, 0.01, np.float32), np.full(40 * 16000, 0.01, np.float32)
    results = stt.transcribe_batch([SttRequest(short, "fr"), SttRequest(long, "fr")])
    assert [r.tokens for r in results] == [new_tokens, 2 * new_tokens]  # 40 s is two windows


def test_timestamps_off_puts_notimestamps_in_the_prompt(toy_whisper: Path) -> None:
    with_times = FixedLengthSpeechToText(str(toy_whisper), options=SttOptions(max_new_tokens=6))
    text_only = FixedLengthSpeechToText(str(toy_whisper), options=SttOptions(max_new_tokens=6, timestamps=False))
    no_timestamps = text_only.tokenizer.no_timestamps
    assert no_timestamps not in with_times.prompts("fr")
    assert text_only.prompts("fr")[-1] == no_timestamps
    result = text_only.transcribe(np.full(16000, 0.01, np.float32), "fr")
    assert result.tokens == 6
    assert all(s.start == 0.0 for s in result.segments)  # no timestamp tokens: one segment per window


def test_nllb_shape_pads_the_vocabulary_and_honours_fixed_lengths(tmp_path: Path) -> None:
    import ctranslate2

    from milo_voice.roles.translate import Translator

    shape = shapes.NllbShape(vocab_size=4096, d_model=64, layers=2, attention_heads=2, ffn_dim=128)
    shapes.build_nllb(tmp_path / "translate", shape, quantization="int8")
    vocabulary = json.loads((tmp_path / "translate" / "shared_vocabulary.json").read_text())
    assert len(vocabulary) == 4096
    assert "fra_Latn" in vocabulary and "plt_Latn" in vocabulary
    fixed = FixedLengthTranslator(tmp_path / "translate", max_decoding_length=10)
    # Every sentence decodes to the limit, which the production role would refuse as cut short.
    assert fixed.translate("Misaotra betsaka", "mg", "fr").text
    assert Translator.reached_output_limit(fixed, ["tok"] * 10) and not fixed.reached_output_limit(["tok"] * 10)
    raw = ctranslate2.Translator(str(tmp_path / "translate"))
    result = raw.translate_batch(
        [["plt_Latn", "▁Misaotra", "</s>"]],
        target_prefix=[["fra_Latn"]],
        min_decoding_length=10,
        max_decoding_length=10,
    )
    assert len(result[0].hypotheses[0]) == 10
    # The torch engine (the GPU's) reads the shape's file and searches as CTranslate2 does.
    options = {"max_decoding_length": 10, "compute_type": "float32"}
    reference = FixedLengthTranslator(tmp_path / "translate", engine="ctranslate2", **options)
    torch_engine = FixedLengthTranslator(tmp_path / "translate", engine="torch", **options)
    expected = reference.translate("Misaotra betsaka", "mg", "fr")
    got = torch_engine.translate("Misaotra betsaka", "mg", "fr")
    assert got.text == expected.text and got.score == pytest.approx(expected.score, abs=1e-4)


def test_the_in_process_step_level_loop_counts_its_steps(embedded_dir: Path) -> None:
    """The in-process reference of served step-level batching: requests kept in flight, answered,
    and the search's sentences and time a step over the window (on the CPU, the embedded model)."""
    from loadtests.bench.gpu.inprocess import _closed_loop

    translator = FixedLengthTranslator(
        embedded_dir / "translate", compute_type="float32", engine="torch", max_decoding_length=6, search_sentences=8
    )
    loop = _closed_loop(translator, clients=4, steps=2, warmup_s=0.2, seconds=1.0)
    assert loop["requests_s"] > 0 and loop["step_ms"] > 0
    # Four clients' two-sentence texts fill the eight rows, less those between an answer and the next.
    assert 0 < loop["sentences_per_step"] <= 8


def test_the_in_process_loop_through_the_served_handler_counts_its_steps(embedded_dir: Path) -> None:
    """The same loop through ``StepwiseHandler`` (its thread and tensors, no server): every answer
    counted is a translation, the handler's thread is stopped after, and its steps are counted."""
    from loadtests.bench.gpu.inprocess import _handler_loop
    from milo_voice.roles.nllb.model import NllbModel
    from milo_voice.roles.nllb.search import BeamSearch

    translator = FixedLengthTranslator(
        embedded_dir / "translate", compute_type="float32", engine="torch", max_decoding_length=6, search_sentences=8
    )
    threads = {t.name for t in threading.enumerate()}
    methods = (BeamSearch.launch, NllbModel.admit, NllbModel.step, NllbModel.reorder, BeamSearch._leave)
    loop = _handler_loop(translator, clients=4, warmup_s=0.2, seconds=1.0)
    assert loop["requests_s"] > 0 and loop["failed"] == 0 and loop["step_ms"] > 0
    assert 0 < loop["sentences_per_step"] <= 8
    assert {t.name for t in threading.enumerate()} <= threads
    # Each client's next request handed over a quarter to three quarters of a second after its
    # answer: at most four answers a second a client, fewer than the loop answers with none away.
    away = _handler_loop(translator, clients=4, warmup_s=0.2, seconds=1.0, back_s=0.5)
    assert 0 < away["requests_s"] <= 4 * 4 < loop["requests_s"] and away["failed"] == 0
    # The drawn round trips bring the clients back at different steps: the search is never as full.
    assert away["sentences_per_step"] < 8
    # The host's time in the search's parts, a step: every part was timed, and the decoder's step
    # and its cache's reorder are parts of every step (op by op, as on a CPU), inside its launch.
    for row in (loop, away):
        parts = row["host_ms_a_step"]
        assert set(parts) == {"launch", "admit", "decoder", "reorder", "leave"}
        assert parts["decoder"] > 0 and parts["reorder"] > 0 and parts["admit"] > 0
        assert parts["admit"] + parts["decoder"] + parts["reorder"] < parts["launch"] < row["step_ms"]
    # Timed while the loop ran only: the classes are as they were.
    assert (BeamSearch.launch, NllbModel.admit, NllbModel.step, NllbModel.reorder, BeamSearch._leave) == methods
    assert {t.name for t in threading.enumerate()} <= threads


def test_llama_gguf_shape_quantised_and_replies_to_max_tokens(tmp_path: Path, embedded_dir: Path) -> None:
    import gguf

    from contract.records import ChatMessage, ChatRequest

    tokenizer = shapes.read_gguf_tokenizer(embedded_dir / "chat" / "model.gguf")
    shape = shapes.LlamaShape(embedding=256, layers=2, heads=4, kv_heads=2, ffn=512, context=2048)
    shapes.build_llama_gguf(tmp_path / "chat", shape, tokenizer)
    reader = gguf.GGUFReader(str(tmp_path / "chat" / "model.gguf"))
    assert reader.fields["general.file_type"].contents() == shapes.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert reader.fields["llama.block_count"].contents() == 2
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer["tokenizer.chat_template"]
    chat = FixedLengthChat(tmp_path / "chat" / "model.gguf", n_ctx=512, slots=2)
    try:
        reply = chat.complete(ChatRequest([ChatMessage("user", "Salama")], max_tokens=12))
    finally:
        chat.close()
    assert reply.completion_tokens == 12
    assert reply.finish_reason == "length"


@pytest.mark.parametrize(
    "variant",
    [
        "configured",
        "unbatched",
        "stt-text",
        "chat",
        "translate-steps",
        "translate-batcher",
        "translate-steps+translate-eager-search",
    ],
)
def test_registry_variants_load_with_fixed_lengths(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(variants.dump_registry(variants.bench_models(None, variant)))
    registry = load_registry(path)
    if variant == "chat":
        assert list(registry.models) == ["chat"]
    else:
        assert registry["stt"].params["max_new_tokens"] == common.STT_TOKENS
        assert registry["translate"].params["max_decoding_length"] == common.TRANSLATE_TOKENS
        assert registry["stt"].implementation == fixed_lengths.STT
        assert registry["translate"].implementation == fixed_lengths.TRANSLATE
    assert registry["chat"].implementation == fixed_lengths.CHAT
    # Chat takes requests one at a time and batches them in the role: its slots say "unbatched".
    served = [spec for spec in registry.models.values() if spec.role != "chat"]
    sizes = {spec.batching_on(gpus).max_batch_size for spec in served for gpus in (0, 1)}
    assert (sizes == {1}) == (variant == "unbatched")
    assert (registry["chat"].params["gpu_slots"] == 1) == (variant == "unbatched")
    if variant == "stt-text":
        assert registry["stt"].params["timestamps"] is False
    if "translate" in registry.models:
        # The registry's step-level batching, unless the overlay goes back to the dynamic batcher alone.
        assert registry["translate"].params.get("gpu_step_batching", False) == (variant != "translate-batcher")
        # Whole search steps as graphs unless the overlay asks for the rules op by op.
        assert registry["translate"].params.get("gpu_search_graphs", True) == (
            variant != "translate-steps+translate-eager-search"
        )


def test_stt_and_chat_variants(tmp_path: Path) -> None:
    def registry_of(variant: str) -> Registry:
        path = tmp_path / f"{variant}.toml"
        path.write_text(variants.dump_registry(variants.bench_models(None, variant)))
        return load_registry(path)

    stt = registry_of("stt-text+stt-x2+stt-numpy")["stt"]
    assert stt.instances.count == 2 and stt.batching_on(1).max_batch_size == 8
    assert stt.params["timestamps"] is False and stt.params["features"] == "numpy"
    fast = registry_of("stt-text+stt-x2+stt-q5")["stt"]
    assert fast.batching_on(1).max_queue_delay_us == 5000 and "features" not in fast.params
    assert fast.batching_on(1).max_batch_size == 8  # overlays merge gpu_batching key by key
    assert "encoder" not in fast.params  # the role's default: torch on a GPU
    ct2 = registry_of("stt-text+stt-x2+stt-q1+stt-ct2enc")["stt"]
    assert ct2.batching_on(1).max_queue_delay_us == 1000 and ct2.params["encoder"] == "ctranslate2"
    assert ct2.params["decoder"] == "ctranslate2"  # CTranslate2's decoder reads only its own encoder's output
    ct2_decoder = registry_of("stt-large-v3+stt-text+stt-x2+stt-q1+stt-ct2dec")["stt"]
    assert ct2_decoder.params["decoder"] == "ctranslate2" and "encoder" not in ct2_decoder.params
    assert "decoder" not in fast.params
    assert registry_of("chat-x2")["chat"].instances.count == 2
    assert registry_of("chat-s16")["chat"].params["gpu_slots"] == 16
    unbatched = registry_of("chat-unbatched")
    # The facade needs every role, so the others stay (only chat is measured).
    assert set(unbatched.models) == {"stt", "tts", "translate", "chat"}
    assert unbatched["chat"].params["gpu_slots"] == 1 and unbatched["stt"].batching_on(1).max_batch_size > 1
    assert registry_of("unbatched")["stt"].batching_on(1).max_batch_size == 1
    assert registry_of("translate-ct2")["translate"].params["engine"] == "ctranslate2"
    assert registry_of("translate-q10")["translate"].batching_on(1).max_queue_delay_us == 10000
    assert registry_of("tts-q10")["tts"].batching_on(1).max_queue_delay_us == 10000
    assert registry_of("configured")["tts"].batching_on(1).max_queue_delay_us == 1000
    assert registry_of("translate-int8")["translate"].params["gpu_compute_type"] == "int8_float16"
    audit = registry_of("audit")
    assert audit["translate"].params["gpu_compute_type"] == "float16"
    assert audit["stt"].params["timestamps"] is False and audit["stt"].batching_on(1).max_queue_delay_us == 1000
    # Overlays compose in order, each one a file of overlays/.
    assert registry_of("translate-int8+translate-beam1")["translate"].params["beam_size"] == 1
    with pytest.raises(ValueError, match="unknown overlay 'chat-fast'"):
        variants.bench_models(None, "chat-fast")


@pytest.mark.parametrize("overlay", sorted(p.stem for p in variants.OVERLAYS.glob("*.toml")))
def test_every_overlay_is_a_registry_the_host_reads(tmp_path: Path, overlay: str) -> None:
    # A lease that serves an overlay the registry refuses loses the call: read each one here.
    path = tmp_path / "registry.toml"
    path.write_text(variants.dump_registry(variants.bench_models(None, overlay)))
    assert load_registry(path).models


def test_tuned_variant_takes_batch_sizes_and_instances(tmp_path: Path) -> None:
    tuned = {"stt": {"max_batch_size": 8, "preferred_batch_sizes": [2, 4, 8], "instances": 2}}
    path = tmp_path / "registry.toml"
    path.write_text(variants.dump_registry(variants.bench_models(tuned, "tuned")))
    stt = load_registry(path)["stt"]
    gpu = stt.batching_on(1)
    assert (gpu.max_batch_size, gpu.preferred_batch_sizes, stt.instances.count) == (8, (2, 4, 8), 2)


def test_knee_is_the_smallest_size_near_the_best_throughput() -> None:
    assert tune.knee({1: 8.1, 8: 12.2, 32: 12.2}) == 8
    assert tune.knee({1: 8.0, 16: 125.0, 32: 219.0, 64: 401.0}) == 64
    assert tune.knee({1: 30.0, 2: 46.6, 4: 66.8, 8: 87.9, 16: 93.1}) == 8
    assert tune.knee({1: 5.0}) == 1


def test_triton_counters_over_a_stretch_of_load() -> None:
    def text(tts: tuple[int, int, int, int], stt_requests: int) -> str:
        requests, executions, queue_us, compute_us = tts
        return "\n".join(
            [
                "# HELP nv_inference_request_success Number of successful inference requests",
                f'nv_inference_request_success{{model="tts",version="1"}} {requests}',
                f'nv_inference_exec_count{{model="tts",version="1"}} {executions}',
                f'nv_inference_queue_duration_us{{model="tts",version="1"}} {queue_us}',
                f'nv_inference_compute_infer_duration_us{{model="tts",version="1"}} {compute_us}',
                f'nv_inference_request_duration_us{{model="tts",version="1"}} {queue_us + compute_us}',
                f'nv_inference_request_success{{model="stt",version="1"}} {stt_requests}',
                f'nv_inference_exec_count{{model="stt",version="1"}} {stt_requests}',
            ]
        )

    before = triton_counters.parse(text((33, 12, 50_000, 300_000), 99))
    after = triton_counters.parse(text((133, 52, 2_050_000, 4_300_000), 99))
    assert after["tts"]["requests"] == 133.0 and triton_counters.mean_batch(after["tts"]) == 2.56
    # Only what the stretch did, and only the models that served in it.
    assert triton_counters.stretch(before, after) == {
        "tts": {
            "requests": 100.0, "executions": 40.0, "mean_batch": 2.5,
            "queue_ms": 20.0, "compute_ms": 40.0, "request_ms": 60.0,
        }
    }  # fmt: skip


def test_triton_counters_read_a_step_level_search() -> None:
    """The search's own counters (milo_voice/serving/search_metrics.py): sentences a step and the
    time a step took served, over the stretch; a small total in exponent notation reads too."""

    def text(requests: int, steps: int, sentences: int, seconds: str) -> str:
        return "\n".join(
            [
                f'nv_inference_request_success{{model="translate",version="1"}} {requests}',
                f'nv_inference_exec_count{{model="translate",version="1"}} {requests}',
                f'milo_translate_search_steps_total{{model="translate"}} {steps}',
                f'milo_translate_search_sentences_total{{model="translate"}} {sentences}',
                f'milo_translate_search_step_seconds_total{{model="translate"}} {seconds}',
            ]
        )

    before = triton_counters.parse(text(10, 4, 8, "4.5e-05"))
    assert before["translate"]["search_seconds"] == 4.5e-05
    row = triton_counters.stretch(before, triton_counters.parse(text(110, 204, 25_608, "1.200045")))["translate"]
    assert (row["search_steps"], row["sentences_per_step"], row["step_ms"]) == (200.0, 128.0, 6.0)


def test_tuning_reads_the_stt_curve_of_the_role_a_gpu_host_runs(tmp_path: Path) -> None:
    """The role with encoder and decoder in torch, where the in-process results have it."""
    import argparse

    rows = {
        f"batch{b}": {"role_clips_s": 10.0, "role_torch_clips_s": torch_clips}
        for b, torch_clips in ((1, 18.8), (8, 71.9), (32, 98.3))
    }
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "inprocess.json").write_text(json.dumps({"stt": {"large-v3-turbo": rows}}))
    tune.phase_tune(argparse.Namespace(work=tmp_path))
    tuned = json.loads((tmp_path / "results" / "tune.json").read_text())
    assert tuned["tuned"]["stt"]["max_batch_size"] == 32  # the torch curve still climbs past 8
    assert "98.3" in tuned["reasons"]["stt"]


def test_the_stt_reference_alone_is_what_the_served_level_and_tuning_read(tmp_path: Path, toy_whisper: Path) -> None:
    """``inprocess --references``: the role with encoder and decoder in torch, at each batch size,
    with the full decoding per window, in the rows the served phase sets its level beside."""
    import argparse

    from loadtests.bench.gpu import inprocess, levels

    rows = inprocess.stt_reference(toy_whisper, device="cpu", compute_type="float32")
    assert set(rows) == {"torch_decoder_memory_mib", *(f"batch{b}" for b in inprocess.STT_BATCHES)}
    for batch in inprocess.STT_BATCHES:
        row = rows[f"batch{batch}"]
        assert row["tokens_per_window"] == common.STT_TOKENS
        assert row["role_torch_clips_s"] == pytest.approx(batch * 1000 / row["role_torch_ms"], rel=0.05)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "inprocess.json").write_text(json.dumps({"stt": {"large-v3-turbo": rows}}))
    read = levels.inprocess_rates(tmp_path, "stt")
    assert read == {b: rows[f"batch{b}"]["role_torch_clips_s"] for b in inprocess.STT_BATCHES}
    tune.phase_tune(argparse.Namespace(work=tmp_path))
    assert json.loads((tmp_path / "results" / "tune.json").read_text())["tuned"]["stt"]["max_batch_size"] in read


def test_the_translation_references_alone_are_what_the_served_levels_read(tmp_path: Path, embedded_dir: Path) -> None:
    """``inprocess --references``: "auto"'s batches and the step-level loop of 64 requests in
    flight, nothing else (no other engine, no handler or op-by-op levels, no agreement)."""
    from loadtests.bench.gpu import inprocess, levels

    rows = inprocess.translate_inprocess(
        embedded_dir / "translate", device="cpu", compute_type="float32", batch_seconds=0.0, references=True,
        loop_seconds=0.5,
    )  # fmt: skip
    assert set(rows) == {"auto_memory_mib", "batches", "stepwise"}
    assert sorted(rows["batches"]) == [1, 4, 8, 16, 32, 64]
    assert all(row["requests_s"] > 0 and row["calls"] >= 5 for row in rows["batches"].values())
    assert set(rows["stepwise"]) == {"chosen_at_load", "64x1"}
    loop = rows["stepwise"]["64x1"]
    assert loop["clients"] == 64 and loop["steps"] == 1 and loop["requests_s"] > 0
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "inprocess.json").write_text(json.dumps({"translate": rows}))
    assert levels.inprocess_rates(tmp_path, "translate") == {
        batch: row["requests_s"] for batch, row in rows["batches"].items()
    }
    assert levels.inprocess_step_rates(tmp_path, "translate") == {64: loop["requests_s"]}
