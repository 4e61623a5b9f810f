"""RtpSession over loopback: pacing and played-sample accounting, RFC 4733 in,
reordering, SSRC change, latching, foreign packets, inactivity timeout."""

from __future__ import annotations

import asyncio
import struct
import time
from itertools import pairwise
from typing import cast

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from tests.sip.harness import wait_for
from v2v.media.g711 import ulaw_decode, ulaw_encode
from v2v.media.playout import PlayoutBuffer
from v2v.signaling.sip.rtp_session import PortAllocator, RtpSession


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[float, RtpPacket]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.packets.append((time.monotonic(), RtpPacket.parse(data)))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


async def _peer() -> Peer:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return p


def _rtp(seq: int, payload: bytes, pt: int = 0, ssrc: int = 7, ts: int = 0, marker: int = 0) -> bytes:
    return RtpPacket(payload_type=pt, marker=marker, sequence_number=seq & 0xFFFF, timestamp=ts, ssrc=ssrc,
                     payload=payload).serialize()


async def _session(peer: Peer, playout: PlayoutBuffer, got: list, digits: list, timeouts: list,
                   timeout: float = 30.0) -> RtpSession:
    sock = PortAllocator(36000, 36999).bind("127.0.0.1")
    s = RtpSession(sock, "PCMU", 0, 101, ("127.0.0.1", peer.port), playout, got.append, digits.append,
                   lambda: timeouts.append(time.monotonic()), timeout=timeout)
    await s.start()
    return s


async def test_paced_send_accounting() -> None:
    peer = await _peer()
    playout = PlayoutBuffer()
    tone24 = (8000 * np.sin(2 * np.pi * 300 * np.arange(5 * 24000) / 24000)).astype(np.int16)
    playout.add("item-1", tone24)  # 5 s of assistant audio
    playout.end_item("item-1")
    got: list = []
    s = await _session(peer, playout, got, [], [])
    try:
        # the caller proves its address first: before that only a keep-alive goes out, no assistant audio
        assert peer.transport is not None
        peer.transport.sendto(_rtp(1, ulaw_encode(np.zeros(160, np.int16))), ("127.0.0.1", s.local_port))
        await wait_for(lambda: s.latched, 2.0, "the latch")
        n0 = len(peer.packets)
        await wait_for(lambda: len(peer.packets) >= n0 + 100, 3.0, "100 packets")
    finally:
        await s.close()
    pkts = [p for _, p in peer.packets[n0:]]
    times = [t for t, _ in peer.packets[n0:]]
    # 20 ms pace (loose bounds: a shared 2-core machine), contiguous sequence numbers, 160-sample timestamps
    assert 0.015 < (times[-1] - times[0]) / (len(times) - 1) < 0.025
    seqs = [p.sequence_number for p in pkts]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    audio = [p for p in pkts if p.payload_type == 0]
    assert len(audio) == len(pkts) and all(len(p.payload) == 160 for p in audio)
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in pairwise(p.timestamp for p in pkts))
    # every packet sent consumed exactly 480 samples at 24 kHz (20 ms)
    assert playout.played("item-1") == 480 * s.stats.packets_out
    assert np.abs(ulaw_decode(audio[10].payload)).max() > 4000  # the tone, not silence


async def test_receive_reorder_ssrc_change_latch_foreign_and_dtmf_in() -> None:
    peer = await _peer()
    got: list[np.ndarray] = []
    digits: list[str] = []
    s = await _session(peer, PlayoutBuffer(), got, digits, [])
    loop = asyncio.get_running_loop()
    other_t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        assert peer.transport is not None
        dest = ("127.0.0.1", s.local_port)
        frames = [ulaw_encode(np.full(160, 1000 * (i + 1), np.int16)) for i in range(6)]
        for i in (0, 2, 1, 3, 5, 4):  # reordered
            peer.transport.sendto(_rtp(100 + i, frames[i]), dest)
        peer.transport.sendto(_rtp(103, frames[3]), dest)  # duplicate
        other_t.sendto(_rtp(106, frames[0], ssrc=99), dest)  # a stranger after latching: ignored
        await wait_for(lambda: len(got) >= 4, 2.0, "decoded frames")
        levels = [int(np.median(ulaw_decode(ulaw_encode(f)))) for f in got]
        assert [round(v, -3) for v in levels[:4]] == [1000, 2000, 3000, 4000]
        assert s.latched and s.remote == ("127.0.0.1", peer.port) and s.stats.foreign_packets == 1
        # a new SSRC (the caller's phone restarted its stream): flushed and re-anchored, not dropped as late
        peer.transport.sendto(_rtp(5, frames[0], ssrc=8), dest)
        await wait_for(lambda: len(got) >= 7, 2.0, "the new stream")
        # RFC 4733 in: one digit per event even with repeated end packets
        for i in range(3):
            peer.transport.sendto(_rtp(200 + i, struct.pack("!BBH", 11, 10, 160 * (i + 1)), pt=101, ts=5000), dest)
        for i in range(3):
            peer.transport.sendto(_rtp(203 + i, struct.pack("!BBH", 11, 0x8A, 480), pt=101, ts=5000), dest)
        peer.transport.sendto(_rtp(206, struct.pack("!BBH", 10, 10, 160), pt=101, ts=6000), dest)
        peer.transport.sendto(b"\x00" * 5, dest)  # junk
        peer.transport.sendto(struct.pack("!BBHI", 0x80, 200, 1, 0) + b"\x00" * 20, dest)  # RTCP-like: ignored
        await wait_for(lambda: len(digits) >= 2, 2.0, "two digits")
        assert digits == ["#", "*"] and s.stats.bad_packets >= 1
    finally:
        other_t.close()
        await s.close()


