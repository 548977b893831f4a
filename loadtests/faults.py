"""Faults injected into a running stack under load, and what its callers saw.

    python -m loadtests.faults [--servers pytriton,tritonserver] [--out docs/benchmarks/faults]

The stack is the real one, on loopback: ``milo-voice serve`` (model host and facade, on the
embedded weights: translation, chat and TTS), a real Redis (append-only, fsync always), tokens
on, one token for every caller. Scenarios, each bounded in time and count:

- ``redis``: Redis killed (SIGKILL) under load and started again on the same data 3 s later
  (and how many lines the stack logged at ERROR meanwhile: an outage, not every request);
- ``host``: the model host killed (SIGKILL) under load; ``serve`` starts it again;
- ``model-fault``: a request that fails inside the model (a text beyond the positions of an
  NLLB whose limits file is missing, so no check refuses it first) sent with seven that do not;
- ``abandoned``: chat and TTS streams abandoned after their first piece; the host's CPU time
  they cost, against the same streams read to the end, and the pieces the TTS model synthesised.

For each: requests sent and answered by status; unplanned 5xx (any 5xx but a 503 with
Retry-After, or no answer from the facade); requests slower than their timeout; chat turns
acknowledged but not stored (sessions lost) and tokens that stopped working; the time from the
dependency's return to the first request served; and, once the stack has stopped, its
processes and shared memory segments still there. ``tests/integration/test_faults.py`` runs the same
scenarios and holds the goals; this prints and writes the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from api_facade.voice.speech import text_pieces
from loadtests.bench import triton_counters
from loadtests.processes import REPO, RedisServer, free_port, redis_server, stop, tokens_cli, wait_ok
from milo_voice.child_processes import HOST_STOP_S
from milo_voice.registry import load_registry, model_section, models_dir

CALL_TIMEOUT_S = 30.0  # every request's own timeout: "slower than its timeout" means it ran into this
UNLIMITED = "100000/minute"  # the suite measures faults, not rate limits
ERROR_RECORD = re.compile(rb"(^|\s)ERROR\s")  # "... ERROR name: message", as serve, host and facade log
# Long enough that what an abandoned stream still costs by design (its first piece and the
# pieces in flight when the client goes, api_facade/voice/speech.py) is a small share of it.
LONG_TTS = " ".join(f"Ity no fehezanteny faha-{n} amin'ny tantara lava." for n in range(1, 25))
LONG_CHAT = "Count from one to two hundred in words, one number a line."


@dataclass
class Call:
    kind: str
    started: float
    seconds: float
    status: int | str  # an HTTP status, or the name of the error when no answer came
    retry_after: str | None = None
    code: str = ""

    @property
    def unplanned(self) -> bool:
        if isinstance(self.status, str):
            return True
        return self.status >= 500 and not (self.status == 503 and self.retry_after)


@dataclass
class Outcome:
    scenario: str
    server: str
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unplanned_5xx: int = 0
    over_timeout: int = 0
    max_seconds: float = 0.0
    sessions_lost: int = 0
    tokens_lost: int = 0
    recovery_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, calls: list[Call]) -> None:
        self.sent += len(calls)
        counted = Counter(f"{c.status} {c.code}".strip() for c in calls)
        for key, count in counted.items():
            self.statuses[key] = self.statuses.get(key, 0) + count
        self.unplanned_5xx += sum(c.unplanned for c in calls)
        self.over_timeout += sum(c.status == "ReadTimeout" or c.seconds > CALL_TIMEOUT_S for c in calls)
        slowest = max(calls, key=lambda c: c.seconds, default=None)
        if slowest is not None and slowest.seconds > self.max_seconds:
            self.max_seconds = slowest.seconds
            self.notes["slowest"] = f"{slowest.kind} {slowest.status} {slowest.code}".strip()


# -- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    server: str
    base: str
    token: str
    redis: RedisServer
    serve: subprocess.Popen[bytes]
    workdir: Path
    metrics: str  # Triton's metrics page
    seen: set[int] = field(default_factory=set)  # every process the stack ran, for the leftover check
    # Python's unnamed shared memory (psm_*, PyTriton's) is named after no process: what was there before.
    segments_before: set[str] = field(default_factory=set)

    def note_processes(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.seen.update(p.pid for p in psutil.Process(self.serve.pid).children(recursive=True))

    def error_lines(self) -> int:
        """Lines logged at ERROR so far by serve and its children (their output goes to one log)."""
        with (self.workdir / "serve.log").open("rb") as log:
            return sum(ERROR_RECORD.search(line) is not None for line in log)

    def host_pid(self) -> int:
        for child in psutil.Process(self.serve.pid).children():
            if any(m in " ".join(child.cmdline()) for m in ("pytriton_app", "milo_voice.serving.tritonserver")):
                return child.pid
        raise RuntimeError("serve runs no model host")

    def host_processes(self) -> list[psutil.Process]:
        host = psutil.Process(self.host_pid())
        return [host, *host.children(recursive=True)]


def _registry(folder: Path, server: str) -> Path:
    """The registry, and for the stock server its repository beside it (a folder of models only)."""
    folder.mkdir()
    registry = folder / "registry.toml"
    registry.write_text("\n".join(model_section(name) for name in ("translate", "chat", "tts")))
    if server == "tritonserver":
        from milo_voice.triton_repository import write_configs

        write_configs(load_registry(registry), folder)
    return registry


def _models_without_translation_limits(folder: Path) -> Path:
    """The embedded weights, the translation model's limits file left out (see ``model-fault``)."""
    source = models_dir() / "embedded"
    target = folder / "models" / "embedded"
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "translate":
            shutil.copytree(entry, target / entry.name, ignore=shutil.ignore_patterns("limits.json"))
        else:
            (target / entry.name).symlink_to(entry.resolve())
    return folder / "models"


