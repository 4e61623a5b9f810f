"""The HTTP contract of the signaling server: routes, every error status, health, metrics, logs."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.signaling_util import metric_value, running_server
from v2v.signaling import calls
from v2v.signaling.client import Caller
from v2v.signaling.config import ServerConfig, parse_ice_servers
from v2v.signaling.logs import CallLog, setup_logging
from v2v.signaling.metrics import ServerMetrics
from v2v.worker import events as ev

pytestmark = pytest.mark.timeout(60)

PINNED = (
    "v2v_active_calls",
    "v2v_calls_total",
    "v2v_barge_ins_total",
    "v2v_false_interruptions_total",
    "v2v_truncations_total",
    "v2v_dtmf_digits_total",
    "v2v_model_errors_total",
    "v2v_turn_latency_seconds",
    "v2v_barge_in_latency_seconds",
)


async def real_offer_sdp() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def expect_error(resp, status: int) -> dict:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    return body


async def test_health_ready_metrics_and_page():
    async with running_server() as server, ClientSession() as http:
        async with http.get(server.url + "healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(server.url + "readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        async with http.get(server.url + "metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        for name in PINNED:
            assert f"# TYPE {name} " in text, name
        for t in ("webrtc", "sip_ws", "sip_udp", "sip_tcp"):
            assert metric_value(text, "v2v_active_calls", {"transport": t}) == 0
        async with http.get(server.url) as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            assert "<html" in (await r.text()).lower()
        async with http.get(server.url + "static/index.html") as r:
            assert r.status == 200
        async with http.get(server.url + "static/../signaling/app.py") as r:
            assert r.status in (403, 404)


async def test_readyz_not_ready_when_the_model_is_missing(monkeypatch):
    monkeypatch.setitem(calls.MODEL_FACTORIES, "openai", ("v2v.worker.models.no_such_model", "Factory"))
    async with running_server(model="openai") as server, ClientSession() as http:
        assert "openai" in server.manager.not_ready_reason()
        async with http.get(server.url + "readyz") as r:
            await expect_error(r, 503)
            assert "Retry-After" in r.headers
        async with http.post(server.offer_url, json={"sdp": await real_offer_sdp(), "type": "offer"}) as r:
            body = await expect_error(r, 503)
            assert "openai" in body["error"]


@pytest.mark.parametrize(
    "body, status",
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'"offer"', 400),
        (b"{}", 400),
        (b'{"sdp": "", "type": "offer"}', 400),
        (b'{"sdp": 5, "type": "offer"}', 400),
        (b'{"sdp": "v=0", "type": "answer"}', 400),
        (b'{"sdp": "hello", "type": "offer"}', 400),
        (b'{"sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n", "type": "offer"}', 400),
        (b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\n", "type": "offer"}', 400),
        (b"\xff\xfe garbage", 400),
    ],
)
async def test_offer_malformed_is_400(body: bytes, status: int):
    async with running_server() as server, ClientSession() as http:
        async with http.post(server.offer_url, data=body, headers={"Content-Type": "application/json"}) as r:
            await expect_error(r, status)
        assert server.manager.active_calls() == 0
        assert server.host.webrtc.open_peer_connections == 0


async def test_offer_field_types_are_checked():
    async with running_server() as server, ClientSession() as http:
        sdp = await real_offer_sdp()
        for extra in ({"restart_pc": "yes"}, {"pc_id": 7}):
            async with http.post(server.offer_url, json={"sdp": sdp, "type": "offer", **extra}) as r:
                await expect_error(r, 400)
        # an SDP that parses line by line but has no usable transport (no ICE credentials)
        broken = "\r\n".join(ln for ln in sdp.splitlines() if not ln.startswith(("a=ice-ufrag", "a=ice-pwd")))
        async with http.post(server.offer_url, json={"sdp": broken, "type": "offer"}) as r:
            await expect_error(r, 400)
    assert server.host.webrtc.open_peer_connections == 0


async def test_body_too_large_is_413():
    async with running_server(max_body=4096) as server, ClientSession() as http:
        big = {"sdp": "v=0\r\n" + "a=x\r\n" * 2000, "type": "offer"}
        async with http.post(server.offer_url, json=big) as r:
            await expect_error(r, 413)
        # chunked (no Content-Length) is limited too
        async def gen():
            for _ in range(20):
                yield b" " * 1024

        async with http.post(server.offer_url, data=gen(), headers={"Content-Type": "application/json"}) as r:
            await expect_error(r, 413)
        async with http.patch(server.offer_url, json={"pc_id": "x", "candidates": ["a" * 8000]}) as r:
            await expect_error(r, 413)


async def test_unknown_pc_id_is_404_and_bad_patch_is_400():
    async with running_server() as server, ClientSession() as http:
        cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdp_mid": "0", "sdp_mline_index": 0}
        async with http.patch(server.offer_url, json={"pc_id": "nope", "candidates": [cand]}) as r:
            await expect_error(r, 404)
        async with http.delete(server.offer_url + "/nope") as r:
            await expect_error(r, 404)
        for body in ({}, {"pc_id": "x"}, {"pc_id": "x", "candidates": "c"}, {"pc_id": "x", "candidates": [5]},
                     {"pc_id": "x", "candidates": [{"candidate": 5}]},
                     {"pc_id": "x", "candidates": [{"candidate": "", "sdp_mline_index": -1}]}):
            async with http.patch(server.offer_url, json=body) as r:
                await expect_error(r, 400)
        async with http.get(server.url + "no/such/page") as r:
            await expect_error(r, 404)
        async with http.put(server.offer_url, json={}) as r:
            await expect_error(r, 405)
        # a live call: a malformed candidate is 400 and the call goes on
        caller = Caller(server.url)
        try:
            await caller.connect()
            bad = {"pc_id": caller.pc_id, "candidates": [{"candidate": "candidate:garbage", "sdp_mid": "0"}]}
            async with http.patch(server.offer_url, json=bad) as r:
                await expect_error(r, 400)
            ok = {"pc_id": caller.pc_id, "candidates": [cand]}
            async with http.patch(server.offer_url, json=ok) as r:
                assert r.status == 200 and (await r.json()) == {"status": "success"}
            assert server.manager.active_calls() == 1
            assert await caller.hangup() == 200
            async with http.delete(server.offer_url + "/" + caller.pc_id) as r:
                await expect_error(r, 404)
        finally:
            await caller.close()


async def test_max_calls_gives_503_with_retry_after():
    async with running_server(max_calls=0) as server, ClientSession() as http:
        async with http.post(server.offer_url, json={"sdp": await real_offer_sdp(), "type": "offer"}) as r:
            await expect_error(r, 503)
            assert int(r.headers["Retry-After"]) > 0
        async with http.get(server.url + "metrics") as r:
            text = await r.text()
        assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "rejected"}) == 1
        assert server.host.webrtc.open_peer_connections == 0


async def test_cors_preflight():
    async with running_server(cors_origin=["*"]) as server, ClientSession() as http:  # "*" only when given
        async with http.options(server.offer_url, headers={"Origin": "http://app.example",
                                                            "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "PATCH" in r.headers["Access-Control-Allow-Methods"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"sdp": st.one_of(st.text(max_size=80), st.just("v=0\r\n"), st.integers()),
         "type": st.sampled_from(["offer", "answer", "", None]),
         "pc_id": st.one_of(st.none(), st.text(max_size=10)),
         "restart_pc": st.one_of(st.none(), st.booleans(), st.text(max_size=3))}
    ).map(lambda v: json.dumps(v).encode()),
)


async def test_fuzzed_bodies_never_reach_500():
    async with running_server() as server, ClientSession() as http:
        seen: list[int] = []

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=_bodies, method=st.sampled_from(["POST", "PATCH"]))
        def check(body: bytes, method: str) -> None:
            seen.append((method, body))

        check()
        for method, body in seen:
            async with http.request(method, server.offer_url, data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                assert 400 <= r.status < 500, (method, body, r.status, await r.text())
                assert "error" in await r.json()
        assert server.manager.active_calls() == 0
        async with http.get(server.url + "healthz") as r:
            assert r.status == 200


def test_metrics_registries_are_per_app_and_observe_events():
    a, b = ServerMetrics(), ServerMetrics()
    a.call_started("webrtc")
    a.observe(ev.BotInterrupted("i1", 1200, False))
    a.observe(ev.ItemTruncated("i1", 1200, False))
    a.observe(ev.BotInterrupted("i2", 0, True))
    a.observe(ev.ItemTruncated("i2", 0, True))
    a.observe(ev.FalseInterruption("i3"))
    a.observe(ev.DtmfReceived("5"))
    a.observe(ev.CallError("model went away"))
    a.observe(ev.Metrics(ttfb_ms=45.0))
    a.observe(ev.Metrics(barge_in_ms=30.0))
    a.call_ended("webrtc", "weird-reason")
    text = a.render()[0].decode()
    assert metric_value(text, "v2v_barge_ins_total") == 2
    assert metric_value(text, "v2v_truncations_total") == 1
    assert metric_value(text, "v2v_false_interruptions_total") == 1
    assert metric_value(text, "v2v_dtmf_digits_total") == 1
    assert metric_value(text, "v2v_model_errors_total") == 1
    assert metric_value(text, "v2v_turn_latency_seconds_count") == 1
    assert metric_value(text, "v2v_barge_in_latency_seconds_sum") == pytest.approx(0.03)
    assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "other"}) == 1
    assert metric_value(b.render()[0].decode(), "v2v_barge_ins_total") == 0


def test_call_log_lines_text_and_json():
    buf = io.StringIO()
    setup_logging("json", "info", stream=buf)
    try:
        log = CallLog("pc-1", "127.0.0.1:5000", "webrtc")
        log.observe(ev.AgentStateChanged("speaking", "thinking"))
        log.observe(ev.BotInterrupted("item_1", 840, False))
        log.observe(ev.ItemTruncated("item_1", 840, False))
        log.observe(ev.FunctionCallInProgress("c1", "get_time", {}, False))
        log.event("call-ended", reason="hangup", name="reserved", message="also")
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["state", "barge-in", "truncation", "function-call", "call-ended"]
        assert all(x["call"] == "pc-1" and x["peer"] == "127.0.0.1:5000" for x in lines)
        assert lines[0]["state"] == "speaking" and lines[2]["audio_end_ms"] == 840
        assert lines[3]["tool"] == "get_time"
        assert lines[4]["reason"] == "hangup" and lines[4]["name_"] == "reserved"
        buf.seek(0)
        buf.truncate()
        setup_logging("text", "info", stream=buf)
        log.event("call-ended", reason="peer closed")
        line = buf.getvalue().strip()
        assert "call-ended" in line and "call=pc-1" in line and 'reason="peer closed"' in line
    finally:
        setup_logging("text", "warning")
        logging.getLogger("v2v").setLevel(logging.WARNING)


def test_config_validation_and_ice_servers():
    servers = parse_ice_servers("stun:stun.example.org:3478, turn:alice:s3cret@turn.example.org:3478?transport=udp")
    assert servers[0].urls == "stun:stun.example.org:3478" and servers[0].username is None
    assert servers[1].urls == "turn:turn.example.org:3478?transport=udp"
    assert (servers[1].username, servers[1].credential) == ("alice", "s3cret")
    with pytest.raises(ValueError):
        parse_ice_servers("http://nope")
    for bad in ({"model": "gpt"}, {"log_format": "xml"}, {"port": 70000}, {"rtp_ports": "5-"},
                {"media_timeout": 0}, {"turn_detection": "maybe"}):
        cfg = ServerConfig(**bad)
        with pytest.raises(ValueError):
            cfg.validate()
    ServerConfig().validate()


def test_fast_audio_level_matches_aiortc():
    import av
    import numpy as np
    from aiortc import rtp

    from v2v.signaling.aiortc_tuning import _audio_level_dbov, aiortc_audio_level_dbov, install

    assert install()
    assert rtp.compute_audio_level_dbov is _audio_level_dbov  # what aiortc's sender calls now
    assert aiortc_audio_level_dbov is not _audio_level_dbov
    rng = np.random.default_rng(1)
    for amp in (0, 1, 30, 1000, 12000, 32767):
        pcm = (rng.standard_normal(960) * amp).clip(-32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        assert _audio_level_dbov(frame) == aiortc_audio_level_dbov(frame), amp


def test_immediate_jitter_buffer_releases_each_packet_in_order():
    from aiortc.rtp import RtpPacket

    from v2v.signaling.aiortc_tuning import ImmediateAudioJitterBuffer

    def pkt(seq: int) -> RtpPacket:
        p = RtpPacket(sequence_number=seq % 65536, timestamp=seq * 960)
        p._data = bytes([seq % 256])  # type: ignore[attr-defined]  # aiortc's jitter buffer reads the raw packet
        return p

    jb = ImmediateAudioJitterBuffer()
    out = []
    for seq in (65534, 65535, 0, 0, 65535, 2, 1, 3):  # wrap, duplicate, late, gap, reordered
        _, frame = jb.add(pkt(seq))
        out.append(None if frame is None else frame.timestamp // 960)
    assert out == [65534, 65535, 0, None, None, 2, None, 3]
    # a far jump (a new stream after a restart) is accepted, not taken as late
    _, frame = jb.add(pkt(40000))
    assert frame is not None
