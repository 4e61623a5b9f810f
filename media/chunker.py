"""Re-chunk a stream of samples into fixed-size chunks (2400 = 100 ms at 24 kHz).

:class:`ResamplingChunker` resamples on the way, in batches: the input is held
until it completes a chunk, then resampled in one call (one libswresample call
per 100 ms instead of five), with the same chunks at the same input frames as
resampling every frame would give.
"""

from __future__ import annotations

import numpy as np

from .resample import Resampler

MODEL_CHUNK = 2400  # 100 ms at 24 kHz


class Chunker:
    """Frames of any size in, exactly ``size``-sample chunks out.

    Nothing is lost or duplicated: the concatenation of the chunks returned by
    :meth:`push` and the remainder returned by :meth:`flush` equals the
    concatenation of everything pushed.
    """

    def __init__(self, size: int = MODEL_CHUNK, dtype: type = np.int16) -> None:
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = size
        self._buf: np.ndarray = np.zeros(size, dtype=dtype)
        self._fill = 0

    @property
    def pending(self) -> int:
        return self._fill

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        pos = 0
        n = len(pcm)
        size = self.size
        if self._fill:
            take = min(size - self._fill, n)
            self._buf[self._fill : self._fill + take] = pcm[:take]
            self._fill += take
            pos = take
            if self._fill < size:
                return out
            out.append(self._buf.copy())
            self._fill = 0
        whole = (n - pos) // size
        if whole:
            block = pcm[pos : pos + whole * size]
            out.extend(np.array(block).reshape(whole, size))
            pos += whole * size
        rest = n - pos
        if rest:
            self._buf[:rest] = pcm[pos:]
            self._fill = rest
        return out

    def flush(self) -> np.ndarray:
        """Return (and forget) the partial chunk held, possibly empty."""
        rest = self._buf[: self._fill].copy()
        self._fill = 0
        return rest


class ResamplingChunker:
    """``in_rate`` frames of any size in, exactly ``size``-sample chunks at ``out_rate`` out.

    Equivalent to ``Chunker(size).push(Resampler(in_rate, out_rate).process(pcm))`` on every frame --
    the same samples (libswresample's output does not depend on how its input is cut) and each chunk
    returned by the same :meth:`push` -- but the resampler runs only on a push whose held input, at
    its nominal output length (rounded up), completes a chunk. libswresample lags the nominal length
    by its fixed filter delay and never runs ahead of it, so no chunk comes later than per frame.
    """

    def __init__(self, in_rate: int, out_rate: int, size: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = Resampler(in_rate, out_rate)
        self._chunker = Chunker(size)
        self._held = np.zeros(in_rate // 10, dtype=np.int16)  # grows if a push holds more
        self._fill = 0

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        n = len(pcm)
        need = self._fill + n
        if need > len(self._held):
            grown = np.zeros(max(need, 2 * len(self._held)), dtype=np.int16)
            grown[: self._fill] = self._held[: self._fill]
            self._held = grown
        self._held[self._fill : need] = pcm
        self._fill = need
        nominal = -(-need * self.out_rate // self.in_rate)  # rounded up
        if nominal + self._chunker.pending < self._chunker.size:
            return []
        self._fill = 0
        return self._chunker.push(self._resampler.process(self._held[:need]))
