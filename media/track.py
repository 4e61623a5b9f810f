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
QUIET_FRAMES = 4  # exact-silence frames after which the upsampler's delay line holds only zeros (1 measured)


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
        self._quiet = 0  # consecutive frames of exact silence read from the playout
        self._silence = np.zeros(self._out_per_frame, dtype=np.int16)
        self._silence.flags.writeable = False

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
        """The next 20 ms at ``out_rate`` (mono int16), at once: for a sender paced by a clock of its own.

        Exact silence (idle or paused playout) once the upsampler has settled is
        returned without running it: its state is all zeros then, and stays so.
        """
        pcm = self.playout.read(self._in_per_frame)
        if pcm.any():
            self._quiet = 0
        elif self._quiet >= QUIET_FRAMES:
            return self._advance(self._silence)
        else:
            self._quiet += 1
        return self._advance(self._upsample.process(pcm))

    def _advance(self, out: np.ndarray) -> np.ndarray:
        self._pts += self._out_per_frame
        self.frames_sent += 1
        return out
