"""Micro-benchmark of the per-packet codec work aiortc does for one call, in CPU ms per call-second.

Single thread, ``time.process_time``, best of ``--repeat`` runs over
``--seconds`` of 48 kHz speech in 20 ms frames (50 frames per call-second):

- Opus encode as aiortc does it (mono frame -> stereo resampler -> libopus
  96 kbit/s, complexity 10) against voice settings (mono, 32 kbit/s,
  complexity 10/5/1);
- Opus decode to stereo (aiortc) against mono;
- RFC 6465 audio level: aiortc's pure-Python loop (on the mono frame v2v
  sends and on the stereo frame an echo relays) against v2v's numpy version;
- SRTP protect + unprotect of one packet (pylibsrtp), for scale.

Writes ``bench/results/codec_micro.json``.

    python bench/codec_micro.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import FIXTURES, RESULTS, write_result
from loadgen import read_wav_48k

RATE = 48000
FRAME = 960
TB = Fraction(1, RATE)


def frames_of(pcm: np.ndarray, layout: str = "mono") -> list[av.AudioFrame]:
    out = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        x = pcm[i : i + FRAME]
        if layout == "stereo":
            arr = np.repeat(x, 2).reshape(1, -1)
        else:
            arr = x.reshape(1, -1)
        fr = av.AudioFrame.from_ndarray(arr, format="s16", layout=layout)
        fr.sample_rate = RATE
        fr.pts = i
        fr.time_base = TB
        out.append(fr)
    return out


def best_ms_per_call_s(fn: Callable[[], int], repeat: int) -> float:
    """Run ``fn`` (returns frames processed) ``repeat`` times; best CPU ms per 50 frames."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        n = fn()
        dt = time.process_time() - t0
        best = min(best, 1000.0 * dt / max(1, n) * 50)
    return round(best, 3)


def opus_encoder(layout: str, bitrate: int, complexity: int | None) -> av.CodecContext:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.bit_rate = bitrate
    ctx.format = "s16"
    ctx.layout = layout
    opts = {"application": "voip"}
    if complexity is not None:
        opts["compression_level"] = str(complexity)
    ctx.options = opts
    ctx.sample_rate = RATE
    ctx.time_base = TB
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wav", default=str(FIXTURES / "long_speech.wav"))
    ap.add_argument("--name", default="codec_micro")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)

    from aiortc import rtp
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    stock_level = rtp.compute_audio_level_dbov
    # aiortc_tuning.install() is never called here: the codec rows time aiortc stock

    speech = read_wav_48k(args.wav)
    need = int(args.seconds * RATE)
    pcm = np.resize(speech, need)
    mono = frames_of(pcm)
    stereo = frames_of(pcm, "stereo")
    rows: dict[str, Any] = {}

    def enc_stock() -> int:
        e = OpusEncoder()
        for f in mono:
            e.encode(f)
        return len(mono)

    rows["opus_encode_aiortc_stereo96k_c10"] = best_ms_per_call_s(enc_stock, args.repeat)
    for label, layout, br, cx in (("opus_encode_mono32k_c10", "mono", 32000, None),
                                  ("opus_encode_mono32k_c5", "mono", 32000, 5),
                                  ("opus_encode_mono32k_c1", "mono", 32000, 1),
                                  ("opus_encode_mono24k_c5", "mono", 24000, 5)):
        def enc(layout: str = layout, br: int = br, cx: int | None = cx) -> int:
            ctx = opus_encoder(layout, br, cx)
            for f in mono:
                ctx.encode(f)
            return len(mono)

        rows[label] = best_ms_per_call_s(enc, args.repeat)

    e = OpusEncoder()
    packets = [p for f in mono for p in e.encode(f)[0]]

    def dec_stereo() -> int:
        d = OpusDecoder()
        for i, p in enumerate(packets):
            d.decode(JitterFrame(data=p, timestamp=i * FRAME))
        return len(packets)

    def dec_mono() -> int:
        ctx = av.CodecContext.create("libopus", "r")
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.sample_rate = RATE
        for i, p in enumerate(packets):
            pkt = av.Packet(p)
            pkt.pts = i * FRAME
            pkt.time_base = TB
            ctx.decode(pkt)
        return len(packets)

    rows["opus_decode_stereo_aiortc"] = best_ms_per_call_s(dec_stereo, args.repeat)
    rows["opus_decode_mono"] = best_ms_per_call_s(dec_mono, args.repeat)

    from v2v.signaling import aiortc_tuning  # nothing is patched: only its numpy audio level is timed

    sub = max(1, len(mono) // 5)  # the pure-Python loop is slow: a fifth of the frames is enough

    def lvl(fn: Callable[[Any], int], frames: list[av.AudioFrame]) -> Callable[[], int]:
        def run() -> int:
            for f in frames:
                fn(f)
            return len(frames)

        return run

    rows["audio_level_aiortc_python_mono"] = best_ms_per_call_s(lvl(stock_level, mono[:sub]), args.repeat)
    rows["audio_level_aiortc_python_stereo"] = best_ms_per_call_s(lvl(stock_level, stereo[:sub]), args.repeat)
    rows["audio_level_v2v_numpy_mono"] = best_ms_per_call_s(lvl(aiortc_tuning._audio_level_dbov, mono), args.repeat)

    try:
        import pylibsrtp

        key = bytes(range(30))
        rtp_packets = [rtp.RtpPacket(payload_type=111, sequence_number=i % 65536, timestamp=i * FRAME, ssrc=1234,
                                     payload=p).serialize() for i, p in enumerate(packets[:60000])]

        def srtp() -> int:
            tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
            rx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
            for p in rtp_packets:
                rx.unprotect(tx.protect(p))
            return len(rtp_packets)

        rows["srtp_protect_unprotect"] = best_ms_per_call_s(srtp, args.repeat)
    except Exception as exc:
        rows["srtp_error"] = str(exc)

    data = {"params": vars(args), "ms_per_call_second": rows,
            "note": "one direction each: a two-way call pays one encode, one decode, one level, one protect and one unprotect"}
    path = write_result(args.name, data, Path(args.out_dir) if args.out_dir else RESULTS)
    for k, v in rows.items():
        print(f"{k:40s} {v}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
