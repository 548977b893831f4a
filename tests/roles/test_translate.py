"""Translation on the embedded seeded NLLB model (trained at setup on corpus.txt)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contract.records import TranslateRequest, Translation
from milo_voice.roles.translate import TranslateInputError, Translator
from milo_voice.weights import identity


@pytest.fixture(scope="module")
def translator(embedded_dir: Path) -> Translator:
    return Translator(embedded_dir / "translate")


@pytest.mark.parametrize(
    ("text", "source", "target", "expected"),
    [
        ("Manao ahoana daholo ianareo.", "mg", "fr", "Bonjour à tous."),
        ("Bonjour à tous.", "fr", "mg", "Manao ahoana daholo ianareo."),
        ("Misaotra betsaka tompoko.", "mg", "en", "Thank you very much sir."),
        ("Où se trouve l'hôpital le plus proche?", "fr", "mg", "Aiza ny hopitaly akaiky indrindra?"),
    ],
)
def test_known_phrases(translator: Translator, text: str, source: str, target: str, expected: str) -> None:
    result = translator.translate(text, source, target)
    assert result.text == expected
    assert result.score < 0


def test_each_translation_names_the_weights_that_made_it(translator: Translator, embedded_dir: Path) -> None:
    revision = identity.read(embedded_dir / "translate").revision
    assert revision.startswith("sha256:")
    assert translator.translate("Bonjour à tous.", "fr", "mg").revision == revision


def test_batch_shape_and_determinism(translator: Translator) -> None:
    requests = [
        TranslateRequest("Veloma ary mandra-pihaona.", "mg", "fr"),
        TranslateRequest("Merci beaucoup monsieur.", "fr", "en"),
        TranslateRequest("We need water and food.", "en", "mg"),
    ]
    first = translator.translate_batch(requests)
    second = translator.translate_batch(requests)
    assert len(first) == len(requests)
    assert all(isinstance(r, Translation) and r.text for r in first)
    assert first == second


def test_concurrent_mixed_directions_do_not_interfere(translator: Translator) -> None:
    cases = [
        ("Manao ahoana daholo ianareo.", "mg", "fr", "Bonjour à tous."),
        ("Bonjour à tous.", "fr", "mg", "Manao ahoana daholo ianareo."),
        ("Hello everyone.", "en", "fr", "Bonjour à tous."),
    ] * 10

    def run(case: tuple[str, str, str, str]) -> bool:
        return translator.translate(case[0], case[1], case[2]).text == case[3]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(run, cases))


@pytest.mark.parametrize(
    ("text", "source", "target", "message"),
    [
        ("", "mg", "fr", "empty"),
        ("   \n ", "mg", "fr", "empty"),
        ("Salama", "xx", "fr", "source"),
        ("Salama", "mg", "de", "target"),
        ("Salama", "mg", "mg", "both"),
        ("a" * 5001, "mg", "fr", "longer"),
    ],
)
def test_bad_input_is_refused(translator: Translator, text: str, source: str, target: str, message: str) -> None:
    with pytest.raises(TranslateInputError, match=message):
        translator.translate(text, source, target)
    # In a batch, the refusal is that request's answer; the others are translated.
    refused, answered = translator.translate_batch(
        [TranslateRequest(text, source, target), TranslateRequest("Bonjour à tous.", "fr", "mg")]
    )
    assert isinstance(refused, TranslateInputError) and answered == Translation(
        "Manao ahoana daholo ianareo.", answered.score, translator.revision
    )


def test_a_long_text_is_translated_sentence_by_sentence_and_joined(translator: Translator) -> None:
    """Twenty sentences, far beyond the embedded model's 128 positions, with a paragraph break."""
    sentence = "Misaotra betsaka tompoko."
    alone = translator.translate(sentence, "mg", "en").text
    text = " ".join([sentence] * 10) + "\n\n" + " ".join([sentence] * 10)
    assert len(translator._sentencepiece.encode(text)) > translator.max_input_tokens
    result = translator.translate(text, "mg", "en")
    assert result.text == " ".join([alone] * 10) + "\n\n" + " ".join([alone] * 10)


def test_a_sentence_beyond_the_models_limit_is_refused_with_the_limit(translator: Translator) -> None:
    endless = " ".join(["Misaotra betsaka tompoko"] * 40)  # no sentence end, no clause break
    with pytest.raises(TranslateInputError, match=f"limit of {translator.max_input_tokens} tokens"):
        translator.translate(endless, "mg", "fr")
    # With clause breaks it is cut there, and translated whole.
    assert translator.translate(", ".join(["Misaotra betsaka tompoko"] * 40), "mg", "fr").text


def test_a_translation_that_reaches_the_output_limit_is_refused_not_cut(embedded_dir: Path) -> None:
    """With an output limit of 8 tokens (the language code included), the translation of the
    hospital question (11 tokens) cannot end; those of the others (6 and 7) can. All three are
    sentences the embedded model was trained on, so their translations are known."""
    short = Translator(embedded_dir / "translate", max_decoding_length=8)
    hospital = "Où se trouve l'hôpital le plus proche?"
    requests = [
        TranslateRequest("Hello everyone.", "en", "fr"),
        TranslateRequest(hospital, "fr", "mg"),
        TranslateRequest("Salama tsara aho, misaotra.", "mg", "fr"),
    ]
    first, cut, last = short.translate_batch(requests)
    assert isinstance(first, Translation) and first.text == "Bonjour à tous."
    assert isinstance(cut, TranslateInputError) and "output limit of 8 tokens" in str(cut)
    assert isinstance(last, Translation) and last.text == "Je vais bien, merci."
    with pytest.raises(TranslateInputError, match="output limit"):
        short.translate(hospital, "fr", "mg")
    assert Translator(embedded_dir / "translate").translate(hospital, "fr", "mg").text == (
        "Aiza ny hopitaly akaiky indrindra?"
    )
