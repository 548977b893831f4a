"""Turn written text into the words a voice should say, for Malagasy and French.

TTS voices are trained on spoken words, not digits: "2024" must reach the voice as
"efatra amby roapolo sy roa arivo". Each rule below finds one written form (a time,
an amount, a percentage, an ordinal, a decimal, a plain number) and replaces it by
its spoken form; more specific forms are rewritten first so that "14h30" is never
read as two numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from milo_voice.text import numbers_fr, numbers_mg

SUPPORTED_LANGUAGES = ("mg", "fr")

# Digits grouped by thousands with a space, a no-break space or a narrow no-break
# space (French and Malagasy typography), or by dots when there are two groups or more.
_SPACE = "[ \u00a0\u202f]"
_INT = rf"\d{{1,3}}(?:{_SPACE}\d{{3}})+(?!\d)|\d{{1,3}}(?:\.\d{{3}}){{2,}}(?!\d)|\d+"
_NUMBER = rf"(?P<int>{_INT})(?:[.,](?P<frac>\d+))?"

_TIME = re.compile(r"\b(?P<h>[01]?\d|2[0-3])(?:[:hH](?P<m>[0-5]\d)|[hH])(?![\w])")
_CURRENCY = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?(?P<cur>€|(?:Ariary|Ar|MGA|EUR|euros?)\b)", re.IGNORECASE)
_PERCENT = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?%")
_ORDINAL_MG = re.compile(r"\bfaha-?(?P<n>\d+)\b", re.IGNORECASE)
_ORDINAL_FR = re.compile(r"\b(?P<n>\d+)(?P<suffix>er|re|ère|e|è|ème|eme)\b")
_SIGNED_NUMBER = re.compile(rf"(?<![\w.,])(?P<sign>[-−])?{_NUMBER}(?![\w])")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class _Language:
    numbers: ModuleType
    hour: str
    minute: str
    currency_names: dict[str, str]


_LANGUAGES = {
    "mg": _Language(
        numbers_mg, "ora", "minitra", {"ar": "ariary", "mga": "ariary", "€": "euro", "eur": "euro", "euros": "euro"}
    ),
    "fr": _Language(
        numbers_fr,
        "heures",
        "minutes",
        {"ar": "ariary", "mga": "ariary", "€": "euros", "eur": "euros", "euro": "euros"},
    ),
}


def _integer(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text))


class TextNormalizer:
    """Spoken form of a text in one language: ``TextNormalizer("mg")("2024")``."""

    def __init__(self, language: str) -> None:
        if language not in _LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; expected one of {SUPPORTED_LANGUAGES}")
        self.language = language
        self._lang = _LANGUAGES[language]
        self._rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
            (_TIME, self._time),
            (_CURRENCY, self._currency),
            (_PERCENT, self._percent),
            (_ORDINAL_MG if language == "mg" else _ORDINAL_FR, self._ordinal),
            (_SIGNED_NUMBER, self._number),
        ]

    def __call__(self, text: str) -> str:
        for pattern, spell in self._rules:
            text = pattern.sub(spell, text)
        return _SPACES.sub(" ", text).strip()

    def number(self, integer_part: str, fraction: str | None = None, negative: bool = False) -> str:
        """Spoken form of a written number such as "1 500" or "3,25"."""
        numbers = self._lang.numbers
        words = numbers.cardinal(_integer(integer_part))
        if fraction:
            # Leading zeros of a fraction are read one by one: 3,05 is "three point zero five".
            zeros = len(fraction) - len(fraction.lstrip("0"))
            spoken = [numbers.UNITS[0]] * zeros
            if fraction.lstrip("0"):
                spoken.append(numbers.cardinal(int(fraction)))
            words = f"{words} {numbers.DECIMAL_POINT} {' '.join(spoken)}"
        if negative:
            words = f"{numbers.MINUS} {words}"
        return words

    def _number(self, match: re.Match[str]) -> str:
        return self.number(match["int"], match["frac"], negative=bool(match["sign"]))

    def _percent(self, match: re.Match[str]) -> str:
        return f"{self.number(match['int'], match['frac'])} {self._lang.numbers.PERCENT}"

    def _currency(self, match: re.Match[str]) -> str:
        code = match["cur"].lower()
        name = self._lang.currency_names.get(code, code)
        amount = self.number(match["int"], match["frac"])
        if self.language == "fr" and name == "euros" and _integer(match["int"]) == 1 and not match["frac"]:
            name = "euro"
        return f"{amount} {name}"

    def _time(self, match: re.Match[str]) -> str:
        hours, minutes = int(match["h"]), int(match["m"] or 0)
        numbers = self._lang.numbers
        if self.language == "fr":
            # "heure" is feminine and singular for one: une heure, vingt et une heures.
            hour_words = numbers.cardinal(hours)
            if hour_words.endswith("un"):
                hour_words += "e"
            spoken = f"{hour_words} {'heure' if hours == 1 else 'heures'}"
            return f"{spoken} {numbers.cardinal(minutes)}" if minutes else spoken
        spoken = f"{numbers.cardinal(hours)} {self._lang.hour}"
        return f"{spoken} sy {numbers.cardinal(minutes)} {self._lang.minute}" if minutes else spoken

    def _ordinal(self, match: re.Match[str]) -> str:
        n = int(match["n"])
        if self.language == "mg":
            return numbers_mg.ordinal(n)
        gender = "f" if match["suffix"] in ("re", "ère") else "m"
        return numbers_fr.ordinal(n, gender)


def normalize_text(text: str, language: str) -> str:
    """Spoken form of ``text`` in ``language`` ("mg" or "fr")."""
    return TextNormalizer(language)(text)
