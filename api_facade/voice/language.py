"""Which language a reply is in, so that it is spoken with that language's voice."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-zàâäçéèêëîïôöùûüÿœæ']+")
# Frequent short words of each language, and none of the other's.
MALAGASY_WORDS = frozenset({
    "ny", "sy", "dia", "ary", "fa", "tsy", "ho", "izy", "aho", "ianao", "isika", "izahay", "ianareo", "izao",
    "ireo", "io", "ity", "amin", "amin'ny", "ao", "any", "eto", "ety", "eny", "tena", "mba", "ka", "koa",
    "manao", "ahoana", "inona", "iza", "aiza", "rahoviana", "nahoana", "misaotra", "tompoko", "azafady",
    "veloma", "salama", "manahoana", "tsara", "be", "kely", "teny", "fiteny", "no", "ilay", "izany", "hoe",
    "mbola", "efa", "afaka", "maro", "olona", "anao", "ahy", "azy",
})  # fmt: skip
FRENCH_WORDS = frozenset({
    "le", "la", "les", "un", "une", "des", "du", "de", "et", "est", "sont", "je", "tu", "il", "elle", "nous",
    "vous", "ils", "elles", "que", "qui", "pas", "pour", "dans", "avec", "sur", "au", "aux", "ce", "cette",
    "ces", "mais", "ou", "donc", "car", "ne", "se", "sa", "son", "ses", "mon", "ma", "mes", "bonjour", "merci",
    "oui", "non", "très", "bien", "c'est", "j'ai",
})  # fmt: skip
# Letters Malagasy spelling does not use (c, q, u, w, x) and French accents.
FRENCH_LETTERS = re.compile(r"[cquwxàâçéèêëîïùûüœ]")


def detect_language(text: str) -> str | None:
    """ "mg" or "fr" when ``text`` says clearly which, else None."""
    words = WORD.findall(text.lower())
    if not words:
        return None
    malagasy = sum(w in MALAGASY_WORDS for w in words) + sum(
        (len(w) > 2 and w.endswith("y")) or w.endswith(("'i", "'ny")) for w in words
    )
    french = sum(w in FRENCH_WORDS for w in words) + sum(bool(FRENCH_LETTERS.search(w)) for w in words)
    if malagasy == french:
        return None
    # Both counts grow with the text: ask for a clear margin, not a single word's difference.
    margin = max(1, len(words) // 8)
    if abs(malagasy - french) < margin:
        return None
    return "mg" if malagasy > french else "fr"


def reply_language(asked: str | None, heard: str | None, reply: str, default: str) -> str:
    """The voice for a reply: the language asked for; else the one the reply is written in; else
    the one the user spoke (the model answers in it); else the default voice's."""
    return asked or detect_language(reply) or heard or default
