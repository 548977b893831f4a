"""Malagasy number words.

Malagasy reads a number from its smallest part to its largest: 2024 is
"efatra amby roapolo sy roa arivo" (four, twenty, two thousand). The word in
front of each larger part depends on that part's own value: "amby" before a
part below 200 (the tens, "zato"), "sy" before a part of 200 and more
("roanjato", "arivo", "roa arivo", "iray alina"...); 11-19 are "<unit> ambin'ny
folo". One is "iraika" before "amby" (21, 101), "iray" alone or before "sy".

The rule and its examples (157, 203, 1998, 2765, 150301) are tantely.org's
lesson 3 (https://www.tantely.org/mad/l3.html), 132 mylanguages.org's
(http://mylanguages.org/malagasy_numbers.php); the tests cite them.

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
AMBY_BELOW = 200  # the value of a part below which "amby", not "sy", stands in front of it
MILLION = 1_000_000
BILLION = 1_000_000_000

ORDINAL_ONE = "voalohany"
DECIMAL_POINT = "faingo"
MINUS = "latsaka"
PERCENT = "isan-jato"


Part = tuple[str, int]  # its words, its value


def _parts_below_million(n: int) -> list[Part]:
    """Spoken parts of 0 < n < 10^6 with their values, smallest first, before joining. A unit
    part says one as "iray"; ``_join`` makes it "iraika" where "amby" follows."""
    parts: list[Part] = []
    units, tens = n % 10, (n // 10) % 10
    if tens == 1 and units:
        parts.append((f"{COMPOUND_UNITS[units]} ambin'ny folo", 10 + units))
    else:
        if units:
            parts.append((UNITS[units], units))
        if tens:
            parts.append((TENS[tens], 10 * tens))
    hundreds = (n // 100) % 10
    if hundreds:
        parts.append((HUNDREDS[hundreds], 100 * hundreds))
    for power, word in DIGIT_SCALES:
        digit = (n // 10**power) % 10
        if digit:
            # A thousand alone is "arivo"; the other scales count "iray alina".
            words = word if (digit == 1 and word == "arivo") else f"{UNITS[digit]} {word}"
            parts.append((words, digit * 10**power))
    return parts


def _join(parts: list[Part]) -> str:
    """Smallest-first parts joined: "amby" before a part below 200, "sy" before a larger one."""
    if not parts:
        return ""
    words = [text for text, _ in parts]
    for index, (_, value) in enumerate(parts[1:], start=1):
        joiner = "amby" if value < AMBY_BELOW else "sy"
        if joiner == "amby" and words[index - 1] == "iray":
            words[index - 1] = "iraika"  # one inside a compound: 21, 101
        words[index] = f"{joiner} {words[index]}"
    return " ".join(words)


def cardinal(n: int) -> str:
    """Spell a whole number, e.g. ``cardinal(2024) == "efatra amby roapolo sy roa arivo"``."""
    if n < 0:
        return f"{MINUS} {cardinal(-n)}"
    if n < 10:
        return UNITS[n]
    if n >= 1000 * BILLION:
        # Beyond the traditional scale: read digit by digit rather than invent words.
        return " ".join(UNITS[int(d)] for d in str(n))
    parts: list[Part] = []
    below_million = n % MILLION
    if below_million:
        parts.extend(_parts_below_million(below_million))
    millions = (n // MILLION) % 1000
    if millions:
        parts.append((f"{cardinal(millions)} tapitrisa", millions * MILLION))
    billions = n // BILLION
    if billions:
        parts.append((f"{cardinal(billions)} lavitrisa", billions * BILLION))
    return _join(parts)


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
