"""Real WebRTC calls over loopback: an aiortc caller against the real aiohttp server (echo model)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import numpy as np
import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection

from tests.conftest import load_wav, manifest
from tests.signaling_util import metric_value, running_server, wait_until
from v2v.signaling.client import RATE, Caller

pytestmark = pytest.mark.timeout(120)

HELLO = "hello_48k.wav"


def hello() -> np.ndarray:
    pcm, rate = load_wav(HELLO)
    assert rate == RATE
    return pcm


def speech_span_s() -> float:
    (start, end), = manifest()[HELLO]["speech"]
    return (end - start) / RATE


async def metrics_text(server) -> str:
    async with ClientSession() as http:
        async with http.get(server.url + "metrics") as r:
            assert r.status == 200
            return await r.text()


async def test_echo_call_audio_both_ways_and_delete():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            assert server.manager.active_calls("webrtc") == 1
            call = server.manager.get(caller.pc_id)
            assert call is not None and call.transport == "webrtc"
            events = []
            call.add_listener(events.append)
            caller.play(hello())
            t_play = time.monotonic()
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
            # the echo plays back the caller's phrase: wait until it has been quiet for 0.5 s
            await wait_until(
                lambda: caller.received.loud_times() and time.monotonic() - caller.received.loud_times()[-1] > 0.5,
                8, "the end of the reply",
            )
            loud = caller.received.loud_times()
            reply_s = loud[-1] - loud[0] + 0.02
            assert abs(reply_s - speech_span_s()) < 0.35, (reply_s, speech_span_s())
            assert loud[0] - t_play > speech_span_s()  # it answered after the phrase, not during
            # what came back is the phrase: its envelope correlates with what was sent
            rx = caller.received.pcm()
            (s0, s1), = manifest()[HELLO]["speech"]
            sent = hello()[s0:s1]

            def env(x: np.ndarray) -> np.ndarray:
                return np.sqrt(np.convolve(x.astype(np.float32) ** 2, np.ones(960) / 960, "valid"))[::480]

            a, b = env(sent), env(rx)
            best = max(
                (np.corrcoef(a, b[k : k + len(a)])[0, 1] for k in range(0, len(b) - len(a))
                 if b[k : k + len(a)].std() > 0),
                default=0.0,
            )
            assert best > 0.8, best
            types = [m["type"] for m in caller.messages]
            for t in ("bot-ready", "user-started-speaking", "user-stopped-speaking",
                      "bot-started-speaking", "bot-stopped-speaking"):
                assert t in types, (t, types)
            # DELETE hangs up; the gauge drops within 1 s
            t0 = time.monotonic()
            assert await caller.hangup() == 200
            await wait_until(lambda: server.manager.active_calls() == 0, 1.0, "active calls back to 0")
            await wait_until(lambda: call.ended.is_set(), 5, "call released")
            assert call.end_reason == "hangup"
            text = await metrics_text(server)
            assert metric_value(text, "v2v_active_calls", {"transport": "webrtc"}) == 0
            assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "hangup"}) == 1
            assert metric_value(text, "v2v_turn_latency_seconds_count") >= 1
            assert time.monotonic() - t0 < 5
            assert server.host.webrtc.open_peer_connections == 0
        finally:
            await caller.close()


async def test_trickle_candidates_over_patch():
    async with running_server() as server:
        caller = Caller(server.url, trickle=True)
        try:
            await caller.connect()  # the offer had no candidate: only PATCH can connect it
            assert caller.connected.is_set()
            assert server.manager.active_calls() == 1
            # an end-of-candidates-only PATCH is fine too
            async with ClientSession() as http:
                body = {"pc_id": caller.pc_id, "candidates": [{"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}]}
                async with http.patch(server.offer_url, json=body) as r:
                    assert r.status == 200 and await r.json() == {"status": "success"}
        finally:
            await caller.hangup()


async def test_renegotiation_keeps_the_call():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            pc_id = caller.pc_id
            call = server.manager.get(pc_id)
            pc_before = server.host.webrtc.get(pc_id).pc
            await caller.renegotiate()
            assert caller.pc_id == pc_id
            assert server.manager.get(pc_id) is call
            assert server.host.webrtc.get(pc_id).pc is pc_before
            assert server.manager.active_calls() == 1
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
        finally:
            await caller.hangup()


async def test_restart_pc_keeps_call_and_conversation():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            pc_id = caller.pc_id
            call = server.manager.get(pc_id)
            session = call.session
            old_pc = server.host.webrtc.get(pc_id).pc
            await caller.renegotiate(restart_pc=True)
            wc = server.host.webrtc.get(pc_id)
            assert caller.pc_id == pc_id
            assert wc.pc is not old_pc
            await wait_until(lambda: old_pc.connectionState == "closed", 5, "old peer connection closed")
            # same call, same model session: the conversation goes on
            assert server.manager.get(pc_id) is call and call.session is session
            assert not call.ending and server.manager.active_calls() == 1
            assert server.host.webrtc.open_peer_connections == 1
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
            # the turn spoken on the new peer connection reached the same model session
            assert any(name == "commit_input" for name, _ in session.model.calls)
        finally:
            await caller.hangup()
        await wait_until(lambda: server.host.webrtc.open_peer_connections == 0, 5, "pcs closed")


async def test_peer_closing_its_connection_ends_the_call_within_2s():
    async with running_server() as server:
        caller = Caller(server.url)
        await caller.connect()
        await asyncio.wait_for(caller.bot_ready.wait(), 5)
        call = server.manager.get(caller.pc_id)
        t0 = time.monotonic()
        await caller.close()  # no DELETE, as Pipecat's disconnect()
        await wait_until(lambda: server.manager.active_calls() == 0, 2.0, "call ended by peer close")
        await wait_until(lambda: call.ended.is_set(), 5, "call released")
        assert call.end_reason == "peer-closed"
        assert time.monotonic() - t0 < 2.0 + 5


async def test_disconnect_bot_ends_the_call():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            call = server.manager.get(caller.pc_id)
            caller.send_rtvi("disconnect-bot")
            await wait_until(lambda: server.manager.active_calls() == 0, 2.0, "call ended by disconnect-bot")
            await wait_until(lambda: call.ended.is_set(), 5, "call released")
            assert call.end_reason == "disconnect-bot"
        finally:
            await caller.close()


async def test_media_timeout_ends_a_silent_peer():
    async with running_server(media_timeout=0.6) as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            call = server.manager.get(caller.pc_id)
            await wait_until(lambda: server.host.webrtc.get(caller.pc_id).packets_in > 5, 5, "inbound media")
            caller.source.stop_sending()  # the connection stays up, no packet arrives
            await wait_until(lambda: call.ending, 3, "media timeout")
            assert call.end_reason == "media-timeout"
        finally:
            await caller.close()


async def test_ice_timeout_when_nothing_connects():
    async with running_server(ice_timeout=0.5) as server:
        caller = Caller(server.url, trickle=True)
        caller.pc = caller._new_pc()
        # send the candidate-less offer but never PATCH the candidates
        caller.trickle = False
        await caller.pc.setLocalDescription(await caller.pc.createOffer())
        sdp, _ = caller._split_candidates(caller.pc.localDescription.sdp)
        async with ClientSession() as http:
            async with http.post(server.offer_url, json={"sdp": sdp, "type": "offer"}) as r:
                assert r.status == 200
                pc_id = (await r.json())["pc_id"]
        call = server.manager.get(pc_id)
        await wait_until(lambda: call.ending, 3, "ICE timeout")
        assert call.end_reason == "ice-timeout"
        await caller.close()


async def test_max_calls_and_shutdown_closes_calls():
    async with running_server(max_calls=1) as server:
        first = Caller(server.url)
        second = Caller(server.url)
        await first.connect()
        call = server.manager.get(first.pc_id)
        second.pc = second._new_pc()
        with pytest.raises(RuntimeError, match="HTTP 503"):
            await second._offer()
        async with ClientSession() as http:
            async with http.get(server.url + "readyz") as r:
                assert r.status == 503 and "Retry-After" in r.headers
        text = await metrics_text(server)
        assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "rejected"}) == 1
        # shutdown ends the call that is still up
        await server.runner.cleanup()
        assert call.ended.is_set() and call.end_reason == "shutdown"
        assert server.host.webrtc.open_peer_connections == 0
        await first.close()
        await second.close()


def _executor_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_"))


def _call_threads() -> int:
    return threading.active_count() - _executor_threads()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pcs() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


async def test_fifty_calls_leave_nothing_behind():
    async with running_server() as server:
        async def one(i: int) -> None:
            c = Caller(server.url, trickle=(i % 2 == 1))
            try:
                await c.connect()
                await asyncio.wait_for(c.bot_ready.wait(), 5)
            finally:
                if i % 3 == 0:
                    await c.close()  # peer close, no DELETE
                else:
                    assert await c.hangup() == 200

        async def settle() -> None:
            await wait_until(lambda: not server.manager.calls, 5, "all calls released")
            await wait_until(lambda: server.host.webrtc.open_peer_connections == 0, 5, "pcs closed")

        # warm up: the default executor's threads (Opus encoding) are created once
        await asyncio.gather(*(one(i) for i in range(4)))
        await settle()
        base_tasks = len(asyncio.all_tasks())
        base_threads = _call_threads()
        base_fds = _fds()
        base_pcs = _pcs()
        for batch in range(10):
            await asyncio.gather(*(one(batch * 5 + k) for k in range(5)))
        await settle()
        text = await metrics_text(server)
        assert metric_value(text, "v2v_active_calls", {"transport": "webrtc"}) == 0
        # every task, thread, socket and peer connection ends with its call
        await wait_until(lambda: len(asyncio.all_tasks()) <= base_tasks, 5, "tasks back to baseline")
        # threads: every per-call thread (aiortc's decoders) ends; the loop's default executor
        # (Opus encoding) is a bounded pool reused by all calls, so it is only checked against its bound
        await wait_until(lambda: _call_threads() <= base_threads, 5,
                         f"threads back to baseline {base_threads}: {[t.name for t in threading.enumerate()]}")
        assert _executor_threads() <= min(32, (os.cpu_count() or 1) + 4)
        # fds: a closed UDP socket can take a loop iteration to be released
        await wait_until(lambda: _fds() <= base_fds, 5, f"fds back to baseline ({base_fds})")
        assert _pcs() <= base_pcs
        total = sum(
            metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": o})
            for o in ("hangup", "peer-closed")
        )
        assert total == 54


async def test_barge_in_over_webrtc_cuts_the_reply_and_counts_it():
    from v2v.signaling.client import summarize

    (s0, s1), = manifest()[HELLO]["speech"]
    phrase = hello()[s0:s1]

    def z(s: float) -> np.ndarray:
        return np.zeros(int(s * RATE), np.int16)

    # the phrase, then the same phrase again while its echo is playing
    wav = np.concatenate([z(0.3), phrase, z(1.2), phrase, z(1.0)])
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            call = server.manager.get(caller.pc_id)
            events = []
            call.add_listener(events.append)
            caller.play(wav)
            await wait_until(lambda: caller.source.finished, 10, "the WAV sent")
            summary = summarize(caller, wav)
        finally:
            await caller.hangup()
        interrupted = [e for e in events if type(e).__name__ == "BotInterrupted"]
        assert interrupted and not interrupted[0].deleted and interrupted[0].played_ms > 0
        # the reply stopped arriving soon after the caller started talking over it
        assert summary["barge_in_cut_s"] is not None and summary["barge_in_cut_s"] < 0.25, summary
        text = await metrics_text(server)
        assert metric_value(text, "v2v_barge_ins_total") >= 1
        assert metric_value(text, "v2v_truncations_total") >= 1
        assert metric_value(text, "v2v_barge_in_latency_seconds_count") >= 1


async def test_offer_with_video_and_a_second_audio_section():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            caller.pc = caller._new_pc()
            caller.pc.addTransceiver("video", direction="sendrecv")
            caller.pc.addTransceiver("audio", direction="sendrecv")
            answer = await caller._offer()
            sections = [ln.split()[0] for ln in answer["sdp"].splitlines() if ln.startswith("m=")]
            assert sorted(sections) == ["m=application", "m=audio", "m=audio", "m=video"], sections
            await asyncio.wait_for(caller.connected.wait(), 10)
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)  # the first audio section is the call
        finally:
            await caller.hangup()


async def test_failed_restart_pc_keeps_the_old_channel():
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            call = server.manager.get(caller.pc_id)
            wc = server.host.webrtc.get(caller.pc_id)
            pc_before = wc.pc
            # passes the cheap checks, fails in setRemoteDescription
            bad = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nbogus\r\n"
            body = {"sdp": bad, "type": "offer", "pc_id": caller.pc_id, "restart_pc": True}
            async with caller.http.post(server.offer_url, json=body) as r:
                assert r.status == 400
            assert wc.pc is pc_before and not call.ending
            assert server.host.webrtc.open_peer_connections == 1
            # server -> client RTVI still flows over the old data channel
            msg_id = caller.send_rtvi("client-message", {"t": "get-state", "d": {}})
            await wait_until(
                lambda: any(m.get("id") == msg_id and m.get("type") == "server-response" for m in caller.messages),
                5, "the get-state answer",
            )
            # and closing that channel still ends the call
            caller.channel.close()
            await wait_until(lambda: call.ending, 3, "call ended by the data channel closing")
            assert call.end_reason == "peer-closed"
        finally:
            await caller.close()
