"""The torch Whisper decoder against CTranslate2's generate, on the embedded Whisper base in float32."""

from __future__ import annotations

from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch

from contract.records import SttRequest
from milo_voice.roles.stt import SpeechToText, SttOptions
from milo_voice.roles.whisper.decoder import WhisperDecoder
from tests.conftest import speak


@pytest.fixture(scope="module")
def role(embedded_dir: Path) -> SpeechToText:
    """float32 on both sides, so that what differs is only the order of the sums."""
    return SpeechToText(
        str(embedded_dir / "stt"), options=SttOptions(compute_type="float32", encoder="torch", decoder="torch")
    )


@pytest.fixture(scope="module")
def states(role: SpeechToText) -> torch.Tensor:
    """Encoder states of French speech and of noise: the noise makes the timestamp rules work hard."""
    french = speak("Bonjour, je voudrais acheter du riz au marché.")
    noise = np.random.default_rng(7).normal(0, 0.2, 16000 * 3).astype(np.float32)
    features = np.ascontiguousarray(np.stack([role.features.one(french), role.features.one(noise)]))
    assert role.backend.encoder is not None
    return role.backend.encoder(torch.from_numpy(features))


def _ctranslate2(role: SpeechToText, states: torch.Tensor, prompts: list[list[int]], new: int, suppress: list[int]):
    return role.model.generate(
        ctranslate2.StorageView.from_array(states.numpy()),
        prompts,
        beam_size=1,
        max_length=2 * new,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=suppress,
    )


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
@pytest.mark.parametrize("until_end", [True, False], ids=["until-end-of-text", "end-of-text-suppressed"])
def test_greedy_decoding_is_ctranslate2s(
    role: SpeechToText, states: torch.Tensor, timestamps: bool, until_end: bool
) -> None:
    assert role.backend.decoder is not None
    role.timestamps = timestamps
    try:
        prompts = [role.prompts("fr"), role.prompts("mg")]
    finally:
        role.timestamps = True
    new, suppress = (224, [-1]) if until_end else (20, [-1, role.tokenizer.eot])
    expected = _ctranslate2(role, states, prompts, new, suppress)
    got = role.backend.decoder.start(states).generate(prompts, new, suppress)

    assert [g.tokens for g in got] == [r.sequences_ids[0] for r in expected]
    if timestamps:  # the rules were exercised: timestamps came out, in pairs after the first
        assert any(t >= role.tokenizer.timestamp_begin for t in got[1].tokens[1:])
    if not until_end:
        assert [len(g.tokens) for g in got] == [20, 20]
    for g, r in zip(got, expected, strict=True):
        # CTranslate2's score is the sum divided by the length.
        assert g.logprob_sum == pytest.approx(r.scores[0] * len(r.sequences_ids[0]), abs=1e-3)
        assert g.no_speech_prob == pytest.approx(r.no_speech_prob, abs=1e-5)


def test_warming_up_leaves_decoding_as_it_was(role: SpeechToText, states: torch.Tensor) -> None:
    """The warm-up (on a GPU: every graph captured before the first request) decodes prompts of
    zeros; what is decoded afterwards is what was decoded before it."""
    decoder = role.backend.decoder
    assert decoder is not None
    prompts = [role.prompts("fr"), role.prompts("mg")]
    before = decoder.start(states).generate(prompts, 12, [-1])
    decoder.warm_up(3, [role.prompts("fr")], (-1,))
    after = decoder.start(states).generate(prompts, 12, [-1])
    assert [(d.tokens, d.logprob_sum) for d in after] == [(d.tokens, d.logprob_sum) for d in before]


def test_max_new_tokens_bounds_decoding_as_in_ctranslate2(role: SpeechToText, states: torch.Tensor) -> None:
    assert role.backend.decoder is not None
    prompts = [role.prompts("fr")] * 2
    expected = _ctranslate2(role, states, prompts, 5, [-1])
    got = role.backend.decoder.start(states).generate(prompts, 5, [-1])
    assert [g.tokens for g in got] == [r.sequences_ids[0] for r in expected]
    assert max(len(g.tokens) for g in got) == 5


def test_language_probabilities_are_ctranslate2s_detection(role: SpeechToText, states: torch.Tensor) -> None:
    assert role.backend.decoder is not None
    ids = [role.prompts.language_ids[lang] for lang in role.languages]
    got = role.backend.decoder.language_probabilities(role.backend.decoder.start(states).sot_logits, ids)
    detected = role.model.detect_language(ctranslate2.StorageView.from_array(states.numpy()))
    for row, languages in zip(got, detected, strict=True):
        probabilities = dict(languages)
        expected = np.array([probabilities[f"<|{lang}|>"] for lang in role.languages])
        np.testing.assert_allclose(row, expected / expected.sum(), atol=1e-5)


