"""A small reordering jitter buffer keyed by 16-bit RTP sequence numbers.

No policy: packets come out in sequence order as soon as they are contiguous;
a gap is declared lost (yielded as ``None``) once ``depth`` newer packets wait
behind it. Duplicates and packets older than what was already released are
dropped. Sequence numbers wrap at 65536; a jump larger than ``max_gap`` is a
stream restart and re-anchors the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .rtp_seq import extend_seq

T = TypeVar("T")


@dataclass
class JitterStats:
    received: int = 0
    released: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    resets: int = 0


class JitterBuffer(Generic[T]):
    def __init__(self, depth: int = 2, max_gap: int = 100) -> None:
        if depth < 0:
            raise ValueError("depth must be >= 0")
        self.depth = depth
        self.max_gap = max_gap
        self._next: int | None = None  # extended sequence number expected next
        self._pending: dict[int, T] = {}
        self.stats = JitterStats()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, seq: int, item: T) -> list[tuple[int, T | None]]:
        """Add a packet; return what is now ready, in order (``None`` = lost)."""
        seq &= 0xFFFF
        self.stats.received += 1
        if self._next is None:
            self._next = seq
        ext = extend_seq(seq, self._next)  # nearest to the one expected: late ones come out below it
        out: list[tuple[int, T | None]] = []
        if ext < self._next:
            if self._next - ext > self.max_gap:
                out += self._reset(ext)
            else:
                self.stats.late += 1
                return out
        elif ext - self._next > self.max_gap:
            out += self._reset(ext)
        if ext in self._pending:
            self.stats.duplicate += 1
            return out
        self._pending[ext] = item
        out += self._drain()
        return out

    def _reset(self, ext: int) -> list[tuple[int, T | None]]:
        out = self.flush()
        self.stats.resets += 1
        self._next = ext
        return out

    def _drain(self) -> list[tuple[int, T | None]]:
        out: list[tuple[int, T | None]] = []
        assert self._next is not None
        while self._pending:
            if self._next in self._pending:
                out.append((self._next & 0xFFFF, self._pending.pop(self._next)))
                self.stats.released += 1
            elif max(self._pending) - self._next >= self.depth:
                out.append((self._next & 0xFFFF, None))
                self.stats.lost += 1
            else:
                break
            self._next += 1
        return out

    def flush(self) -> list[tuple[int, T | None]]:
        """Release everything held, in order, skipping (not reporting) holes."""
        out: list[tuple[int, T | None]] = []
        for ext in sorted(self._pending):
            out.append((ext & 0xFFFF, self._pending[ext]))
            self.stats.released += 1
            self._next = ext + 1
        self._pending.clear()
        return out
