"""``v2v serve`` with bench-only variants, to measure one optimisation at a time.

The variants are process-wide monkeypatches applied before the server starts;
nothing in media/, worker/ or signaling/ changes. ``V2V_BENCH_VARIANT`` holds
a comma-separated list (or pass ``--variant`` before ``serve``):

- ``uvloop=0``        run on asyncio's default loop (v2v uses uvloop)
- ``tuning=0``        without signaling/aiortc_tuning.py (codec threads, stereo 96 kbit/s Opus: v2v before 20:42)
- ``jitter=aiortc``   keep aiortc's stock audio jitter buffer (4 packets prefetch)
- ``level=aiortc``    aiortc's pure-Python ``compute_audio_level_dbov`` again
- ``opus=mono32``     Opus encoder mono, 32 kbit/s (aiortc: stereo 96 kbit/s)
- ``opus=mono32c5``   the same at complexity 5 (any ``mono<kbit/s>[c<complexity>]``)
- ``gc=high``         freeze the startup heap, collect generation 0 every 50000 allocations (not 700)
- ``dec=mono``        Opus decoder output mono (aiortc: stereo, then down-mixed)
- ``encode=inline``   encode on the event loop instead of a thread-pool hop per frame
- ``decode=inline``   decode each packet on the event loop instead of aiortc's decoder thread per call
- ``switch=MS``       the interpreter's GIL switch interval (default 5 ms)
- ``rx=direct``       decode the caller's packets in the RTP hook, PCM straight into the worker's input
                      (shipped since issue 15: ``aiortc_tuning.receive_direct``)
- ``rx=stock``        without the shipped direct receive path (aiortc's receiver, track and ``_consume``)
- ``send=stock``      without the shipped media clock (aiortc's sender coroutine per call, per packet)
- ``silence=encode``  the media clock encodes and upsamples exact silence too (no replay of silence packets)
- ``track=packet[C]`` the assistant track encodes Opus itself (mono, 32 kbit/s, on the event loop) and hands
                      aiortc ready packets (no executor hop, no audio-level loop, no upmix to stereo);
                      C: Opus complexity 0-10 (libopus default 10)
- ``eager=off``       the call's VAD without issue 17's noise settling and eager pause (pause at the VAD start)
- ``pipeline=frame``  the worker pipeline before issue 15's batching: the caller's audio resampled for the
                      model every 20 ms frame, the VAD's floor as min() over its window, the box-car by
                      ``.mean()``, exact silence through the level arithmetic (same decisions, more CPU)

    python bench/v2v_server.py --variant level=aiortc serve --model echo --port 8080
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _opus_encoder(layout: str, bitrate: int, complexity: int | None) -> None:
    from aiortc.codecs import opus
    from av import AudioResampler

    original = opus.OpusEncoder.__init__

    def __init__(self: Any) -> None:
        original(self)
        ctx = opus.CodecContext.create("libopus", "w")
        ctx.bit_rate = bitrate
        ctx.format = "s16"
        ctx.layout = layout
        opts = {"application": "voip"}
        if complexity is not None:
            opts["compression_level"] = str(complexity)
        ctx.options = opts
        ctx.sample_rate = opus.SAMPLE_RATE
        ctx.time_base = opus.TIME_BASE
        self.codec = ctx
        self.resampler = AudioResampler(format="s16", layout=layout, rate=opus.SAMPLE_RATE,
                                        frame_size=opus.SAMPLES_PER_FRAME)

    opus.OpusEncoder.__init__ = __init__


def _mono_decoder() -> None:
    from aiortc.codecs import opus

    original = opus.OpusDecoder.__init__

    def __init__(self: Any) -> None:
        original(self)
        ctx = opus.CodecContext.create("libopus", "r")
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.sample_rate = opus.SAMPLE_RATE
        self.codec = ctx

    opus.OpusDecoder.__init__ = __init__


def _inline_encode() -> None:
    """Only the shipped tuning's encode-on-the-loop part (signaling/aiortc_tuning.py)."""
    from aiortc import rtcrtpsender

    from v2v.signaling import aiortc_tuning

    rtcrtpsender.RTCRtpSender.__init__ = aiortc_tuning._sender_init


def _inline_decode() -> None:
    """Only the shipped tuning's decode-on-the-loop part (signaling/aiortc_tuning.py)."""
    import threading
    import types

    from aiortc import rtcrtpreceiver

    from v2v.signaling import aiortc_tuning

    rtcrtpreceiver.threading = types.SimpleNamespace(Thread=aiortc_tuning._thread, Event=threading.Event)
    rtcrtpreceiver.RTCRtpReceiver.__init__ = aiortc_tuning._receiver_init