async def test_garbage_or_foreign_payload_type_does_not_steal_the_latch() -> None:
    peer = await _peer()
    got: list[np.ndarray] = []
    s = await _session(peer, PlayoutBuffer(), got, [], [])
    loop = asyncio.get_running_loop()
    other_t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        assert peer.transport is not None
        dest = ("127.0.0.1", s.local_port)
        other_t.sendto(b"\xa0" + b"\x00" * 15, dest)  # version 2, but not a parseable RTP packet
        other_t.sendto(_rtp(1, b"\x00" * 160, pt=96), dest)  # RTP, but not this call's payload type
        await wait_for(lambda: s.stats.bad_packets >= 1 and s.stats.foreign_packets + s.stats.packets_in >= 1,
                       2.0, "the stranger's datagrams")
        assert not s.latched and s.remote == ("127.0.0.1", peer.port)
        peer.transport.sendto(_rtp(10, ulaw_encode(np.full(160, 1000, np.int16))), dest)
        await wait_for(lambda: len(got) >= 1, 2.0, "the caller's audio")
        assert s.latched and s.remote == ("127.0.0.1", peer.port)
    finally:
        other_t.close()
        await s.close()


async def test_timestamp_gaps_lost_packets_and_comfort_noise_count_as_silence() -> None:
    peer = await _peer()
    got: list[np.ndarray] = []
    s = await _session(peer, PlayoutBuffer(), got, [], [])
    try:
        assert peer.transport is not None
        dest = ("127.0.0.1", s.local_port)

        def frame(level: int) -> bytes:
            return ulaw_encode(np.full(160, level, np.int16))

        for i in range(5):  # 100 ms of speech
            peer.transport.sendto(_rtp(1 + i, frame(1000), ts=160 * i), dest)
        # seq 6 lost; 7 and 8 declare it (jitter depth 2)
        peer.transport.sendto(_rtp(7, frame(2000), ts=960), dest)
        peer.transport.sendto(_rtp(8, frame(2000), ts=1120), dest)
        peer.transport.sendto(_rtp(9, bytes([40]), pt=13, ts=1280), dest)  # comfort noise: silence starts
        peer.transport.sendto(_rtp(10, frame(3000), ts=1280 + 8000), dest)  # the next talkspurt, 1 s later
        peer.transport.sendto(_rtp(11, frame(4000), ts=1440 + 8000 + 20 * 8000), dest)  # a 20 s jump: re-anchored
        await wait_for(lambda: sum(len(g) for g in got) >= 9600, 2.0, "the audio")
        pcm = np.concatenate(got)
        levels = np.round(pcm[:9600].astype(float), -3)
        expect = np.concatenate([np.full(800, 1000), np.zeros(160), np.full(320, 2000), np.zeros(8000),
                                 np.full(160, 3000), np.full(160, 4000)])
        assert np.array_equal(levels, expect)
        # seq 12 lost, 13 waits behind the hole, then the phone sends nothing more: 13 is released and
        # silence keeps the input clock going at the real-time pace
        peer.transport.sendto(_rtp(13, frame(5000), ts=1440 + 8000 + 20 * 8000 + 320), dest)

        def loud() -> np.ndarray:
            return np.flatnonzero(np.abs(np.concatenate(got)) > 4500)

        await wait_for(lambda: len(loud()) == 160, 2.0, "the packet behind the hole")
        end = loud()[-1] + 1
        await wait_for(lambda: sum(len(g) for g in got) >= end + 1600, 2.0, "real-time silence")
        assert not np.concatenate(got)[end:].any()
        assert not np.concatenate(got)[9600:end - 160].any()
    finally:
        await s.close()


async def test_inactivity_timeout_and_hold_suspends_it() -> None:
    peer = await _peer()
    timeouts: list[float] = []
    s = await _session(peer, PlayoutBuffer(), [], [], timeouts, timeout=0.3)
    try:
        s.update_remote(("127.0.0.1", peer.port), sending=False, expect_inbound=False)  # caller put us on inactive hold
        n = len(peer.packets)
        await asyncio.sleep(0.6)  # a window longer than the timeout
        assert timeouts == [] and len(peer.packets) - n <= 1
        t0 = time.monotonic()
        s.update_remote(("127.0.0.1", peer.port), sending=True, expect_inbound=True)
        await wait_for(lambda: bool(timeouts), 2.0, "the inactivity timeout")
        assert 0.25 < timeouts[0] - t0 < 0.6
    finally:
        await s.close()


def test_port_allocator_even_ports_and_exhaustion() -> None:
    alloc = PortAllocator(37001, 37005)
    a, b = alloc.bind("127.0.0.1"), alloc.bind("127.0.0.1")
    try:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        assert pa % 2 == 0 and pb % 2 == 0 and pa != pb
        with pytest.raises(OSError):  # 37002 and 37004 only
            alloc.bind("127.0.0.1")
    finally:
        a.close()
        b.close()
