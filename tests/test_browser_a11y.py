"""The demo page on phones, tablets, keyboards and screen readers (Debian's chromium via Playwright).

Against the real `v2v serve --model echo`: at 390x844 (mobile, touch), 768x1024 (touch) and
1280x800 the call controls and the composer stay in the viewport during a call, the
conversation scrolls in its own region with the newest turn in view, nothing scrolls
sideways, touch targets are at least 44 px; keyboard-only connect/hang up keeps focus on a
visible control; each finished turn is announced once; axe-core (pinned in tests/axe)
reports no serious or critical violation before and during a call, light and dark.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser_util import (
    CHROMIUM,
    REPO,
    Server,
    compose_wav,
    fake_audio_args,
    run_server,
    speech_wav,
)
from tests.test_browser import js, screenshot

pytestmark = pytest.mark.timeout(120)

AXE = REPO / "tests" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
VIEWPORTS: dict[str, dict[str, Any]] = {
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
    "tablet": {"viewport": {"width": 768, "height": 1024}, "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}
MIN_TARGET = 44
AUDIBLE = 0.02  # RMS-like level, full scale 1

# The boxes the layout assertions are about, read in one go.
LAYOUT_JS = """() => {
  const box = (el) => {
    if (!el) return null;
    const b = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    return {left: b.left, top: b.top, right: b.right, bottom: b.bottom, w: b.width, h: b.height,
            shown: b.width > 0 && b.height > 0 && cs.visibility !== 'hidden' && cs.display !== 'none'};
  };
  const t = document.getElementById('transcript');
  const entries = t.querySelectorAll('.msg, .note');
  const targets = [];
  for (const el of document.querySelectorAll('button, input, summary, a[href]')) {
    const b = box(el);
    if (b.shown) targets.push({what: el.id || el.className || el.tagName, w: b.w, h: b.h});
  }
  return {
    vw: innerWidth, vh: innerHeight,
    docW: document.documentElement.scrollWidth, docH: document.documentElement.scrollHeight,
    hangup: box(document.getElementById('hangup')), connect: box(document.getElementById('connect')),
    mute: box(document.getElementById('mute')), text: box(document.getElementById('text')),
    send: box(document.getElementById('send')), transcript: box(t),
    tScroll: t.scrollHeight, tClient: t.clientHeight,
    newest: box(entries[entries.length - 1]), entries: entries.length, targets,
  };
}"""


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_a11y")


@pytest.fixture(scope="module")
def echo_server(tmp_module: Path) -> Iterator[Server]:
    with run_server("echo", tmp_module) as server:
        yield server


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw: Playwright, tmp_module: Path) -> Iterator[Browser]:
    # a silent microphone: the conversations here are typed (the voice path is test_browser.py's)
    wav = compose_wav(tmp_module / "silence.wav", [120.0])
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=fake_audio_args(wav))
    yield b
    b.close()


def new_page(browser: Browser, url: str, device: str, color_scheme: str = "light") -> tuple[Page, list[str]]:
    ctx = browser.new_context(color_scheme=color_scheme, **VIEWPORTS[device])
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.goto(url + "/")
    return page, problems


def connect(page: Page) -> None:
    page.click("#connect")
    js(page, "v2v.connection === 'connected' && v2v.ready && v2v.state === 'listening'", 20, "a live call")


def typed_turns(page: Page, texts: list[str]) -> None:
    """Typed messages, one after the other; the echo model answers each with its text, paced to audio."""
    for text in texts:
        page.fill("#text", text)
        page.press("#text", "Enter")
        js(page, f"v2v.transcripts.some(e => e.role === 'assistant' && e.final && e.text === {text!r})",
           20, f"the answer to {text!r}")


def inside(box: dict, vw: float, vh: float) -> bool:
    return box["shown"] and box["left"] >= 0 and box["top"] >= 0 and box["right"] <= vw + 0.5 and box["bottom"] <= vh + 0.5


def inject_interrupted_answer(page: Page) -> None:
    """An interrupted answer as the page renders one (spoken part, struck-out rest, "show all", tag)."""
    page.evaluate("""() => {
      const t = document.getElementById('transcript');
      const el = document.createElement('div');
      el.className = 'msg assistant interrupted';
      el.innerHTML = '<div class="who">Assistant</div><div class="bubble"><span class="spoken">Once upon a time</span> '
        + '<del class="unspoken">there was a long story…</del><button type="button" class="more">show all</button>'
        + '<span class="tag">interrupted</span></div>';
      t.appendChild(el);
      t.scrollTop = t.scrollHeight;
    }""")


def axe_serious(page: Page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("""async () => {
      const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
      return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                     nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + n.failureSummary)}));
    }""")
    return [v for v in result if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("device", ["phone", "tablet", "desktop"])
def test_layout_during_a_conversation(browser: Browser, echo_server: Server, device: str) -> None:
    page, problems = new_page(browser, echo_server.url, device)
    try:
        idle = page.evaluate(LAYOUT_JS)
        vw, vh = idle["vw"], idle["vh"]
        assert idle["docW"] <= vw, idle
        assert inside(idle["connect"], vw, vh), idle["connect"]
        screenshot(page, f"a11y_{device}_idle.png")

        connect(page)
        page.click("#mute")  # the fake microphone's utterance is not part of this test
        typed_turns(page, [f"turn {i} " + " ".join(["words"] * (3 + 2 * i)) for i in range(1, 8)])
        inject_interrupted_answer(page)
        js(page, "(() => { const t = document.getElementById('transcript');"
                 " return t.scrollHeight - t.scrollTop - t.clientHeight < 2; })()", 5, "the transcript at its end")
        lay = page.evaluate(LAYOUT_JS)
        screenshot(page, f"a11y_{device}_call.png")

        # the call controls and the composer stay in view; nothing scrolls sideways
        for name in ("hangup", "mute", "text", "send"):
            assert inside(lay[name], vw, vh), (name, lay[name], vw, vh)
        assert lay["docW"] <= vw, lay
        # the conversation scrolls in its own region and the newest turn is in view in it
        assert lay["entries"] >= 15
        assert lay["tScroll"] > lay["tClient"], lay
        t, newest = lay["transcript"], lay["newest"]
        assert newest["bottom"] <= t["bottom"] + 1 and newest["top"] >= t["top"] - 1, (newest, t)
        assert inside(newest, vw, vh), newest
        if device != "desktop":
            assert lay["docH"] <= vh, lay  # the page itself does not scroll: the transcript does
            small = [x for x in lay["targets"] if x["w"] < MIN_TARGET or x["h"] < MIN_TARGET]
            assert small == [], small
        # the "interrupted" tag is readable
        tag_px = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.bubble .tag')).fontSize)")
        assert tag_px >= 13
        page.click("#hangup")
        js(page, "v2v.connection === 'idle'", 5, "hung up")
        assert problems == []
    finally:
        page.context.close()


def tab_to(page: Page, element_id: str, limit: int = 12) -> list[str]:
    """Press Tab until ``element_id`` has focus; returns the ids/classes focused on the way."""
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        now = page.evaluate("document.activeElement.id || document.activeElement.tagName")
        seen.append(now)
        if now == element_id:
            return seen
    raise AssertionError(f"Tab never reached #{element_id}: {seen}")


def test_keyboard_only_call_keeps_focus_on_a_visible_control(browser: Browser, echo_server: Server) -> None:
    page, problems = new_page(browser, echo_server.url, "phone")
    try:
        order = tab_to(page, "connect")
        assert order == ["connect"], order  # the call control comes first
        page.keyboard.press("Enter")
        js(page, "v2v.connection === 'connected'", 20, "connected")
        assert page.evaluate("document.activeElement.id") == "hangup"
        assert page.is_visible("#hangup")
        # the rest of the tab order during a call: mute, then the conversation, then the composer
        order = tab_to(page, "send")
        assert order[0] == "mute" and order.index("transcript") < order.index("text") < order.index("send"), order
        # Mute says its state once: aria-pressed changes, the label does not
        page.focus("#mute")
        page.keyboard.press("Enter")
        assert page.get_attribute("#mute", "aria-pressed") == "true"
        assert page.inner_text("#mute").strip() == "Mute"
        page.keyboard.press("Space")
        assert page.get_attribute("#mute", "aria-pressed") == "false"
        page.focus("#hangup")
        page.keyboard.press("Enter")
        js(page, "v2v.connection === 'idle'", 10, "hung up")
        js(page, "document.activeElement && document.activeElement.id === 'connect'", 2, "focus back on Connect")
        assert page.is_visible("#connect")
        assert problems == []
    finally:
        page.context.close()


def test_screen_reader_hears_each_finished_turn_once(browser: Browser, echo_server: Server) -> None:
    page, _ = new_page(browser, echo_server.url, "desktop")
    try:
        assert page.get_attribute("#transcript", "aria-live") is None
        assert page.get_attribute("#transcript", "role") == "region"
        assert page.get_attribute("#announcer", "aria-live") == "polite"
        connect(page)
        page.click("#mute")
        texts = ["first answer please", "second one", "and a third"]
        typed_turns(page, texts)
        js(page, f"v2v.announced.filter(a => a.startsWith('Assistant')).length >= {len(texts)}", 5,
           "the answers announced")
        announced = page.evaluate("v2v.announced")
        for text in texts:
            assert announced.count(f"Assistant: {text}") == 1, announced
        assert len(announced) == len(set(announced)), announced
        # the live region holds only the latest few lines, never the whole transcript
        assert page.locator("#announcer p").count() <= 4
        page.click("#hangup")
    finally:
        page.context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_reports_nothing_serious(browser: Browser, echo_server: Server, scheme: str) -> None:
    assert AXE.exists(), f"{AXE} missing: run .ci/setup-tests (npm ci in tests/axe)"
    page, _ = new_page(browser, echo_server.url, "phone", color_scheme=scheme)
    try:
        before = axe_serious(page)
        assert before == [], before
        connect(page)
        page.click("#mute")
        typed_turns(page, ["hello there"])
        inject_interrupted_answer(page)
        assert page.get_attribute("#mute", "aria-pressed") == "true"  # checked pressed: its own colours
        during = axe_serious(page)
        screenshot(page, f"a11y_phone_call_{scheme}.png")
        assert during == [], during
        page.click("#hangup")
    finally:
        page.context.close()


# Headless chromium runs every AudioContext whatever its autoplay flags; a browser without an
# output device (or under autoplay rules) keeps it suspended. This makes the page's context such
# a one: it is suspended at once and resume() does nothing. The rest (WebRTC, stats) is real.
SUSPENDED_AUDIO_CONTEXT = """
(() => {
  const Real = window.AudioContext;
  window.AudioContext = class extends Real {
    constructor(opts) { super(opts); super.suspend(); }
    resume() { return Promise.resolve(); }
  };
})();
"""


def test_meters_fall_back_to_webrtc_stats_without_an_audio_context(
        pw: Playwright, echo_server: Server, tmp_module: Path) -> None:
    wav = compose_wav(tmp_module / "speech_then_silence.wav", [speech_wav(tmp_module), 90.0])
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=fake_audio_args(wav))
    try:
        ctx = b.new_context(**VIEWPORTS["desktop"])
        ctx.add_init_script(SUSPENDED_AUDIO_CONTEXT)
        page = ctx.new_page()
        page.goto(echo_server.url + "/")
        page.click("#connect")
        js(page, "v2v.connection === 'connected'", 20, "connected")
        js(page, "v2v.stats().levelSource === 'webrtc-stats'", 2, "levels from the WebRTC stats")
        js(page, f"v2v.stats().inputLevelMax > {AUDIBLE}", 15, "the microphone level from the stats")
        js(page, f"v2v.stats().outputLevelMax > {AUDIBLE}", 20, "the reply's level from the stats")
        js(page, "v2v.turns.some(t => t.heardMs !== null)", 10, "the heard latency")
        assert page.evaluate("v2v.stats().levelSource") == "webrtc-stats"
        screenshot(page, "a11y_meters_from_stats.png")
        page.click("#hangup")
    finally:
        b.close()
