"""JsSIP (npm, pinned; bundled with esbuild) in headless Debian chromium calls v2v at /sip.

The page registers over SIP/WebSocket, calls ``sip:echo@...``, and the media is
WebRTC (aiortc on the server). Chromium's fake microphone plays a speech WAV.
Checked: registered, call confirmed, audio both ways (the server heard speech;
the browser received the echo's audio energy), an UPDATE renegotiation, DTMF
via SIP INFO reaching the worker, hang-up releasing the call.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from aiohttp import web
from playwright.async_api import async_playwright

from tests.browser_util import CHROMIUM, fake_audio_args
from tests.sip.harness import FIXTURES, record_call_events, running_server, wait_for
from v2v.worker import events as ev

CLIENT_DIR = Path(__file__).parent / "sip" / "jssip"
DIST = CLIENT_DIR / "dist"


def build_page() -> None:
    assert (CLIENT_DIR / "node_modules" / "jssip").is_dir(), "run `npm ci` in tests/sip/jssip (see .ci/setup-tests)"
    subprocess.run(["node", "build.mjs"], cwd=CLIENT_DIR, check=True, timeout=120, capture_output=True)


async def serve_page() -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_static("/", DIST)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def browser_stats_until(page, cond, timeout: float) -> dict:
    """Poll the page's RTCPeerConnection stats until ``cond`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await page.evaluate("window.v2vSip.stats()")
        if cond(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"browser stats never satisfied the condition: {st}")
        await page.wait_for_timeout(200)


async def test_jssip_register_call_dtmf_hangup() -> None:
    build_page()
    page_runner, page_port = await serve_page()
    try:
        # the page comes from another port: a foreign Origin, admitted only when listed (DESIGN section 7)
        async with running_server(sip_users=["tester:s3cret"], cors_origin=[f"http://127.0.0.1:{page_port}"]) as srv:
            events = record_call_events(srv)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=fake_audio_args(FIXTURES / "browser_speech.wav"))
                try:
                    page = await browser.new_page()
                    page.on("console", lambda m: print("page:", m.text) if m.type == "error" else None)
                    await page.goto(f"http://127.0.0.1:{page_port}/index.html")
                    await page.wait_for_function("window.v2vReady === true")
                    await page.evaluate(
                        "(a) => window.v2vSip.start(a)",
                        {"wsUrl": f"ws://127.0.0.1:{srv.http_port}/sip", "uri": "sip:tester@127.0.0.1",
                         "password": "s3cret", "authUser": "tester"},
                    )
                    # REGISTER with digest (401 then 200)
                    await page.wait_for_function("window.v2vSip.state.registered", timeout=10000)
                    await page.evaluate("window.v2vSip.call('sip:echo@127.0.0.1')")
                    await page.wait_for_function("window.v2vSip.state.confirmed", timeout=15000)
                    await wait_for(lambda: srv.active("sip_ws") == 1, 2.0, "a sip_ws call")
                    # audio both ways: the server hears the caller; the echo comes back to the browser
                    await wait_for(lambda: any(isinstance(e, ev.UserStoppedSpeaking) for e in events), 15.0,
                                   "the server to hear a turn of speech")
                    st = await browser_stats_until(page, lambda s: s["inboundEnergy"] > 0.01, 15.0)
                    assert st["inboundPackets"] > 100 and st["outboundPackets"] > 100, st
                    assert any(isinstance(e, ev.BotStartedSpeaking) for e in events)
                    # an UPDATE with a new offer (session refresh / renegotiation) is answered
                    assert await page.evaluate("window.v2vSip.renegotiate()") is True
                    # hold and unhold: re-INVITEs with sendonly / sendrecv answered by aiortc
                    assert await page.evaluate("window.v2vSip.hold(true)") is True
                    assert await page.evaluate("window.v2vSip.hold(false)") is False
                    before = (await page.evaluate("window.v2vSip.stats()"))["inboundPackets"]
                    await browser_stats_until(page, lambda s: s["inboundPackets"] > before + 25, 5.0)
                    # DTMF via SIP INFO (application/dtmf-relay) reaches the worker
                    dtmf_before = srv.metric("v2v_dtmf_digits_total")
                    await page.evaluate("window.v2vSip.dtmf('5#')")
                    await wait_for(lambda: [e.digit for e in events if isinstance(e, ev.DtmfReceived)] == ["5", "#"],
                                   5.0, "DTMF 5 and # at the worker")
                    assert srv.metric("v2v_dtmf_digits_total") == dtmf_before + 2
                    # hang up: BYE on the same socket ends the call
                    await page.evaluate("window.v2vSip.hangup()")
                    await page.wait_for_function("window.v2vSip.state.ended !== null", timeout=5000)
                    await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
                    assert [e.reason for e in events if isinstance(e, ev.CallEnded)] == ["hangup"]
                    state = await page.evaluate("window.v2vSip.state")
                    names = [e["name"] for e in state["events"]]
                    assert {"registered", "confirmed", "renegotiated", "hold", "unhold"} <= set(names), names
                    await page.evaluate("window.v2vSip.stop()")
                finally:
                    await browser.close()
            assert srv.metric("v2v_calls_total", transport="sip_ws", outcome="hangup") == 1
    finally:
        await page_runner.cleanup()
