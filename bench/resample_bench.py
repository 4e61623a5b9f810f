"""Streaming resamplers compared: PyAV's AudioResampler, v2v's single-threaded swr graph, soxr.

For each rate pair v2v uses, a 3 s two-tone signal (one tone near the output
band edge) is fed in 20 ms chunks: quality (SNR against the ideal signal, in
dB, after the first 0.5 s), cost (microseconds per chunk), steadiness (the
smallest and largest output per chunk once started; a paced 20 ms sender needs
every chunk's share), and the threads each makes (the process's task count).

    python3 bench/resample_bench.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import av
import numpy as np
import soxr

from v2v.media.audio import mono_to_frame
from v2v.media.resample import Resampler

PAIRS = ((24000, 8000), (8000, 16000), (8000, 24000), (48000, 24000), (24000, 48000), (22050, 24000))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _pyav(inr: int, outr: int) -> Callable[[np.ndarray], np.ndarray]:
    rs = av.AudioResampler(format="s16", layout="mono", rate=outr)

    def run(x: np.ndarray) -> np.ndarray:
        frames = rs.resample(mono_to_frame(x, inr))
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)
    return run


def _graph(inr: int, outr: int) -> Callable[[np.ndarray], np.ndarray]:
    return Resampler(inr, outr).process


def _soxr(inr: int, outr: int) -> Callable[[np.ndarray], np.ndarray]:
    rs = soxr.ResampleStream(inr, outr, 1, dtype="int16", quality="HQ")
    return lambda x: rs.resample_chunk(x)


def _signal(rate: int, seconds: float, nyq: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 0.8 * nyq * t)


def measure(kind: str, make: Callable[[int, int], Callable[[np.ndarray], np.ndarray]], inr: int, outr: int) -> str:
    nyq = min(inr, outr) / 2
    x = (_signal(inr, 3.0, nyq) * 32767).astype(np.int16)
    n = inr // 50
    th0 = _threads()
    run = make(inr, outr)
    outs, t0 = [], time.perf_counter()
    for i in range(0, len(x), n):
        outs.append(run(x[i:i + n]))
    cost = (time.perf_counter() - t0) / (len(x) // n) * 1e6
    sizes = [len(o) for o in outs]
    first = next(i for i, s in enumerate(sizes) if s)
    y = np.concatenate(outs).astype(np.float64) / 32767
    ref = _signal(outr, 3.0, nyq)
    mid = slice(outr // 2, 2 * outr)
    err = min(np.mean((y[mid] - ref[mid.start - d:mid.stop - d]) ** 2) for d in range(0, 64))
    snr = 10 * np.log10(np.mean(ref[mid] ** 2) / err)
    return (f"{inr:>5}->{outr:<5} {kind:<14} SNR {snr:5.1f} dB  {cost:6.1f} us/chunk  "
            f"per-chunk output {min(sizes[first + 1:])}..{max(sizes[first + 1:])} (ideal {outr // 50})  "
            f"threads +{_threads() - th0}")


def main() -> None:
    for inr, outr in PAIRS:
        for kind, make in (("pyav", _pyav), ("swr-1-thread", _graph), ("soxr-HQ", _soxr)):
            print(measure(kind, make, inr, outr))


if __name__ == "__main__":
    main()
