"""Models of the production architectures with seeded weights, for timing where no model hub is.

The GPU benchmark needs the production models' cost, not their answers: what a GPU spends
on Whisper large-v3 depends on its layer sizes, not on what its weights learnt. Each builder
here writes a model of a production architecture, sized as in production, from a fixed seed,
in the production on-disk format, into ``<models_dir>/production/<name>``, so the host loads
it with ``MILO_PROFILE=production`` through the same loaders as the real weights:

- STT: Whisper large-v3-turbo or large-v3 (128 mel bins), CTranslate2 float16, with the
  multilingual Whisper tokenizer of the embedded weights and a 128-bin ``preprocessor_config.json``.
- TTS: VITS of the MMS-TTS size (``VitsConfig``'s defaults are facebook/mms-tts-*), one folder
  per voice. The duration predictor is the deterministic one with natural-speech durations
  (see ``build_seeded_vits``), so the audio is as long as real speech of the text.
- Translation: NLLB-200 distilled 600M (d_model 1024, 12 + 12 layers, 256,206 tokens),
  CTranslate2 int8_float16. The SentencePiece model is the small one trained at setup; the
  vocabulary is padded to NLLB's size, as the converter does for made-up words.
- Chat: a llama-architecture GGUF of SmolLM2-1.7B's shape (2048 wide, 24 layers), written in
  float16 with SmolLM2's tokenizer and chat template, then quantised to Q4_K_M by llama.cpp.

Seeded weights say nothing sensible, so their generations stop at random lengths: the
benchmark's registry fixes the lengths instead (``loadtests.bench.fixed_lengths``, served as the
models' ``implementation``). Never serve these folders as a product.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milo_voice.roles.translate import LIMITS_FILE
from milo_voice.weights.embedded import SEED, build_seeded_nllb_tokenizer, build_seeded_vits, nllb_config

log = logging.getLogger(__name__)


# -- Whisper ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperShape:
    d_model: int = 1280
    encoder_layers: int = 32
    decoder_layers: int = 32
    attention_heads: int = 20
    ffn_dim: int = 5120
    num_mel_bins: int = 128


WHISPER_SHAPES = {
    "large-v3": WhisperShape(),
    "large-v3-turbo": WhisperShape(decoder_layers=4),
}
# Whisper's defaults that generation reads from the converted model's config.
WHISPER_BEGIN_SUPPRESS = [220, 50257]


class _WhisperVocabulary:
    """What CTranslate2's Whisper loader asks of a tokenizer, read from a ``tokenizer.json``."""

    def __init__(self, tokenizer_json: Path) -> None:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        vocab = dict(data["model"]["vocab"])
        for added in data["added_tokens"]:
            vocab[added["content"]] = added["id"]
        self._vocab = vocab
        # Language tokens are the two-or-three-letter specials, e.g. <|fr|>.
        self.additional_special_tokens = [
            t["content"] for t in data["added_tokens"] if t["special"] and len(t["content"]) <= 7
        ]

    def get_vocab(self) -> dict[str, int]:
        return self._vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._vocab[token]


