"""A spoken turn measured end to end by real clients: from the end of the user's question to the
first and the last audio of the reply, three ways side by side in one run.

- ``three_calls``: today's way, ``POST /v1/stt``, then ``/v1/chat``, then ``/v1/tts`` (whole);
- ``voice``: ``POST /v1/voice``, the reply's audio streamed as it is spoken;
- ``realtime``: ``WebSocket /v1/realtime``, push to talk: the question streamed at the pace it is
  spoken (40 ms frames, partial transcripts on), then ``input_audio_buffer.commit`` the moment
  the user stops. (With server turn detection, the silence that confirms the end of the turn,
  500 ms by default, comes on top.) ``realtime_no_partials``: the same without partial
  transcripts, which cost a recogniser on a CPU the time of the one still running at the end.

For the REST ways the whole question exists when the user stops, so the clock starts when its
upload starts. Beside them, two parts of a turn: ``tts_stream`` (``/v1/tts`` streamed, a text of
five sentences: time to the first byte and to the last) and ``chat_stream``
(``/v1/chat/completions`` streamed: time to the first token and to the last).

At each level, that many conversations run turn after turn for ``--seconds``; the turns still in
flight then finish and count. Every turn starts a new chat session, so every prompt is the same.

    python -m loadtests.bench.voice_turn --out docs/benchmarks/voice/cpu            # own stack
    python -m loadtests.bench.voice_turn --url http://127.0.0.1:8080 --out DIR      # running facade
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import websockets

from loadtests import payloads
from loadtests.bench import triton_counters

METHODS = ("three_calls", "voice", "voice_events", "realtime", "realtime_no_partials", "tts_stream", "chat_stream")
FIVE_SENTENCES = (
    "Bonjour à tous. Je m'appelle Milo. Je suis un assistant vocal. "
    "Je parle le français et le malgache. Au revoir et à bientôt."
)
FRAME_SAMPLES = 640  # 40 ms at 16 kHz


@dataclass
class Turn:
    first_s: float  # end of the question (or request sent) -> first audio byte (or first token)
    last_s: float  # -> last audio byte (or last token)
    heard_s: float | None = None  # voice_events: -> the transcript (sent with the reply's first token)


@dataclass
class Level:
    method: str
    concurrency: int
    seconds: float  # how long new turns were started
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    triton: dict[str, Any] = field(default_factory=dict)  # per model, what the level did (triton_counters)

    def summary(self) -> dict[str, Any]:
        firsts = [t.first_s for t in self.turns]
        lasts = [t.last_s for t in self.turns]
        heard = [t.heard_s for t in self.turns if t.heard_s is not None]
        return {
            "method": self.method, "concurrency": self.concurrency, "turns": len(self.turns),
            "errors": len(self.errors), "error_samples": self.errors[:3],
            "first_p50_ms": _ms(firsts, 50), "first_p95_ms": _ms(firsts, 95),
            "last_p50_ms": _ms(lasts, 50), "last_p95_ms": _ms(lasts, 95), "triton": self.triton,
            **({"heard_p50_ms": _ms(heard, 50), "heard_p95_ms": _ms(heard, 95)} if heard else {}),
        }  # fmt: skip


def _ms(values: list[float], percentile: int) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, percentile)) * 1000, 1)


@dataclass(frozen=True)
class Client:
    url: str
    headers: dict[str, str]
    question_wav: bytes
    question_pcm: bytes
    max_tokens: int
    triton_metrics: str | None = None  # Triton's Prometheus URL: where each level's time went, per model


def question_audio() -> tuple[bytes, bytes]:
    """The spoken question as a WAV upload and as the raw 16 kHz PCM16 a microphone streams."""
    wav = payloads.clip_wav("question")
    audio, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == 16000
    return wav, np.asarray(audio, "<i2").tobytes()


async def three_calls(http: httpx.AsyncClient, client: Client) -> Turn:
    started = time.perf_counter()
    files = {"file": ("question.wav", client.question_wav, "audio/wav")}
    heard = await http.post("/v1/stt", files=files, data={"language": "auto"})
    heard.raise_for_status()
    language = heard.json()["language"]
    body = {"message": heard.json()["text"], "language": language, "max_tokens": client.max_tokens}
    chat = await http.post("/v1/chat", json=body)
    chat.raise_for_status()
    tts = {"text": chat.json()["reply"], "language": language, "format": "wav"}
    return await _timed_body(http, "POST", "/v1/tts", started, json=tts)


async def voice(http: httpx.AsyncClient, client: Client) -> Turn:
    started = time.perf_counter()
    files = {"file": ("question.wav", client.question_wav, "audio/wav")}
    return await _timed_body(http, "POST", "/v1/voice", started, files=files, data={"max_tokens": client.max_tokens})


async def voice_events(http: httpx.AsyncClient, client: Client) -> Turn:
    """``/v1/voice`` as events: beside the first audio, when the transcript came (the server sends
    it with the reply's first token), which splits a turn's time into hearing and speaking."""
    started, heard, first, event = time.perf_counter(), 0.0, 0.0, ""
    files = {"file": ("question.wav", client.question_wav, "audio/wav")}
    form = {"max_tokens": client.max_tokens, "output": "events"}
    async with http.stream("POST", "/v1/voice", files=files, data=form) as response:
        if response.status_code != 200:
            raise RuntimeError(f"/v1/voice: {response.status_code} {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                heard = heard or (time.perf_counter() - started if event == "transcript" else 0.0)
                first = first or (time.perf_counter() - started if event == "audio" else 0.0)
            elif event == "error":
                raise RuntimeError(f"/v1/voice error event: {line[:200]}")
    if not first:
        raise RuntimeError("/v1/voice: no audio event")
    return Turn(first, time.perf_counter() - started, heard)


async def tts_stream(http: httpx.AsyncClient, client: Client) -> Turn:
    body = {"text": FIVE_SENTENCES, "language": "fr", "stream": True, "format": "wav"}
    return await _timed_body(http, "POST", "/v1/tts", time.perf_counter(), json=body)


async def chat_stream(http: httpx.AsyncClient, client: Client) -> Turn:
    question = payloads.CHAT_SCRIPT[2]
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": client.max_tokens, "stream": True}
    started, first, last = time.perf_counter(), 0.0, 0.0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                last = time.perf_counter() - started
                first = first or last
    if not first:
        raise RuntimeError("the stream had no token")
    return Turn(first, last)


async def _timed_body(http: httpx.AsyncClient, method: str, path: str, started: float, **kwargs: Any) -> Turn:
    first = 0.0
    async with http.stream(method, path, **kwargs) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {(await response.aread())[:200]!r}")
        async for chunk in response.aiter_raw():
            if chunk and not first:
                first = time.perf_counter() - started
    if not first:
        raise RuntimeError(f"{path}: empty body")
    return Turn(first, time.perf_counter() - started)


class RealtimeConversation:
    """One open WebSocket: each turn streams the question at its spoken pace, then commits."""

    def __init__(self, client: Client, partials: bool = True) -> None:
        self.client = client
        self.partials = partials
        self.connection: websockets.ClientConnection | None = None

    async def turn(self, _http: httpx.AsyncClient, client: Client) -> Turn:
        if self.connection is None:
            url = client.url.replace("http", "ws", 1) + "/v1/realtime"
            token = client.headers.get("Authorization", "").removeprefix("Bearer ")
            protocols = ["realtime", f"bearer.{token}"] if token else ["realtime"]
            self.connection = await websockets.connect(url, subprotocols=protocols, max_size=None)  # type: ignore[list-item]
            await self._until("session.created")
        connection = self.connection
        # Push to talk (no server turn detection: a pause inside the question cannot end the turn
        # early), and a fresh chat session each turn: the same prompt every time.
        session = {
            "session_id": uuid.uuid4().hex,
            "turn_detection": None,
            "max_response_output_tokens": client.max_tokens,
            "partial_transcripts": self.partials,
        }
        await connection.send(json.dumps({"type": "session.update", "session": session}))
        await self._until("session.updated")
        pcm, step = client.question_pcm, FRAME_SAMPLES * 2
        paced_from = time.perf_counter()
        for i in range(0, len(pcm), step):
            await connection.send(pcm[i : i + step])
            await asyncio.sleep(max(0.0, paced_from + (i + step) / 32000 - time.perf_counter()))
        started = time.perf_counter()
        await connection.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await self._until("response.audio.delta")
        first = time.perf_counter() - started
        done = await self._until("response.done")
        if done["response"]["status"] != "completed":
            raise RuntimeError(f"response {done['response']['status']}")
        return Turn(first, time.perf_counter() - started)

    async def _until(self, kind: str) -> dict[str, Any]:
        assert self.connection is not None
        while True:
            event = json.loads(await self.connection.recv())
            if event["type"] == "error":
                raise RuntimeError(f"realtime error: {event['error']}")
            if event["type"] == kind:
                return event  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


Measure = Callable[[httpx.AsyncClient, Client], Awaitable[Turn]]


async def run_level(client: Client, method: str, concurrency: int, seconds: float) -> Level:
    level = Level(method, concurrency, seconds)
    before = triton_counters.read(client.triton_metrics) if client.triton_metrics else None
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=client.url, headers=client.headers, timeout=600, limits=limits) as http:

        async def conversation() -> None:
            realtime = RealtimeConversation(client, method == "realtime") if method.startswith("realtime") else None
            measure: Measure = realtime.turn if realtime else MEASURES[method]
            try:
                while time.perf_counter() < deadline:
                    try:
                        level.turns.append(await measure(http, client))
                    except Exception as exc:
                        level.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                        if realtime is not None:
                            await realtime.close()
                            realtime.connection = None
                        await asyncio.sleep(0.5)
            finally:
                if realtime is not None:
                    await realtime.close()

        await asyncio.gather(*(conversation() for _ in range(concurrency)))
    if client.triton_metrics and before is not None:
        level.triton = triton_counters.stretch(before, triton_counters.read(client.triton_metrics))
    return level


MEASURES: dict[str, Measure] = {
    "three_calls": three_calls, "voice": voice, "voice_events": voice_events,
    "tts_stream": tts_stream, "chat_stream": chat_stream,
}  # fmt: skip


async def measure_all(client: Client, levels: list[int], seconds: float, methods: list[str]) -> list[dict[str, Any]]:
    rows = []
    for concurrency in levels:
        for method in methods:
            level = await run_level(client, method, concurrency, seconds)
            row = level.summary()
            rows.append(row)
            print(
                f"c={concurrency:<3} {method:<12} turns {row['turns']:<4} errors {row['errors']:<3} "
                f"first P50 {row['first_p50_ms']} P95 {row['first_p95_ms']} ms, "
                f"last P50 {row['last_p50_ms']} P95 {row['last_p95_ms']} ms",
                flush=True,
            )
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: how much sooner the first audio comes by /v1/voice and by the WebSocket than by
    three calls (P50 against P50, measured in the same run)."""
    out = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        at = {r["method"]: r for r in rows if r["concurrency"] == concurrency}
        base = (at.get("three_calls") or {}).get("first_p50_ms")
        entry: dict[str, Any] = {"concurrency": concurrency}
        for method in ("voice", "realtime", "realtime_no_partials"):
            value = (at.get(method) or {}).get("first_p50_ms")
            entry[f"three_calls_over_{method}"] = round(base / value, 2) if base and value else None
        out.append(entry)
    return out


def markdown(result: dict[str, Any]) -> str:
    length = "exactly" if result["fixed_length_replies"] else "at most"
    lines = [
        f"# Spoken turn, {result['machine']}",
        "",
        f"Each level ran {result['seconds']} s of new turns (turns in flight then finished and count); "
        f"a question of {result['question_s']} s; replies of {length} {result['max_tokens']} tokens. "
        "Times in ms. first: end of the question to the first "
        "audio byte (tts_stream: to the first byte; chat_stream: to the first token); last: to the last.",
        "",
        "| conversations | way | turns | errors | first P50 | first P95 | last P50 | last P95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['method']} | {r['turns']} | {r['errors']} | {r['first_p50_ms']} | "
            f"{r['first_p95_ms']} | {r['last_p50_ms']} | {r['last_p95_ms']} |"
        )
    lines += [
        "",
        "First audio P50, three calls over each other way (how many times sooner it comes):",
        "",
        "| conversations | over voice | over realtime | over realtime, no partials |",
        "|---|---|---|---|",
    ]
    for r in result["ratios"]:
        lines.append(
            f"| {r['concurrency']} | {r['three_calls_over_voice']} | {r['three_calls_over_realtime']} | "
            f"{r['three_calls_over_realtime_no_partials']} |"
        )
    heard = [r for r in result["rows"] if r.get("heard_p50_ms") is not None]
    if heard:
        lines += [
            "",
            "voice_events: end of the question to the transcript, which comes with the reply's first token "
            "(the rest of the first audio's time is the chat writing the first piece, and its synthesis):",
            "",
            "| conversations | heard P50 | heard P95 | first audio P50 |",
            "|---|---|---|---|",
        ]
        for r in heard:
            lines.append(f"| {r['concurrency']} | {r['heard_p50_ms']} | {r['heard_p95_ms']} | {r['first_p50_ms']} |")
    if any(r.get("triton") for r in result["rows"]):
        lines += [
            "",
            "Where the time went, per Triton model (read from Triton's counters before and after each level; "
            "compute: the batch a request ran in; the streaming models count to their last response):",
            "",
            "| conversations | way | model | requests | mean batch | queue ms | compute ms | request ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            for model, m in (r.get("triton") or {}).items():
                lines.append(
                    f"| {r['concurrency']} | {r['method']} | {model} | {m['requests']:.0f} | {m['mean_batch']} | "
                    f"{m['queue_ms']} | {m['compute_ms']} | {m['request_ms']} |"
                )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running facade; without it the embedded stack is started here")
    parser.add_argument("--token", default=os.environ.get("MILO_LOADTEST_TOKEN", ""))
    parser.add_argument("--levels", default="1,16", help="concurrent conversations, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each level starts new turns")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--fixed-length-replies",
        action="store_true",
        help="own stack only: serve the fixed-length chat role, so that every reply is --max-tokens long",
    )
    parser.add_argument(
        "--triton-metrics", help="with --url: Triton's metrics URL, to show where each level's time went per model"
    )
    parser.add_argument("--out", type=Path, required=True)
    return parser


def run(args: argparse.Namespace, url: str, machine: str, triton_metrics: str | None = None) -> dict[str, Any]:
    wav, pcm = question_audio()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    client = Client(url, headers, wav, pcm, args.max_tokens, triton_metrics or args.triton_metrics)
    levels = [int(level) for level in args.levels.split(",")]
    rows = asyncio.run(measure_all(client, levels, args.seconds, args.methods.split(",")))
    result = {
        "machine": machine, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "fixed_length_replies": args.fixed_length_replies,
        "question_s": round(len(pcm) / 32000, 2), "rows": rows, "ratios": ratios(rows),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "voice_turn.json").write_text(json.dumps(result, indent=1))
    (args.out / "voice_turn.md").write_text(markdown(result))
    print(markdown(result))
    return result


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    machine = f"{platform.node()} ({os.cpu_count()} cores)"
    if args.url:
        run(args, args.url.rstrip("/"), machine)
        return
    from loadtests.runner import local_stack

    args.out.mkdir(parents=True, exist_ok=True)
    env = {}
    if args.fixed_length_replies:
        env["MILO_REGISTRY"] = str(fixed_length_registry(args.out / "registry.toml"))
    with local_stack(args.out / "stack.log", env) as stack:
        run(args, stack.facade, machine, f"http://{stack.metrics}/metrics")


def fixed_length_registry(path: Path) -> Path:
    """The committed registry, its chat model served by the fixed-length chat role."""
    import tomllib

    import tomli_w

    from loadtests.bench import fixed_lengths
    from milo_voice.settings import DEFAULT_REGISTRY

    registry = tomllib.loads(DEFAULT_REGISTRY.read_text())
    registry["models"]["chat"]["implementation"] = fixed_lengths.CHAT
    path.write_text(tomli_w.dumps(registry))
    return path


if __name__ == "__main__":
    main()
