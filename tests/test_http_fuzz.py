"""Fuzzing the HTTP JSON bodies and the RTVI data channel with a live call alongside (issue 16).

Each suite draws a fixed number of hypothesis examples (``max_examples``, no deadline, no example
database) so CI stays bounded; the examples are drawn first and then sent to a real server over
loopback while a real aiortc caller's call runs. Nothing may reach a 500, log an ERROR or stall
the live call's audio.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from typing import Any

import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_wav
from tests.signaling_util import metric_value, running_server, wait_until
from v2v.signaling.client import Caller

pytestmark = pytest.mark.timeout(180)

BUDGET = {"max_examples": 150, "deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


_sdp_lines = st.sampled_from(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96",
                              "a=rtpmap:111 opus/48000/2", "c=IN IP4 0.0.0.0", "a=ice-ufrag:x", "a=setup:actpass",
                              "a=fingerprint:sha-256 00", "a=mid:0", "o=- 0 0 IN IP4 127.0.0.1", "s=-", "t=0 0"])
_offer_bodies = st.fixed_dictionaries(
    {"sdp": st.one_of(st.text(max_size=200), st.lists(_sdp_lines, max_size=30).map("\r\n".join), st.integers()),
     "type": st.sampled_from(["offer", "answer", "", None, 5]),
     "pc_id": st.one_of(st.none(), st.text(max_size=40), st.integers()),
     "restart_pc": st.one_of(st.none(), st.booleans(), st.text(max_size=3)),
     "requestData": st.one_of(_json, st.integers(1, 300).map(lambda d: _nested(d, "list")),
                              st.integers(1, 300).map(lambda d: _nested(d, "dict")))},
    optional={"request_data": _json},
)
_patch_bodies = st.fixed_dictionaries(
    {"pc_id": st.one_of(st.text(max_size=40), st.none(), st.integers()),
     "candidates": st.one_of(_json, st.lists(st.one_of(_json, st.fixed_dictionaries(
         {"candidate": st.one_of(st.text(max_size=120), st.just("candidate:1 1 udp 1 127.0.0.1 9 typ host")),
          "sdp_mid": st.one_of(st.none(), st.text(max_size=4), st.integers()),
          "sdp_mline_index": st.one_of(st.none(), st.integers(-3, 70000), st.booleans())})), max_size=80))}
)
_raw = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    _offer_bodies.map(lambda v: json.dumps(v).encode()),
    _patch_bodies.map(lambda v: json.dumps(v).encode()),
    st.integers(500, 3000).map(lambda d: b'{"sdp": "v=0", "type": "offer", "requestData": ' + b"[" * d + b"]" * d + b"}"),
)
_requests = st.tuples(st.sampled_from(["POST", "PATCH", "DELETE"]), _raw,
                      st.sampled_from(["json", "text/plain", "gzip-lie", "gzip"]))


def draw(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` examples of ``strategy`` (hypothesis' generation, a fixed budget)."""
    out: list[Any] = []

    @settings(**{**BUDGET, "max_examples": n})
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


