"""Re-chunk a stream of samples into fixed-size chunks (2400 = 100 ms at 24 kHz)."""

from __future__ import annotations

import numpy as np

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
