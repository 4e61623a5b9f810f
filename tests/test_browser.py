"""The demo page in a real browser (Debian's chromium via Playwright) against the real `v2v serve`.

Chromium's fake audio device plays a committed speech WAV (looped) as the
microphone. The page's test hook `window.v2v` exposes the agent state, the
RTVI events received, the rendered transcripts and the audio levels measured
with WebAudio AnalyserNodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser_util import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    LAPTOP,
    PHONE,
    Server,
    active_webrtc_calls,
    compose_wav,
    fake_audio_args,
    run_server,
    speech_wav,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

AUDIBLE = 0.02  # RMS, full scale 1.0 (about -34 dBFS)


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def echo_server(tmp_module: Path) -> Iterator[Server]:
    with run_server("echo", tmp_module) as server:
        yield server


@pytest.fixture(scope="module")
def playwright_instance():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_instance, tmp_module: Path) -> Iterator[Browser]:
    # Chromium loops the capture file: one utterance, then silence for longer than the test,
    # so the typed-text part of the test is not talked over.
    wav = compose_wav(tmp_module / "speech_once.wav", [speech_wav(tmp_module), 60.0])
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, headless=True, args=fake_audio_args(wav))
    yield b
    b.close()


def open_page(browser: Browser, url: str, viewport: dict) -> tuple[Page, list[str]]:
    """A fresh context and page; returns the page and a live list of page problems."""
    ctx = browser.new_context(viewport=viewport)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
    )
    page.goto(url)
    return page, problems


def js(page: Page, expr: str, timeout_s: float, what: str) -> None:
    try:
        page.wait_for_function(expr, timeout=timeout_s * 1000)
    except Exception as e:  # the page's view of the call makes the failure readable
        snap = page.evaluate(
            "JSON.stringify({state: v2v.state, connection: v2v.connection, events: v2v.events.slice(-30),"
            " transcripts: v2v.transcripts, errors: v2v.errors, stats: v2v.stats(), turns: v2v.turns})"
        )
        raise AssertionError(f"timed out waiting for {what}: {snap}") from e


def screenshot(page: Page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def hang_up_and_check(page: Page, server: Server) -> None:
    page.click("#hangup")
    js(page, "v2v.connection === 'idle' && v2v.pcId === null", 5, "the page to hang up")
    assert page.is_visible("#connect")
    wait_until(lambda: active_webrtc_calls(server.url) == 0, 5.0, "v2v_active_calls{transport=webrtc} to be 0")


def test_echo_call_in_browser(browser: Browser, echo_server: Server) -> None:
    page, problems = open_page(browser, echo_server.url + "/", LAPTOP)
    try:
        assert page.title().startswith("v2v")
        assert active_webrtc_calls(echo_server.url) == 0
        screenshot(page, "browser_idle_laptop.png")
        page.click("#connect")

        js(page, "v2v.state === 'listening'", 20, "agent state listening")
        assert "bot-ready" in page.evaluate("v2v.events")
        assert active_webrtc_calls(echo_server.url) == 1

        # the fake microphone says "Hello, what time is it?": the local VAD makes it a turn
        js(page, "v2v.events.includes('user-started-speaking')", 15, "user-started-speaking")
        js(page, "v2v.events.includes('user-stopped-speaking')", 15, "user-stopped-speaking")
        assert page.evaluate("v2v.stats().inputLevelMax") > AUDIBLE

        # the echo model plays the turn back: audio reaches the page's AnalyserNode
        js(page, f"v2v.stats().outputLevelMax > {AUDIBLE}", 15, "reply audio in the page")
        js(page, "v2v.events.includes('bot-started-speaking')", 5, "bot-started-speaking")
        js(page, "v2v.events.includes('bot-stopped-speaking')", 15, "bot-stopped-speaking")
        js(page, "v2v.turns.some(t => t.heardMs !== null)", 5, "a per-turn latency")

        # the turn renders: the user's bubble and the assistant's reply bubble
        assert page.locator(".msg.user").count() >= 1
        assert page.locator(".msg.assistant").count() >= 1
        js(page, "v2v.state === 'listening'", 10, "back to listening after the reply")
        # the echo model transcribes nothing: the user's bubble says so
        js(page, "v2v.transcripts.some(e => e.role === 'user' && e.final)", 10, "a final user turn")

        # typed text (with the microphone muted): the echo model answers with a tone per word and
        # the text, which the page shows as the tones are heard
        page.click("#mute")
        assert page.get_attribute("#mute", "aria-pressed") == "true"
        page.fill("#text", "hello there friend")
        page.click("#send")
        js(page, "v2v.transcripts.some(e => e.role === 'user' && e.typed && e.text === 'hello there friend')",
           2, "the typed message bubble")
        js(page, "v2v.transcripts.some(e => e.role === 'assistant' && e.text === 'hello there friend')",
           15, "the assistant's text, paced to its audio")
        assert page.locator(".msg.assistant .spoken", has_text="hello there friend").count() == 1

        # a request the server refuses shows as a visible error, and the call goes on
        page.evaluate("v2v.request('client-message', {t: 'no-such-request', d: {}})")
        page.wait_for_selector("#notice:not([hidden])", timeout=5000)
        assert "no-such-request" in page.inner_text("#notice-text")
        assert len(page.evaluate("v2v.errors")) == 1
        page.click("#notice-close")
        assert page.is_hidden("#notice")
        assert page.evaluate("v2v.connection") == "connected"

        screenshot(page, "browser_echo_laptop.png")
        page.set_viewport_size(PHONE)
        # the phone layout fits the width: nothing scrolls sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(page, "browser_echo_phone.png", full_page=True)
        page.emulate_media(color_scheme="dark")
        screenshot(page, "browser_echo_phone_dark.png", full_page=True)
        page.emulate_media(color_scheme="light")
        page.set_viewport_size(LAPTOP)

        hang_up_and_check(page, echo_server)
        assert len(page.evaluate("v2v.errors")) == 1  # only the refused request above
        assert problems == []
    finally:
        page.context.close()


def test_microphone_denied_shows_message(playwright_instance, echo_server: Server) -> None:
    # No --use-fake-ui-for-media-stream: the permission request goes to the (headless) prompt,
    # which denies it since the context grants no permission.
    b = playwright_instance.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--use-fake-device-for-media-stream", *CHROMIUM_ARGS]
    )
    try:
        ctx = b.new_context(viewport=LAPTOP, permissions=[])
        page = ctx.new_page()
        page.goto(echo_server.url + "/")
        page.click("#connect")
        page.wait_for_selector("#notice:not([hidden])", timeout=10_000)
        text = page.inner_text("#notice")
        assert "Microphone blocked" in text
        assert "denied" in text
        assert page.evaluate("v2v.connection") == "failed"
        assert page.evaluate("v2v.pcId") is None
        assert page.is_visible("#connect")
        assert active_webrtc_calls(echo_server.url) == 0
        screenshot(page, "browser_mic_denied.png")
    finally:
        b.close()


@pytest.fixture(scope="module")
def local_server(tmp_module: Path) -> Iterator[Server]:
    with run_server("local", tmp_module) as server:
        yield server


def test_local_model_transcripts_and_barge_in(playwright_instance, local_server: Server, tmp_module: Path) -> None:
    """The local assistant: ask for a story, talk over it, then type a question.

    The fake microphone says "tell me a story", stays silent while the story plays, then says
    "what time is it" over it, then stays silent for longer than the test lasts.
    """
    wav = compose_wav(tmp_module / "story_then_time.wav",
                      ["tell_me_a_story.wav", 5.0, "what_time_is_it.wav", 60.0])
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, headless=True, args=fake_audio_args(wav))
    try:
        page, problems = open_page(b, local_server.url + "/", LAPTOP)
        page.click("#connect")
        js(page, "v2v.state === 'listening'", 30, "agent state listening")

        # the caller's words are transcribed and shown; the story starts and is heard
        js(page, "v2v.transcripts.some(e => e.role === 'user' && e.final && /story/i.test(e.text))",
           20, "the user's transcript 'tell me a story'")
        js(page, f"v2v.stats().outputLevelMax > {AUDIBLE}", 10, "the story's audio in the page")
        js(page, "v2v.transcripts.some(e => e.role === 'assistant' && e.text.length > 0)",
           10, "the story's text, paced to its audio")

        # talking over it interrupts it: what was not said is struck out
        js(page, "v2v.events.includes('bot-interrupted')", 20, "bot-interrupted")
        js(page, "v2v.transcripts.some(e => e.role === 'assistant' && e.interrupted && e.unspoken.length > 0)",
           10, "the interrupted answer with its unspoken part")
        story = page.evaluate("v2v.transcripts.find(e => e.role === 'assistant' && e.interrupted)")
        assert story["spoken"], story
        assert page.locator(".msg.assistant.interrupted del.unspoken").count() >= 1
        assert page.locator(".msg.assistant.interrupted .spoken").first.inner_text() == story["spoken"]

        # what the caller said over the story is transcribed and answered (recognition of speech
        # cut into by a barge-in is not exact: any words will do)
        js(page, "(() => { const t = v2v.transcripts; const i = t.findIndex(e => e.interrupted);"
                 " return i >= 0 && t.slice(i + 1).some(e => e.role === 'user' && e.final && e.text)"
                 " && t.slice(i + 1).some(e => e.role === 'assistant' && e.final && e.text); })()",
           20, "the words said over the story, and the answer to them")
        js(page, "v2v.state === 'listening'", 15, "back to listening")

        # a typed question gets a spoken answer, shown as it is heard
        page.fill("#text", "what time is it")
        page.press("#text", "Enter")
        js(page, "v2v.transcripts.some(e => e.role === 'assistant' && /\\d:\\d\\d/.test(e.text))",
           15, "the assistant telling the time")
        js(page, "v2v.turns.some(t => t.ttfbMs !== null)", 5, "a server turn latency")

        screenshot(page, "browser_local_laptop.png")
        page.set_viewport_size(PHONE)
        screenshot(page, "browser_local_phone.png", full_page=True)
        page.set_viewport_size(LAPTOP)

        hang_up_and_check(page, local_server)
        assert page.evaluate("v2v.errors") == []
        assert problems == []
    finally:
        b.close()
