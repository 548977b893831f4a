"""French number words, in the traditional spelling (hyphens below a hundred only).

The irregular parts: "et un" for 21-71 (but "quatre-vingt-un"), soixante-dix and
quatre-vingt-dix counting on from 60 and 80, the plural "s" of "quatre-vingts" and
"deux cents" only when nothing follows, and "mille" that never takes an "s".
"""

from __future__ import annotations

UNITS = [
    "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf",
    "dix", "onze", "douze", "treize", "quatorze", "quinze", "seize",
    "dix-sept", "dix-huit", "dix-neuf",
]  # fmt: skip
TENS = ["", "dix", "vingt", "trente", "quarante", "cinquante", "soixante"]
SCALES = [(10**9, "milliard"), (10**6, "million")]

DECIMAL_POINT = "virgule"
MINUS = "moins"
PERCENT = "pour cent"
ORDINAL_ONE = {"m": "premier", "f": "première"}


def _below_hundred(n: int) -> str:
    if n < 20:
        return UNITS[n]
    tens, units = divmod(n, 10)
    if tens in (7, 9):
        # 70-79 and 90-99 count on from 60 and 80: soixante-douze, quatre-vingt-quinze.
        base = "soixante" if tens == 7 else "quatre-vingt"
        rest = n - (60 if tens == 7 else 80)
        joiner = " et " if rest == 11 and tens == 7 else "-"
        return f"{base}{joiner}{UNITS[rest]}"
    if tens == 8:
        return "quatre-vingts" if units == 0 else f"quatre-vingt-{UNITS[units]}"
    if units == 0:
        return TENS[tens]
    if units == 1:
        return f"{TENS[tens]} et un"
    return f"{TENS[tens]}-{UNITS[units]}"


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if hundreds == 0:
        return _below_hundred(rest)
    head = "cent" if hundreds == 1 else f"{UNITS[hundreds]} cent"
    if rest == 0:
        return head if hundreds == 1 else head + "s"
    return f"{head} {_below_hundred(rest)}"


def cardinal(n: int) -> str:
    """Spell a whole number: ``cardinal(1981) == "mille neuf cent quatre-vingt-un"``."""
    if n < 0:
        return f"{MINUS} {cardinal(-n)}"
    if n < 1000:
        return _below_thousand(n)
    if n >= 1000 * 10**9:
        return " ".join(UNITS[int(d)] for d in str(n))
    words: list[str] = []
    for value, name in SCALES:
        count, n = divmod(n, value)
        if count:
            words.append(f"{cardinal(count)} {name}{'s' if count > 1 else ''}")
    thousands, n = divmod(n, 1000)
    if thousands:
        # "quatre-vingts" and "deux cents" drop their "s" before "mille".
        words.append("mille" if thousands == 1 else f"{_below_thousand(thousands).removesuffix('s')} mille")
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal(n: int, gender: str = "m") -> str:
    """Ordinal: premier/première, deuxième, cinquième, neuvième, vingt et unième."""
    if n == 1:
        return ORDINAL_ONE.get(gender, "premier")
    words = cardinal(n)
    if words.endswith("cinq"):
        return words + "uième"
    if words.endswith("neuf"):
        return words[:-1] + "vième"
    if words.endswith(("e", "s")) and not words.endswith(("trois", "six")):
        # quatre -> quatrième, onze -> onzième, quatre-vingts -> quatre-vingtième.
        words = words[:-1]
    return words + "ième"


def digits(text: str) -> str:
    return " ".join(UNITS[int(d)] for d in text if d.isdigit())