def _track_packets(complexity: int | None) -> None:
    from fractions import Fraction

    import av

    from v2v.media import track as mtrack

    original = mtrack.AssistantTrack.recv
    tb = Fraction(1, 48000)

    async def recv(self: Any) -> Any:
        enc = getattr(self, "_bench_encoder", None)
        if enc is None:
            enc = av.CodecContext.create("libopus", "w")
            enc.bit_rate = 32000
            enc.format = "s16"
            enc.layout = "mono"
            enc.sample_rate = 48000
            enc.time_base = tb
            opts = {"application": "voip"}
            if complexity is not None:
                opts["compression_level"] = str(complexity)
            enc.options = opts
            self._bench_encoder = enc
        while True:
            frame = await original(self)
            pts = frame.pts
            packets = enc.encode(frame)
            if packets:
                packet = packets[0]
                packet.pts = pts
                packet.time_base = tb
                return packet

    mtrack.AssistantTrack.recv = recv


def _direct_rx() -> None:
    """Decode the caller's packets in the RTP hook and hand PCM straight to the worker's input.

    No jitter-buffer object, no decoder thread hand-off, no remote-track queue and no ``_consume``
    hop: each Opus packet (duplicates and late ones dropped) is decoded to mono 48 kHz on the event
    loop and put into ``WebRTCCall.audio_in`` with the media-timeout bookkeeping ``_consume`` does.
    """
    import time

    import av
    import numpy as np
    from aiortc.utils import uint16_add

    import v2v.signaling.webrtc as webrtc

    original = webrtc.WebRTCCall._negotiate

    async def _negotiate(self: Any, pc: Any, offer: Any, track: Any) -> str:
        sdp = await original(self, pc, offer, track)
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            return sdp
        receiver = audio[0].receiver
        codecs = receiver._RTCRtpReceiver__codecs
        dec = av.CodecContext.create("libopus", "r")
        dec.format = "s16"
        dec.layout = "mono"
        dec.sample_rate = 48000
        state: dict[str, Any] = {"last": None}
        call = self

        async def _handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
            if pc is not call.pc:
                return
            codec = codecs.get(packet.payload_type)
            if codec is None or codec.name.lower() != "opus" or not packet.payload:
                return
            seq = packet.sequence_number
            last = state["last"]
            if last is not None:
                delta = uint16_add(seq, -last)
                if delta == 0 or (delta > 0x8000 and 0x10000 - delta < 100):
                    return
            state["last"] = seq
            try:
                frames = dec.decode(av.Packet(packet.payload))
            except Exception:
                return
            call._last_media = time.monotonic()
            call.packets_in += 1
            for fr in frames:
                pcm = fr.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                if len(pcm):
                    call.audio_in.put(pcm)

        receiver._handle_rtp_packet = _handle_rtp_packet
        return sdp

    webrtc.WebRTCCall._negotiate = _negotiate


def _eager_off() -> None:
    from v2v.worker import call

    init = call.CallConfig.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.vad_settle_ms, self.vad_onset_ms = 0, None

    call.CallConfig.__init__ = __init__  # type: ignore[method-assign]  # bench: issue 17's VAD changes off


def _pipeline_per_frame() -> None:
    """The worker pipeline as before issue 15's batching (bench/BENCHMARKS "Worker pipeline")."""
    from collections import deque

    import numpy as np

    from v2v.media import vad
    from v2v.media.chunker import Chunker
    from v2v.media.resample import Resampler
    from v2v.worker import call

    class PerFrame:
        def __init__(self, in_rate: int, out_rate: int, size: int) -> None:
            self._rs, self._chunker = Resampler(in_rate, out_rate), Chunker(size)

        def push(self, pcm: np.ndarray) -> list[np.ndarray]:
            return self._chunker.push(self._rs.process(pcm))

    class DequeMin(deque):  # bench: min() over the whole window every frame
        def __init__(self, size: int) -> None:
            super().__init__(maxlen=size)

        def min(self) -> float:
            return min(self)

    def levels_db(self: Any, flat: np.ndarray, n: int) -> list[float]:
        k = self._decim
        low = flat.reshape(-1, k).mean(axis=1) if k > 1 else flat
        emph = np.empty_like(low)
        emph[0] = low[0] - vad.PREEMPHASIS * self._bench_prev
        emph[1:] = low[1:] - vad.PREEMPHASIS * low[:-1]
        self._prev = low[-1]
        e = emph.reshape(n, -1)
        return (10.0 * np.log10(np.einsum("ij,ij->i", e, e) / e.shape[1] + 1.0)).tolist()

    process = vad.VoiceActivityDetector.process

    class NeverZero:
        def __eq__(self, other: object) -> bool:
            return False

    never = NeverZero()

    def process_no_skip(self: Any, pcm: np.ndarray) -> list[vad.VadEvent]:
        self._bench_prev = self._prev  # what levels_db uses; it sets _prev to a number again
        self._prev = never  # the exact-silence test (self._prev == 0) fails: the arithmetic runs
        try:
            return process(self, pcm)
        finally:
            if self._prev is never:  # no whole frame
                self._prev = self._bench_prev

    call.ResamplingChunker = PerFrame  # type: ignore[misc,assignment]  # bench: per-frame resampling
    vad._WindowMin = DequeMin  # type: ignore[misc,assignment]  # bench: min() over the window
    vad.VoiceActivityDetector._levels_db = levels_db  # type: ignore[method-assign]  # bench: .mean()
    vad.VoiceActivityDetector.process = process_no_skip  # type: ignore[method-assign]  # bench: no skip


