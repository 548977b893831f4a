"""Malagasy number words: units first; "amby" before a part below 200 and "sy" before a larger
one; 11-19 with "ambin'ny"; euphonic tens and hundreds.

Cases marked [tantely] are the worked examples of tantely.org's lesson 3
(https://www.tantely.org/mad/l3.html: "if the number on the right is below 200, amby; from 200
on, sy"), [mylanguages] http://mylanguages.org/malagasy_numbers.php, [grammar] A Concise Grammar
of the Malagasy Language (W. E. Cousins, 1894), Numerals (21: iràikàmbiròapòlo).
"""

import pytest

from milo_voice.text import numbers_mg

CARDINALS = [
    (0, "aotra"),
    (1, "iray"),
    (2, "roa"),
    (4, "efatra"),
    (9, "sivy"),
    (10, "folo"),
    (11, "iraika ambin'ny folo"),
    (12, "roa ambin'ny folo"),
    (15, "dimy ambin'ny folo"),
    (19, "sivy ambin'ny folo"),
    (20, "roapolo"),
    (21, "iraika amby roapolo"),  # [grammar]
    (25, "dimy amby roapolo"),
    (30, "telopolo"),
    (40, "efapolo"),
    (50, "dimampolo"),
    (55, "dimy amby dimampolo"),
    (60, "enimpolo"),
    (70, "fitopolo"),
    (80, "valopolo"),
    (90, "sivifolo"),
    (99, "sivy amby sivifolo"),
    (100, "zato"),
    (101, "iraika amby zato"),
    (110, "folo amby zato"),
    (111, "iraika ambin'ny folo amby zato"),
    (120, "roapolo amby zato"),
    (125, "dimy amby roapolo amby zato"),  # zato is below 200: amby
    (132, "roa amby telopolo amby zato"),  # [mylanguages]
    (157, "fito amby dimampolo amby zato"),  # [tantely]
    (199, "sivy amby sivifolo amby zato"),
    (201, "iray sy roanjato"),
    (203, "telo sy roanjato"),  # [tantely]
    (250, "dimampolo sy roanjato"),
    (200, "roanjato"),
    (300, "telonjato"),
    (400, "efajato"),
    (500, "dimanjato"),
    (600, "eninjato"),
    (700, "fitonjato"),
    (800, "valonjato"),
    (900, "sivinjato"),
    (999, "sivy amby sivifolo sy sivinjato"),
    (1000, "arivo"),
    (1001, "iray sy arivo"),
    (1015, "dimy ambin'ny folo sy arivo"),
    (1020, "roapolo sy arivo"),
    (1100, "zato sy arivo"),
    (1200, "roanjato sy arivo"),
    (1500, "dimanjato sy arivo"),
    (1960, "enimpolo sy sivinjato sy arivo"),
    (1998, "valo amby sivifolo sy sivinjato sy arivo"),  # [tantely]
    (1999, "sivy amby sivifolo sy sivinjato sy arivo"),
    (2000, "roa arivo"),
    (2024, "efatra amby roapolo sy roa arivo"),
    (2765, "dimy amby enimpolo sy fitonjato sy roa arivo"),  # [tantely]
    (3450, "dimampolo sy efajato sy telo arivo"),
    (10000, "iray alina"),
    (12000, "roa arivo sy iray alina"),
    (25000, "dimy arivo sy roa alina"),
    (100000, "iray hetsy"),
    (350000, "dimy alina sy telo hetsy"),
    (150301, "iray sy telonjato sy dimy alina sy iray hetsy"),  # [tantely]
    (1000110, "folo amby zato sy iray tapitrisa"),
    (1000000, "iray tapitrisa"),
    (2500000, "dimy hetsy sy roa tapitrisa"),
    (25000000, "dimy amby roapolo tapitrisa"),
    (1000000000, "iray lavitrisa"),
]


@pytest.mark.parametrize(("number", "words"), CARDINALS)
def test_cardinal(number: int, words: str) -> None:
    assert numbers_mg.cardinal(number) == words


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (1, "voalohany"),
        (2, "faharoa"),
        (3, "fahatelo"),
        (4, "fahefatra"),
        (6, "fahenina"),
        (10, "fahafolo"),
        (11, "fahiraika ambin'ny folo"),
        (20, "faharoapolo"),
        (21, "fahiraika amby roapolo"),
        (100, "fahazato"),
    ],
)
def test_ordinal(number: int, words: str) -> None:
    assert numbers_mg.ordinal(number) == words


def test_negative_and_huge() -> None:
    assert numbers_mg.cardinal(-7) == "latsaka fito"
    # Beyond the traditional scale the digits are read one by one rather than invented.
    assert numbers_mg.cardinal(10**13).split() == ["iray"] + ["aotra"] * 13