@contextlib.contextmanager
def running_stack(server: str, workdir: Path) -> Iterator[Stack]:
    folder = workdir / server
    folder.mkdir(parents=True)
    ports = [free_port() for _ in range(4)]
    tiers = {"standard": {"priority": 2, "queue_timeout_s": 120, "limits": {"default": UNLIMITED}}}
    (folder / "redis").mkdir()
    with redis_server(folder / "redis") as redis:
        env = {
            **os.environ,
            "MILO_REGISTRY": str(_registry(folder / "repository", server)),
            "MILO_MODELS_DIR": str(_models_without_translation_limits(folder)),
            "MILO_PROFILE": "embedded",
            "MILO_REQUIRED_MODELS": '["translate", "chat", "tts"]',
            "MILO_REDIS_URL": redis.url,
            "MILO_AUTH_ENABLED": "true",
            "MILO_DATA_DIR": str(folder / "data"),
            "MILO_IP_RATE_LIMIT": UNLIMITED,
            "MILO_TIERS": json.dumps(tiers),
            "MILO_CHAT_CLOUD_URL": "",
            "PYTHONUNBUFFERED": "1",
        }
        token = tokens_cli(env, "create", "fault-suite", "--tier", "standard", "--scopes", "stt,tts,translate,chat")
        command = [
            sys.executable, "-m", "milo_voice.cli", "serve", "--server", server, "--host", "127.0.0.1",
            "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
            "--facade-port", str(ports[3]),
        ]  # fmt: skip
        segments_before = {p.name for p in Path("/dev/shm").glob("psm_*")}
        with (folder / "serve.log").open("wb") as log:
            serve = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack = Stack(
                server, f"http://127.0.0.1:{ports[3]}", token, redis, serve, folder,
                f"http://127.0.0.1:{ports[2]}/metrics", set(), segments_before,
            )  # fmt: skip
            try:
                wait_ok(f"{stack.base}/ready", 600, serve)
                stack.note_processes()
                yield stack
            finally:
                stack.note_processes()
                stop(serve, HOST_STOP_S + 30)


