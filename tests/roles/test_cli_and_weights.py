"""The CLI, the embedded weights on disk, and the production pull up to the network call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from milo_voice.registry import Registry, load_registry
from milo_voice.weights.production import WeightsUnavailableError, pull_model, pull_production

REPO = Path(__file__).resolve().parents[2]


def milo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "milo_voice.cli", *args],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip


def test_normalize_prints_the_spoken_form() -> None:
    result = milo("normalize", "--lang", "mg", "Tamin'ny 2024")
    assert result.returncode == 0
    assert result.stdout.strip() == "Tamin'ny efatra amby roapolo sy roa arivo"
    assert milo("normalize", "--lang", "fr", "21h30").stdout.strip() == "vingt et une heures trente"


def test_models_list_shows_both_profiles(embedded_dir: Path) -> None:
    out = milo("models", "list").stdout
    for name in ("stt", "tts", "translate", "chat"):
        assert f"{name}" in out
    assert out.count("embedded*") == 4
    assert "hf:facebook/nllb-200-distilled-600M" in out


def test_embedded_weights_are_in_the_real_formats(embedded_dir: Path) -> None:
    stt = embedded_dir / "stt"
    assert (stt / "model.bin").stat().st_size > 100_000_000
    assert json.loads((stt / "config.json").read_text())["lang_ids"]
    voices = load_registry().by_role("tts").weights("embedded").voices
    assert voices["fr"] == "pico:fr-FR"  # a voice of the system's (Debian's libttspico-utils)
    vits = [name for name in voices.values() if not name.startswith("pico:")]
    assert vits == ["mms-tts-mlg"]
    for voice in vits:
        assert (embedded_dir / "tts" / voice / "model.safetensors").exists()
        assert json.loads((embedded_dir / "tts" / voice / "config.json").read_text())["model_type"] == "vits"
    translate = embedded_dir / "translate"
    assert (translate / "model.bin").exists() and (translate / "sentencepiece.bpe.model").exists()
    vocabulary = json.loads((translate / "shared_vocabulary.json").read_text())
    assert {"plt_Latn", "fra_Latn", "eng_Latn"} <= set(vocabulary)
    with (embedded_dir / "chat" / "model.gguf").open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"


class RecordingDownloader:
    """Stands in for the network only: records what would be fetched, then fails like an offline hub."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def snapshot(self, repo: str, revision: str, target: Path, patterns: list[str]) -> Path:
        self.calls.append(("snapshot", repo, revision, *patterns))
        raise WeightsUnavailableError(f"offline: {repo}")

    def file(self, repo: str, filename: str, revision: str, target: Path) -> Path:
        self.calls.append(("file", repo, filename, revision))
        raise WeightsUnavailableError(f"offline: {repo}/{filename}")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("stt", ("snapshot", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", "main")),
        ("tts", ("snapshot", "facebook/mms-tts-mlg", "main")),
        ("translate", ("snapshot", "facebook/nllb-200-distilled-600M", "main")),
        ("chat", ("file", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf", "main")),
    ],
)
def test_production_pull_asks_for_the_right_weights(
    registry: Registry, tmp_path: Path, model: str, expected: tuple[str, ...]
) -> None:
    downloader = RecordingDownloader()
    with pytest.raises(WeightsUnavailableError):
        pull_model(registry[model], tmp_path, downloader)
    assert downloader.calls[0][: len(expected)] == expected
    assert not (tmp_path / "production" / model / ".complete").exists()


def test_production_pull_offline_fails_clearly(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="cannot download facebook/nllb-200-distilled-600M"):
        pull_production(registry, tmp_path, ["translate"])
    result = milo(
        "models",
        "pull",
        "--profile",
        "production",
        "chat",
        env={"HF_HUB_OFFLINE": "1", "MILO_MODELS_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "cannot download Qwen/Qwen2.5-1.5B-Instruct-GGUF" in result.stderr


def test_production_pull_skips_complete_weights(registry: Registry, tmp_path: Path) -> None:
    """A model-server container restarting on its volume downloads nothing again."""
    spec = registry["translate"]
    target = tmp_path / "production" / "translate"
    target.mkdir(parents=True)
    (target / "model.bin").write_bytes(b"weights")
    (target / ".complete").write_text(spec.weights("production").revision)
    downloader = RecordingDownloader()
    assert pull_model(spec, tmp_path, downloader) == target
    assert downloader.calls == []
    (target / ".complete").write_text("an older revision")
    with pytest.raises(WeightsUnavailableError):
        pull_model(spec, tmp_path, downloader)
    assert downloader.calls
    assert (target / "model.bin").read_bytes() == b"weights"  # a failed pull leaves what was there


def test_triton_configs_follow_the_registry_in_use(tmp_path: Path) -> None:
    """As in the model-server image: MILO_REGISTRY names the registry, its repository is written beside it."""
    import shutil

    from milo_voice.registry import DEFAULT_REGISTRY

    registry = tmp_path / "model_repository" / "registry.toml"
    registry.parent.mkdir()
    shutil.copy(DEFAULT_REGISTRY, registry)
    env = {"MILO_REGISTRY": str(registry)}
    assert milo("models", "triton-configs", "--check", env=env).returncode == 1  # nothing written yet
    written = milo("models", "triton-configs", "--instance-kind", "gpu", env=env)
    assert written.returncode == 0, written.stderr
    stt = (registry.parent / "stt" / "config.pbtxt").read_text()
    # A GPU host's settings: STT batches up to 32 on two instances, TTS runs 4.
    assert "kind: KIND_GPU" in stt and "count: 2" in stt and "max_batch_size: 32" in stt
    assert "count: 4" in (registry.parent / "tts" / "config.pbtxt").read_text()
    assert (registry.parent / "chat_stream" / "1" / "model.py").is_file()


def test_serve_tells_the_facade_the_served_models_and_its_defaults_are_the_registrys() -> None:
    """The facade reads no registry: ``milo-voice serve`` passes what it must know as settings, and
    a facade deployed alone (compose, Kubernetes) falls back on defaults that must match."""
    from api_facade.settings import Settings
    from milo_voice.cli import served_models_settings
    from milo_voice.registry import PROFILES, load_registry

    registry = load_registry()
    defaults = Settings(triton_url="127.0.0.1:8000")
    for profile in PROFILES:
        settings = served_models_settings(registry, profile)
        assert json.loads(settings["MILO_VOICES"]) == registry.by_role("tts").weights(profile).voices
        assert settings["MILO_PROFILE"] == profile
    # A facade deployed alone serves production weights: its default voices are theirs.
    assert json.loads(served_models_settings(registry, "production")["MILO_VOICES"]) == defaults.voices


def test_the_seeded_translation_model_trains_until_it_reproduces_its_corpus(
    tmp_path: Path, embedded_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Too short a training leaves translations missed and says so; the built model misses none."""
    import logging

    from transformers import M2M100ForConditionalGeneration

    from contract.records import TranslateRequest, Translation
    from milo_voice.roles.translate import NLLB_CODES, Translator
    from milo_voice.weights import embedded

    tokenizer, _ = embedded.build_seeded_nllb_tokenizer(tmp_path)
    config = embedded.nllb_config(
        tokenizer, vocab_size=len(tokenizer), d_model=32, layers=1, attention_heads=2, ffn_dim=64, max_positions=128
    )
    with caplog.at_level(logging.INFO, logger="milo_voice.weights.embedded"):
        embedded._train_on_corpus(
            M2M100ForConditionalGeneration(config), tokenizer, embedded._parallel_corpus(), steps=5, rounds=2
        )
    rounds = [r.getMessage() for r in caplog.records if "(round" in r.getMessage()]
    assert len(rounds) == 2 and "(round 2)" in rounds[1]
    assert "corpus translations still missed after 2 rounds" in caplog.records[-1].getMessage()

    # The embedded model as setup built it, through the role that serves it: every corpus
    # sentence into each other language.
    language = {code: name for name, code in NLLB_CODES.items()}
    cases = [
        (TranslateRequest(row[src], language[src], language[dst]), row[dst])
        for row in embedded._parallel_corpus()
        for src in row
        for dst in row
        if src != dst
    ]
    results = Translator(embedded_dir / "translate").translate_batch([request for request, _ in cases])
    missed = [
        (request.text, want, result)
        for (request, want), result in zip(cases, results, strict=True)
        if not (isinstance(result, Translation) and result.text == want)
    ]
    assert len(cases) == 120 and missed == []
