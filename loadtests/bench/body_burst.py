"""Bodies a client should not be able to use against the facade, and the facade's memory through them.

    python -m loadtests.bench.body_burst [--bodies 50] [--megabytes 20] [--out docs/benchmarks/security]

Starts the facade alone (auth on, tokens in a scratch folder; no model server: every body here
is refused before a model would be called) and sends, ``--bodies`` at a time, bodies of
``--megabytes`` each: declared by ``Content-Length``, then undeclared (chunked), then trickled
at 1 byte a second; first without a token (refused before the body is read), then with a valid
one (refused by the route's size limit and body deadline). Prints the answers, how long each
burst took, and the facade's resident memory before, after each burst and once the bursts are
over. Then a file of two hours of silence (2.6 MiB of Opus) to /v1/stt: how soon its 413 comes,
and /health meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from loadtests.processes import facade_server, free_port, tokens_cli

MIB = 1024 * 1024


def resident_mib(url: str) -> float:
    port = urlsplit(url).port
    for connection in psutil.net_connections("inet"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return round(psutil.Process(connection.pid).memory_info().rss / MIB, 1)
    raise RuntimeError(f"no process listens on {port}")


def json_headers(token: str | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}


async def declared(client: httpx.AsyncClient, megabytes: int, token: str | None) -> int:
    body = b"x" * (megabytes * MIB)
    response = await client.post("/v1/translate", content=body, headers=json_headers(token))
    return response.status_code


async def undeclared(client: httpx.AsyncClient, megabytes: int, token: str | None) -> int:
    async def chunks() -> AsyncIterator[bytes]:
        piece = b"x" * MIB
        for _ in range(megabytes):
            yield piece

    response = await client.post("/v1/translate", content=chunks(), headers=json_headers(token))
    return response.status_code


async def trickled(url: str, seconds: float, token: str | None) -> int:
    """Headers, then one byte a second of a 100-byte body; the status the server answers with."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{authorization}Content-Length: 100\r\n\r\n"
    )
    writer.write(head.encode())
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            writer.write(b"x")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except TimeoutError:
                continue
            return int(line.split(b" ", 2)[1]) if line else 0
        return 0  # still open after ``seconds``
    except (ConnectionError, OSError):
        return 0
    finally:
        writer.close()


async def burst(url: str, way: str, bodies: int, megabytes: int, token: str | None) -> dict[str, Any]:
    started = time.monotonic()
    limits = httpx.Limits(max_connections=bodies)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        if way == "trickled":
            calls = [trickled(url, 60, token) for _ in range(bodies)]
        else:
            send = declared if way == "declared" else undeclared
            calls = [send(client, megabytes, token) for _ in range(bodies)]
        codes = await asyncio.gather(*calls, return_exceptions=True)
    answers = Counter(str(c) if isinstance(c, int) else type(c).__name__ for c in codes)
    return {"way": way, "token": "valid" if token else "none", "seconds": round(time.monotonic() - started, 2),
            "answers": dict(answers), "rss_after_mib": resident_mib(url)}  # fmt: skip


def long_audio(path: Path) -> dict[str, Any]:
    """A small file of two hours of silence (Opus, 6 kbit/s) sent to /v1/stt (auth off): how soon
    the 413 comes, how /health answers meanwhile, and the facade's memory."""
    if not path.exists():
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
             "-t", "7200", "-c:a", "libopus", "-b:a", "6k", str(path)],
            check=True,
        )  # fmt: skip
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        env = {"MILO_AUTH_ENABLED": "false", "MILO_DATA_DIR": scratch, "MILO_TRITON_URL": f"127.0.0.1:{free_port()}",
               "MILO_REQUIRED_MODELS": "[]"}  # fmt: skip
        with facade_server(Path(scratch) / "facade.log", env) as url:
            before = resident_mib(url)

            async def probe() -> tuple[int, float, float]:
                async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                    started = time.monotonic()
                    upload = asyncio.create_task(client.post("/v1/stt", files={"file": (path.name, data)}))
                    health_started = time.monotonic()
                    await client.get("/health")
                    health_s = time.monotonic() - health_started
                    response = await upload
                    return response.status_code, time.monotonic() - started, health_s

            status, seconds, health_s = asyncio.run(probe())
            return {"file_mib": round(len(data) / MIB, 2), "status": status, "seconds": round(seconds, 3),
                    "health_meanwhile_s": round(health_s, 3), "rss_before_mib": before,
                    "rss_after_mib": resident_mib(url)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--long-audio", default="/tmp/milo-two-hours-of-silence.ogg", help="made with ffmpeg if absent")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "MILO_AUTH_ENABLED": "true", "MILO_DATA_DIR": scratch,
            "MILO_TRITON_URL": f"127.0.0.1:{free_port()}", "MILO_REQUIRED_MODELS": "[]",
            "MILO_IP_RATE_LIMIT": "1000000/minute",
        }  # fmt: skip
        with facade_server(Path(scratch) / "facade.log", env) as url:
            result: dict[str, Any] = {"bodies": args.bodies, "megabytes": args.megabytes,
                                      "rss_start_mib": resident_mib(url), "bursts": []}  # fmt: skip
            token = tokens_cli(env, "create", "burst", "--scopes", "translate")
            for sent_token in (None, token):
                for way in ("declared", "undeclared", "trickled"):
                    row = asyncio.run(burst(url, way, args.bodies, args.megabytes, sent_token))
                    result["bursts"].append(row)
                    print(row, flush=True)
            time.sleep(10)
            result["rss_10s_later_mib"] = resident_mib(url)
            health = httpx.get(f"{url}/health", timeout=10)
            result["health_after"] = health.status_code
        # A client still sending when the server answers and closes sees a broken connection, not
        # the answer: the server's own access log says what it answered.
        log = (Path(scratch) / "facade.log").read_text()
        result["answered_by_the_server"] = dict(Counter(re.findall(r'"POST /v1/translate HTTP/1.1" (\d{3})', log)))
    result["long_audio"] = long_audio(Path(args.long_audio))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "body_burst.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
