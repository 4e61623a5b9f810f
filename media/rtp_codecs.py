"""RTP audio codecs of plain-RTP calls: G.711 (PCMU/PCMA), G.722 and Opus.

Each codec is described by a :class:`CodecInfo` (its SDP name, RTP clock rate,
the PCM rate its decoder gives and its encoder takes, its 20 ms frame in clock
ticks and in samples) and made by :func:`make_codec`: an object with
``encode(pcm) -> bytes`` (one 20 ms frame at ``info.encode_rate``) and
``decode(payload) -> np.ndarray`` (int16 mono at ``info.audio_rate``).

- G.711 stays on :mod:`media.g711`'s lookup tables (8 kHz, clock 8000).
- G.722 (PyAV's ``g722``): 16 kHz audio, but an RTP clock of 8000 (RFC 3551's
  historical error, kept by every implementation): a 20 ms packet carries 320
  samples and advances the timestamp by 160.
- Opus (PyAV's ``libopus``, RFC 7587): the RTP clock is 48000 whatever the
  audio bandwidth; the decoder gives 48 kHz mono (a stereo stream is down-mixed
  by libopus), the encoder takes the assistant's 24 kHz voice directly (Opus
  codes 24 kHz natively: no resampling on the way out), mono, VoIP mode,
  32 kbit/s (less if the peer's ``maxaveragebitrate`` says so), complexity 5,
  in-band FEC when the peer's fmtp asks for it.

The PyAV encoders are fed frames of exactly their frame size through the codec
context's send/receive step, as :mod:`signaling.aiortc_tuning` does for
WebRTC's Opus: PyAV's public ``encode`` re-frames every frame through a filter
graph with a thread pool of its own (2 threads per call on this host).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av
import numpy as np

from .g711 import G711Codec

log = logging.getLogger("v2v.media.rtp_codecs")

PTIME_MS = 20
OPUS_BITRATE = 32000
OPUS_COMPLEXITY = 5
OPUS_MIN_BITRATE = 6000  # RFC 7587's lower bound of maxaveragebitrate
OPUS_FEC_LOSS_PCT = 10  # the loss the encoder plans its in-band FEC for, when the peer asked for FEC
_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class CodecInfo:
    """What SDP and the RTP session need to know of one codec."""

    name: str  # the encoding name as written in a=rtpmap (PCMU, PCMA, G722, opus)
    clock_rate: int  # RTP timestamp ticks per second (the rtpmap's rate)
    audio_rate: int  # PCM rate the decoder gives (the caller's input to the worker)
    encode_rate: int  # PCM rate the encoder takes
    channels: int = 1  # the rtpmap's channel count (Opus is always written opus/48000/2)
    static_pt: int | None = None  # RFC 3551 static payload type, if any

    @property
    def key(self) -> str:
        """The name as ``--sip-codecs`` and SDP matching spell it (upper case)."""
        return self.name.upper()

    @property
    def rtpmap(self) -> str:
        """``<name>/<clock>[/<channels>]`` for a=rtpmap."""
        base = f"{self.name}/{self.clock_rate}"
        return f"{base}/{self.channels}" if self.channels != 1 else base

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp increment of one 20 ms packet."""
        return self.clock_rate * PTIME_MS // 1000

    @property
    def frame_samples(self) -> int:
        """Decoded samples in 20 ms (at ``audio_rate``)."""
        return self.audio_rate * PTIME_MS // 1000

    @property
    def encode_samples(self) -> int:
        """Samples the encoder takes per 20 ms packet (at ``encode_rate``)."""
        return self.encode_rate * PTIME_MS // 1000

    def ticks_to_samples(self, ticks: int) -> int:
        """RTP clock ticks as decoded samples (integer: every audio rate here is a multiple of the clock)."""
        return ticks * self.audio_rate // self.clock_rate

    def samples_to_ticks(self, samples: int) -> int:
        return samples * self.clock_rate // self.audio_rate


PCMU = CodecInfo("PCMU", 8000, 8000, 8000, static_pt=0)
PCMA = CodecInfo("PCMA", 8000, 8000, 8000, static_pt=8)
G722 = CodecInfo("G722", 8000, 16000, 16000, static_pt=9)
OPUS = CodecInfo("opus", 48000, 48000, 24000, channels=2)
CODECS: dict[str, CodecInfo] = {c.key: c for c in (PCMU, PCMA, G722, OPUS)}
DEFAULT_PREFERENCE = ("OPUS", "G722", "PCMU", "PCMA")