def build_whisper(target: Path, shape: WhisperShape, tokenizer_json: Path, device: str = "cpu") -> None:
    """A Whisper model of ``shape`` with seeded weights, as a faster-whisper (CTranslate2) folder."""
    import torch
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    vocabulary = _WhisperVocabulary(tokenizer_json)
    # The tokens of tokenizer.json, then the 1501 timestamp tokens the loader appends.
    vocab_size = len(vocabulary.get_vocab()) + 1501
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=shape.num_mel_bins,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.attention_heads,
        decoder_attention_heads=shape.attention_heads,
        encoder_ffn_dim=shape.ffn_dim,
        decoder_ffn_dim=shape.ffn_dim,
        suppress_tokens=[],
        begin_suppress_tokens=WHISPER_BEGIN_SUPPRESS,
    )
    torch.manual_seed(SEED)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).half().eval()
    model = model.cpu()
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = WHISPER_BEGIN_SUPPRESS
    _convert(lambda: WhisperLoader()(model, vocabulary), target, "float16")
    shutil.copyfile(tokenizer_json, target / "tokenizer.json")
    preprocessor = {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": shape.num_mel_bins,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    (target / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))


def _convert(load: Any, target: Path, quantization: str) -> None:
    """CTranslate2's converter on a model already in memory (it otherwise reads a hub folder)."""
    import ctranslate2

    class InMemory(ctranslate2.converters.Converter):
        def _load(self) -> Any:
            return load()

    if target.exists():
        shutil.rmtree(target)
    InMemory().convert(str(target), quantization=quantization, force=True)


# -- NLLB -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NllbShape:
    vocab_size: int = 256206
    d_model: int = 1024
    layers: int = 12
    attention_heads: int = 16
    ffn_dim: int = 4096


NLLB_600M = NllbShape()
NLLB_POSITIONS = 1024  # max_position_embeddings of facebook/nllb-200-distilled-600M


def build_nllb(
    target: Path, shape: NllbShape = NLLB_600M, quantization: str = "int8_float16", device: str = "cpu"
) -> None:
    """An NLLB model of ``shape`` with seeded weights, as a CTranslate2 folder with its SentencePiece model."""
    import torch
    from ctranslate2.converters.transformers import M2M100Loader
    from transformers import M2M100ForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, sentencepiece = build_seeded_nllb_tokenizer(Path(tmp))
        if shape.vocab_size < len(tokenizer):
            raise ValueError(f"vocabulary of {shape.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
        config = nllb_config(
            tokenizer,
            vocab_size=shape.vocab_size,
            d_model=shape.d_model,
            layers=shape.layers,
            attention_heads=shape.attention_heads,
            ffn_dim=shape.ffn_dim,
            max_positions=NLLB_POSITIONS,
        )
        torch.manual_seed(SEED)
        with torch.device(device):
            model = M2M100ForConditionalGeneration(config).eval()
        model = model.cpu()
        # The loader pads the vocabulary with "madeupword" tokens up to the model's size.
        _convert(lambda: M2M100Loader()(model, tokenizer), target, quantization)
        shutil.copyfile(sentencepiece, target / "sentencepiece.bpe.model")
        (target / LIMITS_FILE).write_text(json.dumps({"max_positions": NLLB_POSITIONS}) + "\n")


# -- VITS -------------------------------------------------------------------------------


def build_mms_vits(target: Path, voices: dict[str, str]) -> None:
    """One VITS voice of the MMS-TTS size per language (``VitsConfig``'s defaults are MMS's)."""
    build_seeded_vits(target, voices, size="mms")


# -- llama GGUF -------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaShape:
    embedding: int = 2048
    layers: int = 24
    heads: int = 32
    kv_heads: int = 32
    ffn: int = 8192
    context: int = 8192
    rope_base: float = 130000.0


SMOLLM2_1_7B = LlamaShape()
TOKENIZER_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
)  # fmt: skip
# llama.cpp's file type for Q4_K_M (enum llama_ftype).
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


def read_gguf_tokenizer(gguf_path: Path) -> dict[str, Any]:
    """The tokenizer and chat template of a GGUF file, as plain values."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    return {key: reader.fields[key].contents() for key in TOKENIZER_KEYS if key in reader.fields}


def write_llama_gguf(path: Path, shape: LlamaShape, tokenizer: dict[str, Any], name: str) -> None:
    """A llama-architecture GGUF in float16 with seeded weights and ``tokenizer``'s vocabulary."""
    import gguf
    import numpy as np
    import torch

    vocab = len(tokenizer["tokenizer.ggml.tokens"])
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.embedding)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_rope_dimension_count(shape.embedding // shape.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in tokenizer.items():
        _add_tokenizer_field(writer, key, value)

    generator = torch.Generator().manual_seed(SEED)
    head_dim = shape.embedding // shape.heads

    def weight(*dims: int) -> np.ndarray:
        return (torch.randn(*dims, generator=generator) * 0.02).half().numpy()

    def norm() -> np.ndarray:
        return np.ones(shape.embedding, dtype=np.float32)

    # Embeddings are tied, as in SmolLM2: llama.cpp reuses token_embd as the output layer.
    writer.add_tensor("token_embd.weight", weight(vocab, shape.embedding))
    writer.add_tensor("output_norm.weight", norm())
    for n in range(shape.layers):
        writer.add_tensor(f"blk.{n}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{n}.attn_q.weight", weight(shape.embedding, shape.embedding))
        writer.add_tensor(f"blk.{n}.attn_k.weight", weight(shape.kv_heads * head_dim, shape.embedding))
        writer.add_tensor(f"blk.{n}.attn_v.weight", weight(shape.kv_heads * head_dim, shape.embedding))
        writer.add_tensor(f"blk.{n}.attn_output.weight", weight(shape.embedding, shape.embedding))
        writer.add_tensor(f"blk.{n}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{n}.ffn_gate.weight", weight(shape.ffn, shape.embedding))
        writer.add_tensor(f"blk.{n}.ffn_up.weight", weight(shape.ffn, shape.embedding))
        writer.add_tensor(f"blk.{n}.ffn_down.weight", weight(shape.embedding, shape.ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer_field(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, list):
        if key == "tokenizer.ggml.token_type":
            writer.add_array(key, [int(v) for v in value])
        else:
            writer.add_array(key, [str(v) for v in value])
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        raise TypeError(f"unexpected GGUF tokenizer field {key}: {type(value).__name__}")


def quantize_gguf(source: Path, target: Path, ftype: int = LLAMA_FTYPE_MOSTLY_Q4_K_M) -> None:
    """llama.cpp's own quantiser, through llama-cpp-python's binding of ``llama_model_quantize``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize failed with {code}")


def build_llama_gguf(target: Path, shape: LlamaShape, tokenizer: dict[str, Any], quantize: bool = True) -> None:
    """``target/model.gguf``: ``shape`` with seeded weights, quantised to Q4_K_M unless told not to."""
    target.mkdir(parents=True, exist_ok=True)
    model = target / "model.gguf"
    if not quantize:
        write_llama_gguf(model, shape, tokenizer, "milo-seeded-llama")
        return
    try:  # said before the float16 file is written, not after
        import llama_cpp  # noqa: F401
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(f"quantising the chat shape needs llama.cpp's library, which does not load: {exc}") from exc
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        f16 = Path(tmp) / "model-f16.gguf"
        write_llama_gguf(f16, shape, tokenizer, "milo-seeded-llama")
        quantize_gguf(f16, model)


# -- all of them --------------------------------------------------------------------------

VOICES = {"mg": "mms-tts-mlg", "fr": "mms-tts-fra"}


MODELS = ("stt", "tts", "translate", "chat")  # what build_all writes, in its order


def build_all(
    models_dir: Path, whisper: str, whisper_tokenizer: Path, chat_tokenizer: Path, device: str, only: list[str]
) -> dict[str, float]:
    """Every production shape into ``models_dir/production``; returns seconds per model."""
    root = models_dir / "production"
    seconds: dict[str, float] = {}
    steps: dict[str, Callable[[], None]] = {
        "stt": lambda: build_whisper(root / "stt", WHISPER_SHAPES[whisper], whisper_tokenizer, device),
        "tts": lambda: build_mms_vits(root / "tts", VOICES),
        "translate": lambda: build_nllb(root / "translate", NLLB_600M, device=device),
        "chat": lambda: build_llama_gguf(root / "chat", SMOLLM2_1_7B, json.loads(chat_tokenizer.read_text())),
    }
    for name in MODELS:
        step = steps[name]
        if only and name not in only:
            continue
        started = time.perf_counter()
        step()
        (root / name / ".complete").write_text(f"seeded-{SEED}")
        seconds[name] = round(time.perf_counter() - started, 1)
        log.info("built %s in %.1f s", name, seconds[name])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write production-shaped models with seeded weights.")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--whisper", choices=sorted(WHISPER_SHAPES), default="large-v3-turbo")
    parser.add_argument("--whisper-tokenizer", type=Path, required=True, help="a multilingual Whisper tokenizer.json")
    parser.add_argument("--chat-tokenizer", type=Path, required=True, help="JSON from --export-chat-tokenizer")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is faster)")
    parser.add_argument("--only", default="", help="comma-separated subset of stt,tts,translate,chat")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    only = [x for x in args.only.split(",") if x]
    seconds = build_all(args.models_dir, args.whisper, args.whisper_tokenizer, args.chat_tokenizer, args.device, only)
    print(json.dumps(seconds))
    return 0


def export_chat_tokenizer(gguf_path: Path, out: Path) -> None:
    """Save a GGUF's tokenizer as JSON, so the GPU machine needs no copy of the model itself."""
    out.write_text(json.dumps(read_gguf_tokenizer(gguf_path), ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
