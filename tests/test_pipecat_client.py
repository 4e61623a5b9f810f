"""Interop with Pipecat's real client SDK in a real browser.

The test page (tests/pipecat_client/src) uses ``PipecatClient`` from
``@pipecat-ai/client-js`` with ``SmallWebRTCTransport`` from
``@pipecat-ai/small-webrtc-transport`` (pinned versions, installed with
``npm ci`` and bundled with esbuild by tests/pipecat_client/build.mjs), with
``mediaManager: new WavMediaManager()`` (the default manager loads code from
a CDN). Debian's chromium runs it headless with a fake microphone playing a
committed speech WAV, against the real ``v2v serve`` (echo and local models).
Every assertion reads what the client SDK itself reported through its
callbacks (``window.v2vTest.events``), or the server's /metrics. The same page
is also bundled with an RTVI 1.x SDK (client-js 1.10, RTVI 1.4.0, in
tests/pipecat_client/legacy) to check the 1.x reply shapes.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser_util import (
    CHROMIUM,
    REPO,
    Server,
    active_webrtc_calls,
    fake_audio_args,
    run_server,
    speech_wav,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

CLIENT_DIR = REPO / "tests" / "pipecat_client"
DIST = CLIENT_DIR / "dist"
HOOKS = CLIENT_DIR / "app_hooks.py"
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
STATES = {"initializing", "listening", "thinking", "speaking"}


# --------------------------------------------------------------------------
# fixtures: the bundle, its static server, v2v serve, chromium
# --------------------------------------------------------------------------


def _build_bundle() -> None:
    """npm ci (when node_modules is missing) and the esbuild bundle."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are needed (apt-get install nodejs npm)"
    for d in (CLIENT_DIR, CLIENT_DIR / "legacy"):
        if not (d / "node_modules" / "@pipecat-ai" / "client-js").exists():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=d, check=True, timeout=600)
    subprocess.run(["node", "build.mjs"], cwd=CLIENT_DIR, check=True, timeout=120)


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    _build_bundle()
    assert (DIST / "client.js").stat().st_size > 100_000 and (DIST / "legacy.js").stat().st_size > 100_000
    handler = functools.partial(_QuietHandler, directory=str(DIST))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def v2v_serve(model: str, tmp_dir: Path, page_url: str) -> Any:
    """The real CLI, ``v2v serve --model <model>``, with the application hooks of
    tests/pipecat_client/app_hooks.py as its --app; the client's page is served from
    another origin, which the server must list (--cors-origin)."""
    return run_server(model, tmp_dir, "--log-level", "info", "--app", str(HOOKS), "--cors-origin", page_url.rstrip("/"))


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipecat")


@pytest.fixture(scope="module")
def browser(tmp_module: Path) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=fake_audio_args(speech_wav(tmp_module)))
        try:
            yield b
        finally:
            b.close()


# --------------------------------------------------------------------------
# helpers reading the client's own callbacks
# --------------------------------------------------------------------------


class Client:
    def __init__(self, page: Page, server: Server) -> None:
        self.page = page
        self.server = server
        self.problems: list[str] = []
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = self.page.evaluate("v2vTest.events")
        return [e for e in evs if name is None or e["name"] == name]

    def wait(self, expr: str, timeout_s: float, what: str) -> Any:
        try:
            self.page.wait_for_function(expr, timeout=timeout_s * 1000)
        except Exception as e:
            evs = self.page.evaluate("v2vTest.events.slice(-40).map(e => [Math.round(e.t), e.name, "
                                     "JSON.stringify(e.data || '').slice(0, 200)])")
            audio = self.page.evaluate("v2vTest.audio")
            raise AssertionError(f"timed out waiting for {what}: audio={audio} events={evs}\n"
                                 f"server log:\n{self.server.log()[-3000:]}") from e
        return self.page.evaluate(expr)

    def wait_event(self, name: str, timeout_s: float, cond: str = "true") -> dict[str, Any]:
        self.wait(f"v2vTest.events.some(e => e.name === {name!r} && ({cond}))", timeout_s, name)
        return next(e for e in self.events(name) if self.page.evaluate(f"(e => {cond})", e))

    def errors(self) -> list[dict[str, Any]]:
        return self.events("onError")


