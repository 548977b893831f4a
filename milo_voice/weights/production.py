"""Fetch and convert the production weights from the Hugging Face Hub.

Downloads show a progress bar (the hub client's own, per file). NLLB is converted to
CTranslate2 after download; Whisper comes already converted; MMS voices are used as
``save_pretrained`` folders; the chat model is one GGUF file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from milo_voice.registry import ModelSpec, Registry
from milo_voice.weights import identity

log = logging.getLogger(__name__)

WHISPER_FILES = ["config.json", "model.bin", "tokenizer.json", "vocabulary.*", "preprocessor_config.json"]
VITS_FILES = [
    "config.json",
    "model.safetensors",
    "*.bin",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]
NLLB_FILES = [
    "config.json",
    "*.safetensors",
    "pytorch_model.bin",
    "sentencepiece.bpe.model",
    "tokenizer*.json",
    "special_tokens_map.json",
    "generation_config.json",
]


class WeightsUnavailableError(RuntimeError):
    """Production weights could not be fetched (no network, unknown repository, no access)."""


class Downloader(Protocol):
    def snapshot(self, repo: str, revision: str, target: Path, patterns: list[str]) -> Path: ...

    def file(self, repo: str, filename: str, revision: str, target: Path) -> Path: ...


class HubDownloader:
    """The Hugging Face Hub, through ``huggingface_hub`` (which draws the progress bars)."""

    def snapshot(self, repo: str, revision: str, target: Path, patterns: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo, revision=revision, local_dir=target, allow_patterns=patterns))
        except Exception as exc:
            raise WeightsUnavailableError(f"cannot download {repo}@{revision}: {exc}") from exc

    def file(self, repo: str, filename: str, revision: str, target: Path) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_dir=target))
        except Exception as exc:
            raise WeightsUnavailableError(f"cannot download {repo}/{filename}@{revision}: {exc}") from exc


class ConversionError(RuntimeError):
    """Converted weights that would not translate as the originals do."""


def convert_nllb(source: Path, target: Path, quantization: str = "int8_float16") -> None:
    import ctranslate2

    converter = ctranslate2.converters.TransformersConverter(str(source), copy_files=["sentencepiece.bpe.model"])
    converter.convert(str(target), quantization=quantization, force=True)
    check_language_tokens(source, target)
    write_nllb_limits(source, target)


def check_language_tokens(source: Path, target: Path) -> None:
    """Every language code the role uses is in the converted vocabulary, at the tokenizer's id.

    The converter takes the codes from the tokenizer; a tokenizer whose files do not list them
    (no added tokens in ``tokenizer.json``, no ``additional_special_tokens``) converts without an
    error into a model whose every language code is ``<unk>``: it would translate into nothing
    in particular. Refused here instead.
    """
    from transformers import AutoTokenizer

    from milo_voice.roles.translate import NLLB_CODES, read_vocabulary

    vocabulary = read_vocabulary(target)
    missing = sorted(code for code in NLLB_CODES.values() if code not in vocabulary)
    if missing:
        raise ConversionError(
            f"the converted vocabulary of {source} has no {', '.join(missing)}: its tokenizer files do not "
            "list the language codes (tokenizer.json's added tokens, additional_special_tokens)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    moved = {c: (vocabulary.index(c), tokenizer.convert_tokens_to_ids(c)) for c in NLLB_CODES.values()}
    moved = {code: ids for code, ids in moved.items() if ids[0] != ids[1]}
    if moved:
        raise ConversionError(f"language codes at other ids than the tokenizer's (converted, tokenizer): {moved}")


def write_nllb_limits(source: Path, target: Path) -> None:
    """The model's position limit, from its Hugging Face config, beside the converted weights:
    CTranslate2's own config does not keep it, and the translation role splits texts by it."""
    from milo_voice.roles.translate import LIMITS_FILE

    positions = json.loads((source / "config.json").read_text())["max_position_embeddings"]
    (target / LIMITS_FILE).write_text(json.dumps({"max_positions": int(positions)}) + "\n")


def pull_model(
    spec: ModelSpec, models_dir: Path, downloader: Downloader, source: str | None = None, force: bool = False
) -> Path:
    """Fetch (and convert) one model's production weights; return the folder the host reads.

    Weights already complete at the registry's revision are kept, unless ``force``. Otherwise the
    download goes to ``models/downloads`` (the hub client skips files it already has), the served
    folder is assembled beside the old one with its identity (``identity.py``), and replaces it
    whole: no file of older weights stays, and a failed pull leaves the old folder as it was.
    """
    weights = spec.weights("production")
    source = source or weights.source
    if not source.startswith("hf:"):
        raise ValueError(f"production weights of {spec.name!r} must come from the hub, not {source!r}")
    location = source.removeprefix("hf:")
    target = models_dir / "production" / spec.name
    marker = target / ".complete"
    if marker.exists() and marker.read_text() == weights.revision and not force:
        log.info("%s: production weights %s already complete in %s", spec.name, identity.read(target).revision, target)
        return target
    download = models_dir / "downloads" / spec.name
    incoming = target.with_name(f".{spec.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    try:
        if spec.role == "stt":
            _link_tree(downloader.snapshot(location, weights.revision, download, WHISPER_FILES), incoming)
        elif spec.role == "tts":
            repos = location.split("+")
            for voice in weights.voices.values():
                repo = next(r for r in repos if r.endswith(voice))
                fetched = downloader.snapshot(repo, weights.revision, download / voice, VITS_FILES)
                _link_tree(fetched, incoming / voice)
        elif spec.role == "translate":
            downloader.snapshot(location, weights.revision, download, NLLB_FILES)
            log.info("converting %s to CTranslate2", location)
            convert_nllb(download, incoming)
        elif spec.role == "chat":
            repo, _, filename = location.rpartition("/")
            shutil.copyfile(downloader.file(repo, filename, weights.revision, download), incoming / "model.gguf")
        revision = identity.write(incoming).revision
        (incoming / ".complete").write_text(weights.revision)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    _replace(target, incoming)
    log.info("%s: production weights %s (%s) in %s", spec.name, revision, weights.revision, target)
    return target


def _link_tree(source: Path, target: Path) -> None:
    """``source``'s files in ``target``, hard-linked where one file system holds both (no second
    copy of gigabytes of weights); the hub client replaces a file it updates, so links stay intact."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, ignore=shutil.ignore_patterns(".cache"), dirs_exist_ok=True)


def _replace(target: Path, incoming: Path) -> None:
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    incoming.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def pull_production(
    registry: Registry,
    models_dir: Path,
    names: list[str] | None = None,
    downloader: Downloader | None = None,
    force: bool = False,
) -> list[Path]:
    downloader = downloader or HubDownloader()
    selected = names or list(registry.models)
    return [pull_model(registry[name], models_dir, downloader, force=force) for name in selected]
