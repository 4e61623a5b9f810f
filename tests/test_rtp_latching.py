"""RTP latching a stranger cannot steal (issue 16, probe items 1, 4 and 10), on a real server:
an attacker spraying valid RTP before and after the caller's first packet receives nothing,
ports are not predictable, nothing but a rare keep-alive goes to an unproven address, a call
whose caller never sends RTP ends on the no-RTP-yet timeout, NAT rebinding re-latches only
under its rule, and c= host names or unreachable address families are refused with 488."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from itertools import pairwise
from typing import cast

import numpy as np

from tests.sip.harness import running_server, wait_for
from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp
from v2v.media.g711 import ulaw_encode
from v2v.media.playout import PlayoutBuffer
from v2v.signaling.sip.rtp_session import NO_RTP_YET_TIMEOUT, RELATCH_QUIET_S, PortAllocator, RtpSession

TONE = (6000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)


class Udp(asyncio.DatagramProtocol):
    """A bare UDP endpoint that counts what it receives and can send RTP."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.seq = 0

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> Udp:
        _, p = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(host, 0))
        return p

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.got.append(data)

    def send_rtp(self, dest: tuple[str, int], ssrc: int, pt: int = 0) -> None:
        assert self.transport is not None
        self.seq += 1
        hdr = struct.pack("!BBHII", 0x80, pt, self.seq & 0xFFFF, (160 * self.seq) & 0xFFFFFFFF, ssrc)
        self.transport.sendto(hdr + ulaw_encode(TONE[:160]), dest)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _spray(att: Udp, dest: tuple[str, int], ssrc: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        att.send_rtp(dest, ssrc)
        await asyncio.sleep(0.01)


async def test_attacker_spraying_before_and_after_the_caller_receives_nothing() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        caller = await RtpPeer.open(TONE)
        far = await Udp.open("127.0.0.2")  # another host
        near = await Udp.open("127.0.0.1")  # the caller's own address, another port, after the latch
        stop = asyncio.Event()
        try:
            call = Call(sip, caller, f"sip:echo@127.0.0.1:{srv.sip_port}")
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(caller.port)))
            r = await sip.recv_final(call.call_id, "INVITE")
            assert r.status == 200
            call.to_tag, call.cseq = r.to.tag, 2
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=r.to.tag, cseq=1))
            dest = call._remote_rtp(r)
            # from the moment of the answer: valid RTP of the call's payload type, the caller's SSRC too
            sprays = [asyncio.create_task(_spray(far, dest, ssrc, stop)) for ssrc in (0x1234ABCD, 0x5EED)]
            await asyncio.sleep(1.5)  # the caller's RTP starts late
            assert not caller.received or len(caller.received) <= 2  # at most keep-alives before it proves itself
            caller.start(dest)
            await wait_for(lambda: len(caller.received) > 30, 3.0, "the caller's audio")
            sprays.append(asyncio.create_task(_spray(near, dest, 0x77, stop)))
            await asyncio.sleep(1.0)  # both keep spraying after the caller's first packet
            stop.set()
            await asyncio.gather(*sprays)
            (d,) = srv.sip.core.dialogs.values()
            rtp = srv.rtp_of(d.media)
            assert rtp.latched and rtp.remote == ("127.0.0.1", caller.port)
            assert rtp.stats.foreign_packets > 200 and rtp.stats.relatches == 0
            assert far.got == [] and near.got == []
            assert (await call.bye()).status == 200
        finally:
            stop.set()
            far.close()
            near.close()
            await caller.close()
            await sip.close()


def test_rtp_ports_are_random_not_sequential() -> None:
    alloc = PortAllocator(40000, 40999)
    socks = [alloc.bind("127.0.0.1") for _ in range(40)]
    try:
        ports = [s.getsockname()[1] for s in socks]
        assert len(set(ports)) == 40 and all(p % 2 == 0 and 40000 <= p <= 40999 for p in ports)
        steps = [b - a for a, b in pairwise(ports)]
        assert sum(1 for s in steps if s == 2) < 5, ports  # sequential would be all 2s
        assert len({p // 100 for p in ports}) >= 4  # spread over the range
    finally:
        for s in socks:
            s.close()


async def test_a_caller_that_never_sends_gets_keepalives_only_and_is_ended() -> None:
    async with running_server(greeting="hello") as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        sink = await Udp.open("127.0.0.1")  # the SDP's address: never sends a packet
        try:
            call = Call(sip, cast(RtpPeer, sink), f"sip:echo@127.0.0.1:{srv.sip_port}")
            invite = sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(sink.port))
            t0 = time.monotonic()
            sip.send(invite)
            r = await sip.recv_final(call.call_id, "INVITE")
            assert r.status == 200
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=r.to.tag, cseq=1))
            await wait_for(lambda: srv.active() == 0, NO_RTP_YET_TIMEOUT + 2.0, "the no-RTP-yet timeout")
            took = time.monotonic() - t0
            assert NO_RTP_YET_TIMEOUT - 0.5 < took < NO_RTP_YET_TIMEOUT + 2.0, took
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="media-timeout") == 1
            # the server says goodbye
            while True:
                data = await asyncio.wait_for(sip.inbox.get(), 5.0)
                if data.startswith(b"BYE "):
                    break
            # one silent keep-alive a second, never the assistant's audio: about as many bytes as the INVITE
            assert 1 <= len(sink.got) <= int(took) + 1, len(sink.got)
            assert all(set(p[12:]) <= {0xFF, 0x7F} for p in sink.got)
            assert sum(len(p) for p in sink.got) < 2 * len(invite)
        finally:
            sink.close()
            await sip.close()


