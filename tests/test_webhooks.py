"""Webhooks (--webhook): delivery, HMAC signature, retry after a 500, and a dead receiver not slowing calls.

Every receiver is a real aiohttp server on loopback; the calls are real WebRTC
calls against the real server (echo model).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiohttp import web

from tests.conftest import load_wav
from tests.signaling_util import running_server, wait_until
from v2v.signaling.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookConfig,
    Webhooks,
    public_call_id,
    sign,
    verify,
)

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec-test-secret"


@dataclass
class Receiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in turn; then 200
    hang: asyncio.Event | None = None  # never answer until set
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def bodies(self) -> list[dict]:
        return [json.loads(b) for _, b in self.requests]

    def of_type(self, t: str) -> list[dict]:
        return [b for b in self.bodies() if b["type"] == t]


@asynccontextmanager
async def receiver(statuses: list[int] | None = None, hang: bool = False) -> AsyncIterator[Receiver]:
    rx = Receiver("", statuses=list(statuses or []), hang=asyncio.Event() if hang else None)

    async def hook(request: web.Request) -> web.Response:
        rx.requests.append((dict(request.headers), await request.read()))
        rx.arrived.set()
        if rx.hang is not None:
            await rx.hang.wait()
        status = rx.statuses.pop(0) if rx.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rx.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rx
    finally:
        if rx.hang is not None:
            rx.hang.set()
        await runner.cleanup()


def test_signature_verifies_only_the_signed_body_with_the_secret() -> None:
    body = b'{"type": "call.started"}'
    ts = str(int(time.time()))
    sig = sign(SECRET, ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(SECRET, ts, body, sig)
    assert not verify(SECRET, ts, body + b" ", sig)
    assert not verify("other", ts, body, sig)
    assert not verify(SECRET, str(int(ts) + 1), body, sig)
    assert not verify(SECRET, ts, body, sig, now=int(ts) + 3600)  # a replay an hour later
    assert not verify(SECRET, "not-a-number", body, sig)


async def test_a_webrtc_call_posts_started_turn_and_ended_signed() -> None:
    from v2v.signaling.client import Caller

    async with receiver() as rx, running_server(webhook=rx.url, webhook_secret=SECRET, webhook_turns=True) as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            call = server.manager.get(caller.pc_id)
            await wait_until(lambda: rx.of_type("call.started"), 5, "call.started")
            await call.session.send_text("hello there friend")  # the echo model says it back (as tones)
            await wait_until(lambda: rx.of_type("call.turn"), 10, "call.turn")
            t_hangup = time.monotonic()
        finally:
            await caller.hangup()
        await wait_until(lambda: rx.of_type("call.ended"), 5, "call.ended")
        ended_after = time.monotonic() - t_hangup
    for headers, body in rx.requests:
        assert headers["Content-Type"] == "application/json"
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    types = [b["type"] for b in rx.bodies()]
    assert types[0] == "call.started" and types[-1] == "call.ended", types
    started, ended = rx.of_type("call.started")[0], rx.of_type("call.ended")[0]
    public = public_call_id(caller.pc_id)
    assert started["data"]["call_id"] == ended["data"]["call_id"] == public == caller.pc_id[:11]
    assert started["data"]["transport"] == "webrtc" and started["data"]["model"] == "echo"
    data = ended["data"]
    assert data["reason"] == "hangup" and data["outcome"] == "completed"
    assert 0 < data["duration_s"] < 30 and ended_after < 3
    turn = rx.of_type("call.turn")[0]["data"]
    assert turn == {"call_id": public, "role": "assistant", "text": "hello there friend",
                    "interrupted": False, "unspoken": ""}
    assert len({b["id"] for b in rx.bodies()}) == len(rx.requests)
    # no credential of the call or the server in what is sent
    assert all(SECRET.encode() not in body and caller.pc_id.encode() not in body for _, body in rx.requests)


async def test_retried_after_a_500_with_back_off_and_the_same_id() -> None:
    async with receiver(statuses=[500, 503]) as rx:
        hooks = Webhooks(WebhookConfig(rx.url, SECRET, backoff_s=0.2))
        t0 = time.monotonic()
        hooks.post("call.started", {"call_id": "c1"})
        await wait_until(lambda: hooks.delivered == 1, 10, "delivery")
        took = time.monotonic() - t0
        await hooks.close()
    assert len(rx.requests) == 3 and hooks.attempts == 3 and hooks.failed == 0
    ids = {b["id"] for b in rx.bodies()}
    assert len(ids) == 1
    assert took >= 0.2 + 0.4  # back-off doubled
    for headers, body in rx.requests:
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


async def test_a_permanent_refusal_is_not_retried_and_the_next_event_goes_on() -> None:
    async with receiver(statuses=[400]) as rx:
        hooks = Webhooks(WebhookConfig(rx.url, backoff_s=0.05))
        hooks.post("call.started", {"call_id": "c1"})
        hooks.post("call.ended", {"call_id": "c1"})
        await wait_until(lambda: hooks.delivered + hooks.failed == 2, 5, "both handled")
        await hooks.close()
    assert [b["type"] for b in rx.bodies()] == ["call.started", "call.ended"]
    assert hooks.failed == 1 and hooks.delivered == 1
    assert SIGNATURE_HEADER not in rx.requests[0][0]  # no secret: unsigned


async def test_a_bounded_queue_drops_the_oldest() -> None:
    async with receiver(hang=True) as rx:
        hooks = Webhooks(WebhookConfig(rx.url, queue_size=5, timeout_s=30))
        for i in range(20):
            hooks.post("call.turn", {"n": i})
        await asyncio.wait_for(rx.arrived.wait(), 5)
        assert hooks.pending <= 5 and hooks.dropped >= 15
        t0 = time.monotonic()
        await hooks.close(timeout=0.5)
        assert time.monotonic() - t0 < 2


async def _loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - t - 0.01)


@pytest.mark.parametrize("dead", ["hanging", "refused"])
async def test_a_dead_receiver_does_not_slow_the_call(dead: str) -> None:
    from v2v.signaling.client import Caller

    hello, _ = load_wav("hello_48k.wav")
    async with receiver(hang=True) as rx:
        if dead == "refused":
            url = rx.url.replace(rx.url.split(":")[2].split("/")[0], "9")  # nothing listens on port 9
        else:
            url = rx.url
        async with running_server(webhook=url, webhook_turns=True) as server:
            server.manager.webhooks.config.backoff_s = 0.01  # retry as hard as it can
            stop, lags = asyncio.Event(), []
            ticker = asyncio.get_running_loop().create_task(_loop_lag(stop, lags))
            caller = Caller(server.url)
            try:
                t0 = time.monotonic()
                await caller.connect()
                await asyncio.wait_for(caller.bot_ready.wait(), 5)
                setup_s = time.monotonic() - t0
                call = server.manager.get(caller.pc_id)
                caller.play(np.concatenate([hello, np.zeros(24000, np.int16)]))
                t_play = time.monotonic()
                await asyncio.wait_for(caller.received.first_loud.wait(), 10)
                reply_s = time.monotonic() - t_play
                t_hangup = time.monotonic()
            finally:
                await caller.hangup()
            await wait_until(lambda: call.ended.is_set(), 5, "call released")
            release_s = time.monotonic() - t_hangup
            stop.set()
            await ticker
            hooks = server.manager.webhooks
            assert hooks.attempts >= 1 and hooks.delivered == 0
            if dead == "hanging":
                assert rx.requests  # it reached the receiver, which never answered
            t_close = time.monotonic()
        shutdown_s = time.monotonic() - t_close
    assert setup_s < 3, setup_s
    assert reply_s < len(hello) / 48000 + 1.5, reply_s  # the echo comes back after the phrase, as usual
    assert release_s < 2, release_s
    # the loop kept its 10 ms ticks: a sender waiting for the receiver on the loop would have stalled it
    # for the 5 s request timeout (the median, and a loose maximum: the 2-core test machine is shared)
    assert float(np.median(lags)) < 0.02 and max(lags) < 1.0, sorted(lags)[-10:]
    assert shutdown_s < 5, shutdown_s  # undelivered events do not hold the server up
