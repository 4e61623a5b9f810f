"""Micro-benchmark: per-frame CPU cost of one call's media pipeline.

Feeds 20 ms frames of 48 kHz speech (as aiortc delivers them) through a
CallSession with the echo model -- down-mix, VAD, 48->24 kHz resampling,
100 ms chunking, model push -- and pulls the assistant's 20 ms frames through
the playout buffer and the 24->48 kHz upsampler of the outgoing track, in
lockstep. Reports CPU time per frame and the share of one core per call
(target: under 2 %). Writes JSON to bench/results/pipeline_micro.json.

    python bench/pipeline_micro.py [--seconds 120] [--variant pipeline=frame] [--wav tests/fixtures/x.wav]

``--variant`` applies a bench/v2v_server.py variant first (``pipeline=frame``: the
pipeline before issue 15's batching); ``--wav`` another speech fixture (any
rate: resampled to 48 kHz once, before the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

import av
import numpy as np

from v2v.media.audio import frame_to_mono
from v2v.media.playout import PlayoutBuffer
from v2v.media.resample import ExactResampler, Resampler
from v2v.worker.call import CallConfig, CallSession
from v2v.worker.models.echo import EchoModelFactory
from v2v.worker.wavcall import read_wav

ROOT = Path(__file__).resolve().parent.parent


def stereo_frames(pcm48: np.ndarray) -> list[av.AudioFrame]:
    frames = []
    for i in range(0, len(pcm48) - 959, 960):
        mono = pcm48[i : i + 960]
        f = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        f.sample_rate = 48000
        frames.append(f)
    return frames


async def run(seconds: float, wav: str) -> dict:
    pcm, rate = read_wav(ROOT / wav)
    if rate != 48000:
        pcm = Resampler(rate, 48000).process(pcm)
    frames = stereo_frames(pcm)
    playout = PlayoutBuffer()
    call = CallSession("bench", EchoModelFactory(), CallConfig(), playout)
    call.input_rate = 48000
    upsample = ExactResampler(24000, 48000)
    await call.start()
    n = int(seconds * 50)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(n):
        frame = frames[k % len(frames)]
        await call.feed(frame_to_mono(frame))
        out = upsample.process(playout.read(480))
        av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    await call.close()
    per_frame_ms = cpu / n * 1000
    return {
        "bench": "pipeline_micro",
        "command": " ".join(["python"] + sys.argv),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor(), "av": av.__version__, "numpy": np.__version__},
        "frames": n,
        "call_seconds": n / 50,
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "cpu_ms_per_frame": round(per_frame_ms, 4),
        "cpu_ms_per_call_second": round(per_frame_ms * 50, 3),
        "core_share_percent": round(per_frame_ms / 20 * 100, 3),
        "target_core_share_percent": 2.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="simulated call length")
    ap.add_argument("--wav", default="tests/fixtures/hello_48k.wav", help="caller audio, relative to the repo")
    ap.add_argument("--variant", action="append", default=[], help="a bench/v2v_server.py variant")
    ap.add_argument("--out", default=str(ROOT / "bench/results/pipeline_micro.json"))
    args = ap.parse_args()
    if args.variant:
        sys.path.insert(0, str(ROOT / "bench"))
        import v2v_server

        v2v_server.apply(args.variant)
    result = asyncio.run(run(args.seconds, args.wav))
    result["wav"], result["variants"] = args.wav, args.variant
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
