"""One real call per instance before the host reports ready, so the first user pays no load cost."""

from __future__ import annotations

import numpy as np

from contract.records import STT_SAMPLE_RATE, ChatMessage, ChatRequest, SttRequest, TranslateRequest, TtsRequest


def warm_up(role: str, instance: object) -> None:
    if role == "stt":
        tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(STT_SAMPLE_RATE) / STT_SAMPLE_RATE).astype(np.float32)
        instance.transcribe_batch([SttRequest(tone, "auto")])  # type: ignore[attr-defined]
    elif role == "tts":
        for language in instance.languages:  # type: ignore[attr-defined]
            instance.synthesize_batch([TtsRequest("Salama 1", language)])  # type: ignore[attr-defined]
    elif role == "translate":
        instance.translate_batch([TranslateRequest("Salama", "mg", "fr")])  # type: ignore[attr-defined]
    elif role == "chat":
        instance.complete(ChatRequest([ChatMessage("user", "Salama")], max_tokens=1))  # type: ignore[attr-defined]