def open_client(browser: Browser, page_url: str, server: Server, page: str = "index.html") -> Client:
    ctx = browser.new_context()
    p = ctx.new_page()
    client = Client(p, server)
    p.goto(f"{page_url}{page}?server={server.url}")
    p.wait_for_function("window.v2vTest && v2vTest.events.length > 0", timeout=10_000)
    return client


def connect(c: Client, version: str = "2.1.0") -> dict[str, Any]:
    res = c.page.evaluate("v2vTest.connect()")
    assert res["ok"], f"connect() rejected: {res}\n{c.server.log()[-3000:]}"
    ready = res["data"]
    assert ready["version"] == version and ready["about"]["library"] == "v2v"
    names = [e["name"] for e in c.events()]
    assert "onConnected" in names and "onBotReady" in names
    assert names.index("onBotReady") < names.index("connectResolved")
    assert c.page.evaluate("v2vTest.state()") == "ready"
    return ready


def disconnect_and_check(c: Client) -> None:
    assert active_webrtc_calls(c.server.url) == 1
    c.page.evaluate("v2vTest.disconnect()")
    # Pipecat's disconnect() sends no DELETE: the data-channel/DTLS close ends the call
    wait_until(lambda: active_webrtc_calls(c.server.url) == 0, 2.0,
               "v2v_active_calls{transport=webrtc} back to 0 within 2 s of disconnect()")
    c.wait("v2vTest.events.some(e => e.name === 'onDisconnected')", 5, "onDisconnected")


def mute_between_turns(c: Client) -> None:
    """Mute the fake microphone (it loops speech) when the user is not speaking,
    so typed text is not talked over; the transport sends a trackStatus."""
    c.page.evaluate("v2vTest.enableMic(false)")
    c.wait("v2vTest.events.filter(e => e.name === 'onUserStartedSpeaking').length === "
           "v2vTest.events.filter(e => e.name === 'onUserStoppedSpeaking').length", 10,
           "the user's speech to end after muting")


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server(tmp_module: Path, page_url: str) -> Iterator[Server]:
    with v2v_serve("echo", tmp_module, page_url) as server:
        yield server


