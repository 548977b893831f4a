from __future__ import annotations

from typing import Any

from milo_voice.roles.translate import Translator


class FixedLengthTranslator(Translator):
    """Decodes ``max_decoding_length`` tokens per sentence; a translation that fills the limit is
    the length asked for, not one cut short."""

    def decoding_options(self) -> dict[str, Any]:
        return {**super().decoding_options(), "min_decoding_length": self.max_decoding_length}

    def reached_output_limit(self, hypothesis: list[str]) -> bool:
        return False
