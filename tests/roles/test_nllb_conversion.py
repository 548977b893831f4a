"""The production NLLB conversion (``convert_nllb``, pinned transformers and CTranslate2) on a small
replica of ``facebook/nllb-200-distilled-600M``'s files: a SentencePiece model, ``tokenizer.json``
with the language codes as added tokens, ``tokenizer_config.json`` and ``special_tokens_map.json``
listing all of them as ``additional_special_tokens`` (transformers' ``FAIRSEQ_LANGUAGE_CODES``, the
list the real files hold), and an M2M100 model of a few thousand weights.

Random weights translate into nonsense; what is checked is that the language codes survive the
conversion at the tokenizer's ids, so that the role asks for Malagasy and French and gets them. A
replica whose tokenizer files do not list the codes (the bug class where the converter silently
drops them) must be refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ctranslate2
import pytest
import torch
from transformers import AutoTokenizer, M2M100ForConditionalGeneration, NllbTokenizerFast
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

from milo_voice.roles.translate import TranslateInputError, Translator, read_vocabulary
from milo_voice.weights.embedded import build_seeded_nllb_tokenizer, nllb_config
from milo_voice.weights.production import NLLB_FILES, ConversionError, convert_nllb

MASK = {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False}
SPECIAL = {
    "additional_special_tokens": list(FAIRSEQ_LANGUAGE_CODES),
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "mask_token": MASK,
    "pad_token": "<pad>",
    "sep_token": "</s>",
    "unk_token": "<unk>",
}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("nllb")
    _slow, sentencepiece = build_seeded_nllb_tokenizer(work)
    repo = work / "facebook--nllb-200-distilled-600M"
    repo.mkdir()
    shutil.copyfile(sentencepiece, repo / "sentencepiece.bpe.model")
    fast = NllbTokenizerFast.from_pretrained(str(work / "hf"), additional_special_tokens=FAIRSEQ_LANGUAGE_CODES)
    fast.backend_tokenizer.save(str(repo / "tokenizer.json"))
    (repo / "special_tokens_map.json").write_text(json.dumps(SPECIAL, indent=2))
    config = {
        **SPECIAL,
        "model_max_length": 1024,
        "name_or_path": "facebook/nllb-200-distilled-600M",
        "sp_model_kwargs": {},
        "src_lang": None,
        "tgt_lang": None,
        "tokenizer_class": "NllbTokenizer",
        "tokenizer_file": None,
    }
    (repo / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    shape = {"d_model": 16, "layers": 1, "attention_heads": 2, "ffn_dim": 32, "max_positions": 64}
    # The real vocabulary is the tokenizer's plus made-up words (256,206 in config.json).
    M2M100ForConditionalGeneration(nllb_config(fast, vocab_size=len(fast) + 2, **shape)).save_pretrained(repo)
    assert {p.name for p in repo.iterdir()} >= {"config.json", "sentencepiece.bpe.model", "tokenizer.json"}
    assert all(any(p.match(pattern) for pattern in NLLB_FILES) for p in repo.iterdir()), "the pull fetches it all"
    return repo


def test_the_converted_model_keeps_every_language_code_at_the_tokenizers_id(replica: Path, tmp_path: Path) -> None:
    convert_nllb(replica, tmp_path / "ct2")
    vocabulary = read_vocabulary(tmp_path / "ct2")
    tokenizer = AutoTokenizer.from_pretrained(str(replica))
    for code in FAIRSEQ_LANGUAGE_CODES:
        assert vocabulary.index(code) == tokenizer.convert_tokens_to_ids(code), code
    assert (tmp_path / "ct2" / "sentencepiece.bpe.model").exists()
    assert json.loads((tmp_path / "ct2" / "limits.json").read_text()) == {"max_positions": 64}


def test_the_role_translates_between_french_and_malagasy_codes(replica: Path, tmp_path: Path) -> None:
    convert_nllb(replica, tmp_path / "ct2")
    # Asked for either code, the model starts its answer with it: the codes are real tokens.
    raw = ctranslate2.Translator(str(tmp_path / "ct2"))
    for source, target in (("fra_Latn", "plt_Latn"), ("plt_Latn", "fra_Latn")):
        (result,) = raw.translate_batch(
            [[source, "▁Bon", "jour", "</s>"]], target_prefix=[[target]], max_decoding_length=8
        )
        assert result.hypotheses[0][0] == target
    # The role loads it (it checks that its languages' codes are in the vocabulary) and runs it;
    # random weights never end a sentence, which the role refuses rather than cut.
    translator = Translator(tmp_path / "ct2", max_decoding_length=8)
    assert translator.revision.startswith("sha256:")
    for source, target in (("fr", "mg"), ("mg", "fr")):
        with pytest.raises(TranslateInputError, match="output limit"):
            translator.translate("Bonjour à tous.", source, target)


def test_a_tokenizer_that_does_not_list_the_language_codes_is_refused(replica: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(replica, bare)
    (bare / "tokenizer.json").unlink()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        listed = json.loads((bare / name).read_text())
        del listed["additional_special_tokens"]
        (bare / name).write_text(json.dumps(listed))
    with pytest.raises(ConversionError, match="has no eng_Latn, fra_Latn, plt_Latn"):
        convert_nllb(bare, tmp_path / "ct2")
    # Weights converted that way elsewhere are refused by the role too.
    converter = ctranslate2.converters.TransformersConverter(str(bare), copy_files=["sentencepiece.bpe.model"])
    converter.convert(str(tmp_path / "elsewhere"), quantization="int8")
    with pytest.raises(ValueError, match="no language code"):
        Translator(tmp_path / "elsewhere")
