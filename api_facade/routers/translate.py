"""POST /v1/translate: phrasebook first, then the cache, then NLLB through Triton.

The cache is read under the weights the model last said it serves (``served_weights``) and written
under those that translated, so new weights never answer from older ones' translations.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from api_facade.auth.access import TranslateTriton
from api_facade.cache import cache_key
from api_facade.dependencies import CacheDep, PhrasebookDep, RevisionsDep, SettingsDep
from api_facade.metrics import CACHE
from api_facade.openapi import AUTH, BODY, MODEL, error_responses
from api_facade.protocol import Translated, TranslateRequest, TranslateResponse

router = APIRouter(tags=["translate"])


@router.post(
    "/v1/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,
    responses=error_responses(AUTH, BODY, MODEL),
)
async def translate(
    body: TranslateRequest,
    triton: TranslateTriton,
    cache: CacheDep,
    phrasebook: PhrasebookDep,
    revisions: RevisionsDep,
    settings: SettingsDep,
) -> TranslateResponse:
    def key(revision: str, text: str) -> str:
        return cache_key(f"{settings.profile}:{revision}", body.source, body.target, text.strip())

    async def one(text: str) -> Translated:
        fixed = phrasebook.lookup(text, body.source, body.target)
        if fixed is not None:
            CACHE.labels("phrasebook").inc()
            return Translated(text=fixed, origin="phrasebook")
        served = revisions.current("translate", triton.restarts)
        cached = await cache.get(key(served, text)) if served is not None else None
        if cached is not None:
            CACHE.labels("hit").inc()
            return Translated(text=cached, origin="cache")
        CACHE.labels("miss").inc()
        result = await triton.translate(text, body.source, body.target)
        if result.revision:  # weights that do not say what they are are never cached
            revisions.learn("translate", result.revision, triton.restarts)
            await cache.set(key(result.revision, text), result.text)
        return Translated(text=result.text, origin="model")

    # Sent together, the texts reach Triton's dynamic batcher together.
    translations = list(await asyncio.gather(*(one(t) for t in body.texts)))
    single = translations[0].text if isinstance(body.text, str) else None
    return TranslateResponse(source=body.source, target=body.target, translations=translations, translation=single)