def leftovers(stack: Stack) -> list[str]:
    """Processes of the stack still running, and shared memory segments named after them."""
    left = []
    for pid in sorted(stack.seen):
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"process {pid} {' '.join(process.cmdline()[:3])}")
    for path in Path("/dev/shm").iterdir():
        named_after_one = any(path.name.startswith((f"pytrtion{pid}-", f"milo_{pid}_")) for pid in stack.seen)
        if named_after_one or (path.name.startswith("psm_") and path.name not in stack.segments_before):
            left.append(f"shared memory {path.name}")
    return left


# -- callers ------------------------------------------------------------------------------------


class Caller:
    """One client: translations of new texts and turns of its own chat session, in turn."""

    def __init__(self, client: httpx.AsyncClient, name: str) -> None:
        self.client = client
        self.name = name
        self.session_id = uuid.uuid4().hex
        self.acknowledged_turns = 0
        self.sent = 0

    async def call(self, kind: str, path: str, body: dict[str, Any]) -> Call:
        started = time.monotonic()
        try:
            response = await self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            return Call(kind, started, time.monotonic() - started, type(exc).__name__)
        code = "" if response.status_code == 200 else response.json().get("error", {}).get("code", "")
        return Call(kind, started, time.monotonic() - started, response.status_code,
                    response.headers.get("retry-after"), code)  # fmt: skip

    async def one(self) -> Call:
        self.sent += 1
        if self.sent % 2:
            text = f"Bonjour {self.name}, voici la phrase numéro {self.sent}."
            return await self.call("translate", "/v1/translate", {"text": text, "source": "fr", "target": "mg"})
        body = {"message": f"Salama {self.sent}", "session_id": self.session_id, "max_tokens": 4, "temperature": 0}
        call = await self.call("chat", "/v1/chat", body)
        if call.status == 200:
            self.acknowledged_turns += 1
        return call

    async def stored_turns(self, client: httpx.AsyncClient) -> int:
        response = await client.get(f"/v1/chat/sessions/{self.session_id}")
        return len(response.json()["turns"]) if response.status_code == 200 else 0


def _client(stack: Stack) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {stack.token}"}
    return httpx.AsyncClient(base_url=stack.base, headers=headers, timeout=CALL_TIMEOUT_S)


async def _load(callers: list[Caller], until: asyncio.Event, calls: list[Call]) -> None:
    async def loop(caller: Caller) -> None:
        while not until.is_set():
            calls.append(await caller.one())
            await asyncio.sleep(0.02)

    await asyncio.gather(*(loop(c) for c in callers))


async def _lost(outcome: Outcome, stack: Stack, callers: list[Caller]) -> None:
    async with _client(stack) as client:
        for caller in callers:
            outcome.sessions_lost += max(0, 2 * caller.acknowledged_turns - await caller.stored_turns(client))
        outcome.tokens_lost = int((await client.get("/v1/chat/sessions/none-such")).status_code in (401, 403))


def _first_success_after(calls: list[Call], moment: float, kinds: tuple[str, ...]) -> float | None:
    ends = [c.started + c.seconds for c in calls if c.status == 200 and c.kind in kinds and c.started >= moment]
    return round(min(ends) - moment, 2) if ends else None


# -- scenarios ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def under_load(stack: Stack, clients: int) -> AsyncIterator[tuple[httpx.AsyncClient, list[Caller], list[Call]]]:
    """``clients`` callers sending while the block runs (a fault injected in it); their calls after."""
    calls: list[Call] = []
    until = asyncio.Event()
    async with _client(stack) as client:
        callers = [Caller(client, f"client-{i}") for i in range(clients)]
        load = asyncio.create_task(_load(callers, until, calls))
        try:
            await asyncio.sleep(2.0)
            yield client, callers, calls
            await asyncio.sleep(4.0)  # the load goes on a while after the fault ended
        finally:
            until.set()
            await load


