"""The assistant's outgoing audio without a coroutine per packet: Opus encode, RTP packetising, RFC 6465 level.

A :class:`ClockedAudioSender` is one call's member of the process-wide
:class:`~v2v.signaling.media_clock.MediaClock`: on each 20 ms tick it pulls
20 ms of PCM from the call's track, computes the RFC 6465 audio level (numpy),
encodes Opus (mono voice, straight into libopus: no re-framing graph, no
executor hop), writes the RTP packet with the header extensions the caller
negotiated (``sdes:mid``, ``abs-send-time``, ``ssrc-audio-level``, byte for
byte what aiortc's ``RtpPacket.serialize`` writes) and hands it to
``transmit`` (SRTP and the socket write, wired by
:mod:`~v2v.signaling.aiortc_tuning`, the only module that knows aiortc's
internals). Sequence numbers go up by one per packet and RTP timestamps by
960 per frame pulled, silence and paused playout included, so both stay
continuous whatever the playout does. Also the PyAV helpers of aiortc's tuned
Opus encoder (:class:`ThreadFreeResampler`, :class:`DirectEncode`), which
still encodes any other track's audio.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.filter
import numpy as np

log = logging.getLogger("v2v.webrtc")

SAMPLE_RATE = 48000
SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz
_RTP_HEADER = struct.Struct("!BBHLL")
_TIME_BASE = Fraction(1, SAMPLE_RATE)
SILENCE_SETTLE = 20  # silent frames encoded before their packets are checked for a period
MAX_PERIOD = 16  # longest period of silent packets looked for (12 measured)


def audio_level_dbov(pcm: np.ndarray) -> int:
    """RFC 6465 audio level of int16 samples in dBov (-127 .. 0), with numpy."""
    if len(pcm) == 0:
        return -127
    x = pcm.astype(np.float64)
    rms = float(np.sqrt(np.dot(x, x) / (len(x) * 32767.0 * 32767.0)))
    if rms <= 0:
        return -127
    return int(round(max(-127.0, min(0.0, 20.0 * np.log10(rms)))))


@dataclass(frozen=True)
class RtpStream:
    """What the packets of one outgoing stream share: SSRC, payload type, the negotiated extension ids."""

    ssrc: int
    payload_type: int
    sequence_number: int  # of the first packet
    timestamp_origin: int
    mid: str | None = None
    mid_id: int = 0  # 0: not negotiated
    abs_send_time_id: int = 0
    audio_level_id: int = 0


class RtpPacketizer:
    """Writes RTP packets of one stream; the extension block's layout is built once.

    Extensions in aiortc's order (mid, abs-send-time, audio level), in the
    one-byte form (RFC 8285) when every id is <= 14, else the two-byte form.
    """

    def __init__(self, stream: RtpStream) -> None:
        self.stream = stream
        self.sequence_number = stream.sequence_number
        self.samples = 0  # RTP clock ticks since timestamp_origin
        self.packets = 0
        self.octets = 0  # payload bytes, as an RTCP sender report counts them
        self.last_timestamp = stream.timestamp_origin
        elems: list[tuple[int, int]] = []  # (id, length) in order
        mid = stream.mid.encode("utf8") if stream.mid is not None and stream.mid_id else b""
        if mid:
            elems.append((stream.mid_id, len(mid)))
        if stream.abs_send_time_id:
            elems.append((stream.abs_send_time_id, 3))
        if stream.audio_level_id:
            elems.append((stream.audio_level_id, 1))
        one_byte = all(i <= 14 for i, _ in elems) and all(1 <= n <= 16 for _, n in elems)
        self._one_byte = one_byte
        self._mid = mid
        self._has_ext = bool(elems)
        self._head: dict[int, bytes] = {}  # element header by id
        size = 0
        for i, n in elems:
            self._head[i] = bytes([(i << 4) | (n - 1)]) if one_byte else bytes([i, n])
            size += len(self._head[i]) + n
        self._pad = b"\x00" * (-size % 4)
        profile = 0xBEDE if one_byte else 0x1000
        self._ext_prefix = struct.pack("!HH", profile, (size + len(self._pad)) >> 2) if elems else b""
        self._b0 = 0x80 | (0x10 if elems else 0)

    def _extensions(self, level: int, abs_send_time: int) -> bytes:
        s = self.stream
        out = [self._ext_prefix]
        if self._mid:
            out += (self._head[s.mid_id], self._mid)
        if s.abs_send_time_id:
            out += (self._head[s.abs_send_time_id], (abs_send_time & 0xFFFFFF).to_bytes(3, "big"))
        if s.audio_level_id:  # voice activity flag 0, level as -dBov (RFC 6465)
            out += (self._head[s.audio_level_id], bytes([(-level) & 0x7F]))
        out.append(self._pad)
        return b"".join(out)

    def packet(self, payload: bytes, level: int, ntp: int) -> bytes:
        """One packet carrying ``payload``, the next sequence number and the current timestamp.

        ``ntp`` is the send time (64-bit NTP) for abs-send-time; the caller advances
        :attr:`samples` with :meth:`advance` once per frame pulled, sent or not.
        """
        s = self.stream
        ts = (s.timestamp_origin + self.samples) & 0xFFFFFFFF
        head = _RTP_HEADER.pack(self._b0, 0x80 | s.payload_type, self.sequence_number, ts, s.ssrc)
        data = head + self._extensions(level, ntp >> 14) + payload if self._has_ext else head + payload
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        self.last_timestamp = ts
        return data

    def advance(self, samples: int) -> None:
        self.samples += samples


class OpusVoiceEncoder:
    """libopus for mono voice, fed 20 ms int16 frames straight into the codec (no re-framing graph).

    Exact silence costs libopus as much as speech (9 of 10 ms per call-second
    here), and a voice agent's outgoing audio is silent most of the time. After
    :data:`SILENCE_SETTLE` silent frames the encoder's packets for silence
    repeat with a short period (12 packets with this libopus); once a whole
    period has repeated, further silence replays the period without running
    the encoder. The decoder receives the packets the encoder itself was
    emitting; the speech after it decodes as faithfully as without the replay
    (12.6 dB SNR against the source either way, 50-100 frames of silence).
    """

    def __init__(self, bit_rate: int, complexity: int) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bit_rate
        codec.format = "s16"
        codec.layout = "mono"
        codec.options = {"application": "voip", "compression_level": str(complexity)}
        codec.sample_rate = SAMPLE_RATE
        codec.time_base = _TIME_BASE
        codec.open()
        self.codec: Any = codec
        self._pts = 0
        self._silent: list[bytes] = []  # the packets of the current silence, while looking for their period
        self._cycle: list[bytes] = []  # the period found: replayed while the silence lasts
        self._replayed = 0
        self.encoded = 0  # frames through libopus
        self.replayed = 0  # silent frames sent from the period

    def encode(self, pcm: np.ndarray) -> bytes | None:
        """One 20 ms frame (960 int16 samples) -> one Opus packet (None while the codec holds it back)."""
        if pcm.any():
            if self._silent or self._cycle:
                self._silent, self._cycle = [], []
        elif self._cycle:
            self._replayed += 1
            self.replayed += 1
            return self._cycle[(self._replayed - 1) % len(self._cycle)]
        encoded = self._encode(pcm)
        if encoded is not None and not pcm.any() and len(self._silent) < SILENCE_SETTLE + 4 * MAX_PERIOD:
            self._silent.append(encoded)
            self._find_period()
        return encoded

    def _find_period(self) -> None:
        """The shortest period that the whole window after the settling frames repeats with."""
        window = self._silent[SILENCE_SETTLE:]
        if len(window) < 2 * MAX_PERIOD:
            return
        for period in range(1, MAX_PERIOD + 1):
            if window[period:] == window[:-period]:
                self._cycle, self._replayed = window[-period:], 0
                return

    def _encode(self, pcm: np.ndarray) -> bytes | None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += len(pcm)
        self.encoded += 1
        packets = self.codec._send_frame_and_recv(frame)  # PyAV's encode() would re-frame through a resampler
        if not packets:
            return None
        return b"".join(bytes(p) for p in packets)


class ThreadFreeResampler:
    """What aiortc's Opus encoder gets instead of PyAV's ``AudioResampler``: the same graph, no threads.

    PyAV's resampler builds an FFmpeg filter graph whose thread pool has one
    thread per CPU, per call (64 on a 32-core host); this one sets
    ``threads = 1`` before adding filters, so FFmpeg starts none (as
    :mod:`v2v.media.resample` does for v2v's own resampling). Same filters
    (``abuffer`` -> ``aformat`` -> ``abuffersink`` with the encoder's frame size),
    so the same output.
    """

    def __init__(self, format: str, layout: str, rate: int, frame_size: int) -> None:
        self.format, self.layout, self.rate, self.frame_size = format, layout, rate, frame_size
        self._graph: Any = None

    def _build(self, frame: av.AudioFrame) -> Any:
        graph = av.filter.Graph()
        graph.threads = 1  # before any filter is added: FFmpeg starts no thread pool
        src = graph.add_abuffer(format=frame.format.name, sample_rate=frame.sample_rate,
                                layout=frame.layout.name, time_base=frame.time_base)
        fmt = graph.add("aformat", sample_fmts=self.format, channel_layouts=self.layout,
                        sample_rates=str(self.rate))
        sink = graph.add("abuffersink")
        src.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        graph.set_audio_frame_size(self.frame_size)
        return graph

    def resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if self._graph is None:
            self._graph = self._build(frame)
        self._graph.push(frame)
        out: list[av.AudioFrame] = []
        while True:
            try:
                out.append(self._graph.pull())
            except EOFError:
                break
            except av.FFmpegError as e:
                if e.errno != errno.EAGAIN:
                    raise
                break
        return out


class DirectEncode:
    """The encoder's codec context, fed frames already in its format and frame size.

    PyAV's ``CodecContext.encode`` re-frames every audio frame through an
    ``AudioResampler`` of its own (threads as above, even when nothing is to be
    converted); the frames :class:`ThreadFreeResampler` makes need none of it,
    so they go to the codec directly (``_send_frame_and_recv``, checked by
    :func:`~v2v.signaling.aiortc_tuning.missing_internals`).
    """

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        codec.open()

    def encode(self, frame: av.AudioFrame) -> list[Any]:
        tb = self._codec.time_base
        if frame.pts is not None and frame.time_base is not None and frame.time_base != tb:
            frame.pts = int(frame.pts * frame.time_base / tb)
        frame.time_base = tb
        return list(self._codec._send_frame_and_recv(frame))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)


Transmit = Callable[[bytes, int], bool]  # (packet, tick's NTP time) -> False: the transport is gone, stop


class TrackEnded(Exception):
    """Raised by a sender's ``pull`` when its track has ended."""


class ClockedAudioSender:
    """One call's outgoing audio, one packet per media-clock tick.

    ``pull`` returns the next 20 ms (None: nothing to send this tick, e.g. no
    track yet; :class:`TrackEnded` when the track has ended); ``enabled`` says whether to send what was pulled (a disabled
    sender still drains its track, as aiortc's does); ``transmit`` protects and
    writes a packet. :meth:`tick` returns False once the sender is done
    (``finished`` says why: ``"ended"``, ``"transport"`` or ``"error"``).
    """

    def __init__(self, pull: Callable[[], np.ndarray | None], packetizer: RtpPacketizer,
                 encoder: OpusVoiceEncoder, transmit: Transmit,
                 enabled: Callable[[], bool] = lambda: True) -> None:
        self.pull = pull
        self.packetizer = packetizer
        self.encoder = encoder
        self.transmit = transmit
        self.enabled = enabled
        self.finished: str | None = None
        self.on_finish: Callable[[str], None] | None = None

    def finish(self, why: str) -> None:
        if self.finished is None:
            self.finished = why
            if self.on_finish is not None:
                self.on_finish(why)

    def tick(self, ntp: int) -> bool:
        if self.finished is not None:
            return False
        try:
            pcm = self.pull()
            if pcm is None:
                return True
            pk = self.packetizer
            if self.enabled():
                payload = self.encoder.encode(pcm)
                if payload is not None and not self.transmit(pk.packet(payload, audio_level_dbov(pcm), ntp), ntp):
                    self.finish("transport")
                    return False
            pk.advance(len(pcm))
        except TrackEnded:
            self.finish("ended")
            return False
        except Exception:
            log.warning("clocked audio sender failed, its call goes silent", exc_info=True)
            self.finish("error")
            return False
        return True
