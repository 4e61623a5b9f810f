"""One media clock per process: a single 20 ms tick drives every call's outgoing audio.

Instead of a paced coroutine per call (a sleep, a task wake-up and an
``await`` chain per packet), the :class:`MediaClock` of the running event loop
calls each member's ``tick(ntp)`` once per 20 ms, in the order they joined.
The ticks sit on a fixed monotonic grid (``loop.time()``): a tick that fires
late does not move the later ones (the next one comes sooner, so the rate
holds). Ticks the loop missed entirely (a stall) are made up at one extra
frame per tick, never as a burst: each member is ticked twice on the next
ticks until the debt is paid, so its stream is back on the wall clock (a
caller's jitter buffer does not keep the stall as added delay); a debt past
:data:`MAX_DEBT` (100 ms, where the paced track re-anchored) is dropped
(``skipped``: the caller hears a gap). Members
join and leave between ticks or during one without moving the grid; a member
whose ``tick`` returns False or raises is dropped alone. A paced coroutine of
its own (the SIP RTP sender) can wait on the same grid with
:meth:`MediaClock.next_tick`. The clock runs only while it has members or
waiters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger("v2v.webrtc")

INTERVAL = 0.020
MAX_DEBT = 5  # missed ticks made up (one extra frame per tick); more than that is skipped
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (32.32 fixed point), as RTCP and abs-send-time use."""
    return int((time.time() + NTP_EPOCH_OFFSET) * (1 << 32))


class ClockMember(Protocol):
    def tick(self, ntp: int) -> bool:
        """Send this tick's frame; False: done, leave the clock."""


class MediaClock:
    """The 20 ms tick of one event loop and the senders it drives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self._members: dict[ClockMember, None] = {}  # ordered set
        self._handle: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []  # next_tick() callers, one future each
        self._waited = False  # the last tick woke someone: keep the grid for their next wait
        self._next = 0.0
        self.ticks = 0
        self.skipped = 0  # grid points passed over after a stall longer than MAX_DEBT ticks
        self.made_up = 0  # missed ticks sent as an extra frame on a later tick
        self._debt = 0
        self.max_late = 0.0  # seconds a tick fired behind its grid point, worst seen

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    @property
    def running(self) -> bool:
        return self._handle is not None

    def add(self, member: ClockMember) -> None:
        """Join: ``member`` sends from the next tick on (the grid is not moved)."""
        self._members[member] = None
        self._start()

    def next_tick(self) -> asyncio.Future[None]:
        """A future resolved at the next tick (each caller its own: cancelling one leaves the others)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(fut)
        self._start()
        return fut

    def _start(self) -> None:
        if self._handle is None:
            self._next = self.loop.time() + self.interval
            self._debt = 0
            self._handle = self.loop.call_at(self._next, self._tick)

    def discard(self, member: ClockMember) -> None:
        """Leave (at once; a no-op when not a member). The last one out stops the tick."""
        self._members.pop(member, None)
        if not self._members and not self._waiters and not self._waited and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        self.ticks += 1
        late = now - self._next
        if late > self.max_late:
            self.max_late = late
        ntp = ntp_now()
        frames = 1
        if self._debt:
            self._debt -= 1
            self.made_up += 1
            frames = 2
        for member in list(self._members):
            if member not in self._members:
                continue  # left during this tick
            try:
                keep = member.tick(ntp) and (frames == 1 or member.tick(ntp))
            except Exception:
                log.warning("media clock member failed, dropped", exc_info=True)
                keep = False
            if not keep:
                self._members.pop(member, None)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if not self._members and not waiters and not self._waited:
            self._handle = None
            return
        self._waited = bool(waiters)
        self._next += self.interval
        behind = self.loop.time() - self._next
        if behind >= self.interval:  # stalled past whole ticks: made up one per tick, the rest skipped
            missed = int(behind // self.interval)
            self._next += missed * self.interval
            self._debt += missed
            if self._debt > MAX_DEBT:
                self.skipped += self._debt - MAX_DEBT
                self._debt = MAX_DEBT
        self._handle = self.loop.call_at(self._next, self._tick)


_clock: MediaClock | None = None


def get_clock() -> MediaClock:
    """The media clock of the running event loop (one per process; a new loop gets a new clock)."""
    global _clock
    loop = asyncio.get_running_loop()
    if _clock is None or _clock.loop is not loop:
        _clock = MediaClock(loop)
    return _clock