class Flow:
    """Watches a live call's inbound audio: frames keep arriving (the server sends silence when idle)."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.start_index = len(caller.received.arrived)
        self.t0 = time.monotonic()

    async def check(self, what: str) -> None:
        """The call still flows: fresh frames arrive after the abuse (waited for, at most 2 s), and
        none of the time since the start went without audio."""
        fresh = len(self.caller.received.arrived) + 5
        await wait_until(lambda: len(self.caller.received.arrived) >= fresh, 2.0, f"{what}: audio after the abuse")
        arrived = self.caller.received.arrived[self.start_index:]
        elapsed = time.monotonic() - self.t0
        got = sum(len(f) for f in self.caller.received.frames[self.start_index:]) / 48000
        gaps = [b - a for a, b in zip([self.t0, *arrived], arrived, strict=False)]
        assert arrived, f"{what}: no audio at all during {elapsed:.1f} s"
        assert max(gaps) < 1.0, f"{what}: the live call's audio stalled {max(gaps):.2f} s"
        assert got >= 0.7 * elapsed - 0.5, f"{what}: {got:.1f} s of audio in {elapsed:.1f} s"


async def live_call(url: str) -> Caller:
    caller = Caller(url)
    await caller.connect()
    await asyncio.wait_for(caller.bot_ready.wait(), 5)
    return caller


async def still_answers(caller: Caller) -> None:
    """The live call: its data channel answers get-state and its audio echoes back."""
    caller.message_event.clear()
    msg_id = caller.send_rtvi("client-message", {"t": "get-state", "d": {}})
    await wait_until(lambda: any(m.get("id") == msg_id and m.get("type") == "server-response"
                                 for m in caller.messages), 5, "the server-response to get-state")
    caller.received.first_loud.clear()
    pcm, _ = load_wav("hello_48k.wav")
    caller.play(pcm)
    await asyncio.wait_for(caller.received.first_loud.wait(), 8)


@pytest.fixture(autouse=True)
def _logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other tests may have run setup_logging (which stops propagation): caplog must see these loggers."""
    for name in ("v2v", "aiohttp.server", "aiohttp.web"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("v2v", "aiohttp"))]
    assert not errors, [r.getMessage() for r in errors]


async def test_fuzzed_http_bodies_with_a_live_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    examples = draw(_requests, BUDGET["max_examples"])
    async with running_server() as server, ClientSession() as http:
        caller = await live_call(server.url)
        try:
            flow = Flow(caller)
            statuses: dict[int, int] = {}
            for method, body, encoding in examples:
                headers = {"Content-Type": "application/json"}
                if encoding == "text/plain":
                    headers = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
                elif encoding == "gzip-lie":
                    headers["Content-Encoding"] = "gzip"
                elif encoding == "gzip":
                    headers["Content-Encoding"] = "gzip"
                    body = gzip.compress(body)
                url = server.offer_url + ("/" + body[:20].hex() if method == "DELETE" else "")
                async with http.request(method, url, data=body, headers=headers) as r:
                    text = await r.text()
                    assert 400 <= r.status < 500, (method, encoding, body[:200], r.status, text)
                    assert isinstance(json.loads(text)["error"], str)
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            await flow.check("HTTP fuzz")
            assert server.manager.active_calls() == 1  # only the live call
            await still_answers(caller)
            async with http.get(server.url + "metrics") as r:
                metrics = await r.text()
            assert sum(metric_value(metrics, "v2v_http_errors_total", {"status": str(s)}) for s in statuses) \
                >= sum(statuses.values())
        finally:
            await caller.hangup()
            await caller.close()
    _no_errors(caplog)
    refused = [r for r in caplog.records if r.getMessage().startswith("refused ")]
    assert refused and all("\n" not in r.getMessage() and len(r.getMessage()) < 700 for r in refused)


async def test_offers_are_bounded_before_aiortc() -> None:
    async with running_server() as server, ClientSession() as http:
        caller = await live_call(server.url)
        try:
            flow = Flow(caller)
            video = "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v{i}\r\na=rtpmap:96 VP8/90000\r\n"
                            for i in range(1000))
            huge = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + video
            many = huge[: 30 * 1024]  # under the size bound, far over the m-line bound
            for sdp, status in ((huge, 413), (many, 400)):
                t0 = time.monotonic()
                results = await asyncio.gather(*(http.post(server.offer_url, json={"sdp": sdp, "type": "offer"})
                                                  for _ in range(4)))
                elapsed = time.monotonic() - t0
                for r in results:
                    assert r.status in (status, 400, 413), await r.text()
                    r.release()
                assert elapsed < 1.0, f"4 bad offers took {elapsed:.2f} s"
                async with http.get(server.url + "healthz") as r:
                    assert r.status == 200
            await flow.check("bounded offers")
            await still_answers(caller)
        finally:
            await caller.hangup()
            await caller.close()