def apply(variants: list[str]) -> None:
    from aiortc import rtp

    import v2v.signaling.aiortc_tuning as tuning

    if "tuning=0" in variants:
        # cli's serve installs the tuning at start: mark it done so aiortc stays stock (codec threads,
        # stereo Opus), except for the numpy audio level that v2v applied before the tuning existed
        tuning._installed = True
        if "level=aiortc" not in variants:
            rtp.compute_audio_level_dbov = tuning._audio_level_dbov
    import v2v.signaling.cli as cli
    import v2v.signaling.webrtc as webrtc

    for v in variants:
        key, _, val = v.partition("=")
        if key == "none" or v == "tuning=0":
            pass
        elif key == "uvloop" and val == "0":
            import asyncio

            cli._run = asyncio.run  # type: ignore[assignment]  # a bench variant swaps the loop runner
        elif key == "jitter" and val == "aiortc":
            for name in ("patch_receiver", "_patch_receiver"):
                if hasattr(webrtc, name):
                    setattr(webrtc, name, lambda receiver: None)
        elif key == "level" and val == "aiortc":
            tuning._audio_level_dbov = tuning.aiortc_audio_level_dbov  # what install() puts into aiortc.rtp
        elif key == "opus" and val.startswith("mono"):
            # mono<kbit/s>[c<complexity>], e.g. mono32, mono32c5, mono24c1
            br, _, cx = val[4:].partition("c")
            _opus_encoder("mono", int(br) * 1000, int(cx) if cx else None)
        elif key == "gc" and val == "high":
            import gc

            gc.collect()
            gc.freeze()
            gc.set_threshold(50000, 20, 100)
        elif key == "dec" and val == "mono":
            _mono_decoder()
        elif key == "encode" and val == "inline":
            _inline_encode()
        elif key == "track" and val.startswith("packet"):
            _track_packets(int(val[len("packet"):]) if val[len("packet"):] else None)
        elif key == "rx" and val == "direct":
            _direct_rx()
        elif key == "rx" and val == "stock":
            webrtc.receive_direct = lambda receiver, deliver: False  # type: ignore[assignment]  # bench: off
        elif key == "silence" and val == "encode":
            from v2v.media import track as mtrack
            from v2v.signaling import lean_sender

            lean_sender.OpusVoiceEncoder.encode = lean_sender.OpusVoiceEncoder._encode  # type: ignore[method-assign]
            mtrack.QUIET_FRAMES = 1 << 62  # never skip the upsampler
        elif key == "send" and val == "stock":
            tuning._clocked_sender = lambda sender, codec: None  # type: ignore[assignment]  # bench: off
        elif key == "switch":
            sys.setswitchinterval(float(val) / 1000.0)
        elif key == "decode" and val == "inline":
            _inline_decode()
        elif key == "eager" and val == "off":
            _eager_off()
        elif key == "pipeline" and val == "frame":
            _pipeline_per_frame()
        elif v:
            raise SystemExit(f"unknown bench variant {v!r}")


def main() -> int:
    argv = sys.argv[1:]
    variants = [x for x in os.environ.get("V2V_BENCH_VARIANT", "").split(",") if x]
    while argv[:1] == ["--variant"]:
        variants.append(argv[1])
        argv = argv[2:]
    apply(variants)
    if variants:
        print(f"v2v bench variants: {', '.join(variants)}", flush=True)
    from v2v.signaling.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
