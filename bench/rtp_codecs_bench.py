"""CPU per call-second of the plain-RTP codecs (issue 12): PCMU, PCMA, G.722, Opus.

Single thread, ``time.process_time``, best of ``--repeat`` runs over ``--seconds`` of
speech in 20 ms frames (50 per call-second), exactly the per-packet work an
``RtpSession`` does for one call:

- out: 480 samples of the 24 kHz playout -> resample to the encoder's rate (none for
  Opus) -> encode one packet;
- in: decode one packet (the same packets, as a caller would send them) to the
  codec's audio rate (8 / 16 / 48 kHz).

Reported: encode, decode, the outbound resample, and their sum, in CPU ms per
call-second, and the process's threads afterwards (PyAV paths must start none);
for scale, also what the worker does with the decoded input at that rate, not in the sum:
its resampling to the model's 24 kHz (``to_model_ms``) and the echo canceller while it runs
(``aec_ms``: AEC3 at the input rate, the playout as reference; ``--aec auto`` bypasses it after
8 s of assistant audio without echo).
Writes ``bench/results/rtp_codecs.json``.

    python3 bench/rtp_codecs_bench.py [--seconds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from v2v.media.aec import EchoCanceller  # noqa: E402  # after the sys.path line
from v2v.media.resample import ExactResampler, Resampler  # noqa: E402  # after the sys.path line
from v2v.media.rtp_codecs import CODECS, make_codec  # noqa: E402  # after the sys.path line
from v2v.worker.wavcall import read_wav  # noqa: E402  # after the sys.path line

FRAME_24K = 480


def _speech(seconds: float) -> np.ndarray:
    """The 24 kHz speech fixture looped to ``seconds``."""
    x, rate = read_wav(ROOT / "tests" / "fixtures" / "speech_24k.wav")
    assert rate == 24000
    n = int(seconds * 24000) // FRAME_24K * FRAME_24K
    return np.resize(x.astype(np.int16), n)


def _run(name: str, pcm24: np.ndarray) -> dict[str, float]:
    codec = make_codec(name)
    info = codec.info
    rs = ExactResampler(24000, info.encode_rate) if info.encode_rate != 24000 else None
    frames = pcm24.reshape(-1, FRAME_24K)
    t0 = time.process_time()
    ready = [rs.process(f) for f in frames] if rs is not None else list(frames)
    t1 = time.process_time()
    packets = [codec.encode(f) for f in ready]
    t2 = time.process_time()
    peer = make_codec(name)  # the receiving side: its own decoder state
    decoded = [peer.decode(p) for p in packets]
    t3 = time.process_time()
    to_model = Resampler(info.audio_rate, 24000)
    for d in decoded:
        to_model.process(d)
    t4 = time.process_time()
    seconds = len(frames) / 50
    assert sum(map(len, decoded)) == len(frames) * info.frame_samples, name
    return {"resample_ms": 1000 * (t1 - t0) / seconds, "encode_ms": 1000 * (t2 - t1) / seconds,
            "decode_ms": 1000 * (t3 - t2) / seconds, "to_model_ms": 1000 * (t4 - t3) / seconds,
            "bytes_per_packet": sum(map(len, packets)) / len(packets)}


def _aec_ms(rate: int, pcm24: np.ndarray) -> float:
    """AEC3 at ``rate`` with the 24 kHz playout as reference, CPU ms per call-second."""
    mic = Resampler(24000, rate).process(pcm24)
    n = rate // 50
    aec = EchoCanceller(rate, 24000)
    t0 = time.process_time()
    for i in range(len(pcm24) // FRAME_24K):
        aec.far(pcm24[i * FRAME_24K:(i + 1) * FRAME_24K])
        aec.process(mic[i * n:(i + 1) * n])
    return 1000 * (time.process_time() - t0) / (len(pcm24) / 24000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pcm = _speech(args.seconds)
    Resampler(24000, 16000).process(pcm[:480])  # load the libraries before timing
    out: dict[str, dict[str, float]] = {}
    for key, info in CODECS.items():
        runs = [_run(key, pcm) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["resample_ms"] + r["encode_ms"] + r["decode_ms"])
        best["total_ms"] = best["resample_ms"] + best["encode_ms"] + best["decode_ms"]
        best.update(clock_rate=info.clock_rate, audio_rate=info.audio_rate, encode_rate=info.encode_rate)
        out[key] = best
    threads = len(os.listdir("/proc/self/task"))  # before the echo canceller, which keeps a pool of its own
    for key, info in CODECS.items():
        best = out[key]
        best["aec_ms"] = min(_aec_ms(info.audio_rate, pcm) for _ in range(args.repeat))
        print(f"{info.name:5s} enc {best['encode_ms']:6.2f}  dec {best['decode_ms']:6.2f}  resample "
              f"{best['resample_ms']:5.2f}  total {best['total_ms']:6.2f} ms CPU per call-second "
              f"({best['bytes_per_packet']:.0f} B/packet); input -> 24 kHz {best['to_model_ms']:5.2f}, "
              f"AEC {best['aec_ms']:5.2f}")
    print(f"threads in the process after the codecs (before the echo cancellers): {threads}")
    result = {"seconds": args.seconds, "repeat": args.repeat, "threads": threads, "codecs": out}
    path = ROOT / "bench" / "results" / "rtp_codecs.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
