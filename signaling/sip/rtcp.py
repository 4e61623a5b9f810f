"""RTCP for plain-RTP calls (RFC 3550): sender/receiver reports both ways, jitter and loss.

Many trunks and SBCs expect RTCP and drop a call whose RTCP stays silent. One
:class:`RtcpSession` per :class:`~v2v.signaling.sip.rtp_session.RtpSession`:

- **where**: on the odd port next to the even RTP port (bound here: the port
  allocator hands out even ports), or on the RTP port itself when the offer
  has ``a=rtcp-mux`` (RFC 5761; the answer then carries it too). The peer's
  RTCP address is its RTP address + 1 (or ``a=rtcp:`` of its SDP), and then
  wherever its RTCP comes from (symmetric, from the RTP peer's IP address only).
- **what**: a compound packet every :data:`REPORT_INTERVAL_S` (randomised
  0.5-1.5x as RFC 3550 6.2 asks; the first one at half of it): an SR while we
  send RTP (an RR otherwise) with a report block on the caller's stream, and
  an SDES CNAME; on close an RR/SR + BYE.
- **statistics** (:class:`ReceiveStats`): the caller's stream's loss (RFC 3550
  A.1 extended sequence numbers, A.3 cumulative and fraction lost) and
  interarrival jitter (A.8: integer arithmetic in RTP clock units, scaled by
  16); the caller's own reports about our stream (loss, jitter, round trip
  from LSR/DLSR) are parsed. Both go to ``/metrics`` and to the call's end log line.

Hooks in the RTP session (``on_rtp_in``, ``on_rtcp``) feed it; muxed RTCP goes
out through the RTP socket (and its SRTP protector, if any).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from v2v.media.rtp_seq import SEQ_MOD, seq_delta

from ..metrics import ServerMetrics

if TYPE_CHECKING:
    from ..calls import Call
    from .rtp_session import RtpSession

__all__ = ["REPORT_INTERVAL_S", "PeerReport", "ReceiveStats", "RtcpCounters", "RtcpSession", "offers_mux"]

log = logging.getLogger("v2v.sip.rtcp")

REPORT_INTERVAL_S = 5.0
NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 -> 1970-01-01, seconds
MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
CN_PT = 13
SEND_ERRORS = (OSError, ValueError, TypeError, OverflowError)  # asyncio and uvloop transports


def ntp_time(wall: float) -> int:
    """A wall-clock time as a 64-bit NTP timestamp."""
    return int((wall + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def offers_mux(sdp: str) -> bool:
    """Does this SDP ask for RTCP multiplexed on the RTP port (``a=rtcp-mux``)?"""
    return re.search(r"(?im)^a=rtcp-mux\s*$", sdp) is not None


def rtcp_port(sdp: str) -> int | None:
    """The port of the SDP's ``a=rtcp:PORT`` (RFC 3605), if any."""
    m = re.search(r"(?im)^a=rtcp:(\d+)", sdp)
    return int(m.group(1)) if m else None


# -----------------------------------------------------------------------------
# Statistics of the caller's stream (RFC 3550 appendix A)
# -----------------------------------------------------------------------------


