"""The assistant's playout buffer: a queue of 24 kHz PCM per response item.

A transport's paced sender calls :meth:`PlayoutBuffer.read` once per frame; the
samples it returns are, by definition, the ones handed to the transport, and
only those count as played. Pause and flush fade out over at most
``fade_samples`` (5 ms) taken from the buffer *without consuming it*, so a
resume continues exactly where the pause happened and the played count never
includes faded samples. Listeners hear when audible playout starts and stops
and when an item has been played to its end.

No policy here: the worker decides when to pause, resume or flush.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

RATE = 24000


@dataclass
class PlayoutStarted:
    item_id: str


@dataclass
class PlayoutStopped:
    item_id: str
    reason: Literal["drained", "paused", "flushed"]


@dataclass
class ItemPlayed:
    """An item was played to its end (it had been marked complete)."""

    item_id: str
    played: int


PlayoutEvent = PlayoutStarted | PlayoutStopped | ItemPlayed


class _Item:
    __slots__ = ("item_id", "chunks", "offset", "received", "played", "ended")

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.chunks: deque[np.ndarray] = deque()
        self.offset = 0  # read position in chunks[0]
        self.received = 0
        self.played = 0
        self.ended = False

    @property
    def available(self) -> int:
        return self.received - self.played

    def take(self, out: np.ndarray, consume: bool) -> int:
        """Copy up to len(out) samples into out; advance only when consume."""
        want = len(out)
        got = 0
        offset = self.offset
        idx = 0
        chunks = self.chunks
        while got < want and idx < len(chunks):
            c = chunks[idx]
            n = min(len(c) - offset, want - got)
            out[got : got + n] = c[offset : offset + n]
            got += n
            offset += n
            if offset == len(c):
                idx += 1
                offset = 0
        if consume:
            for _ in range(idx):
                chunks.popleft()
            self.offset = offset
            self.played += got
        return got


class PlayoutBuffer:
    """Per-item PCM queue read by a paced sender; counts played samples exactly."""

    def __init__(
        self,
        rate: int = RATE,
        fade_ms: float = 5.0,
        listener: Callable[[PlayoutEvent], None] | None = None,
        history: int = 64,
    ) -> None:
        self.rate = rate
        self.fade_samples = max(1, int(rate * fade_ms / 1000))
        self._fade_down = np.linspace(1.0, 0.0, self.fade_samples, endpoint=False, dtype=np.float32)
        self._fade_up = self._fade_down[::-1].copy()
        self._items: deque[_Item] = deque()
        self._stats: dict[str, _Item] = {}
        self._history = history
        self._listeners: list[Callable[[PlayoutEvent], None]] = []
        if listener:
            self._listeners.append(listener)
        self._paused = False
        self._fade_out_pending = False
        self._fade_in_pending = False
        self._audible_item: str | None = None
        self._flush_head: _Item | None = None
        self.samples_read = 0  # every sample handed out, silence included
        self._taps: list[Callable[[np.ndarray], None]] = []

    # -- listeners --------------------------------------------------------
    def add_listener(self, cb: Callable[[PlayoutEvent], None]) -> None:
        self._listeners.append(cb)

    def add_tap(self, cb: Callable[[np.ndarray], None]) -> None:
        """``cb(samples)`` with every block :meth:`read` hands out (an echo canceller's reference)."""
        self._taps.append(cb)

    def _emit(self, ev: PlayoutEvent) -> None:
        for cb in self._listeners:
            cb(ev)

    # -- writer side (the worker) ------------------------------------------
    def add(self, item_id: str, pcm: np.ndarray) -> None:
        """Queue audio for ``item_id`` (items play in the order first added)."""
        item = self._stats.get(item_id)
        if item is None or item not in self._items:
            if item is not None and item.ended:
                return  # late audio for a finished/flushed item
            item = _Item(item_id)
            self._items.append(item)
            self._remember(item)
        if len(pcm):
            item.chunks.append(np.asarray(pcm, dtype=np.int16))
            item.received += len(pcm)

    def end_item(self, item_id: str) -> None:
        """The model sent all of ``item_id``'s audio."""
        item = self._stats.get(item_id)
        if item is None:
            item = _Item(item_id)
            self._remember(item)
            self._items.append(item)
        item.ended = True

    def _remember(self, item: _Item) -> None:
        self._stats[item.item_id] = item
        while len(self._stats) > self._history:
            oldest = next(iter(self._stats))
            if any(i.item_id == oldest for i in self._items):
                break
            del self._stats[oldest]

    # -- control -----------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def audible(self) -> bool:
        """True while item audio is being handed out (not paused, not drained)."""
        return self._audible_item is not None

    @property
    def current_item(self) -> str | None:
        return self._items[0].item_id if self._items else None

    def pending(self) -> int:
        """Samples queued and not yet played."""
        return sum(i.available for i in self._items)

    def has_audio(self) -> bool:
        return any(i.available > 0 or not i.ended for i in self._items)

    def pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._fade_in_pending = False
        if self._audible_item is not None:
            self._fade_out_pending = True

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._fade_out_pending = False
        self._fade_in_pending = True

    def flush(self) -> dict[str, tuple[int, int]]:
        """Drop everything queued; return {item_id: (played, received)}.

        If audio was audible (not paused) the next read fades out from the
        current position, so there is no click.
        """
        result = {i.item_id: (i.played, i.received) for i in self._items}
        if self._audible_item is not None and (not self._paused or self._fade_out_pending):
            # fade out from the current position on the next read
            self._fade_out_pending = True
            self._flush_head = self._items[0] if self._items else None
        for item in self._items:
            item.ended = True
        self._items.clear()
        self._paused = False
        self._fade_in_pending = False
        return result

    def played(self, item_id: str) -> int:
        item = self._stats.get(item_id)
        return item.played if item else 0

    def received(self, item_id: str) -> int:
        item = self._stats.get(item_id)
        return item.received if item else 0

    def _fade_out(self, head: _Item, out: np.ndarray) -> None:
        """Write a fade from the current position into ``out`` without consuming.

        Reads past the head item into the following ones; if less than the
        fade length is queued, the ramp is shortened to what there is, so the
        output always ends at zero with bounded steps.
        """
        want = min(self.fade_samples, len(out))
        tmp = np.zeros(want, dtype=np.int16)
        got = head.take(tmp, consume=False)
        if got < want:  # (after a flush the queue is empty: only the head remains)
            for item in list(self._items)[1:]:
                got += item.take(tmp[got:], consume=False)
                if got == want:
                    break
        if got == 0:
            return
        ramp = self._fade_down[:got] if got == self.fade_samples else np.linspace(
            1.0, 0.0, got, endpoint=False, dtype=np.float32)
        out[:got] = (tmp[:got] * ramp).astype(np.int16)

    # -- reader side (the transport's paced sender) -------------------------
    def read(self, n: int) -> np.ndarray:
        """Return exactly ``n`` samples to send now; silence when idle."""
        out = self._read(n)
        for tap in self._taps:
            tap(out)
        return out

    def _read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        self.samples_read += n
        if self._fade_out_pending:
            self._fade_out_pending = False
            head = self._flush_head or (self._items[0] if self._items else None)
            reason: Literal["paused", "flushed"] = "flushed" if self._flush_head else "paused"
            self._flush_head = None
            if head is not None:
                self._fade_out(head, out)
            if self._audible_item is not None:
                stopped = self._audible_item
                self._audible_item = None
                self._emit(PlayoutStopped(stopped, reason))
            return out
        if self._paused:
            return out
        filled = 0
        while filled < n and self._items:
            item = self._items[0]
            got = item.take(out[filled:], consume=True)
            if got and self._audible_item != item.item_id:
                # a new item (audio goes on without a gap when one was playing)
                self._audible_item = item.item_id
                self._emit(PlayoutStarted(item.item_id))
            filled += got
            if item.available == 0:
                if item.ended:
                    self._items.popleft()
                    self._emit(ItemPlayed(item.item_id, item.played))
                    continue
                break  # underrun: the model has not sent more yet
        if self._fade_in_pending and filled:
            self._fade_in_pending = False
            k = min(self.fade_samples, filled)
            out[:k] = (out[:k] * self._fade_up[:k]).astype(np.int16)
        if self._audible_item is not None and not self._items:
            stopped = self._audible_item
            self._audible_item = None
            self._emit(PlayoutStopped(stopped, "drained"))
        return out
