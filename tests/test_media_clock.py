"""One media clock per process (signaling/media_clock.py) sending every call's audio (signaling/lean_sender.py).

Real aiortc peers over loopback against an in-process server with the echo
model: the packets the caller receives are read at its RTP hook (sequence
number, timestamp, the RFC 6465 audio level extension). The packetiser is
checked byte for byte against aiortc's own ``RtpPacket.serialize``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiortc import rtcrtpreceiver, rtcrtpsender, rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from tests.signaling_util import running_server, wait_until
from tests.test_webrtc_calls import hello
from v2v.signaling import aiortc_tuning, media_clock
from v2v.signaling import webrtc as webrtc_mod
from v2v.signaling.client import Caller
from v2v.signaling.lean_sender import RtpPacketizer, RtpStream, audio_level_dbov
from v2v.signaling.media_clock import MediaClock, get_clock

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AST = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


# -- the packetiser, byte for byte ---------------------------------------------------------------
@pytest.mark.parametrize("ids", [(1, 2, 3), (4, 0, 10), (0, 0, 0), (15, 3, 20)])
def test_packets_are_what_aiortc_writes(ids: tuple[int, int, int]) -> None:
    mid_id, ast_id, level_id = ids
    exts = [RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in ((mid_id, MID), (ast_id, AST), (level_id, LEVEL)) if i]
    ext_map = rtp.HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=exts))
    stream = RtpStream(ssrc=0x1234ABCD, payload_type=111, sequence_number=65534, timestamp_origin=0xFFFFFC00,
                       mid="0", mid_id=mid_id, abs_send_time_id=ast_id, audio_level_id=level_id)
    pk = RtpPacketizer(stream)
    ntp = 0xE1234567_89ABCDEF
    for i, level in enumerate((-127, -30, 0)):
        payload = bytes([i]) * (10 + i)
        ours = pk.packet(payload, level, ntp)
        ref = rtp.RtpPacket(payload_type=111, marker=1, sequence_number=(65534 + i) & 0xFFFF,
                            timestamp=(0xFFFFFC00 + 960 * i) & 0xFFFFFFFF, ssrc=0x1234ABCD, payload=payload)
        ref.extensions.mid = "0"
        ref.extensions.abs_send_time = (ntp >> 14) & 0xFFFFFF
        ref.extensions.audio_level = (False, -level)
        assert ours == ref.serialize(ext_map), (i, ours.hex(), ref.serialize(ext_map).hex())
        parsed = rtp.RtpPacket.parse(ours, ext_map)  # and aiortc reads it back
        assert parsed.sequence_number == (65534 + i) & 0xFFFF and parsed.payload == payload
        if level_id:
            assert parsed.extensions.audio_level == (False, -level)
        pk.advance(960)
    assert pk.packets == 3 and pk.octets == 10 + 11 + 12


def test_audio_level_with_numpy_matches_aiortc() -> None:
    import av

    rng = np.random.default_rng(3)
    for amp in (0, 1, 100, 3000, 32767):
        pcm = (rng.standard_normal(960) * amp).clip(-32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        assert audio_level_dbov(pcm) == aiortc_tuning.aiortc_audio_level_dbov(frame)


# -- the clock --------------------------------------------------------------------------------------
class _Member:
    def __init__(self, clock: MediaClock, stop_after: int | None = None, fail_at: int | None = None,
                 stall_at: int | None = None) -> None:
        self.clock, self.stop_after, self.fail_at, self.stall_at = clock, stop_after, fail_at, stall_at
        self.stall = 0.07
        self.ticks: list[float] = []
        self.tick_ids: list[int] = []  # which of the clock's ticks

    def tick(self, ntp: int) -> bool:
        self.ticks.append(self.clock.loop.time())
        self.tick_ids.append(self.clock.ticks)
        n = len(self.ticks)
        if n == self.fail_at:
            raise RuntimeError("member failed")
        if n == self.stall_at:
            time.sleep(self.stall)  # the loop stalls (default: three and a half ticks)
        return self.stop_after is None or n < self.stop_after


async def test_the_clock_drops_a_member_alone_and_stops_when_empty() -> None:
    clock = get_clock()
    assert get_clock() is clock  # one per loop
    steady, leaving, failing = _Member(clock), _Member(clock, stop_after=5), _Member(clock, fail_at=3)
    for m in (steady, leaving, failing):
        clock.add(m)
    await wait_until(lambda: len(steady.ticks) >= 12, 5, "12 ticks")
    assert len(leaving.ticks) == 5 and len(failing.ticks) == 3
    assert steady in clock and leaving not in clock and failing not in clock
    late = _Member(clock)
    clock.add(late)  # joins between ticks: the grid stays where it was
    await wait_until(lambda: len(late.ticks) >= 3, 5, "the late member ticks")
    assert late.tick_ids == steady.tick_ids[-len(late.tick_ids):]  # both on the same ticks from then on
    clock.discard(steady)
    clock.discard(late)
    assert not clock.running and len(clock) == 0


async def test_a_stalled_tick_is_made_up_without_a_burst() -> None:
    clock = MediaClock(asyncio.get_running_loop())
    m = _Member(clock, stall_at=5)  # 70 ms: the tick after it finds three grid points gone
    clock.add(m)
    t0 = clock.loop.time()
    await wait_until(lambda: len(m.ticks) >= 30, 5, "30 frames")
    clock.discard(m)
    per_tick = np.bincount(m.tick_ids)[1:]
    assert per_tick.max() == 2  # missed frames come back one extra per tick, never more
    assert clock.made_up >= 2 and clock.skipped == 0  # 70 ms: two grid points missed, the third late
    # the member is back on the grid: as many frames as grid points elapsed, no more (a burst would be)
    assert len(m.ticks) <= (m.ticks[-1] - t0) / clock.interval + 1
    assert per_tick[-5:].tolist() == [1] * 5  # debt paid: one frame per tick again


async def test_a_long_stall_is_skipped_past_the_debt_limit() -> None:
    clock = MediaClock(asyncio.get_running_loop())
    m = _Member(clock, stall_at=3)
    m.stall = 0.25  # 12 ticks: MAX_DEBT made up, the rest skipped
    clock.add(m)
    await wait_until(lambda: len(m.ticks) >= 30, 5, "30 frames")
    clock.discard(m)
    assert clock.skipped >= 5 and clock.made_up == media_clock.MAX_DEBT
    assert np.bincount(m.tick_ids)[1:].max() == 2


async def test_paced_coroutines_wait_on_the_same_ticks_and_leave_alone() -> None:
    """The SIP RTP sender's way onto the clock: ``await clock.next_tick()`` once per frame."""
    clock = MediaClock(asyncio.get_running_loop())
    member = _Member(clock)
    clock.add(member)
    woke: dict[str, list[int]] = {"a": [], "b": []}

    async def paced(name: str) -> None:
        while True:
            await clock.next_tick()
            woke[name].append(clock.ticks)

    a, b = (asyncio.get_running_loop().create_task(paced(n)) for n in ("a", "b"))
    await wait_until(lambda: len(woke["a"]) >= 5, 5, "ticks")
    b.cancel()  # one leaves: its own future is cancelled, not the others'
    n = len(woke["a"])
    await wait_until(lambda: len(woke["a"]) >= n + 5, 5, "a goes on")
    a.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    assert woke["a"] == sorted(set(woke["a"]))  # at most one wake-up per tick: no burst
    assert set(woke["b"]) <= set(woke["a"]) and set(woke["a"]) <= set(member.tick_ids)  # the same grid
    clock.discard(member)


