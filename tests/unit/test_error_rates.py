"""Error rates of transcripts: what is compared and how it is counted."""

from __future__ import annotations

import pytest

from milo_voice.quality.error_rates import ErrorCount, character_errors, edit_distance, normalise, word_errors


def test_case_punctuation_and_spacing_do_not_count_accents_and_apostrophes_do() -> None:
    assert normalise("  Bonjour,  OÙ est l’école ?") == "bonjour où est l'école"
    assert character_errors("Où est-il ?", "ou est il").edits == 1  # the accent; the hyphen is a space
    assert character_errors("l'école", "lécole").edits == 1


def test_edit_distance_counts_insertions_deletions_and_substitutions() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "") == 3
    assert edit_distance(["a", "b"], ["a", "b"]) == 0


def test_rates_are_edits_over_the_reference_summed_over_clips() -> None:
    words = word_errors("je voudrais un taxi", "je voudrais taxi s'il vous plaît")
    assert (words.edits, words.length) == (4, 4)  # one deleted, three added: a rate can pass 1
    assert words.rate == 1.0
    total = character_errors("abcd", "abcd") + character_errors("ab", "xy")
    assert total == ErrorCount(2, 6)
    assert total.rate == pytest.approx(1 / 3)
    assert ErrorCount().rate == 0.0


def test_given_a_language_numbers_are_compared_as_words() -> None:
    reference = "Le billet coûte quinze mille ariary."
    assert character_errors(reference, "Le billet coûte 15 000 Ar.", "fr").edits == 0
    assert character_errors(reference, "Le billet coûte 15 000 Ar.").edits > 10
    assert word_errors("Tamin'ny 2024", "tamin'ny efatra amby roapolo sy roa arivo", "mg").edits == 0