async def test_nat_caller_latches_from_the_signaling_address_and_rebinding_is_ruled() -> None:
    loop = asyncio.get_running_loop()
    nat1, nat2, nat3, stranger = (await Udp.open("127.0.0.1"), await Udp.open("127.0.0.1"),
                                  await Udp.open("127.0.0.1"), await Udp.open("127.0.0.2"))
    sock = PortAllocator(41000, 41999).bind("127.0.0.1")
    timeouts: list[float] = []
    # the SDP names the phone's private address; SIP came from 127.0.0.1 (the NAT's public side)
    s = RtpSession(sock, "PCMU", 0, 101, ("10.0.0.5", 4000), PlayoutBuffer(), lambda _a: None, lambda _d: None,
                   lambda: timeouts.append(loop.time()), signaling_ip="127.0.0.1")
    await s.start()
    dest = ("127.0.0.1", s.local_port)
    try:
        stranger.send_rtp(dest, 1)
        nat1.send_rtp(dest, 1, pt=96)  # not this call's media: proves nothing
        await asyncio.sleep(0.1)
        assert not s.latched
        nat1.send_rtp(dest, 1)
        await wait_for(lambda: s.latched, 2.0, "the latch")
        assert s.remote == ("127.0.0.1", nat1.port)
        await wait_for(lambda: len(nat1.got) >= 3, 2.0, "audio to the latched source")
        # the NAT rebinds: same SSRC from a new port, but only after the old one fell silent
        nat2.send_rtp(dest, 1)
        await asyncio.sleep(0.1)
        assert s.remote == ("127.0.0.1", nat1.port)
        await asyncio.sleep(RELATCH_QUIET_S)
        nat2.send_rtp(dest, 2)  # another SSRC: no
        stranger.send_rtp(dest, 1)  # another address: no
        await asyncio.sleep(0.1)
        assert s.remote == ("127.0.0.1", nat1.port)
        nat2.send_rtp(dest, 1)
        await wait_for(lambda: s.remote == ("127.0.0.1", nat2.port), 2.0, "the re-latch")
        assert s.stats.relatches == 1
        # at most one re-latch per RELATCH_EVERY_S
        await asyncio.sleep(RELATCH_QUIET_S + 0.1)
        nat3.send_rtp(dest, 1)
        await asyncio.sleep(0.1)
        assert s.remote == ("127.0.0.1", nat2.port) and stranger.got == [] and nat3.got == []
    finally:
        await s.close()
        for u in (nat1, nat2, nat3, stranger):
            u.close()


async def test_host_name_or_unreachable_family_in_c_line_is_refused_with_488() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            r = await Call(sip, rtp, uri).invite(offer_sdp(rtp.port, addr="attacker.example.com"))
            assert r.status == 488 and "host" in r.reason, r.reason
            v6 = offer_sdp(rtp.port).replace("c=IN IP4 127.0.0.1", "c=IN IP6 ::1")
            r = await Call(sip, rtp, uri).invite(v6)
            assert r.status == 488 and "IPv6" in r.reason, r.reason
            assert srv.active() == 0 and not srv.sip.core.dialogs
            # in a call, a re-INVITE naming a host is refused and the call goes on
            call = await Call.dial(sip, rtp, uri)
            await wait_for(lambda: len(rtp.received) > 5, 3.0, "RTP")
            r = await call.invite(offer_sdp(rtp.port, addr="evil.example"))
            assert r.status == 488
            n = len(rtp.received)
            await wait_for(lambda: len(rtp.received) > n + 10, 2.0, "RTP after the refused re-INVITE")
            assert srv.active() == 1 and (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_sip_calls_start_no_threads() -> None:
    """Probe item 4/8: PyAV's resampler started a thread pool per resampler (2 x CPUs per call)."""
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        peers = [await RtpPeer.open(TONE) for _ in range(6)]
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            first = await Call.dial(sip, peers[0], uri)  # process-wide pools (if any) start with the first call
            await wait_for(lambda: len(peers[0].received) > 20, 3.0, "the first call's audio")
            base = _threads()
            calls = [await Call.dial(sip, p, uri) for p in peers[1:]]
            await wait_for(lambda: all(len(p.received) > 20 for p in peers), 5.0, "every call's audio")
            assert _threads() == base, (base, _threads())
            for c in [first, *calls]:
                assert (await c.bye()).status == 200
        finally:
            for p in peers:
                await p.close()
            await sip.close()
