"""Process-wide tuning of aiortc for a voice server (measured in bench/, see BENCHMARKS.md).

aiortc is built for general media. For many concurrent voice calls on one
core three of its defaults cost more than they give:

* every outgoing Opus frame is encoded through ``loop.run_in_executor``: a
  thread-pool hop per 20 ms per call, and under the GIL the event loop that
  paces every call's frames waits behind the codec threads;
* every receiver decodes in a thread of its own (N calls, N threads taking
  turns on the GIL);
* the Opus encoder is stereo at 96 kbit/s and complexity 10, for a mono voice,
  and re-frames through PyAV's ``AudioResampler``, whose FFmpeg graph starts a
  thread per CPU for every call.

:func:`install` encodes and decodes audio on the event loop (each is ~0.1 ms
of C per packet) and encodes mono voice (32 kbit/s, VoIP mode, complexity 5)
re-framed by a :class:`ThreadFreeResampler`.
The SDP still says ``opus/48000/2``: every Opus decoder takes a mono stream.
Measured: calls per core 16 -> 30 with the same pacing criterion, CPU per
call-second -14 % from the thread hops alone (``bench/load.py``). It also
replaces aiortc's per-sample Python RFC 6465 audio level with numpy, and
:func:`patch_receiver` gives each audio receiver a jitter buffer that hands
every packet to the decoder at once (aiortc's waits ~80 ms). Each DTLS
transport also stamps the time of its caller's last authenticated RTP or RTCP
packet (:func:`last_packet_at`): a caller whose client is gone sends neither,
a muted one still sends RTCP (and DTX/silence RTP).

This is the only module of v2v that reaches into aiortc's private internals.
Nothing happens on import: the server calls :func:`install` at start-up
(``v2v serve``, ``v2v worker``). :func:`install` first checks that every
internal it replaces still exists and that aiortc is a tested version
(:data:`TESTED_AIORTC`); if not, it logs one warning and leaves aiortc stock.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import types
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import av
import av.audio.codeccontext
import av.filter
import numpy as np
from aioice import ice as aioice_ice
from aiortc import rtcdtlstransport, rtcrtpreceiver, rtcrtpsender
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import get_decoder, opus
from aiortc.jitterbuffer import JitterFrame
from aiortc.utils import uint16_add

log = logging.getLogger("v2v.webrtc")

OPUS_BITRATE = 32000
OPUS_COMPLEXITY = 5
TESTED_AIORTC = ((1, 9), (1, 16))  # oldest and newest minor version the tuning was tested on (setup.cfg bounds)
JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
RX_ATTR = "_v2v_rx_at"  # set on an RTCDtlsTransport: time.monotonic() of its last inbound RTP/RTCP packet
DTLS_HANDLERS = ("_handle_rtp_data", "_handle_rtcp_data")  # called with each unprotected SRTP/SRTCP packet
_installed = False
_supported: bool | None = None  # None: not checked yet


class _InlineExecutorLoop:
    """The sender's event loop, except that ``run_in_executor`` runs at once."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> Any:
        fut = self._loop.create_future()
        try:
            fut.set_result(func(*args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class _InlineDecodeQueue:
    """Stands in for an audio receiver's decoder queue: decodes on ``put``."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._decoder: Any = None
        self._codec_name: str | None = None

    def put(self, item: Any) -> None:
        out = self._receiver._track._queue
        if item is None:  # the receiver stops: end the track
            out.put_nowait(None)
            return
        codec, encoded_frame = item
        if codec.name != self._codec_name:
            self._decoder = get_decoder(codec)
            self._codec_name = codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:  # like aiortc: drop the frame, keep the decoder state
            log.debug("audio decode failed: %s", exc)
            return
        for frame in frames:
            out.put_nowait(frame)


class _NoThread:
    """What aiortc gets instead of an audio decoder thread (nothing to run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


def _thread(*args: Any, **kwargs: Any) -> Any:
    if kwargs.get("target") is rtcrtpreceiver.decoder_worker and kwargs.get("name") == "audio-decoder":
        return _NoThread()
    return threading.Thread(*args, **kwargs)


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


class _DirectEncode:
    """The encoder's codec context, fed frames already in its format and frame size.

    PyAV's ``CodecContext.encode`` re-frames every audio frame through an
    ``AudioResampler`` of its own (threads as above, even when nothing is to be
    converted); the frames :class:`ThreadFreeResampler` makes need none of it,
    so they go to the codec directly (``_send_frame_and_recv``, checked by
    :func:`missing_internals`).
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


def _voice_encoder(self: Any) -> None:
    _stock_encoder_init(self)
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.options = {"application": "voip", "compression_level": str(OPUS_COMPLEXITY)}
    codec.sample_rate = opus.SAMPLE_RATE
    codec.time_base = opus.TIME_BASE
    self.codec = _DirectEncode(codec)
    self.resampler = ThreadFreeResampler("s16", "mono", opus.SAMPLE_RATE, opus.SAMPLES_PER_FRAME)


def _sender_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _stock_sender_init(self, *args, **kwargs)
    self._RTCRtpSender__loop = _InlineExecutorLoop(self._RTCRtpSender__loop)


def _receiver_init(self: Any, kind: str, *args: Any, **kwargs: Any) -> None:
    _stock_receiver_init(self, kind, *args, **kwargs)
    if kind == "audio":
        self._RTCRtpReceiver__decoder_queue = _InlineDecodeQueue(self)


def _audio_level_dbov(frame: Any) -> int:
    """RFC 6465 audio level with numpy (aiortc's version loops over every sample)."""
    pcm = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16)
    if len(pcm) == 0:
        return -127
    x = pcm.astype(np.float64)
    rms = float(np.sqrt(np.dot(x, x) / (len(x) * 32767.0 * 32767.0)))
    if rms <= 0:
        return -127
    return int(round(max(-127.0, min(0.0, 20.0 * np.log10(rms)))))


class ImmediateAudioJitterBuffer:
    """Hands each audio packet to the decoder as it arrives.

    aiortc's audio jitter buffer waits for 4 later packets (~80 ms) before
    releasing one; a voice agent needs the caller's speech onset at once
    (barge-in). Duplicates and late (reordered) packets are dropped.
    """

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            delta = uint16_add(seq, -self._last)
            if delta == 0:
                return False, None  # duplicate
            if delta > 0x8000 and 0x10000 - delta < 100:
                return False, None  # late: already past it
        self._last = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def patch_receiver(receiver: Any) -> None:
    """Give one audio receiver the immediate jitter buffer (when aiortc has the internal it replaces)."""
    if not supported():
        return
    if hasattr(receiver, JITTER_ATTR) and not isinstance(getattr(receiver, JITTER_ATTR), ImmediateAudioJitterBuffer):
        setattr(receiver, JITTER_ATTR, ImmediateAudioJitterBuffer())


async def _dtls_rtp(self: Any, data: bytes, arrival_time_ms: int) -> None:
    setattr(self, RX_ATTR, time.monotonic())
    await _stock_dtls_rtp(self, data, arrival_time_ms)


async def _dtls_rtcp(self: Any, data: bytes) -> None:
    setattr(self, RX_ATTR, time.monotonic())
    await _stock_dtls_rtcp(self, data)


def last_packet_at(dtls_transport: Any) -> float | None:
    """``time.monotonic()`` of the last RTP or RTCP packet the peer sent on this DTLS transport.

    None before the first one, or when aiortc runs stock (no stamp: the caller
    decides without it).
    """
    at = getattr(dtls_transport, RX_ATTR, None)
    return at if isinstance(at, float) else None


# aiortc's own versions, kept to compare against and to check what install() replaces
aiortc_audio_level_dbov = aiortc_rtp.compute_audio_level_dbov
_stock_encoder_init = opus.OpusEncoder.__init__
_stock_sender_init = rtcrtpsender.RTCRtpSender.__init__
_stock_receiver_init = rtcrtpreceiver.RTCRtpReceiver.__init__
_stock_dtls_rtp: Any = getattr(getattr(rtcdtlstransport, "RTCDtlsTransport", None), DTLS_HANDLERS[0], None)
_stock_dtls_rtcp: Any = getattr(getattr(rtcdtlstransport, "RTCDtlsTransport", None), DTLS_HANDLERS[1], None)


def _assigned_in_init(cls: Any, attrs: tuple[str, ...]) -> list[str]:
    """Which of ``attrs`` the stock ``cls.__init__`` does not set (names are mangled at compile time)."""
    init: Any = getattr(cls, "__init__", None)
    installed_inits: dict[Any, Any] = {_sender_init: _stock_sender_init, _receiver_init: _stock_receiver_init,
                                       _voice_encoder: _stock_encoder_init}
    init = installed_inits.get(init, init)  # once installed, check what the stock __init__ sets
    code = getattr(init, "__code__", None)
    names = set(code.co_names) if code is not None else set()
    return [f"{cls.__name__}.{a}" for a in attrs if a not in names]


def _aiortc_version() -> tuple[int, int] | None:
    try:
        parts = version("aiortc").split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return None


def missing_internals(sender_mod: Any = None, receiver_mod: Any = None,
                      rtp_mod: Any = None, opus_mod: Any = None, dtls_mod: Any = None) -> list[str]:
    """What the tuning replaces that this aiortc lacks (empty: all present). Modules injectable for tests."""
    dtls_mod = dtls_mod or rtcdtlstransport
    dtls = getattr(dtls_mod, "RTCDtlsTransport", None)
    missing = [f"rtcdtlstransport.RTCDtlsTransport.{h}" for h in DTLS_HANDLERS
               if not callable(getattr(dtls, h, None))]
    sender_mod = sender_mod or rtcrtpsender
    receiver_mod = receiver_mod or rtcrtpreceiver
    rtp_mod = rtp_mod or aiortc_rtp
    opus_mod = opus_mod or opus
    sender = getattr(sender_mod, "RTCRtpSender", None)
    receiver = getattr(receiver_mod, "RTCRtpReceiver", None)
    if sender is None:
        missing.append("rtcrtpsender.RTCRtpSender")
    else:
        missing += _assigned_in_init(sender, ("_RTCRtpSender__loop",))
    if receiver is None:
        missing.append("rtcrtpreceiver.RTCRtpReceiver")
    else:
        missing += _assigned_in_init(receiver, ("_RTCRtpReceiver__decoder_queue", JITTER_ATTR, "_track"))
    encoder = getattr(opus_mod, "OpusEncoder", None)
    if encoder is not None:  # its encode() resamples through self.resampler
        missing += _assigned_in_init(encoder, ("resampler",))
    for mod, name, attr in ((receiver_mod, "rtcrtpreceiver", "threading"),
                            (receiver_mod, "rtcrtpreceiver", "decoder_worker"),
                            (rtp_mod, "rtp", "compute_audio_level_dbov"),
                            (opus_mod, "codecs.opus", "OpusEncoder"),
                            (opus_mod, "codecs.opus", "SAMPLE_RATE"),
                            (opus_mod, "codecs.opus", "SAMPLES_PER_FRAME"),
                            (opus_mod, "codecs.opus", "TIME_BASE")):
        if not hasattr(mod, attr):
            missing.append(f"{name}.{attr}")
    for cls, name, attr in ((av.audio.codeccontext.AudioCodecContext, "av.AudioCodecContext", "_send_frame_and_recv"),
                            (av.filter.Graph, "av.filter.Graph", "set_audio_frame_size")):
        if not callable(getattr(cls, attr, None)):
            missing.append(f"{name}.{attr}")  # PyAV's, for the thread-free Opus encoding
    if hasattr(receiver_mod, "threading") and not callable(getattr(receiver_mod.threading, "Thread", None)):
        missing.append("rtcrtpreceiver.threading.Thread")
    return missing


def unsupported_reason(**modules: Any) -> str:
    """Why the tuning cannot be applied here ("" when it can)."""
    ver = _aiortc_version()
    lo, hi = TESTED_AIORTC
    if ver is None or not lo <= ver <= hi:
        shown = "unknown" if ver is None else f"{ver[0]}.{ver[1]}"
        return f"aiortc {shown} is outside the tested range {lo[0]}.{lo[1]}..{hi[0]}.{hi[1]}"
    missing = missing_internals(**modules)
    if missing:
        return "aiortc lacks what it replaces: " + ", ".join(missing)
    return ""


def supported() -> bool:
    """True when this aiortc can be tuned (checked once per process; a failure is logged once)."""
    global _supported
    if _supported is None:
        reason = unsupported_reason()
        _supported = not reason
        if reason:
            log.warning("aiortc tuning disabled, running aiortc stock: %s", reason)
    return _supported


def installed() -> bool:
    """True once :func:`install` has applied the tuning in this process."""
    return _installed


def install() -> bool:
    """Apply the tuning once per process (idempotent); False when aiortc is left stock."""
    global _installed
    if _installed:
        return True
    if not supported():
        return False
    aiortc_rtp.compute_audio_level_dbov = _audio_level_dbov
    setattr(opus.OpusEncoder, "__init__", _voice_encoder)  # noqa: B010  (mypy forbids assigning a method)
    setattr(rtcrtpsender.RTCRtpSender, "__init__", _sender_init)  # noqa: B010  (as above)
    setattr(rtcrtpreceiver.RTCRtpReceiver, "__init__", _receiver_init)  # noqa: B010  (as above)
    setattr(rtcdtlstransport.RTCDtlsTransport, DTLS_HANDLERS[0], _dtls_rtp)
    setattr(rtcdtlstransport.RTCDtlsTransport, DTLS_HANDLERS[1], _dtls_rtcp)
    setattr(rtcrtpreceiver, "threading", types.SimpleNamespace(Thread=_thread, Event=threading.Event))  # noqa: B010  (a module attribute of another type)
    _installed = True
    return True


# -- the local addresses ICE gathers host candidates on (--media-address) --------------------------
_stock_host_addresses: Any = getattr(aioice_ice, "get_host_addresses", None)


def _gathers_through_host_addresses() -> bool:
    """True when this aioice asks its module's ``get_host_addresses`` for the host candidates' addresses."""
    gather = getattr(getattr(aioice_ice, "Connection", None), "gather_candidates", None)
    code = getattr(gather, "__code__", None)
    return callable(_stock_host_addresses) and code is not None and "get_host_addresses" in code.co_names


def restrict_host_addresses(addresses: list[str]) -> bool:
    """Gather WebRTC host candidates (and bind their sockets) only on ``addresses``; [] restores every interface.

    aioice has no parameter for it: ``Connection.gather_candidates`` lists the
    machine's interfaces through the module function ``get_host_addresses``,
    which this replaces (process-wide; aioice's own filters for IPv4/IPv6 still
    apply). False, with one warning, when this aioice gathers otherwise: then
    it runs stock and advertises every interface.
    """
    if not _gathers_through_host_addresses():
        if addresses:
            log.warning("--media-address cannot restrict ICE candidates with this aioice (no get_host_addresses "
                        "used by Connection.gather_candidates): every interface is advertised")
        return False
    if not addresses:
        setattr(aioice_ice, "get_host_addresses", _stock_host_addresses)  # noqa: B010  (a module function)
        return True
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    setattr(aioice_ice, "get_host_addresses", host_addresses)  # noqa: B010  (a module function)
    return True
