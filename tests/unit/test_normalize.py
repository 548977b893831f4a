"""Whole texts turned into what the voice says: numbers, decimals, percentages, ordinals, amounts, times."""

import pytest

from milo_voice.text.normalize import TextNormalizer, normalize_text

MALAGASY = [
    ("Tamin'ny 2024", "Tamin'ny efatra amby roapolo sy roa arivo"),
    ("olona 15", "olona dimy ambin'ny folo"),
    ("3,5 kilao", "telo faingo dimy kilao"),
    ("0,05", "aotra faingo aotra dimy"),
    ("25%", "dimy amby roapolo isan-jato"),
    ("12,5 %", "roa ambin'ny folo faingo dimy isan-jato"),
    ("1 500 Ar", "dimanjato sy arivo ariary"),
    ("2000 Ariary", "roa arivo ariary"),
    ("10 000 MGA", "iray alina ariary"),
    ("amin'ny 14h30", "amin'ny efatra ambin'ny folo ora sy telopolo minitra"),
    ("10:05", "folo ora sy dimy minitra"),
    ("8h", "valo ora"),
    ("ny faha-3 taona", "ny fahatelo taona"),
    ("ny faha-1", "ny voalohany"),
    ("-5 degre", "latsaka dimy degre"),
    ("1 234 567", "fito amby enimpolo sy dimanjato sy efatra arivo sy telo alina sy roa hetsy sy iray tapitrisa"),
    ("1.000.000", "iray tapitrisa"),
    ("Manao ahoana daholo", "Manao ahoana daholo"),
    ("  be   lavitra  ", "be lavitra"),
]

FRENCH = [
    ("En 2024", "En deux mille vingt-quatre"),
    ("3,14", "trois virgule quatorze"),
    ("25 %", "vingt-cinq pour cent"),
    ("1 200 €", "mille deux cents euros"),
    ("1 €", "un euro"),
    ("5000 Ar", "cinq mille ariary"),
    ("21h30", "vingt et une heures trente"),
    ("1h", "une heure"),
    ("à 14:00", "à quatorze heures"),
    ("le 1er mai", "le premier mai"),
    ("la 1re fois", "la première fois"),
    ("le 2e", "le deuxième"),
    ("le 5ème", "le cinquième"),
    ("-3", "moins trois"),
    ("2020-2024", "deux mille vingt-deux mille vingt-quatre"),
]


@pytest.mark.parametrize(("text", "spoken"), MALAGASY)
def test_malagasy(text: str, spoken: str) -> None:
    assert normalize_text(text, "mg") == spoken


@pytest.mark.parametrize(("text", "spoken"), FRENCH)
def test_french(text: str, spoken: str) -> None:
    assert normalize_text(text, "fr") == spoken


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported language"):
        TextNormalizer("xx")


def test_no_digit_left() -> None:
    text = "Tamin'ny 12/05/2024 tamin'ny 9h15, 3 ampy 45% no tonga, vidiny 25 000 Ar."
    assert not any(ch.isdigit() for ch in normalize_text(text, "mg"))
