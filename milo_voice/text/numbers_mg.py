"""Malagasy number words.

Malagasy reads a number from its smallest part to its largest: 2024 is
"efatra amby roapolo sy roa arivo" (four, twenty, two thousand). The lowest
part is joined to the next by "amby" when it is below a hundred, every other
join is "sy", and 11-19 are "<unit> ambin'ny folo". Units inside a compound
take the form "iraika" for one, while a lone one is "iray".

The traditional scale has a word for each power of ten up to a million:
folo (10), zato (100), arivo (1 000), alina (10 000), hetsy (100 000),
tapitrisa (1 000 000); then lavitrisa (10^9).
"""

from __future__ import annotations

UNITS = ["aotra", "iray", "roa", "telo", "efatra", "dimy", "enina", "fito", "valo", "sivy"]
# "iraika" is the form of one that stands inside a compound (11, 21, 101...).
COMPOUND_UNITS = ["", "iraika", "roa", "telo", "efatra", "dimy", "enina", "fito", "valo", "sivy"]
TENS = [
    "",
    "folo",
    "roapolo",
    "telopolo",
    "efapolo",
    "dimampolo",
    "enimpolo",
    "fitopolo",
    "valopolo",
    "sivifolo",
]
HUNDREDS = [
    "",
    "zato",
    "roanjato",
    "telonjato",
    "efajato",
    "dimanjato",
    "eninjato",
    "fitonjato",
    "valonjato",
    "sivinjato",
]
# Powers of ten above a hundred that take a one-digit multiplier.
DIGIT_SCALES = [(3, "arivo"), (4, "alina"), (5, "hetsy")]
MILLION = 1_000_000
BILLION = 1_000_000_000

ORDINAL_ONE = "voalohany"
DECIMAL_POINT = "faingo"
MINUS = "latsaka"
PERCENT = "isan-jato"


def _parts_below_million(n: int) -> list[str]:
    """Spoken parts of 0 < n < 10^6, smallest first, before joining."""
    parts: list[str] = []
    units, tens = n % 10, (n // 10) % 10
    if tens == 1 and units:
        parts.append(f"{COMPOUND_UNITS[units]} ambin'ny folo")
    else:
        if units:
            parts.append(COMPOUND_UNITS[units] if n >= 10 else UNITS[units])
        if tens:
            parts.append(TENS[tens])
    hundreds = (n // 100) % 10
    if hundreds:
        parts.append(HUNDREDS[hundreds])
    for power, word in DIGIT_SCALES:
        digit = (n // 10**power) % 10
        if digit:
            # A thousand alone is "arivo"; the other scales count "iray alina".
            parts.append(word if (digit == 1 and word == "arivo") else f"{UNITS[digit]} {word}")
    return parts


def _join(parts: list[str], lowest_value: int) -> str:
    """Join smallest-first parts: "amby" after a lowest part below 100, then "sy"."""
    if not parts:
        return ""
    out = parts[0]
    for index, part in enumerate(parts[1:]):
        joiner = "amby" if index == 0 and lowest_value < 100 else "sy"
        out = f"{out} {joiner} {part}"
    return out


def _lowest_part_value(n: int) -> int:
    """Value of the smallest non-zero part of n (units and tens count together)."""
    below_hundred = n % 100
    if below_hundred:
        return below_hundred
    power = 2
    while n % 10 ** (power + 1) == 0:
        power += 1
    return 10**power


def cardinal(n: int) -> str:
    """Spell a whole number, e.g. ``cardinal(2024) == "efatra amby roapolo sy roa arivo"``."""
    if n < 0:
        return f"{MINUS} {cardinal(-n)}"
    if n < 10:
        return UNITS[n]
    if n >= 1000 * BILLION:
        # Beyond the traditional scale: read digit by digit rather than invent words.
        return " ".join(UNITS[int(d)] for d in str(n))
    parts: list[str] = []
    below_million = n % MILLION
    if below_million:
        parts.extend(_parts_below_million(below_million))
    millions = (n // MILLION) % 1000
    if millions:
        parts.append(f"{cardinal(millions)} tapitrisa")
    billions = n // BILLION
    if billions:
        parts.append(f"{cardinal(billions)} lavitrisa")
    return _join(parts, _lowest_part_value(n))


def ordinal(n: int) -> str:
    """Ordinal: "voalohany" for 1, otherwise "faha-" + the number ("fahatelo", "fahefatra")."""
    if n == 1:
        return ORDINAL_ONE
    words = cardinal(n)
    if n % 100 == 1 or (n % 10 == 1 and n % 100 != 11):
        # Counting position uses the compound form: faha-21 is "fahiraika amby roapolo".
        words = words.replace("iray", "iraika", 1)
    # "faha" loses its final vowel before e/i: fahefatra, fahenina, fahiraika.
    if words[0] in "ei":
        return "fah" + words
    return "faha" + words


def digits(text: str) -> str:
    """Read a string of digits one by one (phone numbers, decimals after the point)."""
    return " ".join(UNITS[int(d)] for d in text if d.isdigit())