@dataclass
class ReceiveStats:
    """Loss and interarrival jitter of one inbound RTP stream, as RFC 3550 A.1, A.3 and A.8 compute them.

    :meth:`update` takes each packet's SSRC, sequence number, RTP timestamp and arrival time in the
    same clock units (integers); a new SSRC starts over.
    """

    ssrc: int | None = None
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter_q4: int = 0  # jitter * 16 (A.8: J += |D| - ((J + 8) >> 4))
    _transit: int | None = None
    last_fraction: int = 0

    def update(self, ssrc: int, seq: int, timestamp: int, arrival: int, timing: bool = True) -> None:
        """One packet; ``timing=False`` counts it without a jitter sample (telephone-event, comfort noise)."""
        if ssrc != self.ssrc or self.received == 0:
            self._restart(ssrc, seq)
        else:
            delta = seq_delta(seq, self.max_seq)
            if 0 <= delta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += SEQ_MOD  # wrapped
                self.max_seq = seq
            elif not -MAX_MISORDER < delta < 0:  # a very large jump: the sender restarted its numbering
                self._restart(ssrc, seq)
            # else: a duplicate or a late packet from before max_seq: counted, max unchanged
        self.received += 1
        if timing:
            transit = arrival - timestamp
            if self._transit is not None:
                d = ((transit - self._transit + (1 << 31)) % (1 << 32)) - (1 << 31)  # timestamps wrap at 2^32
                self.jitter_q4 += abs(d) - ((self.jitter_q4 + 8) >> 4)
            self._transit = transit

    def _restart(self, ssrc: int, seq: int) -> None:
        self.ssrc, self.base_seq, self.max_seq, self.cycles = ssrc, seq, seq, 0
        self.received = self.expected_prior = self.received_prior = 0
        self._transit = None

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost (negative with duplicates), clamped to 24 bits signed."""
        return max(-(1 << 23), min((1 << 23) - 1, self.expected - self.received))

    @property
    def jitter(self) -> int:
        """Interarrival jitter in RTP clock units (the report block's value)."""
        return self.jitter_q4 >> 4

    def fraction_lost(self) -> int:
        """A.3: the fraction (of 256) lost since the previous call; moves the interval on."""
        expected, received = self.expected, self.received
        exp_int, rec_int = expected - self.expected_prior, received - self.received_prior
        self.expected_prior, self.received_prior = expected, received
        lost_int = exp_int - rec_int
        self.last_fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        return self.last_fraction


@dataclass
class PeerReport:
    """The caller's latest report block about our stream."""

    fraction_lost: int = 0
    packets_lost: int = 0
    jitter: int = 0  # RTP clock units
    rtt_ms: float | None = None


@dataclass
class RtcpCounters:
    sr_out: int = 0
    rr_out: int = 0
    bye_out: int = 0
    sr_in: int = 0
    rr_in: int = 0
    bye_in: int = 0
    bad_in: int = 0
    foreign_in: int = 0
    send_failures: int = 0


# -----------------------------------------------------------------------------
# One call's RTCP
# -----------------------------------------------------------------------------

class _Proto(asyncio.DatagramProtocol):
    def __init__(self, session: RtcpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.session.on_socket_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtcp socket error: %s", exc)


@dataclass
class _LastSr:
    """The middle 32 bits of the caller's last SR's NTP time, and when it came (monotonic)."""

    lsr: int = 0
    at: float = 0.0


@dataclass
class RtcpSession:
    """RTCP of one plain-RTP call (see the module docstring); counted in ``metrics`` when given."""

    rtp: RtpSession
    mux: bool
    sock: socket.socket | None = None
    remote_port: int | None = None  # a=rtcp: of the caller's SDP
    metrics: ServerMetrics | None = None
    interval: float = REPORT_INTERVAL_S
    stats: ReceiveStats = field(default_factory=ReceiveStats)
    peer: PeerReport = field(default_factory=PeerReport)
    counters: RtcpCounters = field(default_factory=RtcpCounters)
    cname: str = field(default_factory=lambda: f"v2v-{random.getrandbits(48):012x}")
    _remote: tuple[str, int] | None = None  # latched RTCP source of the caller
    _last_sr: _LastSr = field(default_factory=_LastSr)
    _sent_at_last_report: int = -1
    _transport: asyncio.DatagramTransport | None = None
    _task: asyncio.Task[None] | None = None
    _closed: bool = False

    @classmethod
    def attach(cls, rtp: RtpSession, offer_sdp: str, metrics: ServerMetrics | None = None,
               interval: float = REPORT_INTERVAL_S) -> RtcpSession:
        """RTCP for ``rtp``: muxed if the offer asks, else on the RTP port + 1 (none if that port is taken)."""
        mux = offers_mux(offer_sdp)
        sock = None if mux else bind_next(rtp.sock)
        self = cls(rtp, mux, sock, rtcp_port(offer_sdp), metrics, interval)
        rtp.on_rtp_in = self.on_rtp
        if mux:
            rtp.on_rtcp = self.on_mux_datagram
        return self

    @classmethod
    def for_call(cls, rtp: RtpSession, call: Call, offer_sdp: str, answer: str) -> tuple[RtcpSession, str]:
        """:meth:`attach` for a call: counted in its metrics, its figures in its end log line; and our
        answer with ``a=rtcp-mux`` when muxed."""
        self = cls.attach(rtp, offer_sdp, call.manager.metrics)
        call.end_fields.append(self.summary)
        return self, self.answer(answer)

    def answer(self, sdp: str) -> str:
        """Our SDP with ``a=rtcp-mux`` when RTCP rides on the RTP port."""
        if not self.mux or offers_mux(sdp):
            return sdp
        return sdp.rstrip("\r\n") + "\r\na=rtcp-mux\r\n"

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if self.sock is not None:
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=self.sock)
        if self.sock is not None or self.mux:
            self._task = asyncio.create_task(self._loop(), name=f"rtcp-{self.rtp.local_port}")

    async def close(self) -> None:
        """Send the last report with a BYE, stop, and count the call's loss in the metrics."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            if self.rtp.latched:
                self._send(self.compound(bye=True))
        if self._transport is not None:
            self._transport.close()
        elif self.sock is not None:
            self.sock.close()
        if self.metrics is not None and self.stats.received:
            self.metrics.rtp_lost.labels(source="computed").inc(max(0, self.stats.lost))
        if self.metrics is not None and (self.counters.rr_in or self.counters.sr_in):
            self.metrics.rtp_lost.labels(source="reported").inc(max(0, self.peer.packets_lost))

    async def _loop(self) -> None:
        delay = self.interval * random.uniform(0.25, 0.75)  # the first report early (RFC 3550 6.2: half)
        while True:
            await asyncio.sleep(delay)
            delay = self.interval * random.uniform(0.5, 1.5)
            if self.rtp.latched and self.rtp.remote[1]:
                self._send(self.compound())

    # -- inbound --------------------------------------------------------------------
    def on_rtp(self, pkt: RtpPacket) -> None:
        """The RTP session's hook: one admitted packet of the caller's stream."""
        clock = self.rtp.codec.info.clock_rate
        arrival = int(time.monotonic() * clock)
        timing = pkt.payload_type not in (self.rtp.dtmf_pt, CN_PT)
        self.stats.update(pkt.ssrc, pkt.sequence_number, pkt.timestamp, arrival, timing)

    def _peer_host(self, addr: tuple) -> str | None:
        """The source's host if it is the caller's (its RTP or SIP address), else None (counted)."""
        host = _plain_ip(addr[0])
        if host in (_plain_ip(self.rtp.remote[0]), self.rtp.signaling_ip):
            return host
        self.counters.foreign_in += 1
        return None

    def on_mux_datagram(self, data: bytes, addr: tuple) -> None:
        """The RTP session's hook: RTCP on the RTP port (already SRTCP-unprotected there)."""
        if self._peer_host(addr) is not None:
            self.on_datagram(data, addr)

    def on_socket_datagram(self, data: bytes, addr: tuple) -> None:
        """A datagram on the RTCP port: from the caller's host only; SRTCP unprotected."""
        host = self._peer_host(addr)
        if host is None:
            return
        srtp = getattr(self.rtp, "srtp", None)
        if srtp is not None:
            plain = srtp.unprotect(data)
            if plain is None:
                self.counters.bad_in += 1
                return
            data = plain
        if self.on_datagram(data, addr):
            self._remote = (host, addr[1])  # symmetric RTCP: answer where it comes from

    def on_datagram(self, data: bytes, addr: tuple) -> bool:
        """One compound RTCP packet (also the RTP session's hook for muxed RTCP); False if unusable."""
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self.counters.bad_in += 1
            return False
        for p in packets:
            if isinstance(p, RtcpSrPacket):
                self.counters.sr_in += 1
                self._count("sr", "in")
                self._last_sr = _LastSr((p.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF, time.monotonic())
                self._reports(p.reports)
            elif isinstance(p, RtcpRrPacket):
                self.counters.rr_in += 1
                self._count("rr", "in")
                self._reports(p.reports)
            elif isinstance(p, RtcpByePacket):
                self.counters.bye_in += 1
                self._count("bye", "in")
        return True

    def _reports(self, reports: list[RtcpReceiverInfo]) -> None:
        ours = self.rtp._ssrc
        for r in reports:
            if r.ssrc != ours:
                continue
            rtt = self.peer.rtt_ms  # a block without LSR (no SR of ours seen yet) keeps the last RTT
            if r.lsr:  # RFC 3550 6.4.1: A - LSR - DLSR, in 1/65536 s
                now = (ntp_time(time.time()) >> 16) & 0xFFFFFFFF
                rtt = ((now - r.lsr - r.dlsr) & 0xFFFFFFFF) / 65536 * 1000
                rtt = rtt if rtt < 60_000 else self.peer.rtt_ms
            self.peer = PeerReport(r.fraction_lost, r.packets_lost, r.jitter, rtt)
            if self.metrics is not None:
                self.metrics.rtp_jitter.labels(source="reported").observe(r.jitter / self.rtp.codec.info.clock_rate)

    # -- outbound -------------------------------------------------------------------
    def _count(self, kind: str, direction: str) -> None:
        if self.metrics is not None:
            self.metrics.rtcp_packets.labels(direction=direction, type=kind).inc()

    def _block(self) -> list[RtcpReceiverInfo]:
        s = self.stats
        if not s.received or s.ssrc is None:
            return []
        dlsr = 0
        if self._last_sr.lsr:
            dlsr = int((time.monotonic() - self._last_sr.at) * 65536) & 0xFFFFFFFF
        block = RtcpReceiverInfo(ssrc=s.ssrc, fraction_lost=s.fraction_lost(), packets_lost=s.lost,
                                 highest_sequence=s.extended_max & 0xFFFFFFFF, jitter=s.jitter,
                                 lsr=self._last_sr.lsr, dlsr=dlsr)
        if self.metrics is not None:
            self.metrics.rtp_jitter.labels(source="computed").observe(s.jitter / self.rtp.codec.info.clock_rate)
        return [block]

    def compound(self, bye: bool = False) -> bytes:
        """SR (we sent RTP since the last report) or RR, SDES CNAME, and a BYE when ``bye``."""
        rtp, ssrc = self.rtp, self.rtp._ssrc
        sent = rtp.stats.packets_out + rtp.stats.keepalives_out
        first: RtcpSrPacket | RtcpRrPacket
        if sent != self._sent_at_last_report and sent:
            info = RtcpSenderInfo(ntp_timestamp=ntp_time(time.time()), rtp_timestamp=rtp._ts, packet_count=sent
                                  & 0xFFFFFFFF, octet_count=getattr(rtp.stats, "octets_out", 0) & 0xFFFFFFFF)
            first = RtcpSrPacket(ssrc=ssrc, sender_info=info, reports=self._block())
            self.counters.sr_out += 1
            self._count("sr", "out")
        else:
            first = RtcpRrPacket(ssrc=ssrc, reports=self._block())
            self.counters.rr_out += 1
            self._count("rr", "out")
        self._sent_at_last_report = sent
        out = bytes(first)
        out += bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, self.cname.encode())])]))
        if bye:
            out += bytes(RtcpByePacket(sources=[ssrc]))
            self.counters.bye_out += 1
            self._count("bye", "out")
        return out

    def _dest(self) -> tuple[str, int]:
        host, port = self.rtp.remote
        if self._remote is not None and self._remote[0] == _plain_ip(host):
            return self._remote  # where the caller's RTCP comes from (unless a re-INVITE moved it)
        return host, self.remote_port or port + 1

    def _send(self, data: bytes) -> None:
        if self.mux:
            if not self.rtp._send(data):  # the RTP socket, its SRTP protector and its latched address
                self.counters.send_failures += 1
            return
        if self._transport is None or self._transport.is_closing():
            return
        srtp = getattr(self.rtp, "srtp", None)
        if srtp is not None:
            sealed = srtp.protect(data)
            if sealed is None:
                return
            data = sealed
        host, port = self._dest()
        if self.sock is not None and self.sock.family == socket.AF_INET6 and ":" not in host:
            host = "::ffff:" + host  # IPv4 on a dual-stack socket
        try:
            self._transport.sendto(data, (host, port))
        except SEND_ERRORS as e:
            self.counters.send_failures += 1
            log.debug("rtcp send to %s:%d failed: %s", host, port, e)

    def summary(self) -> dict[str, Any]:
        """The call's RTCP figures for its end log line."""
        clock = self.rtp.codec.info.clock_rate
        s, p, c = self.stats, self.peer, self.counters
        out: dict[str, Any] = {
            "rtcp": "mux" if self.mux else ("port+1" if self.sock is not None else "off"),
            "rtcp_sent": f"sr={c.sr_out} rr={c.rr_out} bye={c.bye_out}",
            "rtcp_received": f"sr={c.sr_in} rr={c.rr_in} bye={c.bye_in}",
            "rx_expected": s.expected, "rx_lost": s.lost, "rx_jitter_ms": round(s.jitter * 1000 / clock, 2),
        }
        if c.sr_in or c.rr_in:
            out.update(peer_lost=p.packets_lost, peer_fraction_lost=round(p.fraction_lost / 256, 3),
                       peer_jitter_ms=round(p.jitter * 1000 / clock, 2))
            if p.rtt_ms is not None:
                out["rtt_ms"] = round(p.rtt_ms, 1)
        return out


def _plain_ip(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def bind_next(rtp_sock: socket.socket) -> socket.socket | None:
    """A UDP socket on the RTP socket's address and port + 1 (RTCP), or None when that port is taken."""
    host, port = rtp_sock.getsockname()[:2]
    sock = socket.socket(rtp_sock.family, socket.SOCK_DGRAM)
    try:
        if rtp_sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            rtp_sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        sock.bind((host, port + 1))
    except OSError as e:
        sock.close()
        log.warning("rtcp: port %d is taken (%s): this call has no RTCP", port + 1, e)
        return None
    sock.setblocking(False)
    return sock
