from __future__ import annotations

import dataclasses

from contract.records import ChatRequest
from milo_voice.roles.chat import LocalChat
from milo_voice.roles.generation import Sampling


class FixedLengthChat(LocalChat):
    """Every reply runs to its ``max_tokens``: the end of generation is never sampled."""

    def sampling(self, request: ChatRequest) -> Sampling:
        return dataclasses.replace(super().sampling(request), ignore_eos=True)
