"""Conversion between PyAV/aiortc audio frames and mono int16 numpy arrays."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Return the frame's audio as a mono int16 array (stereo is averaged).

    Accepts s16 packed (interleaved) or s16p planar frames with any channel
    count and rate; other sample formats are converted to s16 first.
    """
    fmt = frame.format.name
    channels = len(frame.layout.channels)
    if fmt not in ("s16", "s16p"):
        frame = _to_s16(frame)
        fmt = "s16"
    data = frame.to_ndarray()  # s16: (1, n*ch) interleaved; s16p: (ch, n)
    if channels == 1:
        return np.ascontiguousarray(data.reshape(-1), dtype=np.int16)
    if fmt == "s16":
        data = data.reshape(-1, channels).T
    # average channels in int32 to avoid overflow
    return (data.astype(np.int32).sum(axis=0) // channels).astype(np.int16)


def _to_s16(frame: av.AudioFrame) -> av.AudioFrame:
    resampler = av.AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate)
    out = resampler.resample(frame)
    return out[0]


def mono_to_frame(pcm: np.ndarray, sample_rate: int, pts: int | None = None) -> av.AudioFrame:
    """Wrap mono int16 samples in a packed s16 mono ``av.AudioFrame``."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = sample_rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
    return frame