# -- real calls ------------------------------------------------------------------------------------
def _record_rtp(caller: Caller) -> list[tuple[float, int, int, Any]]:
    """(arrival, sequence number, timestamp, audio level extension) of every packet the caller receives."""
    assert caller.pc is not None
    receiver = [t for t in caller.pc.getTransceivers() if t.kind == "audio"][0].receiver
    got: list[tuple[float, int, int, Any]] = []
    original = receiver._handle_rtp_packet

    async def hook(packet: Any, arrival_time_ms: int) -> None:
        got.append((time.monotonic(), packet.sequence_number, packet.timestamp, packet.extensions.audio_level))
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = hook
    return got


def _assert_continuous(got: list[tuple[float, int, int, Any]], start: int = 0) -> None:
    seqs = np.array([g[1] for g in got[start:]], dtype=np.int64)
    tss = np.array([g[2] for g in got[start:]], dtype=np.int64)
    assert len(seqs) > 10
    assert set(np.diff(seqs) % 65536) == {1}, "sequence numbers step by one"
    assert set(np.diff(tss) % (1 << 32)) == {960}, "timestamps step by one 20 ms frame"


def _server_sender(server: Any, caller: Caller) -> Any:
    wc = server.host.webrtc.get(caller.pc_id)
    (sender,) = [s for s in wc.pc.getSenders() if s.track is not None and s.track.kind == "audio"]
    return wc, sender


