"""Locust suites of the facade: one user class per endpoint, and a mixed scenario.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --milo-token mv_... MixedUser

Every request is named after its endpoint in the audit table (health, tts, stt, translate,
chat), so the CSV report maps onto the P50 gate (``loadtests/audit.py``) row by row.
A 503 with ``Retry-After`` (a full model queue) counts as a failure: the audit is about
answers, not refusals.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from locust import HttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser

from loadtests import payloads


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--milo-token", default="", env_var="MILO_LOADTEST_TOKEN", help="API token of the facade")


class MiloUser(HttpUser):
    abstract = True
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        token = self.environment.parsed_options.milo_token if self.environment.parsed_options else ""
        if token:
            self.client.headers["Authorization"] = f"Bearer {token}"

    def _post(self, path: str, name: str, **kwargs: Any) -> None:
        with self.client.post(path, name=name, catch_response=True, **kwargs) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    def health(self) -> None:
        self.client.get("/health", name="health")

    def tts(self, long: bool = False) -> None:
        language = random.choice(("mg", "fr"))
        text = (payloads.LONG_TEXTS if long else payloads.SHORT_TEXTS)[language]
        self._post("/v1/tts", "tts", json={"text": text, "language": language, "format": "wav"})

    def stt(self, long: bool = False) -> None:
        clip = payloads.clip_wav("long" if long else "short")
        self._post("/v1/stt", "stt", files={"file": ("clip.wav", clip, "audio/wav")}, data={"language": "fr"})

    def translate(self, long: bool = False) -> None:
        source, target, text = random.choice(payloads.TRANSLATE_LONG if long else payloads.TRANSLATE_SHORT)
        # A new suffix each time: the gate times the model, not the facade's translation cache.
        text = f"{text} {uuid.uuid4().hex[:6]}"
        self._post("/v1/translate", "translate", json={"text": text, "source": source, "target": target})


class HealthUser(MiloUser):
    wait_time = between(0.05, 0.2)

    @task
    def check(self) -> None:
        self.health()


class TtsUser(MiloUser):
    @task(3)
    def short(self) -> None:
        self.tts()

    @task(1)
    def long(self) -> None:
        self.tts(long=True)


class SttUser(MiloUser):
    @task(2)
    def short(self) -> None:
        self.stt()

    @task(1)
    def long(self) -> None:
        self.stt(long=True)


class TranslateUser(MiloUser):
    @task(3)
    def short(self) -> None:
        self.translate()

    @task(1)
    def long(self) -> None:
        self.translate(long=True)


class ChatUser(MiloUser):
    """A conversation of several turns in one session, then a new one."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        super().on_start()
        self._new_session()

    def _new_session(self) -> None:
        self.session_id = uuid.uuid4().hex
        self.turn = 0

    @task
    def say(self) -> None:
        message = payloads.CHAT_SCRIPT[self.turn]
        body = {"message": message, "session_id": self.session_id, "max_tokens": 64, "language": "mg"}
        self._post("/v1/chat", "chat", json=body)
        self.turn += 1
        if self.turn == len(payloads.CHAT_SCRIPT):
            self._new_session()


class MixedUser(ChatUser):
    """A voice assistant's traffic: turns of speech in, chat, speech out; some translation; probes."""

    wait_time = between(0.5, 2)

    @task(3)
    def say(self) -> None:
        super().say()

    @task(3)
    def speak_short(self) -> None:
        self.tts()

    @task(1)
    def speak_long(self) -> None:
        self.tts(long=True)

    @task(2)
    def listen_short(self) -> None:
        self.stt()

    @task(1)
    def listen_long(self) -> None:
        self.stt(long=True)

    @task(2)
    def translate_short(self) -> None:
        self.translate()

    @task(1)
    def translate_long(self) -> None:
        self.translate(long=True)

    @task(1)
    def probe(self) -> None:
        self.health()


class VoiceUser(MiloUser):
    """Spoken turns: ``POST /v1/voice`` with a spoken question, its reply's audio read as it streams.

    Besides the request itself ("voice": until the status line), each turn reports "voice first
    audio" (question sent to the first audio byte, what the user waits for) and "voice last audio".
    """

    wait_time = between(1, 3)

    @task
    def turn(self) -> None:
        clip = payloads.clip_wav("question")
        started = time.perf_counter()
        first = 0.0
        with self.client.post(
            "/v1/voice", name="voice", files={"file": ("question.wav", clip, "audio/wav")},
            data={"max_tokens": "64"}, stream=True, catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            size = 0
            for chunk in response.iter_content(chunk_size=None):
                if chunk and not first:
                    first = time.perf_counter() - started
                size += len(chunk)
            if not first:
                response.failure("no audio in the reply")
                return
        last = time.perf_counter() - started
        for name, seconds in (("voice first audio", first), ("voice last audio", last)):
            events.request.fire(
                request_type="POST", name=name, response_time=seconds * 1000, response_length=size,
                exception=None, context={},
            )  # fmt: skip
