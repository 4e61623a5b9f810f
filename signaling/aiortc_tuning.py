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

Issue 15 (CPU per call): :func:`receive_direct` decodes the caller's Opus in
the receiver's RTP hook and hands PCM straight to the call (no decoder queue,
remote-track queue or reading task); ``RTCRtpSender._run_rtp`` is replaced so
that an Opus sender of a track with ``pull()`` (v2v's
:class:`~v2v.media.track.AssistantTrack`) is sent by the process's one
:class:`~v2v.signaling.media_clock.MediaClock` through a
:class:`~v2v.signaling.lean_sender.ClockedAudioSender` (encode, packetise,
SRTP with the DTLS transport's session, one ``sendto`` on the ICE pair's
socket; aiortc's RTCP task still sends the sender reports from the counters it
keeps); any other sender runs aiortc's own loop.

This is the only module of v2v that reaches into aiortc's private internals.
Nothing happens on import: the server calls :func:`install` at start-up
(``v2v serve``, ``v2v worker``). :func:`install` first checks that every
internal it replaces still exists and that aiortc is a tested version
(:data:`TESTED_AIORTC`); if not, it logs one warning and leaves aiortc stock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import types
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import av
import av.audio.codeccontext
import av.filter
import numpy as np
from aioice import ice as aioice_ice
from aiortc import rtcdtlstransport, rtcicetransport, rtcrtpreceiver, rtcrtpsender
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import get_decoder, opus
from aiortc.jitterbuffer import JitterFrame
from aiortc.utils import random32, uint16_add

from .lean_sender import (
    ClockedAudioSender,
    DirectEncode,
    OpusVoiceEncoder,
    RtpPacketizer,
    RtpStream,
    ThreadFreeResampler,
    TrackEnded,
    audio_level_dbov,
)
from .media_clock import get_clock, ntp_now

log = logging.getLogger("v2v.webrtc")

OPUS_BITRATE = 32000
OPUS_COMPLEXITY = 5
TESTED_AIORTC = ((1, 9), (1, 16))  # oldest and newest minor version the tuning was tested on (setup.cfg bounds)
JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
RX_ATTR = "_v2v_rx_at"  # set on an RTCDtlsTransport: time.monotonic() of its last inbound RTP/RTCP packet
DTLS_HANDLERS = ("_handle_rtp_data", "_handle_rtcp_data")  # called with each unprotected SRTP/SRTCP packet
CLOCKED_ATTR = "_v2v_clocked"  # set on an RTCRtpSender whose audio the media clock sends
DIRECT_ATTR = "_v2v_direct_rx"  # set on an audio receiver whose packets go straight to the call
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


def _voice_encoder(self: Any) -> None:
    _stock_encoder_init(self)
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.options = {"application": "voip", "compression_level": str(OPUS_COMPLEXITY)}
    codec.sample_rate = opus.SAMPLE_RATE
    codec.time_base = opus.TIME_BASE
    self.codec = DirectEncode(codec)
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
    return audio_level_dbov(np.frombuffer(bytes(frame.planes[0]), dtype=np.int16))


class ImmediateAudioJitterBuffer:
    """Hands each audio packet to the decoder as it arrives.

    aiortc's audio jitter buffer waits for 4 later packets (~80 ms) before
    releasing one; a voice agent needs the caller's speech onset at once
    (barge-in). Duplicates and late (reordered) packets are dropped.
    """

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def fresh(self, seq: int) -> bool:
        """False for a duplicate or a late (already passed) sequence number; True moves past ``seq``."""
        if self._last is not None:
            delta = uint16_add(seq, -self._last)
            if delta == 0 or (delta > 0x8000 and 0x10000 - delta < 100):
                return False
        self._last = seq
        return True

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        if not self.fresh(packet.sequence_number):
            return False, None
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def patch_receiver(receiver: Any) -> None:
    """Give one audio receiver the immediate jitter buffer (when aiortc has the internal it replaces)."""
    if not supported():
        return
    if hasattr(receiver, JITTER_ATTR) and not isinstance(getattr(receiver, JITTER_ATTR), ImmediateAudioJitterBuffer):
        setattr(receiver, JITTER_ATTR, ImmediateAudioJitterBuffer())


