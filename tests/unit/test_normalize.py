"""Whole texts turned into what the voice says: numbers, decimals, percentages, ordinals, amounts,
times, dates, ranges, currencies before or after, units, phone numbers; and, for any text, no
digit and no symbol left.

Sources of the cases: [OQLF] Office québécois de la langue française, Banque de dépannage
linguistique (dates written "12 mai 2024" and read with a cardinal day but "1er"; an interval
"2020-2024" read "de 2020 à 2024"; unit symbols "km/h", "kg", "°C" read as their names, plural
from two: "1,5 kilogramme"); [months-mg] the Malagasy month names (Janoary ... Desambra) as
polyglotclub.com's Plateau Malagasy lesson lists them; [tantely] tantely.org lesson 3 for the
numbers; Malagasy ranges "ka hatramin'ny" (from ... up to), "miampy" the arithmetic plus, and
no plural on Malagasy nouns ("telo kilao").
"""

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
    ("2020-2024", "roapolo sy roa arivo ka hatramin'ny efatra amby roapolo sy roa arivo"),
    ("ny 12/05/2024", "ny roa ambin'ny folo Mey efatra amby roapolo sy roa arivo"),  # [months-mg]
    ("2024-08-01", "iray Aogositra efatra amby roapolo sy roa arivo"),  # [months-mg]
    ("Ar 5000", "dimy arivo ariary"),
    ("$ 10", "folo dolara"),
    ("50 km/h", "dimampolo kilometatra isan'ora"),
    ("3 kg", "telo kilao"),  # no plural
    ("25 °C", "dimy amby roapolo degre Celsius"),
    (
        "+261 34 12 345 67",
        "miampy iraika amby enimpolo sy roanjato, efatra amby telopolo, roa ambin'ny folo, "
        "dimy amby efapolo sy telonjato, fito amby enimpolo",
    ),
    ("ny 3e", "ny fahatelo"),
    ("ny faha-21", "ny fahiraika amby roapolo"),
    ("mpianatra/mpampianatra", "mpianatra na mpampianatra"),
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
    ("2020-2024", "deux mille vingt à deux mille vingt-quatre"),  # [OQLF]
    ("de 10 – 12 ans", "de dix à douze ans"),
    ("le 12/05/2024", "le douze mai deux mille vingt-quatre"),  # [OQLF]
    ("le 1/05/2024", "le premier mai deux mille vingt-quatre"),  # [OQLF]: 1er
    ("2024-05-12", "douze mai deux mille vingt-quatre"),
    ("32/13/2024", "trente-deux sur treize sur deux mille vingt-quatre"),  # no such date
    ("$ 10", "dix dollars"),
    ("€5", "cinq euros"),
    ("Ar 5000", "cinq mille ariary"),
    ("50 km/h", "cinquante kilomètres à l'heure"),  # [OQLF]
    ("3 kg", "trois kilogrammes"),  # [OQLF]
    ("1,5 kg", "un virgule cinq kilogramme"),  # [OQLF]: plural from two
    ("25 °C", "vingt-cinq degrés Celsius"),  # [OQLF]
    ("2 L", "deux litres"),
    (
        "+261 34 12 345 67",
        "plus deux cent soixante et un, trente-quatre, douze, trois cent quarante-cinq, soixante-sept",
    ),
    ("034 12 345 67", "zéro trente-quatre, douze, trois cent quarante-cinq, soixante-sept"),
    ("en 4G", "en quatre G"),
    ("3/4", "trois sur quatre"),
    ("vidiny 5 €.", "vidiny cinq euros."),
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


# -- whatever the text, no digit and no symbol reaches the voice ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from milo_voice.text.normalize import SYMBOLS  # noqa: E402

WRITTEN = st.lists(
    st.one_of(
        st.sampled_from(["Bonjour", "ny", "vidiny", "km/h", "kg", "°C", "Ar", "€", "$", "faha-", "le", "G", "mp"]),
        st.integers(-(10**13), 10**13).map(str),
        st.from_regex(r"\d{1,4}([ .,:/h-]\d{1,4}){0,3}", fullmatch=True),
        st.sampled_from([*SYMBOLS, "-", ":", ",", ".", "'", " "]),
    ),
    max_size=12,
).map(lambda pieces: "".join(pieces) if len(pieces) % 2 else " ".join(pieces))


@settings(max_examples=400, deadline=None)
@given(text=WRITTEN, language=st.sampled_from(["mg", "fr"]))
def test_no_digit_and_no_symbol_is_ever_left(text: str, language: str) -> None:
    spoken = normalize_text(text, language)
    assert not any(ch.isdigit() for ch in spoken), (text, spoken)
    assert not any(ch in SYMBOLS for ch in spoken), (text, spoken)
