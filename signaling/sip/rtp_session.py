"""Plain RTP call transport: G.711, G.722 or Opus, 20 ms, RFC 4733 events inbound.

One :class:`RtpSession` per call owns a UDP socket picked at random from the
configured port range (not predictable from the previous call's). The codec
(:mod:`media.rtp_codecs`) sets three rates: the RTP clock (timestamps, gaps and
fill are counted in its ticks, integer arithmetic), the decoded audio rate
(8 kHz G.711, 16 kHz G.722, 48 kHz Opus: the rate of ``on_audio``'s frames,
:attr:`RtpSession.input_rate`) and the encoder's input rate. Inbound:
symmetric RTP with latching that a stranger cannot steal (see
:meth:`RtpSession._admit`), a reordering jitter buffer, decoding to int16
frames handed to ``on_audio``; telephone-event packets become digits via
``on_dtmf``. The worker's clock is the count of input samples, so lost
packets, comfort noise (PT 13) and silence suppression become silence: a
timestamp jump (up to 10 s) is filled before the packet, and while no packet
comes silence is generated at the real-time pace. Outbound: a paced sender reads 20 ms (480 samples at 24 kHz) from
the playout source every 20 ms of a monotonic clock, resamples to the encoder's rate (none for Opus) and
sends it (silence when idle) for the whole call, except while the caller holds
the call -- but only once the caller's address has proven itself: before the
first admitted packet only a silent keep-alive goes to the SDP address once a
second (no reflection amplifier toward a spoofed SDP address) and the
assistant's audio waits in the playout buffer. No inbound packet for
``timeout`` seconds calls ``on_timeout``; a call whose caller never sent a
valid packet ends after ``start_timeout`` (default :data:`NO_RTP_YET_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from aiortc.rtp import RtpPacket

from v2v.media.jitter import JitterBuffer
from v2v.media.resample import ExactResampler, Resampler
from v2v.media.rtp_codecs import RtpCodec, make_codec
from v2v.worker.dtmf import DTMF_DIGITS

from ..media_clock import get_clock
from .addr import DatagramSender, udp_socket
from .srtp import CallSrtp

log = logging.getLogger("v2v.sip.rtp")

SOURCE_RATE = 24000  # the playout source's rate
FRAME_24K = 480
PTIME = 0.020
DTMF_EVENTS = DTMF_DIGITS
CN_PT = 13  # comfort noise (RFC 3389), static payload type
MAX_GAP_S = 10  # a timestamp jump up to this many seconds is silence; beyond, the stream re-anchors
FILL_ALLOWANCE_S = 0.08  # silence is generated in real time once no packet came for this long
NO_RTP_YET_TIMEOUT = 5.0  # a new call whose caller never sent valid RTP ends after this (s)
KEEPALIVE_S = 1.0  # before the caller proved its address: one silent packet per this many seconds
RELATCH_QUIET_S = 1.0  # the latched source must have been silent this long before a re-latch
RELATCH_EVERY_S = 10.0  # at most one re-latch per this many seconds


class PlayoutSource(Protocol):
    def read(self, n: int) -> np.ndarray: ...


@dataclass
class RtpStats:
    packets_in: int = 0
    packets_out: int = 0
    bad_packets: int = 0
    foreign_packets: int = 0
    dtmf_in: int = 0
    keepalives_out: int = 0
    relatches: int = 0
    octets_out: int = 0  # RTP payload octets sent (RTCP sender reports)


class PortAllocator:
    """Hands out even RTP ports from a range in random order, binding to check.

    Random (from the OS's CSPRNG), so the next call's port cannot be guessed
    from the last one's.
    """

    def __init__(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise ValueError("empty RTP port range")
        self.lo, self.hi = lo + (lo & 1), hi
        self._rng = secrets.SystemRandom()

    @classmethod
    def parse(cls, spec: str) -> PortAllocator:
        lo, _, hi = spec.partition("-")
        return cls(int(lo), int(hi or lo))

    def bind(self, host: str) -> socket.socket:
        span = (self.hi - self.lo) // 2 + 1
        start, step = self._rng.randrange(span), 1
        if span > 2:  # a random stride coprime with span walks every port once, in a random order
            step = self._rng.randrange(1, span)
            while math.gcd(step, span) != 1:
                step = self._rng.randrange(1, span)
        for i in range(span):
            port = self.lo + 2 * ((start + i * step) % span)
            sock = udp_socket(host)  # '::' dual-stack (sip/addr.py)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            return sock
        raise OSError(f"no free RTP port in {self.lo}-{self.hi}")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.session._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.
        log.debug("rtp socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.session
        if exc is not None and not s._closed:  # asyncio closed the transport on an error: no media any more
            log.warning("rtp: port %d transport failed (%s: %s), ending the call", s.local_port, type(exc).__name__, exc)
            s.timeout_reason = f"RTP transport failed ({type(exc).__name__})"
            s.on_timeout()


class RtpSession:
    def __init__(
        self,
        sock: socket.socket,
        codec: str | RtpCodec,
        payload_type: int,
        dtmf_pt: int | None,
        remote: tuple[str, int],
        source: PlayoutSource,
        on_audio: Callable[[np.ndarray], None],
        on_dtmf: Callable[[str], None],
        on_timeout: Callable[[], None],
        timeout: float = 30.0,
        jitter_depth: int = 2,
        signaling_ip: str | None = None,
        start_timeout: float = NO_RTP_YET_TIMEOUT,
    ) -> None:
        self.sock = sock
        self.local_port: int = sock.getsockname()[1]
        self.codec: RtpCodec = make_codec(codec) if isinstance(codec, str) else codec
        self.input_rate = self.codec.info.audio_rate  # on_audio's rate for the whole call
        self._in_resampler: Resampler | None = None  # a re-INVITE changed to a codec of another rate
        self.payload_type = payload_type
        self.dtmf_pt = dtmf_pt
        self.remote = remote  # where audio goes: the SDP's address until the caller proves another
        self.sdp_remote = remote
        self.latched = False  # the caller proved its address: audio goes there
        self.signaling_ip = _plain_ip(signaling_ip) if signaling_ip else None
        self.start_timeout = start_timeout
        self.timeout_reason = ""
        self.source = source
        self.on_audio = on_audio
        self.on_dtmf = on_dtmf
        self.on_timeout = on_timeout
        self.timeout = timeout
        self.sending = True  # False while the caller holds the call
        self.expect_inbound = True
        self.stats = RtpStats()
        self.srtp: CallSrtp | None = None  # SDES-SRTP hook (srtp.py), set by the call
        self.on_rtp_in: Callable[[RtpPacket], None] | None = None  # RTCP hooks (rtcp.py): each admitted packet,
        self.on_rtcp: Callable[[bytes, tuple], object] | None = None  # and RTCP muxed on this port
        # (timestamp, payload, comfort noise?) in sequence order
        self._jitter: JitterBuffer[tuple[int, bytes, bool]] = JitterBuffer(depth=jitter_depth)
        # the caller's timeline, in RTP clock ticks: where the next packet is expected
        # (never moves back), when the last one came, silence made up since
        self._next_ts: int | None = None
        self._last_audio_t = time.monotonic()
        self._filled = 0
        self._rx_ssrc: int | None = None
        self._last_dtmf_ts: int | None = None
        self._resampler = self._out_resampler()
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: DatagramSender | None = None
        self._task: asyncio.Task | None = None
        self._last_rx = time.monotonic()
        self._last_keepalive = -KEEPALIVE_S
        self._last_relatch = -RELATCH_EVERY_S
        self._closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=self.sock)
        self._last_rx = time.monotonic()
        self._task = asyncio.create_task(self._send_loop(), name=f"rtp-send-{self.local_port}")

    def _out_resampler(self) -> ExactResampler | None:
        rate = self.codec.info.encode_rate
        return ExactResampler(SOURCE_RATE, rate) if rate != SOURCE_RATE else None

    def set_codec(self, codec: RtpCodec, payload_type: int) -> None:
        """A re-INVITE or the answer to our offer chose this codec (a new timeline from its next packet).

        ``on_audio`` keeps :attr:`input_rate` (the worker's input rate is fixed for the call): a codec
        of another audio rate is resampled to it.
        """
        self.payload_type = payload_type
        if codec.name == self.codec.name:
            return
        self._flush_jitter()
        self._jitter = JitterBuffer(depth=self._jitter.depth)
        self._next_ts = None
        self.codec = codec
        rate = codec.info.audio_rate
        self._in_resampler = Resampler(rate, self.input_rate) if rate != self.input_rate else None
        self._resampler = self._out_resampler()

    def _emit(self, pcm: np.ndarray) -> None:
        """Decoded audio (at the codec's rate) to the worker, at :attr:`input_rate`."""
        if self._in_resampler is not None:
            pcm = self._in_resampler.process(pcm)
        if len(pcm):
            self.on_audio(pcm)

    def _silence(self, ticks: int) -> None:
        """``ticks`` of the RTP clock as silence at :attr:`input_rate`."""
        n = ticks * self.input_rate // self.codec.info.clock_rate
        if n > 0:
            self.on_audio(np.zeros(n, np.int16))

    def update_remote(self, remote: tuple[str, int], sending: bool, expect_inbound: bool) -> None:
        """A re-INVITE changed the remote end or the direction (hold/unhold)."""
        if remote[0] not in ("0.0.0.0", "::") and remote != self.sdp_remote:
            self.remote = self.sdp_remote = remote  # a new address proves itself anew
            self.latched = False
        self.sending = sending
        self.expect_inbound = expect_inbound
        self._last_rx = time.monotonic()
        self._last_audio_t, self._filled = self._last_rx, 0

    # ---- inbound
    def _on_datagram(self, data: bytes, addr: tuple) -> None:
        if self._closed or len(data) < 12 or (data[0] >> 6) != 2:
            self.stats.bad_packets += 1
            return
        if self.srtp is not None:  # SRTP: authenticate and decrypt first (a failure is dropped and counted)
            plain = self.srtp.unprotect(data)
            if plain is None:
                return
            data = plain
        pt = data[1] & 0x7F
        if 72 <= pt <= 76:  # RTCP (RFC 5761 range): to rtcp.py when muxed, else ignored
            if self.on_rtcp is not None:
                self.on_rtcp(data, addr)
            return
        try:
            pkt = RtpPacket.parse(data)
        except ValueError:
            self.stats.bad_packets += 1
            return
        if not self._admit(pkt, (_plain_ip(addr[0]), addr[1])):
            self.stats.foreign_packets += 1
            return
        self.stats.packets_in += 1
        if self.on_rtp_in is not None:
            self.on_rtp_in(pkt)
        self._last_rx = time.monotonic()
        if pkt.payload_type == self.dtmf_pt and self.dtmf_pt is not None:
            self._on_event(pkt)
            return
        if pkt.payload_type not in (self.payload_type, CN_PT):
            return
        if self._rx_ssrc != pkt.ssrc:
            if self._rx_ssrc is not None:
                self._flush_jitter()
                self._jitter = JitterBuffer(depth=self._jitter.depth)
                self._next_ts = None  # a new stream: a new timeline
            self._rx_ssrc = pkt.ssrc
        item = (pkt.timestamp, pkt.payload, pkt.payload_type == CN_PT)
        for _seq, got in self._jitter.put(pkt.sequence_number, item):
            self._deliver(got)

    def _admit(self, pkt: RtpPacket, src: tuple[str, int]) -> bool:
        """Is this valid RTP packet the caller's? Latches (or re-latches) as a side effect.

        An address proves itself only as the SDP's address and port (any RTP
        packet from there: final), or -- a caller behind NAT, whose ports are
        rewritten -- with a packet of this call's media (its codec,
        telephone-event or comfort noise) from the SDP's IP address or the IP
        address the SIP request came from, any port (a packet from the SDP's
        exact address and port later takes over). Any other source is ignored,
        before and after, and never receives anything. Once latched, a new
        port is taken only from one of those IP addresses, with this call's
        media and the stream's SSRC, after the latched source fell silent for
        :data:`RELATCH_QUIET_S`, at most once per :data:`RELATCH_EVERY_S` (a
        NAT rebinding). Every move after the first latch is logged.
        """
        sdp = (_plain_ip(self.sdp_remote[0]), self.sdp_remote[1])
        if src == self.remote and self.latched:
            return True
        if src == sdp:
            self._latch(src, "the SDP's address")
            return True
        if pkt.payload_type not in (self.payload_type, self.dtmf_pt, CN_PT) or src[0] not in (sdp[0], self.signaling_ip):
            return False
        if not self.latched:
            self._latch(src, "")
            return True
        now = time.monotonic()
        if (pkt.ssrc != self._rx_ssrc or now - self._last_rx < RELATCH_QUIET_S
                or now - self._last_relatch < RELATCH_EVERY_S):
            return False
        self._last_relatch = now
        self._latch(src, f"same SSRC after {now - self._last_rx:.1f} s of silence")
        return True

    def _latch(self, src: tuple[str, int], why: str) -> None:
        if self.latched and src != self.remote:
            log.warning("rtp: port %d re-latched from %s:%d to %s:%d (%s)", self.local_port, *self.remote, *src, why)
            self.stats.relatches += 1
        self.remote = src
        self.latched = True

    def _flush_jitter(self) -> None:
        for _seq, got in self._jitter.flush():
            self._deliver(got)

    def _deliver(self, item: tuple[int, bytes, bool] | None) -> None:
        """Hand one packet's audio on, preceded by silence for any timestamp gap.

        The worker's clock is the count of input samples: lost packets, comfort
        noise and silence suppression (no packets, the timestamp jumps) all
        count as silence, so the caller's timeline keeps its length.
        """
        if item is None:  # lost: the next packet's timestamp tells how long
            return
        ts, payload, cn = item
        info = self.codec.info
        pcm = np.zeros(0, np.int16) if cn else self.codec.decode(payload)
        end = (ts + info.samples_to_ticks(len(pcm))) & 0xFFFFFFFF
        if self._next_ts is None:
            self._next_ts = end
        else:
            gap = ((ts - self._next_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if abs(gap) > MAX_GAP_S * info.clock_rate:  # the timestamps jumped: re-anchor, no fill
                self._next_ts = end
            else:
                if gap > 0:
                    self._silence(gap)
                ahead = ((end - self._next_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                if ahead > 0:  # never back: silence made up in real time counts
                    self._next_ts = end
        self._last_audio_t, self._filled = time.monotonic(), 0
        if len(pcm):
            self._emit(pcm)

    def _fill_silence(self, now: float) -> None:
        """No packet for a while (silence suppression): silence at the real-time pace."""
        if self._next_ts is None or not self.expect_inbound:
            return
        frame = self.codec.info.frame_ticks
        due = int((now - self._last_audio_t - FILL_ALLOWANCE_S) * self.codec.info.clock_rate)  # in clock ticks
        if due - self._filled < frame:
            return
        if len(self._jitter):  # nothing more came: release what waits behind a hole
            self._flush_jitter()
            return
        n = 0
        while due - self._filled >= frame and n < 5:
            self._silence(frame)
            self._filled += frame
            self._next_ts = (self._next_ts + frame) & 0xFFFFFFFF
            n += 1

    def _on_event(self, pkt: RtpPacket) -> None:
        if len(pkt.payload) < 4:
            return
        event = pkt.payload[0]
        if pkt.timestamp == self._last_dtmf_ts or event >= len(DTMF_EVENTS):
            return
        self._last_dtmf_ts = pkt.timestamp
        self.stats.dtmf_in += 1
        self.on_dtmf(DTMF_EVENTS[event])

    # ---- outbound
    def _packet(self, pt: int, payload: bytes) -> bytes:
        self._seq = (self._seq + 1) & 0xFFFF
        self.stats.octets_out += len(payload)
        p = RtpPacket(payload_type=pt, sequence_number=self._seq, timestamp=self._ts, ssrc=self._ssrc,
                      payload=payload)
        return p.serialize()

    def _send(self, data: bytes) -> bool:
        if self.remote[1] == 0:  # delayed offer: nowhere to send until the answer or the first packet
            return False
        if self.srtp is not None:
            sealed = self.srtp.protect(data)
            if sealed is None:
                return False
            data = sealed
        if self._transport is not None and not self._closed:
            if self._sender is None:  # checks the family, catches what asyncio and uvloop raise (sip/addr.py)
                self._sender = DatagramSender(self.sock, f"rtp port {self.local_port}")
            return self._sender.send(self._transport, data, self.remote)
        return False

    def _timed_out(self, now: float) -> bool:
        """No inbound media for ``timeout`` s, or none ever for ``start_timeout`` s (sets the reason)."""
        if not self.expect_inbound:
            return False
        limit = self.timeout if self.latched else min(self.timeout, self.start_timeout)
        if now - self._last_rx <= limit:
            return False
        self.timeout_reason = "no inbound media" if self.latched else "no RTP from the caller yet"
        log.info("rtp: %s for %.1f s on port %d", self.timeout_reason, limit, self.local_port)
        return True

    async def _send_loop(self) -> None:
        clock = get_clock()  # the process's one PTIME tick for every call (media_clock.py): no drift, no burst
        try:
            while not self._closed:
                await clock.next_tick()
                now = time.monotonic()
                if self._timed_out(now):
                    self.on_timeout()
                    return
                self._fill_silence(now)
                if not self.sending:
                    continue
                info = self.codec.info
                if not self.latched:  # unproven address: a keep-alive now and then, no assistant audio
                    if now - self._last_keepalive >= KEEPALIVE_S:
                        self._last_keepalive = now
                        silence = self.codec.encode(np.zeros(info.encode_samples, np.int16))
                        if self._send(self._packet(self.payload_type, silence)):
                            self.stats.keepalives_out += 1
                    self._ts = (self._ts + info.frame_ticks) & 0xFFFFFFFF
                    continue
                pcm = self.source.read(FRAME_24K)
                if self._resampler is not None:
                    pcm = self._resampler.process(pcm)
                if self._send(self._packet(self.payload_type, self.codec.encode(pcm))):
                    self.stats.packets_out += 1
                self._ts = (self._ts + info.frame_ticks) & 0xFFFFFFFF
        except Exception:  # never let a sender crash silently
            log.exception("rtp sender failed")
            self.on_timeout()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.wait({self._task})  # its outcome is logged by the sender itself
        if self._transport is not None:
            self._transport.close()
        else:
            self.sock.close()


def _plain_ip(host: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view) as plain IPv4."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def public_address(configured: str | None, local: str) -> str:
    """The address to put in SDP/Contact: configured, else the bound host, else a guess."""
    if configured:
        return configured
    if local not in ("0.0.0.0", "::", ""):
        return local
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return os.environ.get("HOSTNAME", "127.0.0.1")
