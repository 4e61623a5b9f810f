"""Stateful mono int16 resampling on PyAV's ``AudioResampler`` (libswresample).

``Resampler`` keeps the filter state across calls, so a stream cut into frames
of any size resamples exactly like the whole: N seconds in give N seconds out,
apart from the fixed filter delay (a few samples). ``ExactResampler`` also
returns exactly ``len(in) * out_rate / in_rate`` samples per call (paying the
delay once, as leading zeros), which a paced sender needs.
"""

from __future__ import annotations

import av
import numpy as np

from .audio import mono_to_frame

_EMPTY = np.zeros(0, dtype=np.int16)


class Resampler:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._rs = None if self._passthrough else av.AudioResampler(format="s16", layout="mono", rate=out_rate)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if self._rs is None or len(pcm) == 0:
            return pcm
        frames = self._rs.resample(mono_to_frame(pcm, self.in_rate))
        return _concat(frames)

    def flush(self) -> np.ndarray:
        """Drain the filter's delay line (end of stream)."""
        if self._rs is None:
            return _EMPTY
        return _concat(self._rs.resample(None))


def _concat(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return _EMPTY
    if len(frames) == 1:
        return frames[0].to_ndarray().reshape(-1)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


class ExactResampler:
    """Resampler with exact output lengths, for fixed-size paced frames.

    ``in_rate * len(pcm)`` must be divisible so the output length is an integer
    (true for 20 ms frames between 8/16/24/48 kHz).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._rs = Resampler(in_rate, out_rate)
        self._fifo = _EMPTY
        self._primed = False

    def process(self, pcm: np.ndarray) -> np.ndarray:
        n_out, rem = divmod(len(pcm) * self.out_rate, self.in_rate)
        if rem:
            raise ValueError(f"{len(pcm)} samples at {self.in_rate} Hz is not a whole number at {self.out_rate} Hz")
        out = self._rs.process(pcm)
        if not self._primed:
            # Pay the filter delay once, as leading zeros; afterwards the
            # output rate equals the input rate exactly and the FIFO stays flat.
            self._primed = True
            missing = n_out - len(out)
            if missing > 0:
                out = np.concatenate([np.zeros(missing, dtype=np.int16), out])
        buf = np.concatenate([self._fifo, out]) if len(self._fifo) else out
        if len(buf) < n_out:  # cannot happen once primed; be safe
            buf = np.concatenate([buf, np.zeros(n_out - len(buf), dtype=np.int16)])
        self._fifo = buf[n_out:]
        return buf[:n_out]
