"""Process-wide tuning of aiortc for a voice server (measured in bench/, see BENCHMARKS.md).

aiortc is built for general media. For many concurrent voice calls on one
core three of its defaults cost more than they give:

* every outgoing Opus frame is encoded through ``loop.run_in_executor``: a
  thread-pool hop per 20 ms per call, and under the GIL the event loop that
  paces every call's frames waits behind the codec threads;
* every receiver decodes in a thread of its own (N calls, N threads taking
  turns on the GIL);
* the Opus encoder is stereo at 96 kbit/s and complexity 10, for a mono voice.

:func:`install` encodes and decodes audio on the event loop (each is ~0.1 ms
of C per packet) and encodes mono voice (32 kbit/s, VoIP mode, complexity 5).
The SDP still says ``opus/48000/2``: every Opus decoder takes a mono stream.
Measured: calls per core 16 -> 30 with the same pacing criterion, CPU per
call-second -14 % from the thread hops alone (``bench/load.py``).
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any

import av
from aiortc import rtcrtpreceiver, rtcrtpsender
from aiortc.codecs import get_decoder, opus

log = logging.getLogger("v2v.webrtc")

OPUS_BITRATE = 32000
OPUS_COMPLEXITY = 5
_installed = False


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


def _thread(*args: Any, target: Any = None, **kwargs: Any) -> Any:
    if target is rtcrtpreceiver.decoder_worker and kwargs.get("name") == "audio-decoder":
        return _NoThread()
    return threading.Thread(*args, target=target, **kwargs)


def _voice_encoder(self: Any) -> None:
    _stock_encoder_init(self)
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.options = {"application": "voip", "compression_level": str(OPUS_COMPLEXITY)}
    codec.sample_rate = opus.SAMPLE_RATE
    codec.time_base = opus.TIME_BASE
    self.codec = codec
    self.resampler = av.AudioResampler(
        format="s16", layout="mono", rate=opus.SAMPLE_RATE, frame_size=opus.SAMPLES_PER_FRAME
    )


def _sender_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _stock_sender_init(self, *args, **kwargs)
    self._RTCRtpSender__loop = _InlineExecutorLoop(self._RTCRtpSender__loop)


def _receiver_init(self: Any, kind: str, *args: Any, **kwargs: Any) -> None:
    _stock_receiver_init(self, kind, *args, **kwargs)
    if kind == "audio":
        self._RTCRtpReceiver__decoder_queue = _InlineDecodeQueue(self)


_stock_encoder_init = opus.OpusEncoder.__init__
_stock_sender_init = rtcrtpsender.RTCRtpSender.__init__
_stock_receiver_init = rtcrtpreceiver.RTCRtpReceiver.__init__


def install() -> None:
    """Apply the tuning once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    opus.OpusEncoder.__init__ = _voice_encoder
    rtcrtpsender.RTCRtpSender.__init__ = _sender_init
    rtcrtpreceiver.RTCRtpReceiver.__init__ = _receiver_init
    rtcrtpreceiver.threading = types.SimpleNamespace(Thread=_thread, Event=threading.Event)