async def test_clocked_stream_is_continuous_across_speech_silence_and_pauses() -> None:
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            got = _record_rtp(caller)
            wc, sender = _server_sender(server, caller)
            assert aiortc_tuning.clocked_sender(sender) is not None
            assert getattr(wc.pc.getTransceivers()[0].receiver, aiortc_tuning.DIRECT_ATTR, False)
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 10)
            wc.playout.pause()  # a barge-in's pause: exact silence, the stream goes on
            await wait_until(lambda: len(got) >= 60, 5, "packets during the pause")
            wc.playout.resume()
            await wait_until(lambda: any(g[3] is not None and g[3][1] < 60 for g in got[60:]), 10, "speech resumed")
            _assert_continuous(got)
            levels = [g[3] for g in got]
            assert all(lv is not None and lv[0] is False for lv in levels)  # the extension, on every packet
            assert any(lv[1] == 127 for lv in levels) and any(lv[1] < 60 for lv in levels)  # silence and speech
            # the sender disabled for a while (aiortc's RTCRtpSender._enabled): the track is drained, the
            # timestamp jumps by the time not sent, the sequence number by one
            n0, frames0 = len(got), wc.track.frames_sent
            sender._enabled = False
            await asyncio.sleep(0.2)
            frames_off = wc.track.frames_sent - frames0
            sender._enabled = True
            await wait_until(lambda: len(got) > n0 + 10, 5, "packets after re-enabling")
            jumps = [k for k in range(n0, len(got)) if (got[k][2] - got[k - 1][2]) % (1 << 32) != 960]
            assert frames_off > 0 and len(jumps) == 1, (frames_off, jumps)
            i = jumps[0]
            assert (got[i][1] - got[i - 1][1]) % 65536 == 1
            assert (got[i][2] - got[i - 1][2]) % (1 << 32) == 960 * (frames_off + 1)
            _assert_continuous(got, i)
        finally:
            await caller.hangup()


async def test_a_call_leaving_does_not_disturb_another() -> None:
    async with running_server() as server:
        a, b = Caller(server.url), Caller(server.url)
        try:
            for c in (a, b):
                await c.connect()
                await asyncio.wait_for(c.bot_ready.wait(), 5)
            got = _record_rtp(a)
            clock = get_clock()
            members = len(clock)
            assert members >= 2
            a.play(hello())
            await wait_until(lambda: len(got) >= 20, 5, "a's packets")
            await b.hangup()
            await wait_until(lambda: len(clock) == members - 1, 5, "b's sender leaves the clock")
            n = len(got)
            await wait_until(lambda: len(got) >= n + 40, 5, "a's packets after b left")
            _assert_continuous(got)
            _, sender = _server_sender(server, a)
            clocked = aiortc_tuning.clocked_sender(sender)
            assert clocked is not None and clocked.finished is None and clocked in clock
        finally:
            await a.hangup()
            await b.hangup()


async def test_rtcp_sender_reports_describe_the_clocked_stream() -> None:
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            got = _record_rtp(caller)
            assert caller.pc is not None
            receiver = [t for t in caller.pc.getTransceivers() if t.kind == "audio"][0].receiver
            reports: list[Any] = []
            original = receiver._handle_rtcp_packet

            async def hook(packet: Any) -> None:
                if isinstance(packet, rtp.RtcpSrPacket):
                    reports.append((len(got), packet))
                await original(packet)

            receiver._handle_rtcp_packet = hook
            await wait_until(lambda: len(reports) >= 2, 10, "two sender reports")
            _, sender = _server_sender(server, caller)
            ssrc = sender._ssrc
            for seen, sr in reports:
                info = sr.sender_info
                assert sr.ssrc == ssrc and info.packet_count > 0 and info.octet_count > 0
                assert info.rtp_timestamp in {g[2] for g in got} or seen == 0  # a timestamp the caller was sent
            assert reports[-1][1].sender_info.packet_count > reports[0][1].sender_info.packet_count
            assert reports[-1][1].sender_info.ntp_timestamp > reports[0][1].sender_info.ntp_timestamp
        finally:
            await caller.hangup()