def test_pipecat_client_against_echo(browser: Browser, page_url: str, echo_server: Server) -> None:
    server = echo_server
    c = open_client(browser, page_url, server)
    try:
        assert active_webrtc_calls(server.url) == 0
        connect(c)
        assert active_webrtc_calls(server.url) == 1
        # the agent's state arrives as a server-message
        c.wait_event("onServerMessage", 5, "e.data && e.data.type === 'agent-state'")

        # the fake microphone speaks; the echo model plays the turn back on the bot's track
        c.wait_event("onUserStartedSpeaking", 20)
        c.wait_event("onUserStoppedSpeaking", 20)
        tr = c.wait_event("onUserTranscript", 10, "e.data.final")["data"]
        assert tr["final"] is True and tr["user_id"] and ISO_RE.match(tr["timestamp"]), tr
        c.wait_event("onBotStartedSpeaking", 15)
        c.wait("v2vTest.audio.trackStarted && v2vTest.audio.loudFrames >= 10", 15, "bot audio with sound")
        assert c.page.evaluate("v2vTest.audio.peak") > 0.02
        c.wait_event("onBotStoppedSpeaking", 15)
        ttfb = c.wait_event("onMetrics", 5, "e.data.ttfb")["data"]["ttfb"][0]
        assert ttfb["processor"] == "v2v" and 0 < ttfb["value"] < 5
        remote = [e for e in c.events("onTrackStarted") if not e["data"]["local"]]
        assert remote and remote[0]["data"]["kind"] == "audio"

        # sendClientRequest round trips: built-in, unknown, and an application handler
        r = c.page.evaluate("v2vTest.request('get-state', {})")
        assert r["ok"] and r["data"]["state"] in STATES, r
        r = c.page.evaluate("v2vTest.request('no-such-request', {})")
        assert not r["ok"] and "no-such-request" in r["error"]["error"], r
        assert c.events("onMessageError")
        r = c.page.evaluate("v2vTest.request('app-echo', {x: [1, 2]})")
        assert r["ok"] and r["data"]["echo"] == {"x": [1, 2]} and r["data"]["call_id"], r
        r = c.page.evaluate("v2vTest.request('update-instructions', {instructions: 'Be brief.'})")
        assert r["ok"] and r["data"] == {"ok": True}, r

        # typed text: the echo model answers with a tone per word and the text as transcript
        mute_between_turns(c)
        mark = len(c.events())
        c.page.evaluate("v2vTest.sendText('Hello there. How are you?')")
        c.wait(f"v2vTest.events.slice({mark}).some(e => e.name === 'onBotOutput' && e.data.final)", 20,
               "the typed answer's final bot-output")
        after = c.events()[mark:]
        names = [e["name"] for e in after]
        for n in ("onBotLlmStarted", "onBotLlmStopped", "onBotTranscript", "onBotTtsText",
                  "onBotStartedSpeaking"):
            assert n in names, n
        assert [e["data"]["text"] for e in after if e["name"] == "onBotTranscript"] == [
            "Hello there.", "How are you?"]
        outs = [e["data"] for e in after if e["name"] == "onBotOutput"]
        assert {o["spoken_status"] for o in outs} >= {"new", "completed"}
        done = {o["segment_id"]: o["spoken_progress"]["accumulated_text"]
                for o in outs if o["spoken_status"] == "completed"}
        assert list(done.values()) == ["Hello there.", "How are you?"]
        assert outs[-1]["spoken_text"] == "Hello there. How are you?"

        # DTMF (RTVI 2.1: one message with all the keys) reaches the call, which reports each digit
        c.page.evaluate("v2vTest.sendDTMF('12#')")
        c.wait("v2vTest.events.filter(e => e.name === 'onServerMessage' && e.data.type === 'dtmf')"
               ".map(e => e.data.digit).join('') === '12#'", 5, "the DTMF digits reported back")

        assert not c.errors(), c.errors()
        assert not c.problems, c.problems
        disconnect_and_check(c)
    finally:
        c.page.context.close()


def test_disconnect_bot_ends_the_call(browser: Browser, page_url: str, echo_server: Server) -> None:
    c = open_client(browser, page_url, echo_server)
    try:
        connect(c)
        assert active_webrtc_calls(echo_server.url) == 1
        c.page.evaluate("v2vTest.disconnectBot()")
        wait_until(lambda: active_webrtc_calls(echo_server.url) == 0, 2.0, "the call to end")
        c.wait_event("onBotDisconnected", 5)  # peerLeft
        assert not c.errors(), c.errors()
    finally:
        c.page.context.close()


def test_server_hangup_reaches_the_client(browser: Browser, page_url: str, echo_server: Server) -> None:
    c = open_client(browser, page_url, echo_server)
    try:
        connect(c)
        pc_id = c.events("onBotConnected")[0]["data"]["id"]
        assert pc_id and active_webrtc_calls(echo_server.url) == 1
        req = urllib.request.Request(f"{echo_server.url}/api/offer/{pc_id}", method="DELETE")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status in (200, 204)
        # peerLeft -> the SDK reports the bot gone and disconnects itself
        c.wait_event("onBotDisconnected", 5)
        c.wait_event("onDisconnected", 5)
        wait_until(lambda: active_webrtc_calls(echo_server.url) == 0, 2.0, "no active calls")
        assert c.page.evaluate("v2vTest.state()") == "disconnected"
        assert not c.errors(), c.errors()
    finally:
        c.page.context.close()


@pytest.fixture(scope="module")
def local_server(tmp_module: Path, page_url: str) -> Iterator[Server]:
    with v2v_serve("local", tmp_module, page_url) as server:
        yield server