def receive_direct(receiver: Any, deliver: Callable[[np.ndarray], None]) -> bool:
    """Decode this audio receiver's Opus packets in its RTP hook and hand ``deliver`` mono 48 kHz int16 PCM.

    No jitter buffer object, decoder queue, remote-track queue or reading
    task: duplicates and late packets are dropped (the
    :class:`ImmediateAudioJitterBuffer` rule), RTCP receiver statistics are
    still fed, the remote track only ends when the receiver stops. False
    (nothing changed) when the tuning is not applicable; idempotent.
    """
    if not supported() or getattr(receiver, DIRECT_ATTR, False):
        return bool(getattr(receiver, DIRECT_ATTR, False))
    codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs
    streams: dict[int, Any] = receiver._RTCRtpReceiver__remote_streams
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", opus.SAMPLE_RATE
    order = ImmediateAudioJitterBuffer()

    async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
        codec = codecs.get(packet.payload_type)
        if not receiver._enabled or codec is None:
            return
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = rtcrtpreceiver.StreamStatistics(codec.clockRate)
        stats.add(packet)
        if codec.name.lower() != "opus" or not packet.payload or not order.fresh(packet.sequence_number):
            return
        try:
            frames = decoder.decode(av.Packet(packet.payload))
        except av.FFmpegError as exc:  # like aiortc: drop the packet, keep the decoder state
            log.debug("audio decode failed: %s", exc)
            return
        for frame in frames:
            deliver(frame.to_ndarray().reshape(-1))

    receiver._handle_rtp_packet = handle_rtp_packet
    setattr(receiver, DIRECT_ATTR, True)
    return True


# -- one media clock for every call's outgoing audio (signaling/media_clock.py, signaling/lean_sender.py) --
def _pull(sender: Any) -> Callable[[], np.ndarray | None]:
    def pull() -> np.ndarray | None:
        track = sender._RTCRtpSender__track
        if track is None:
            return None  # no track (yet): nothing this tick, as aiortc's loop waits 20 ms
        if track.readyState != "live":
            raise TrackEnded
        out: np.ndarray = track.pull()
        return out

    return pull


def _transmit(sender: Any, packetizer: RtpPacketizer) -> Callable[[bytes, int], bool]:
    """SRTP through the DTLS transport's session, one datagram on the ICE pair's socket, aiortc's counters."""
    connected = rtcdtlstransport.State.CONNECTED

    def transmit(data: bytes, ntp: int) -> bool:
        dtls = sender._RTCRtpSender__transport
        pair = dtls.transport._connection._nominated.get(1)
        if dtls._state != connected or pair is None or pair.protocol.transport.is_closing():
            return False  # aiortc's loop ends on the ConnectionError of the same checks
        protected = dtls._tx_srtp.protect(data)
        pair.protocol.transport.sendto(protected, pair.remote_addr)
        # what the sender's RTCP task puts into its sender reports
        sender._RTCRtpSender__ntp_timestamp = ntp
        sender._RTCRtpSender__rtp_timestamp = packetizer.last_timestamp
        sender._RTCRtpSender__packet_count = packetizer.packets
        sender._RTCRtpSender__octet_count = packetizer.octets
        return True

    return transmit


def _clocked_sender(sender: Any, codec: Any) -> ClockedAudioSender | None:
    """The clock-driven sender for an Opus sender of a track that can be pulled (else None: aiortc's loop)."""
    track = sender._RTCRtpSender__track
    if codec.name.lower() != "opus" or not callable(getattr(track, "pull", None)):
        return None
    ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids
    stream = RtpStream(ssrc=sender._ssrc, payload_type=codec.payloadType,
                       sequence_number=rtcrtpsender.random_sequence_number(), timestamp_origin=random32(),
                       mid=sender._RTCRtpSender__mid, mid_id=ids.mid or 0,
                       abs_send_time_id=ids.abs_send_time or 0, audio_level_id=ids.audio_level or 0)
    packetizer = RtpPacketizer(stream)
    return ClockedAudioSender(_pull(sender), packetizer, OpusVoiceEncoder(OPUS_BITRATE, OPUS_COMPLEXITY),
                          _transmit(sender, packetizer), enabled=lambda: bool(sender._enabled))