async def redis_outage(stack: Stack, clients: int = 4, down_s: float = 3.0) -> Outcome:
    outcome = Outcome("redis", stack.server)
    errors_before = stack.error_lines()
    async with under_load(stack, clients) as (_, callers, calls):
        stack.redis.kill()
        killed = time.monotonic()
        await asyncio.sleep(down_s)
        stack.redis.start()
        back = time.monotonic()
    outcome.add(calls)
    # Every request needs Redis for its token: the first one served after Redis is back.
    outcome.recovery_s = _first_success_after(calls, back, ("translate", "chat"))
    during = [c for c in calls if killed <= c.started < back]
    outcome.notes["during_outage"] = dict(Counter(f"{c.status} {c.code}".strip() for c in during))
    outcome.notes["error_log_lines"] = stack.error_lines() - errors_before
    await _lost(outcome, stack, callers)
    return outcome


async def host_crash(stack: Stack, clients: int = 4, bound_s: float = 240.0) -> Outcome:
    outcome = Outcome("host", stack.server)
    errors_before = stack.error_lines()
    async with under_load(stack, clients) as (client, callers, calls):
        stack.note_processes()
        os.kill(stack.host_pid(), signal.SIGKILL)
        killed = time.monotonic()
        not_ready_at = back_at = None
        while time.monotonic() - killed < bound_s:
            ready = await client.get("/ready")
            now = time.monotonic()
            if ready.status_code == 503 and not_ready_at is None:
                not_ready_at = now
            host = ready.json().get("processes", {}).get("model-host", {})
            if ready.status_code == 200 and host.get("restarts", 0) >= 1 and host.get("state") == "running":
                back_at = now
                break
            await asyncio.sleep(0.1)
    stack.note_processes()
    outcome.add(calls)
    outcome.notes["ready_503_after_s"] = round(not_ready_at - killed, 2) if not_ready_at else None
    outcome.notes["host_back_after_s"] = round(back_at - killed, 1) if back_at else None
    outcome.notes["error_log_lines"] = stack.error_lines() - errors_before
    if back_at is not None:
        outcome.recovery_s = max(0.0, _first_success_after(calls, back_at, ("translate", "chat")) or 0.0)
    await _lost(outcome, stack, callers)
    return outcome


async def model_fault(stack: Stack, rounds: int = 3) -> Outcome:
    outcome = Outcome("model-fault", stack.server)
    endless = " ".join(["Misaotra betsaka tompoko"] * 40)
    calls: list[Call] = []
    async with _client(stack) as client:
        caller = Caller(client, "batch")
        for round_ in range(rounds):
            texts = [f"Misaotra betsaka tompoko {round_} {i}." for i in range(7)]
            bodies = [{"text": t, "source": "mg", "target": "fr"} for t in [*texts[:3], endless, *texts[3:]]]
            calls += await asyncio.gather(*(caller.call("translate", "/v1/translate", b) for b in bodies))
    outcome.add(calls)
    failing = calls[3::8]
    others = [c for i, c in enumerate(calls) if i % 8 != 3]
    outcome.notes["failing_request"] = dict(Counter(f"{c.status} {c.code}" for c in failing))
    outcome.notes["batch_mates_failed"] = sum(c.status != 200 for c in others)
    return outcome


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def _settled_cpu(stack: Stack, quiet_s: float = 1.0, bound_s: float = 60.0) -> float:
    """The host's CPU seconds once it has been idle for ``quiet_s`` (what it was busy with is done)."""
    processes = stack.host_processes()
    last = _cpu_s(processes)
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        await asyncio.sleep(quiet_s)
        now = _cpu_s(processes)
        if now - last < 0.05 * quiet_s:
            return now
        last = now
    return last


def _tts_requests(stack: Stack) -> float:
    """Requests the TTS model has answered so far, by Triton's own count."""
    return triton_counters.read(stack.metrics).get("tts", {}).get("requests", 0.0)


