"""RTP arrival timing at the receiving side: a hook on aiortc's receiver and the pacing figures.

:func:`hook_receiver` wraps one ``RTCRtpReceiver._handle_rtp_packet`` so each
packet is timestamped on arrival (before the jitter buffer and the decoder);
with ``decode=False`` the packet is not passed on (a load caller then costs
no decode at all). :func:`pacing` turns the arrivals of one call into send
interval percentiles, late frames and underruns.

Definitions (all at 48 kHz RTP clock, 20 ms packets):

- interval: time between two consecutive packet arrivals.
- late frame: a packet arriving more than ``late_ms`` after its RTP-timestamp
  schedule, the schedule anchored at the smallest transit delay seen in the
  window (a receiver with a ``late_ms`` jitter buffer would have run dry).
- underrun: during active speech (RFC 6465 audio level above ``active_dbov`` on
  both sides of the gap), an arrival gap longer than three frames, or an RTP
  timestamp step larger than the sequence step (audio the sender skipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

FRAME_TS = 960  # RTP timestamp units per 20 ms at 48 kHz
RTP_RATE = 48000


@dataclass
class Arrivals:
    """Per-packet arrival records of one receiver (parallel lists)."""

    t: list[float] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    level: list[int | None] = field(default_factory=list)  # dBov (<= 0), None without the extension
    size: list[int] = field(default_factory=list)
    keep_payload: bool = False
    payload: list[bytes] = field(default_factory=list)
    # without the audio-level header extension (a sender of ready Opus packets omits it), the level
    # is computed from the decoded packet when ``decode_level`` is set (costs a decode per packet)
    decode_level: bool = False
    _decoder: Any = None

    def add(self, now: float, packet: Any) -> None:
        if self.keep_payload:
            self.payload.append(packet.payload)
        self.t.append(now)
        self.seq.append(packet.sequence_number)
        self.ts.append(packet.timestamp)
        lvl = packet.extensions.audio_level
        if lvl is not None:
            self.level.append(-int(lvl[1]))
        elif self.decode_level:
            self.level.append(self._decoded_level(packet))
        else:
            self.level.append(None)
        self.size.append(len(packet.payload))

    def _decoded_level(self, packet: Any) -> int:
        """RFC 6465 level (dBov, -127 for digital silence) of the decoded packet."""
        import av
        import numpy as np

        if self._decoder is None:
            self._decoder = av.CodecContext.create("libopus", "r")
            self._decoder.format = "s16"
            self._decoder.layout = "mono"
            self._decoder.sample_rate = RTP_RATE
        pkt = av.Packet(packet.payload)
        x = np.concatenate([f.to_ndarray().reshape(-1) for f in self._decoder.decode(pkt)] or [np.zeros(0, np.int16)])
        if not len(x) or not np.any(x):
            return -127
        xf = x.astype(np.float32)
        rms = float(np.sqrt(np.dot(xf, xf) / len(xf))) / 32767.0
        return int(round(max(-127.0, min(0.0, 20.0 * np.log10(max(rms, 1e-12))))))

    def window(self, t0: float, t1: float) -> Arrivals:
        out = Arrivals()
        for i, t in enumerate(self.t):
            if t0 <= t <= t1:
                out.t.append(t)
                out.seq.append(self.seq[i])
                out.ts.append(self.ts[i])
                out.level.append(self.level[i])
                out.size.append(self.size[i])
        return out


def hook_receiver(receiver: Any, arrivals: Arrivals, decode: bool = True) -> None:
    """Timestamp each RTP packet that reaches ``receiver``; pass it on only if ``decode``."""
    original = receiver._handle_rtp_packet

    async def _handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
        arrivals.add(time.monotonic(), packet)
        if decode:
            await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = _handle_rtp_packet


def _unwrap(values: list[int], modulo: int) -> list[int]:
    out: list[int] = []
    off = 0
    prev: int | None = None
    half = modulo // 2
    for v in values:
        if prev is not None:
            d = v - prev
            if d < -half:
                off += modulo
            elif d > half:
                off -= modulo
        out.append(v + off)
        prev = v
    return out


@dataclass
class Pacing:
    packets: int = 0
    intervals_ms: list[float] = field(default_factory=list)
    late: int = 0
    underruns: int = 0
    lost: int = 0
    active_packets: int = 0
    max_lateness_ms: float = 0.0


def pacing(a: Arrivals, late_ms: float = 40.0, active_dbov: int = -50, gap_frames: float = 3.0) -> Pacing:
    p = Pacing(packets=len(a.t))
    if len(a.t) < 2:
        return p
    seq = _unwrap(a.seq, 1 << 16)
    ts = _unwrap(a.ts, 1 << 32)
    # order by sequence number (reordering is rare on loopback, but arrivals stay as measured)
    order = sorted(range(len(seq)), key=seq.__getitem__)
    active = [lv is None or lv > active_dbov for lv in a.level]
    p.active_packets = sum(active)
    p.intervals_ms = [1000.0 * (a.t[i] - a.t[i - 1]) for i in range(1, len(a.t))]
    # late: transit delay relative to the RTP schedule; re-anchor after a timestamp jump (new talkspurt clock)
    seg_start = 0
    delays: list[float] = []
    segs: list[tuple[int, int]] = []
    for k in range(1, len(order) + 1):
        if k == len(order) or abs((ts[order[k]] - ts[order[k - 1]]) - FRAME_TS * (seq[order[k]] - seq[order[k - 1]])) > RTP_RATE:
            segs.append((seg_start, k))
            seg_start = k
    for s, e in segs:
        d = [a.t[order[k]] - ts[order[k]] / RTP_RATE for k in range(s, e)]
        base = min(d)
        for x in d:
            lateness = 1000.0 * (x - base)
            delays.append(lateness)
            if lateness > late_ms:
                p.late += 1
    p.max_lateness_ms = max(delays) if delays else 0.0
    prev = order[0]
    for k in order[1:]:
        dseq = seq[k] - seq[prev]
        if dseq > 1:
            p.lost += dseq - 1
        if active[k] and active[prev]:
            gap = a.t[k] - a.t[prev]
            if gap > gap_frames * FRAME_TS / RTP_RATE * max(1, dseq):
                p.underruns += 1
            elif dseq >= 1 and ts[k] - ts[prev] > FRAME_TS * dseq:
                p.underruns += 1
        prev = k
    return p