class RtpCodec(Protocol):
    info: CodecInfo
    name: str  # info.key

    def encode(self, pcm: np.ndarray) -> bytes: ...

    def decode(self, payload: bytes) -> np.ndarray: ...


class G711RtpCodec:
    """PCMU or PCMA on :class:`media.g711.G711Codec`'s tables."""

    def __init__(self, info: CodecInfo) -> None:
        self.info, self.name = info, info.key
        self._codec = G711Codec(info.key)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._codec.encode(pcm)

    def decode(self, payload: bytes) -> np.ndarray:
        return self._codec.decode(payload)


class AvRtpCodec:
    """G.722 or Opus through PyAV: one encoder and one decoder context per call (both keep state)."""

    def __init__(self, info: CodecInfo, fec: bool = False, bitrate: int = OPUS_BITRATE) -> None:
        self.info, self.name = info, info.key
        av_name = "libopus" if info.key == "OPUS" else info.name.lower()
        enc: Any = av.CodecContext.create(av_name, "w")
        enc.format = "s16"
        enc.layout = "mono"
        enc.sample_rate = info.encode_rate
        enc.time_base = Fraction(1, info.encode_rate)
        if info.key == "OPUS":
            enc.bit_rate = max(OPUS_MIN_BITRATE, min(bitrate, OPUS_BITRATE))
            enc.options = {"application": "voip", "compression_level": str(OPUS_COMPLEXITY),
                           **({"fec": "1", "packet_loss": str(OPUS_FEC_LOSS_PCT)} if fec else {})}
        enc.open()
        self._enc = enc
        # PyAV's public encode() re-frames through a threaded filter graph; frames of the
        # encoder's own size need none of it (see the module docstring)
        self._send = getattr(enc, "_send_frame_and_recv", enc.encode)
        dec: Any = av.CodecContext.create(av_name, "r")
        dec.format = "s16"
        dec.layout = "mono"
        dec.sample_rate = info.audio_rate
        dec.open()
        self._dec = dec
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        """One 20 ms frame (``info.encode_samples`` at ``info.encode_rate``) -> one RTP payload."""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.info.encode_rate
        frame.time_base = self._enc.time_base
        frame.pts = self._pts
        self._pts += len(pcm)
        packets = list(self._send(frame))
        if not packets:
            return b""
        if self.info.key == "OPUS":  # one Opus packet per frame of the encoder's size
            return bytes(packets[-1])
        return b"".join(bytes(p) for p in packets)

    def decode(self, payload: bytes) -> np.ndarray:
        """One RTP payload -> its samples at ``info.audio_rate`` (empty when it does not decode)."""
        if not payload:
            return _EMPTY
        try:
            frames = self._dec.decode(av.Packet(payload))
        except (av.FFmpegError, ValueError) as e:  # a corrupt payload: counted as lost by the caller's timeline
            log.debug("%s decode failed: %s", self.info.name, e)
            return _EMPTY
        if not frames:
            return _EMPTY
        if len(frames) == 1:
            return np.ascontiguousarray(frames[0].to_ndarray().reshape(-1), dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)


def codec_info(name: str) -> CodecInfo:
    """A codec's description by name (any case); KeyError for one this server does not speak."""
    return CODECS[name.upper()]


def make_codec(name: str, fec: bool = False, bitrate: int = OPUS_BITRATE) -> RtpCodec:
    """An encoder/decoder pair for ``name`` (PCMU, PCMA, G722, opus); Opus: ``fec`` in-band FEC out,
    ``bitrate`` a ceiling below :data:`OPUS_BITRATE` (the peer's maxaveragebitrate)."""
    info = codec_info(name)
    if info.key in ("PCMU", "PCMA"):
        return G711RtpCodec(info)
    return AvRtpCodec(info, fec=fec, bitrate=bitrate)


def parse_preference(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--sip-codecs`` as codec keys in order; ValueError names an unknown one."""
    out: list[str] = []
    for n in names:
        key = n.strip().upper()
        if key not in CODECS:
            raise ValueError(f"unknown codec {n!r} (known: {', '.join(c.name for c in CODECS.values())})")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("no codec given")
    return tuple(out)
