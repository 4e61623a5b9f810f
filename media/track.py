"""The synthetic outgoing assistant track for aiortc.

``AssistantTrack.recv()`` returns 20 ms mono s16 frames at 48 kHz (what
aiortc's Opus encoder takes, so its own resampler does nothing), paced by one
monotonic clock, with contiguous pts and silence when the playout buffer is
idle. Each ``recv()`` reads exactly 480 samples (20 ms at 24 kHz) from the
:class:`~media.playout.PlayoutBuffer`: those are the samples handed to the
transport.

A sender with a clock of its own (signaling's process-wide media clock)
calls :meth:`AssistantTrack.pull` instead: the same frames, unpaced, as PCM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .playout import PlayoutBuffer
from .resample import ExactResampler

FRAME_MS = 20
OUT_RATE = 48000
MAX_LAG = 0.1  # seconds behind schedule before the clock is re-anchored


class AssistantTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(
        self,
        playout: PlayoutBuffer,
        clock: Callable[[], float] = time.monotonic,
        out_rate: int = OUT_RATE,
    ) -> None:
        super().__init__()
        self.playout = playout
        self._clock = clock
        self.out_rate = out_rate
        self._in_per_frame = playout.rate * FRAME_MS // 1000
        self._out_per_frame = out_rate * FRAME_MS // 1000
        self._upsample = ExactResampler(playout.rate, out_rate)
        self._time_base = Fraction(1, out_rate)
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self._clock()
        else:
            due = self._start + self._pts / self.out_rate
            wait = due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -MAX_LAG:
                # the loop stalled: re-anchor instead of bursting the backlog
                # (pts stay contiguous; the caller hears a gap, not a rush)
                self._start = self._clock() - self._pts / self.out_rate
        pts = self._pts
        out = self.pull()
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.out_rate
        frame.pts = pts
        frame.time_base = self._time_base
        return frame

    def pull(self) -> np.ndarray:
        """The next 20 ms at ``out_rate`` (mono int16), at once: for a sender paced by a clock of its own."""
        out = self._upsample.process(self.playout.read(self._in_per_frame))
        self._pts += self._out_per_frame
        self.frames_sent += 1
        return out