async def test_aiortc_stock_still_carries_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuning off (as with an untested aiortc): aiortc's own sender, receiver and decoder thread."""
    monkeypatch.setattr(aiortc_tuning, "_supported", False)  # patch_receiver, receive_direct: no-ops
    monkeypatch.setattr(rtcrtpsender.RTCRtpSender, "_run_rtp", aiortc_tuning._stock_run_rtp)
    monkeypatch.setattr(rtcrtpsender.RTCRtpSender, "__init__", aiortc_tuning._stock_sender_init)
    monkeypatch.setattr(rtcrtpreceiver.RTCRtpReceiver, "__init__", aiortc_tuning._stock_receiver_init)
    monkeypatch.setattr(aiortc_tuning.opus.OpusEncoder, "__init__", aiortc_tuning._stock_encoder_init)
    monkeypatch.setattr(rtcrtpreceiver, "threading", __import__("threading"))
    async with running_server() as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            got = _record_rtp(caller)
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 10)  # the echo came back
            wc, sender = _server_sender(server, caller)
            assert aiortc_tuning.clocked_sender(sender) is None
            assert not getattr(wc.pc.getTransceivers()[0].receiver, aiortc_tuning.DIRECT_ATTR, False)
            assert wc.packets_in > 0  # through aiortc's track and _consume
            assert webrtc_mod.receive_direct is aiortc_tuning.receive_direct
            await wait_until(lambda: len(got) >= 20, 5, "packets")
            assert set(np.diff([g[1] for g in got]) % 65536) == {1}
        finally:
            await caller.hangup()


# -- silence costs nothing (exact either way) ---------------------------------------------------------
def _speech_48k() -> list[np.ndarray]:
    pcm = hello()  # 48 kHz mono
    return [pcm[i:i + 960] for i in range(0, len(pcm) - 960, 960)]


def test_silence_replays_the_encoders_own_packets() -> None:
    from v2v.signaling.lean_sender import OpusVoiceEncoder

    speech, zero = _speech_48k(), np.zeros(960, np.int16)
    frames = speech[:60] + [zero] * 150 + speech[60:120] + [zero] * 30 + speech[120:150]
    tuned, plain = OpusVoiceEncoder(32000, 5), OpusVoiceEncoder(32000, 5)
    ours = [tuned.encode(f) for f in frames[:210]]
    theirs = [plain._encode(f) for f in frames[:210]]  # libopus on every frame
    assert tuned.replayed > 50 and tuned.encoded + tuned.replayed == 210
    assert ours == theirs  # the replayed silence is byte for byte what libopus emits
    rest = [tuned.encode(f) for f in frames[210:]]  # speech after the replay: encoded again
    assert all(p for p in rest) and tuned.encoded + tuned.replayed == len(frames)


def test_the_track_skips_the_upsampler_only_when_it_would_output_zeros() -> None:
    from v2v.media.playout import PlayoutBuffer
    from v2v.media.resample import ExactResampler
    from v2v.media.track import AssistantTrack

    pcm24 = ExactResampler(48000, 24000).process(hello())
    playout = PlayoutBuffer()
    track = AssistantTrack(playout)
    reference = ExactResampler(24000, 48000)
    playout.add("a", pcm24[:24000])
    playout.end_item("a")
    outs = [track.pull() for _ in range(80)]  # 1 s of speech, then silence
    playout.add("b", pcm24[24000:36000])
    outs += [track.pull() for _ in range(40)]
    expect = reference.process(np.concatenate([pcm24[:24000], np.zeros(480 * 30, np.int16), pcm24[24000:36000],
                                               np.zeros(480 * 15, np.int16)]))
    assert np.array_equal(np.concatenate(outs), expect)
    assert track.frames_sent == 120
