"""The playground in a real headless Chromium (Debian's), against the real stack: the PyTriton host
on the embedded weights, the facade as a uvicorn server with tokens on, Redis.

Chromium's fake capture device plays a spoken WAV file as the microphone, so the page hears a
person ask a question. Every request to another host is refused, so the pages are shown to work
with no internet. Screenshots go to ``MILO_SCREENSHOTS`` (``docs/playground`` refreshes the ones in
the docs) or to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from redis import Redis

from loadtests.processes import tokens_cli
from tests.conftest import TritonHost, facade_process, speak

QUESTION = "Bonjour, quelle est la capitale de Madagascar ?"
SILENCE_S = 0.6
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPLY_TIMEOUT_MS = 120_000
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@dataclass(frozen=True)
class Playground:
    base: str
    token: str
    question: Path  # the microphone's sound
    question_s: float


@pytest.fixture(scope="module")
def playground(
    triton_host: TritonHost, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Playground]:
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: run `make setup` (Debian's chromium package)")
    folder = tmp_path_factory.mktemp("playground")
    url = redis_url.rsplit("/", 1)[0] + "/5"  # a database of its own
    Redis.from_url(url).flushdb()
    env = {"MILO_AUTH_ENABLED": "true", "MILO_REDIS_URL": url, "MILO_IP_RATE_LIMIT": "10000/minute"}
    token = tokens_cli(env, "create", "playground", "--tier", "standard", "--scopes", "stt,tts,translate,chat")
    silence = np.zeros(int(SILENCE_S * 16000), np.float32)
    audio = np.concatenate([silence, speak(QUESTION), silence, silence])
    question = folder / "question.wav"
    sf.write(question, audio, 16000, subtype="PCM_16")
    with facade_process(triton_host, folder / "facade.log", **env) as base:
        yield Playground(base, token, question, len(audio) / 16000)


@pytest.fixture
def browser(playground: Playground) -> Iterator[Browser]:
    """A fresh Chromium each test: its fake microphone plays the question from the start, once."""
    with sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={playground.question}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


def offline_page(browser: Browser, playground: Playground) -> Page:
    """A page that may reach the facade only: anything else (a CDN) is refused and recorded."""
    page = browser.new_page()
    page.elsewhere = []  # type: ignore[attr-defined]
    local = urlsplit(playground.base).netloc

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).netloc in (local, ""):
            route.continue_()
        else:
            page.elsewhere.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()

    page.route("**/*", only_local)
    return page


def open_playground(browser: Browser, playground: Playground, with_token: bool = True) -> Page:
    page = offline_page(browser, playground)
    page.goto(f"{playground.base}/playground")
    if with_token:
        page.fill("#token", playground.token)
        page.dispatch_event("#token", "change")
    return page


def screenshot(page: Page, name: str, fallback: Path) -> None:
    folder = Path(os.environ.get("MILO_SCREENSHOTS", fallback))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def audio_ended(page: Page, at_least: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.audioEnded || 0) >= {at_least}", timeout=REPLY_TIMEOUT_MS)


def test_the_api_reference_renders_with_no_internet(browser: Browser, playground: Playground) -> None:
    page = offline_page(browser, playground)
    page.goto(f"{playground.base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Milo Voice", timeout=30_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    page.goto(f"{playground.base}/redoc")
    expect(page.locator("h1").first).to_contain_text("Milo Voice", timeout=30_000)
    expect(page.get_by_text("/v1/translate").first).to_be_attached()
    # ReDoc's script links its "powered by" logo from its makers' site: an image, the one request
    # that leaves (refused here, and the page renders without it).
    assert set(page.elsewhere) <= {REDOC_LOGO}  # type: ignore[attr-defined]


def test_push_to_talk_hears_the_question_and_plays_the_spoken_reply(
    browser: Browser, playground: Playground, tmp_path: Path
) -> None:
    page = open_playground(browser, playground)
    talk = page.locator("#talk")
    talk.dispatch_event("pointerdown")
    page.wait_for_timeout(int(1000 * (playground.question_s + 0.3)))
    talk.dispatch_event("pointerup")
    expect(page.locator("#turns li.user").first).to_contain_text("capitale", timeout=REPLY_TIMEOUT_MS)
    reply = page.locator("#turns li.assistant").first
    expect(reply).not_to_be_empty(timeout=REPLY_TIMEOUT_MS)
    audio_ended(page, 1)  # the reply's audio was played to its end
    expect(page.locator("#conversation-state")).to_have_text("idle", timeout=REPLY_TIMEOUT_MS)
    # A second turn from the keyboard (Space held on the button), in the same chat session.
    talk.focus()
    page.keyboard.down(" ")
    page.wait_for_timeout(int(1000 * (playground.question_s + 0.3)))
    page.keyboard.up(" ")
    expect(page.locator("#turns li.assistant")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#turns li.user").nth(1)).to_contain_text("capitale")
    audio_ended(page, 2)
    expect(page.locator("#conversation-state")).to_have_text("idle", timeout=REPLY_TIMEOUT_MS)
    screenshot(page, "conversation", tmp_path)

    # The turn is stored in a chat session, listed in the sessions panel, readable and deletable.
    session = page.locator("#session-list li").first
    session_id = session.get_attribute("title")
    session.get_by_role("button", name="Open").click()
    expect(page.locator("#session-list li")).to_have_count(1)  # both turns in one session
    expect(page.locator("#session-turns li")).to_have_count(4)
    expect(page.locator("#session-turns li").first).to_contain_text("capitale")
    headers = {"Authorization": f"Bearer {playground.token}"}
    assert httpx.get(f"{playground.base}/v1/chat/sessions/{session_id}", headers=headers).status_code == 200
    session.get_by_role("button", name="Delete").click()
    expect(page.locator("#session-list li")).to_have_count(0)
    assert httpx.get(f"{playground.base}/v1/chat/sessions/{session_id}", headers=headers).status_code == 404
    assert page.elsewhere == []  # type: ignore[attr-defined]


def test_hands_free_finds_the_turn_and_answers_aloud(browser: Browser, playground: Playground) -> None:
    page = open_playground(browser, playground)
    page.click("#handsfree")
    expect(page.locator("#handsfree")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#turns li.user:not(.partial)").first).to_contain_text("capitale", timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#turns li.assistant").first).not_to_be_empty(timeout=REPLY_TIMEOUT_MS)
    # The transcript was shown while the question was still being spoken.
    assert int(page.evaluate("document.body.dataset.partialTranscripts || '0'")) >= 1
    audio_ended(page, 1)
    page.click("#handsfree")
    expect(page.locator("#handsfree")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#error")).to_be_hidden()


def test_the_tts_stt_and_translation_panels(browser: Browser, playground: Playground, tmp_path: Path) -> None:
    page = open_playground(browser, playground)
    page.select_option("#language", "mg")
    page.click("#tts-speak")
    page.wait_for_function("document.getElementById('tts-audio').currentTime > 0", timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#tts-download")).to_have_attribute("download", "speech.wav")

    page.fill("#tr-text", "Bonjour à tous.\nLe marché du village ouvre demain matin.")
    page.click("#tr-send")
    results = page.locator("#tr-results li")
    expect(results).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    expect(results.nth(0).locator(".origin")).to_have_text("phrasebook")
    expect(results.nth(1).locator(".origin")).to_have_text("model")

    page.select_option("#language", "fr")
    # Recorded from the microphone, then uploaded as a file.
    page.click("#stt-record")
    page.wait_for_timeout(int(1000 * (playground.question_s + 0.3)))
    page.click("#stt-record")
    page.click("#stt-send")
    expect(page.locator("#stt-text")).to_contain_text("capitale", timeout=REPLY_TIMEOUT_MS)
    page.evaluate("document.getElementById('stt-text').textContent = ''")
    page.set_input_files("#stt-file", str(playground.question))
    page.click("#stt-send")
    expect(page.locator("#stt-text")).to_contain_text("capitale", timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#stt-segments tbody tr").first).to_be_visible()
    expect(page.locator("#stt-srt")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#stt-vtt")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    subtitles = page.evaluate("fetch(document.getElementById('stt-vtt').href).then((r) => r.text())")
    assert subtitles.startswith("WEBVTT") and "capitale" in subtitles
    screenshot(page, "panels", tmp_path)
    assert page.elsewhere == []  # type: ignore[attr-defined]


def test_errors_show_the_servers_message(browser: Browser, playground: Playground) -> None:
    page = open_playground(browser, playground, with_token=False)
    # Hands-free without a token: the refused handshake is said, and the button comes back.
    page.click("#handsfree")
    expect(page.locator("#error")).to_contain_text("refused the connection", timeout=30_000)
    expect(page.locator("#handsfree")).to_have_attribute("aria-pressed", "false")
    page.click("#tr-send")
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("unauthenticated")
    expect(error).to_contain_text("request ")
    # With the token the same call works, and the error goes.
    page.fill("#token", playground.token)
    page.dispatch_event("#token", "change")
    page.click("#tr-send")
    expect(page.locator("#tr-results li")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    expect(error).to_be_hidden()
    # A refused request: its field and message come from the error body.
    page.fill("#tts-text", "")
    page.click("#tts-speak")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("field text")
    # The token was kept in this browser for the next visit.
    assert page.evaluate("localStorage.getItem('milo.token')") == playground.token
