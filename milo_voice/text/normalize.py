"""Turn written text into the words a voice should say, for Malagasy and French.

TTS voices are trained on spoken words, not digits: "2024" must reach the voice as
"efatra amby roapolo sy roa arivo". Each rule below finds one written form (a phone number, a
date, a range, a time, an amount with its currency before or after, a measure with its unit, a
percentage, an ordinal, a decimal, a plain number) and replaces it by its spoken form; more
specific forms are rewritten first so that "14h30" is never read as two numbers, nor
"12/05/2024" as three. What is left is caught last: any digit still there (in "4G" or "mp3")
is read as a number, and the symbols of ``SYMBOLS`` are said as words, so that no digit and no
such symbol ever reaches a voice.
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
_DASH = "[-\u2013\u2011]"  # hyphen, en dash, no-break hyphen

# A phone number: "+261 34 12 345 67", "034 12 345 67", "01 23 45 67 89" (groups of 2 or 3
# digits; four groups at least, or a "+" country code and three).
_PHONE = re.compile(r"(?<![\w.,+])(?P<plus>\+)?(?P<groups>\d{2,4}(?:[ .]\d{2,3}){3,})(?![\w.,]?\d)")
_DATE_DMY = re.compile(r"(?<![\w/.])(?P<d>\d{1,2})[/.](?P<m>\d{1,2})[/.](?P<y>\d{4})(?![\w/])")
_DATE_ISO = re.compile(r"(?<![\w-])(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?![\w-])")
_RANGE = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?{_DASH}{_SPACE}?(?P<int2>{_INT})(?:[.,](?P<frac2>\d+))?(?![\w])")
_TIME = re.compile(r"\b(?P<h>[01]?\d|2[0-3])(?:[:hH](?P<m>[0-5]\d)|[hH])(?![\w])")
_CURRENCY_CODES = r"€|\$|£|(?:Ariary|Ar|MGA|EUR|USD|euros?|dollars?)\b"
_CURRENCY_AFTER = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?(?P<cur>{_CURRENCY_CODES})", re.IGNORECASE)
_CURRENCY_BEFORE = re.compile(rf"(?<!\w)(?P<cur>€|\$|£|\b(?:Ar|MGA|EUR|USD))\.?{_SPACE}?{_NUMBER}(?![\w])")
# Case matters: "4G" is no weight.
_UNIT = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?(?P<unit>km/h|°C|°F|°|km|cm|mm|kg|ml|mL|ha|m|g|l|L)(?![\w/])")
_PERCENT = re.compile(rf"(?<![\w.,]){_NUMBER}{_SPACE}?%")
_ORDINAL_MG = re.compile(r"\bfaha-?(?P<n>\d+)\b", re.IGNORECASE)
_ORDINAL_SUFFIX = re.compile(r"\b(?P<n>\d+)(?P<suffix>er|re|ère|e|è|ème|eme)\b")
_FRACTION = re.compile(rf"(?<![\w.,/]){_NUMBER}/(?P<int2>\d+)(?![\w/])")
_SIGNED_NUMBER = re.compile(rf"(?<![\w.,])(?P<sign>[-−])?{_NUMBER}(?![\w])")
_ANY_DIGITS = re.compile(r"\d+")
# The symbols no voice may be given: each language says them as words (``_Language.symbols``).
SYMBOLS = "%€$£°/+&=@"
_SYMBOL = re.compile(f"[{re.escape(SYMBOLS)}]")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_STOP = re.compile(r"\s+(?=[.,;:!?](?:\s|$))")


# What a written currency code or unit stands for, whatever the language.
_CURRENCY_OF = {"ar": "ariary", "ariary": "ariary", "mga": "ariary", "€": "euro", "eur": "euro", "euro": "euro",
                "euros": "euro", "$": "dollar", "usd": "dollar", "dollar": "dollar", "dollars": "dollar",
                "£": "pound"}  # fmt: skip
_UNIT_OF = {"km/h": "km/h", "km": "km", "m": "m", "cm": "cm", "mm": "mm", "kg": "kg", "g": "g", "l": "l", "L": "l",
            "ml": "ml", "mL": "ml", "ha": "ha", "°C": "°C", "°F": "°F", "°": "°"}  # fmt: skip
# A currency sign or the degree sign met alone is said as its currency or unit, in the plural.
_SIGN_OF = {"€": ("currency", "euro"), "$": ("currency", "dollar"), "£": ("currency", "pound"), "°": ("unit", "°")}


@dataclass(frozen=True)
class _Language:
    numbers: ModuleType
    hour: str
    minute: str
    currencies: dict[str, tuple[str, str]]  # currency (``_CURRENCY_OF``'s) -> (one, many)
    units: dict[str, tuple[str, str]]  # unit (``_UNIT_OF``'s) -> (one, many)
    months: tuple[str, ...]
    range_word: str  # between the two ends of "2020-2024"
    fraction_word: str  # between the two numbers of "3/4"
    plus: str  # a phone number's "+"
    words_for: dict[str, str]  # the other symbols of ``SYMBOLS``

    def symbol(self, sign: str) -> str:
        """How a symbol of ``SYMBOLS`` met alone is said."""
        if sign in _SIGN_OF:
            kind, name = _SIGN_OF[sign]
            return (self.currencies if kind == "currency" else self.units)[name][1]
        return self.words_for[sign]


_MONTHS_MG = ("Janoary", "Febroary", "Martsa", "Aprily", "Mey", "Jona", "Jolay", "Aogositra", "Septambra",
              "Oktobra", "Novambra", "Desambra")  # fmt: skip
_MONTHS_FR = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
              "novembre", "décembre")  # fmt: skip

# fmt: off
_LANGUAGES = {
    # Malagasy nouns have no plural: one form for one and for many.
    "mg": _Language(
        numbers_mg, "ora", "minitra",
        currencies={name: (word, word) for name, word in
                    {"ariary": "ariary", "euro": "euro", "dollar": "dolara", "pound": "livre"}.items()},
        units={unit: (word, word) for unit, word in
               {"km/h": "kilometatra isan'ora", "km": "kilometatra", "m": "metatra", "cm": "santimetatra",
                "mm": "milimetatra", "kg": "kilao", "g": "grama", "l": "litatra", "ml": "mililitatra",
                "ha": "hektara", "°C": "degre Celsius", "°F": "degre Fahrenheit", "°": "degre"}.items()},
        months=_MONTHS_MG,
        range_word="ka hatramin'ny",
        fraction_word="amin'ny",
        plus="miampy",
        words_for={"%": "isan-jato", "/": "na", "+": "miampy", "&": "sy", "=": "mitovy amin'ny", "@": "arobaza"},
    ),
    "fr": _Language(
        numbers_fr, "heures", "minutes",
        currencies={"ariary": ("ariary", "ariary"), "euro": ("euro", "euros"), "dollar": ("dollar", "dollars"),
                    "pound": ("livre", "livres")},
        units={"km/h": ("kilomètre à l'heure", "kilomètres à l'heure"), "km": ("kilomètre", "kilomètres"),
               "m": ("mètre", "mètres"), "cm": ("centimètre", "centimètres"), "mm": ("millimètre", "millimètres"),
               "kg": ("kilogramme", "kilogrammes"), "g": ("gramme", "grammes"), "l": ("litre", "litres"),
               "ml": ("millilitre", "millilitres"), "ha": ("hectare", "hectares"),
               "°C": ("degré Celsius", "degrés Celsius"), "°F": ("degré Fahrenheit", "degrés Fahrenheit"),
               "°": ("degré", "degrés")},
        months=_MONTHS_FR,
        range_word="à",
        fraction_word="sur",
        plus="plus",
        words_for={"%": "pour cent", "/": "ou", "+": "plus", "&": "et", "=": "égale", "@": "arobase"},
    ),
}
# fmt: on


def _integer(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text))


class TextNormalizer:
    """Spoken form of a text in one language: ``TextNormalizer("mg")("2024")``."""

    def __init__(self, language: str) -> None:
        if language not in _LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; expected one of {SUPPORTED_LANGUAGES}")
        self.language = language
        self._lang = _LANGUAGES[language]
        ordinals = [(_ORDINAL_MG, self._ordinal)] if language == "mg" else []
        self._rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
            (_PHONE, self._phone),
            (_DATE_ISO, self._date),
            (_DATE_DMY, self._date),
            (_TIME, self._time),
            (_CURRENCY_BEFORE, self._currency),
            (_CURRENCY_AFTER, self._currency),
            (_UNIT, self._measure),
            (_PERCENT, self._percent),
            (_RANGE, self._range),
            *ordinals,
            (_ORDINAL_SUFFIX, self._ordinal),
            (_FRACTION, self._fraction),
            (_SIGNED_NUMBER, self._number),
            (_ANY_DIGITS, lambda match: f" {self.number(match[0])} "),
            (_SYMBOL, lambda match: f" {self._lang.symbol(match[0])} "),
        ]

    def __call__(self, text: str) -> str:
        for pattern, spell in self._rules:
            text = pattern.sub(spell, text)
        return _SPACE_BEFORE_STOP.sub("", _SPACES.sub(" ", text)).strip()

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

    def _counted(self, forms: tuple[str, str], match: re.Match[str]) -> str:
        """The amount of ``match`` and the noun it counts, singular below two (French usage:
        "un virgule cinq kilogramme"; Malagasy has one form)."""
        amount = _integer(match["int"]) + (float(f"0.{match['frac']}") if match["frac"] else 0.0)
        noun = forms[0] if amount < 2 else forms[1]
        return f"{self.number(match['int'], match['frac'])} {noun}"

    def _number(self, match: re.Match[str]) -> str:
        return self.number(match["int"], match["frac"], negative=bool(match["sign"]))

    def _percent(self, match: re.Match[str]) -> str:
        return f"{self.number(match['int'], match['frac'])} {self._lang.numbers.PERCENT}"

    def _currency(self, match: re.Match[str]) -> str:
        # Said after the amount, wherever it was written: "Ar 5000" and "5000 Ar" alike.
        forms = self._lang.currencies[_CURRENCY_OF[match["cur"].lower()]]
        return f" {self._counted(forms, match)} "

    def _measure(self, match: re.Match[str]) -> str:
        return f" {self._counted(self._lang.units[_UNIT_OF[match['unit']]], match)} "

    def _range(self, match: re.Match[str]) -> str:
        start = self.number(match["int"], match["frac"])
        end = self.number(match["int2"], match["frac2"])
        return f"{start} {self._lang.range_word} {end}"

    def _fraction(self, match: re.Match[str]) -> str:
        return f"{self.number(match['int'], match['frac'])} {self._lang.fraction_word} {self.number(match['int2'])}"

    def _phone(self, match: re.Match[str]) -> str:
        """Each group of digits as people say it: a number, its leading zeros as zeros."""
        spoken = []
        for group in re.split(r"[ .]", match["groups"]):
            zeros = len(group) - len(group.lstrip("0"))
            words = [self._lang.numbers.UNITS[0]] * zeros
            if group.lstrip("0"):
                words.append(self._lang.numbers.cardinal(int(group)))
            spoken.append(" ".join(words))
        said = ", ".join(spoken)
        return f"{self._lang.plus} {said}" if match["plus"] else said

    def _date(self, match: re.Match[str]) -> str:
        day, month, year = int(match["d"]), int(match["m"]), int(match["y"])
        if not (1 <= day <= 31 and 1 <= month <= 12):  # not a date: its numbers one after the other
            separator = " " if "-" in match[0] else f" {self._lang.fraction_word} "
            return separator.join(self.number(part) for part in re.split(r"[/.-]", match[0]))
        numbers = self._lang.numbers
        day_words = numbers_fr.ordinal(1) if (self.language == "fr" and day == 1) else numbers.cardinal(day)
        return f"{day_words} {self._lang.months[month - 1]} {numbers.cardinal(year)}"

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
