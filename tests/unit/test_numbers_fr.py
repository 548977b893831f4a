"""French number words (traditional spelling)."""

import pytest

from milo_voice.text import numbers_fr

CARDINALS = [
    (0, "zéro"),
    (1, "un"),
    (10, "dix"),
    (11, "onze"),
    (16, "seize"),
    (17, "dix-sept"),
    (21, "vingt et un"),
    (22, "vingt-deux"),
    (31, "trente et un"),
    (61, "soixante et un"),
    (70, "soixante-dix"),
    (71, "soixante et onze"),
    (77, "soixante-dix-sept"),
    (80, "quatre-vingts"),
    (81, "quatre-vingt-un"),
    (90, "quatre-vingt-dix"),
    (91, "quatre-vingt-onze"),
    (99, "quatre-vingt-dix-neuf"),
    (100, "cent"),
    (101, "cent un"),
    (200, "deux cents"),
    (201, "deux cent un"),
    (280, "deux cent quatre-vingts"),
    (1000, "mille"),
    (1001, "mille un"),
    (1981, "mille neuf cent quatre-vingt-un"),
    (2000, "deux mille"),
    (2024, "deux mille vingt-quatre"),
    (80000, "quatre-vingt mille"),
    (200000, "deux cent mille"),
    (1000000, "un million"),
    (2000000, "deux millions"),
    (3200000, "trois millions deux cent mille"),
    (1000000000, "un milliard"),
]


@pytest.mark.parametrize(("number", "words"), CARDINALS)
def test_cardinal(number: int, words: str) -> None:
    assert numbers_fr.cardinal(number) == words


@pytest.mark.parametrize(
    ("number", "gender", "words"),
    [
        (1, "m", "premier"),
        (1, "f", "première"),
        (2, "m", "deuxième"),
        (3, "m", "troisième"),
        (4, "m", "quatrième"),
        (5, "m", "cinquième"),
        (9, "m", "neuvième"),
        (11, "m", "onzième"),
        (21, "m", "vingt et unième"),
        (80, "m", "quatre-vingtième"),
        (100, "m", "centième"),
        (1000, "m", "millième"),
    ],
)
def test_ordinal(number: int, gender: str, words: str) -> None:
    assert numbers_fr.ordinal(number, gender) == words
