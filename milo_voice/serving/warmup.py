"""One real call per instance before the host reports ready, so the first user pays no load cost."""

from __future__ import annotations

import numpy as np

from milo_voice.roles.chat import ChatMessage, ChatRequest


def warm_up(role: str, instance: object) -> None:
    # The records come with their role's module, imported only for that role.
    if role == "stt":
        from milo_voice.roles.stt import SAMPLE_RATE, SttRequest

        tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
        instance.transcribe_batch([SttRequest(tone, "auto")])  # type: ignore[attr-defined]
    elif role == "tts":
        from milo_voice.roles.tts import TtsRequest

        for language in instance.languages:  # type: ignore[attr-defined]
            instance.synthesize_batch([TtsRequest("Salama 1", language)])  # type: ignore[attr-defined]
    elif role == "translate":
        from milo_voice.roles.translate import TranslateRequest

        instance.translate_batch([TranslateRequest("Salama", "mg", "fr")])  # type: ignore[attr-defined]
    elif role == "chat":
        instance.complete(ChatRequest([ChatMessage("user", "Salama")], max_tokens=1))  # type: ignore[attr-defined]