async def dead_offer() -> dict[str, str]:
    """A real offer from a peer that closes at once: it never connects."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return {"sdp": sdp, "type": "offer"}


async def test_offers_that_never_connect_free_their_place_within_the_connect_timeout() -> None:
    async with running_server(max_calls=4, connect_timeout=1.5) as server, ClientSession() as http:
        offers = [await dead_offer() for _ in range(12)]
        codes = []
        accepted_at = 0.0
        for offer in offers:
            async with http.post(server.offer_url, json=offer) as r:
                codes.append(r.status)
                accepted_at = time.monotonic() if r.status == 200 else accepted_at
        assert codes.count(200) == 4 and codes.count(503) == 8
        await wait_until(lambda: server.manager.active_calls() == 0, 5, "the unconnected calls' end")
        held = time.monotonic() - accepted_at
        assert held < 1.5 + 1.0, f"the last unconnected call held its place {held:.2f} s"  # + watchdog, end
        await wait_until(lambda: server.host.webrtc.open_peer_connections == 0, 6, "their peer connections closed")
        caller = await live_call(server.url)  # a real caller gets in
        try:
            assert server.manager.active_calls() == 1
        finally:
            await caller.hangup()
            await caller.close()
        async with http.get(server.url + "metrics") as r:
            metrics = await r.text()
        assert metric_value(metrics, "v2v_calls_total", {"transport": "webrtc", "outcome": "ice-timeout"}) == 4


_rtvi_types = st.sampled_from(["client-ready", "send-text", "client-message", "llm-function-call-result",
                               "append-to-context", "update-config", "action", "", "bot-ready", "x" * 50])
_rtvi = st.fixed_dictionaries(
    {"label": st.sampled_from(["rtvi-ai", "", "other"]), "type": _rtvi_types,
     "id": st.one_of(st.text(max_size=20), st.integers(), st.none()),
     "data": st.one_of(_json, st.fixed_dictionaries(
         {"t": st.one_of(st.sampled_from(["get-state", "nope", ""]), _json), "d": _json}),
         st.fixed_dictionaries({"content": st.one_of(st.text(max_size=100), _json), "run_immediately": _json}),
         st.fixed_dictionaries({"function_name": _json, "tool_call_id": _json, "arguments": _json,
                                "result": _json}))},
    optional={"extra": _json},
)
_frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.integers().map(lambda n: f"ping: {n}"),
    st.text(max_size=20).map(lambda s: f"ping: {s}"),
    _json.map(json.dumps),
    _rtvi.map(json.dumps),
    st.fixed_dictionaries({"type": st.just("signalling"), "message": _json}).map(json.dumps),
    st.fixed_dictionaries({"type": st.just("signalling"), "message": st.fixed_dictionaries(
        {"type": st.just("trackStatus"), "receiver_index": _json, "enabled": _json})}).map(json.dumps),
)


async def keep_pinging(channel: Any) -> None:
    """``ping: <ms>`` every 0.5 s, as Pipecat's client keeps its connection alive."""
    while channel.readyState == "open":
        channel.send(f"ping: {int(time.time() * 1000)}")
        await asyncio.sleep(0.5)


async def test_fuzzed_rtvi_messages_on_a_live_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    frames = draw(_frames, BUDGET["max_examples"])
    async with running_server() as server:
        caller = await live_call(server.url)
        try:
            flow = Flow(caller)
            channel = caller.channel
            pinger = asyncio.ensure_future(keep_pinging(channel))  # as Pipecat's client: a fuzzed
            try:  # "ping: N" arms the server's ping watchdog (3 s), which a silent client would trip
                for i, frame in enumerate(frames):
                    channel.send(frame)
                    if i % 10 == 9:
                        await asyncio.sleep(0.02)  # pacing: let the SCTP window drain, not a sync point
                await wait_until(lambda: channel.bufferedAmount == 0, 5, "the frames sent")
                await still_answers(caller)
                await flow.check("RTVI fuzz")
                assert server.manager.active_calls() == 1 and channel.readyState == "open"
            finally:
                pinger.cancel()
        finally:
            await caller.hangup()
            await caller.close()
    _no_errors(caplog)
