"""The old design, rebuilt for comparison: one FastAPI process holding every model in memory,
each call taken one at a time behind ``asyncio.Semaphore(2)``.

Same role classes and weights as the PyTriton host (``build_instance`` of the active
profile), same bodies as the facade's routes, same audio decoding and encoding, so the
only difference measured is how requests reach the models: two at a time here, batched
by Triton's dynamic batcher in the stack.

    python -m uvicorn loadtests.bench.baseline_app:app --port 8090
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Response, UploadFile
from pydantic import BaseModel

from api_facade.audio import decode_upload, encode
from contract.records import ChatMessage, ChatRequest
from milo_voice.registry import active_profile, load_registry
from milo_voice.serving.instances import DevicePlanner, build_instance

MODELS: dict[str, Any] = {}
# The old design's only concurrency control: at most two model calls at once, whatever the model.
GATE = asyncio.Semaphore(2)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    registry, profile, planner = load_registry(), active_profile(), DevicePlanner()
    for role in ("stt", "tts", "translate", "chat"):
        MODELS[role] = build_instance(registry.by_role(role), profile, planner.place("auto"))
    yield


app = FastAPI(title="Milo Voice, old single-process design", lifespan=lifespan)


async def _call(function: Any, *args: Any) -> Any:
    async with GATE:
        return await asyncio.to_thread(function, *args)


class TtsBody(BaseModel):
    text: str
    language: str
    format: str = "wav"


class TranslateBody(BaseModel):
    text: str
    source: str
    target: str


class ChatBody(BaseModel):
    message: str
    language: str | None = None
    max_tokens: int = 64
    temperature: float = 0.7


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/tts")
async def tts(body: TtsBody) -> Response:
    speech = await _call(MODELS["tts"].synthesize, body.text, body.language)
    return Response(encode(speech.audio, speech.sample_rate, body.format), media_type="audio/wav")


@app.post("/v1/stt")
async def stt(file: Annotated[UploadFile, File()], language: Annotated[str, Form()] = "auto") -> dict[str, Any]:
    audio = decode_upload(await file.read())
    result = await _call(MODELS["stt"].transcribe, audio, language)
    return {"text": result.text, "language": result.language, "duration": result.duration}


@app.post("/v1/translate")
async def translate(body: TranslateBody) -> dict[str, Any]:
    result = await _call(MODELS["translate"].translate, body.text, body.source, body.target)
    return {"translation": result.text}


@app.post("/v1/chat")
async def chat(body: ChatBody) -> dict[str, Any]:
    request = ChatRequest([ChatMessage("user", body.message)], body.language, body.max_tokens, body.temperature)
    reply = await _call(MODELS["chat"].complete, request)
    return {"reply": reply.text, "completion_tokens": reply.completion_tokens}