def clocked_sender(sender: Any) -> ClockedAudioSender | None:
    """The clock-driven sender sending this ``RTCRtpSender``'s audio (None: aiortc's own loop sends it)."""
    clocked = getattr(sender, CLOCKED_ATTR, None)
    return clocked if isinstance(clocked, ClockedAudioSender) else None


async def _run_rtp(self: Any, codec: Any) -> None:
    """``RTCRtpSender._run_rtp``: the process's media clock sends this sender's audio (else aiortc's own loop)."""
    clocked = _clocked_sender(self, codec)
    if clocked is None:
        await _stock_run_rtp(self, codec)
        return
    self._RTCRtpSender__rtp_started.set()
    setattr(self, CLOCKED_ATTR, clocked)
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def finished(why: str) -> None:
        if not done.done():
            done.set_result(why)

    clocked.on_finish = finished
    clock = get_clock()
    clock.add(clocked)
    clocked.tick(ntp_now())  # the first frame at once, as aiortc's loop sends it; then on the grid
    try:
        await done
    except asyncio.CancelledError:
        pass
    finally:
        clock.discard(clocked)
        clocked.finish("stopped")
        track = self._RTCRtpSender__track
        if track is not None:  # as aiortc's loop does when it ends
            track.stop()
            self._RTCRtpSender__track = None
        self._RTCRtpSender__rtp_exited.set()


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
_stock_run_rtp: Any = getattr(rtcrtpsender.RTCRtpSender, "_run_rtp", None)
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


SENDER_ATTRS = ("_RTCRtpSender__loop", "_RTCRtpSender__transport", "_RTCRtpSender__mid",
                "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__rtp_header_extensions_map",
                "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp", "_RTCRtpSender__packet_count",
                "_RTCRtpSender__octet_count", "_ssrc", "_enabled")


def _send_path_missing(dtls_mod: Any, rtp_mod: Any) -> list[str]:
    """What the clock-driven sender reads on its way to the socket that this aiortc/aioice lacks."""
    missing: list[str] = []
    state = getattr(getattr(dtls_mod, "State", None), "CONNECTED", None)
    if state is None:
        missing.append("rtcdtlstransport.State.CONNECTED")
    for cls, attrs in ((getattr(dtls_mod, "RTCDtlsTransport", None), ("_state", "_tx_srtp", "_transport")),
                       (rtcicetransport.RTCIceTransport, ("_connection",)),
                       (aioice_ice.Connection, ("_nominated",)),
                       (getattr(rtp_mod, "HeaderExtensionsMap", None), ("_HeaderExtensionsMap__ids",))):
        if cls is None:
            missing.append(f"{attrs[0]} (its class)")
        else:
            missing += _assigned_in_init(cls, attrs)
    return missing


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
        missing += _assigned_in_init(sender, SENDER_ATTRS)
        if not callable(getattr(sender, "_run_rtp", None)):
            missing.append("rtcrtpsender.RTCRtpSender._run_rtp")
        code = getattr(getattr(sender, "replaceTrack", None), "__code__", None)
        if code is None or "_RTCRtpSender__track" not in code.co_names:
            missing.append("RTCRtpSender.replaceTrack sets _RTCRtpSender__track")
    if receiver is None:
        missing.append("rtcrtpreceiver.RTCRtpReceiver")
    else:
        missing += _assigned_in_init(receiver, ("_RTCRtpReceiver__decoder_queue", JITTER_ATTR, "_track", "_enabled",
                                                "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__remote_streams"))
    encoder = getattr(opus_mod, "OpusEncoder", None)
    if encoder is not None:  # its encode() resamples through self.resampler
        missing += _assigned_in_init(encoder, ("resampler",))
    missing += _send_path_missing(dtls_mod, rtp_mod)
    for mod, name, attr in ((receiver_mod, "rtcrtpreceiver", "threading"),
                            (receiver_mod, "rtcrtpreceiver", "StreamStatistics"),
                            (sender_mod, "rtcrtpsender", "random_sequence_number"),
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
    setattr(rtcrtpsender.RTCRtpSender, "_run_rtp", _run_rtp)  # noqa: B010  (a method, as above)
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
