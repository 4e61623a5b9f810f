"""The demo page against a server with --auth-secret: it asks for a token once, then calls and hangs up with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Dialog, sync_playwright

from tests.browser_util import (
    CHROMIUM,
    LAPTOP,
    Server,
    active_webrtc_calls,
    fake_audio_args,
    run_server,
    speech_wav,
    wait_until,
)
from v2v.signaling.auth import mint_token

pytestmark = pytest.mark.timeout(90)

SECRET = "page-test-secret-0123456789abcdefghijkl"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server("echo", tmp_path_factory.mktemp("auth_page"), "--auth-secret", SECRET) as server:
        yield server


def test_the_page_asks_for_a_token_and_uses_it(auth_server: Server, tmp_path: Path) -> None:
    token = mint_token(SECRET, 300, subject="page-user")
    prompts: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=fake_audio_args(speech_wav(tmp_path)))
        try:
            page = browser.new_context(viewport=LAPTOP).new_page()

            def on_dialog(dialog: Dialog) -> None:
                prompts.append(dialog.message)
                dialog.accept(token)

            page.on("dialog", on_dialog)
            page.goto(auth_server.url + "/")
            page.click("#connect")
            page.wait_for_function("v2v.state === 'listening'", timeout=20000)
            assert len(prompts) == 1 and "token" in prompts[0]
            assert active_webrtc_calls(auth_server.url) == 1
            page.click("#hangup")  # DELETE carries the token too
            page.wait_for_function("v2v.connection === 'idle' && v2v.pcId === null", timeout=5000)
            wait_until(lambda: active_webrtc_calls(auth_server.url) == 0, 5.0, "the call's end")
            page.click("#connect")  # the token is kept for the tab: no second prompt
            page.wait_for_function("v2v.state === 'listening'", timeout=20000)
            assert len(prompts) == 1
            page.click("#hangup")
            wait_until(lambda: active_webrtc_calls(auth_server.url) == 0, 5.0, "the second call's end")
        finally:
            browser.close()