def test_role_transcribes_alike_with_either_decoder(embedded_dir: Path, role: SpeechToText) -> None:
    """Whole requests, language detection included, and a long one decoded over several chunks."""
    reference = SpeechToText(
        str(embedded_dir / "stt"), options=SttOptions(compute_type="float32", encoder="torch", decoder="ctranslate2")
    )
    french = speak("Bonjour, je voudrais acheter du riz au marché.")
    pause = np.zeros(16000 * 30, dtype=np.float32)
    long = np.concatenate([french, pause, french, pause, french])  # three windows
    requests = [SttRequest(french, "auto"), SttRequest(long, "auto"), SttRequest(french, "mg")]
    expected = reference.transcribe_batch(requests)
    role.decoder_batch = 2  # five windows: three chunks, the long request's windows split across two
    try:
        got = role.transcribe_batch(requests)
    finally:
        role.decoder_batch = 32
    assert "bonjour" in expected[0].text.lower()
    assert len(expected[1].segments) >= 3
    for g, e in zip(got, expected, strict=True):
        assert (g.text, g.language, g.tokens) == (e.text, e.language, e.tokens)
        assert [(s.start, s.end) for s in g.segments] == [(s.start, s.end) for s in e.segments]
        assert g.confidence == pytest.approx(e.confidence, abs=1e-3)
        assert g.language_probability == pytest.approx(e.language_probability, abs=1e-3)


def test_concurrent_callers_get_their_own_transcripts(role: SpeechToText) -> None:
    """Triton may call one instance from several threads; the decoder's buffers serve one batch at a time."""
    from concurrent.futures import ThreadPoolExecutor

    clips = [speak("Bonjour, je voudrais acheter du riz."), speak("Merci beaucoup, au revoir.")]
    alone = [role.transcribe(clip, "fr").text for clip in clips]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda clip: role.transcribe(clip, "fr").text, clips * 2))
    assert alone[0] != alone[1]
    assert together == alone * 2


def test_timestamp_bounds_follow_whispers_rules(role: SpeechToText) -> None:
    from milo_voice.roles.whisper.decoder import _GreedyState

    decoder = role.backend.decoder
    assert decoder is not None
    rules = decoder.logit_rules((-1,), True, timestamps=True)
    assert decoder.logit_rules((-1,), True, timestamps=True) is rules  # masks built once per option set
    begin, eot, last = role.tokenizer.timestamp_begin, role.tokenizer.eot, decoder.vocabulary_size - 1
    word = 1000
    sequences = [[begin + 5], [begin + 5, word], [begin + 5, word, begin + 9], [begin + 5, word, begin + 9, begin + 9]]
    bounds = []
    for sequence in sequences:  # each decoded into its own state, a token a step, as generate records them
        state = _GreedyState(1, 16, torch.device("cpu"))
        state.reset(1)
        for token in sequence:
            state.advance(torch.tensor([token]), torch.tensor([-0.5]), eot, begin)
        text_end, first_allowed, weigh = rules.bounds(state, 1)
        bounds.append((int(text_end), int(first_allowed), bool(weigh)))
    assert bounds == [
        (0, last + 1, False),  # the opening timestamp is alone: text must follow (no empty first segment)
        (0, begin + 6, True),  # after text: any text, or a later timestamp
        (eot, begin + 9, True),  # a segment is open: its end (maybe equal) or end of text, no text
        (0, last + 1, False),  # a pair just closed: text must follow
    ]
    # The end of text ends a row: nothing after it is recorded, and its log-probability is summed.
    state.advance(torch.tensor([eot]), torch.tensor([-0.25]), eot, begin)
    state.advance(torch.tensor([word]), torch.tensor([-9.0]), eot, begin)
    assert bool(state.done[0]) and int(state.count[0]) == 4
    assert state.history[0, :6].tolist() == [*sequences[-1], -1, -1]
    assert float(state.logprob_sum[0]) == pytest.approx(-2.25)


def test_bad_uses_are_refused(embedded_dir: Path, role: SpeechToText, states: torch.Tensor) -> None:
    assert role.backend.decoder is not None
    with pytest.raises(ValueError, match="all of one length"):
        role.backend.decoder.start(states).generate([role.prompts("fr"), role.prompts("fr")[:2]], 5)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        WhisperDecoder.from_model_dir(embedded_dir / "stt", role._special_tokens(), cuda_graphs=True)
    with pytest.raises(ValueError, match="needs the torch encoder"):
        SpeechToText(
            str(embedded_dir / "stt"),
            options=SttOptions(compute_type="float32", encoder="ctranslate2", decoder="torch"),
        )
