from __future__ import annotations

from milo_voice.roles.stt import SpeechToText
from milo_voice.roles.whisper.transcripts import DecodingLimits


class FixedLengthSpeechToText(SpeechToText):
    """Decodes ``max_new_tokens`` per window: the end of text is never picked."""

    def decoding_limits(self) -> DecodingLimits:
        return DecodingLimits(self.options.max_new_tokens, (-1, self.tokenizer.eot))