async def abandoned_streams(stack: Stack, streams: int = 3) -> Outcome:
    outcome = Outcome("abandoned", stack.server)
    calls: list[Call] = []
    chat = {"message": LONG_CHAT, "max_tokens": 200, "temperature": 0, "stream": True}
    tts = {"text": LONG_TTS, "language": "mg", "format": "wav", "stream": True}

    async def stream(client: httpx.AsyncClient, kind: str, path: str, body: dict[str, Any], whole: bool) -> None:
        started = time.monotonic()
        # A chat stream is left after its first token (its first event names the session), speech
        # after its first sentence's audio.
        first_piece = b"event: token" if kind == "chat" else b""
        async with client.stream("POST", path, json=body) as response:
            async for chunk in response.aiter_bytes():
                if not whole and first_piece in chunk:
                    break  # the client goes away
        calls.append(Call(kind, started, time.monotonic() - started, response.status_code))

    async with _client(stack) as client:
        for kind, path, body in (("chat", "/v1/chat", chat), ("tts", "/v1/tts", tts)):
            costs, pieces = {}, {}
            for whole in (True, False):
                name = "whole" if whole else "abandoned"
                before, synthesised = await _settled_cpu(stack), _tts_requests(stack)
                for _ in range(streams):
                    await stream(client, kind, path, body, whole)
                costs[name] = round((await _settled_cpu(stack) - before) / streams, 3)
                pieces[name] = round((_tts_requests(stack) - synthesised) / streams, 2)
            costs["abandoned_vs_whole"] = round(costs["abandoned"] / costs["whole"], 2) if costs["whole"] else None
            outcome.notes[f"{kind}_cpu_s"] = costs
            if kind == "tts":  # a spoken text is one request of the TTS model a piece
                outcome.notes["tts_pieces"] = {**pieces, "in_the_text": len(text_pieces(LONG_TTS))}
        # What abandoned streams leave behind: a short reply right after them, against one before.
        short = {"message": "Salama", "max_tokens": 16, "temperature": 0}
        caller = Caller(client, "short")
        idle = await caller.call("chat", "/v1/chat", short)
        for _ in range(streams):
            await stream(client, "chat", "/v1/chat", chat, whole=False)
        after = await caller.call("chat", "/v1/chat", short)
        calls += [idle, after]
        outcome.notes["short_chat_s"] = {"idle": round(idle.seconds, 2), "after_abandoned": round(after.seconds, 2)}
    outcome.add(calls)
    return outcome


SCENARIOS = {"redis": redis_outage, "host": host_crash, "model-fault": model_fault, "abandoned": abandoned_streams}


def run_suite(server: str, scenarios: list[str], workdir: Path) -> tuple[list[Outcome], list[str]]:
    """Every scenario against one stack on ``server``; then what the stopped stack left behind."""
    outcomes = []
    with running_stack(server, workdir) as stack:
        for name in scenarios:
            outcomes.append(asyncio.run(SCENARIOS[name](stack)))
    time.sleep(1.0)
    return outcomes, leftovers(stack)


# -- report ---------------------------------------------------------------------------------


def table(outcomes: list[Outcome], left: dict[str, list[str]]) -> str:
    lines = [
        "| scenario | server | sent | answered | unplanned 5xx | over timeout | slowest s "
        "| sessions / tokens lost | recovery s | notes |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for o in outcomes:
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(o.statuses.items()))
        recovery = "" if o.recovery_s is None else f"{o.recovery_s:.2f}"
        lines.append(
            f"| {o.scenario} | {o.server} | {o.sent} | {answered} | {o.unplanned_5xx} | {o.over_timeout} "
            f"| {o.max_seconds:.2f} | {o.sessions_lost} / {o.tokens_lost} | {recovery} | {json.dumps(o.notes)} |"
        )
    lines.append("")
    for server, items in left.items():
        lines.append(f"Left after the {server} stack stopped: {', '.join(items) if items else 'nothing'}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="pytriton,tritonserver")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "faults")
    args = parser.parse_args()
    outcomes: list[Outcome] = []
    left: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="milo-faults-") as tmp:
        for server in args.servers.split(","):
            found, left[server] = run_suite(server, args.scenarios.split(","), Path(tmp))
            outcomes += found
            print(table(found, {server: left[server]}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
              "outcomes": [asdict(o) for o in outcomes], "leftovers": left}  # fmt: skip
    (args.out / "faults.json").write_text(json.dumps(result, indent=1))
    (args.out / "faults.md").write_text(table(outcomes, left))
    print(table(outcomes, left))


if __name__ == "__main__":
    main()