def test_rtvi_1x_client_against_echo(browser: Browser, page_url: str, echo_server: Server) -> None:
    """client-js 1.10 speaks RTVI 1.4.0: it gets the 1.x reply shapes."""
    c = open_client(browser, page_url, echo_server, "legacy.html")
    try:
        connect(c, version="1.4.0")
        r = c.page.evaluate("v2vTest.request('get-state', {})")
        assert r["ok"] and r["data"]["state"] in STATES, r
        c.wait_event("onUserStoppedSpeaking", 20)
        mute_between_turns(c)
        mark = len(c.events())
        c.page.evaluate("v2vTest.sendText('One two. Three.')")
        c.wait(f"v2vTest.events.slice({mark}).filter(e => e.name === 'onBotOutput').length >= 2", 20,
               "two heard sentences")
        c.wait_event("onBotStoppedSpeaking", 10)
        outs = [e["data"] for e in c.events()[mark:] if e["name"] == "onBotOutput"]
        assert [o["text"] for o in outs] == ["One two.", "Three."], outs
        assert all(o["spoken"] is True and "spoken_status" not in o for o in outs)
        assert not c.errors(), c.errors()
        disconnect_and_check(c)
    finally:
        c.page.context.close()


def test_rtvi_1x_client_function_call(browser: Browser, page_url: str, local_server: Server) -> None:
    c = open_client(browser, page_url, local_server, "legacy.html")
    try:
        connect(c, version="1.4.0")
        c.wait("v2vTest.functionCalls.some(f => f.functionName === 'get_time')", 60, "the client's handler")
        c.page.evaluate("v2vTest.enableMic(false)")  # no further turns from the looping microphone
        stopped = c.wait_event("onLLMFunctionCallStopped", 10)["data"]
        assert stopped["result"]["time"] == "12:34", stopped
        c.wait_event("onBotOutput", 30, "e.data.text.includes('12:34')")
        # each announced call ran once (RTVI 1.2+ clients get no deprecated llm-function-call too)
        announced = c.events("onLLMFunctionCallInProgress")
        assert announced and len(c.page.evaluate("v2vTest.functionCalls")) == len(announced)
        assert not c.errors(), c.errors()
        disconnect_and_check(c)
    finally:
        c.page.context.close()


def test_pipecat_client_against_local(browser: Browser, page_url: str, local_server: Server) -> None:
    server = local_server
    c = open_client(browser, page_url, server)
    try:
        connect(c)
        # "Hello, what time is it?" -> recognized, and the local model calls get_time,
        # which this application executes in the browser (a client-side tool)
        # (the fake microphone loops from page load: the first turn heard may be a partial one)
        tr = c.wait_event("onUserTranscript", 40, "e.data.final && /time/i.test(e.data.text)")["data"]
        assert tr["user_id"] and ISO_RE.match(tr["timestamp"]), tr
        c.wait_event("onLLMFunctionCallStarted", 20, "e.data.function_name === 'get_time'")
        prog = c.wait_event("onLLMFunctionCallInProgress", 5, "e.data.function_name === 'get_time'")
        assert prog["data"]["tool_call_id"]
        c.wait("v2vTest.functionCalls.some(f => f.functionName === 'get_time')", 5, "the client's handler")
        stopped = c.wait_event("onLLMFunctionCallStopped", 10,
                               f"e.data.tool_call_id === {prog['data']['tool_call_id']!r}")["data"]
        assert stopped["cancelled"] is False and stopped["result"]["time"] == "12:34", stopped
        # the model speaks the client's answer
        c.wait_event("onBotTranscript", 30, "e.data.text.includes('12:34')")
        c.wait_event("onBotStartedSpeaking", 20)
        c.wait("v2vTest.audio.trackStarted && v2vTest.audio.loudFrames >= 10", 20, "bot audio with sound")
        c.wait_event("onBotOutput", 30, "e.data.spoken_status === 'completed' && "
                                        "e.data.spoken_progress.accumulated_text.includes('12:34')")
        r = c.page.evaluate("v2vTest.request('get-state', {})")
        assert r["ok"] and r["data"]["state"] in STATES, r
        assert not c.errors(), c.errors()
        assert not c.problems, c.problems
        disconnect_and_check(c)
    finally:
        c.page.context.close()
