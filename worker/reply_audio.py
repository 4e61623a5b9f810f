"""The model's voice into the playout, at the playout's rate.

A transport builds the :class:`~media.playout.PlayoutBuffer` at the rate its
sender reads; a model speaks at ``ModelCapabilities.output_rate``.
:class:`ReplyAudio` resamples each item's audio (one stateful resampler per
item, drained at the item's end) when the two differ, and converts the
model's sample offsets (word timings) into playout samples.
"""

from __future__ import annotations

import numpy as np

from v2v.media.playout import PlayoutBuffer
from v2v.media.resample import Resampler


class ReplyAudio:
    def __init__(self, playout: PlayoutBuffer, model_rate: int) -> None:
        self.playout = playout
        self.model_rate = model_rate
        self._resamplers: dict[str, Resampler] = {}

    @property
    def resampling(self) -> bool:
        return self.model_rate != self.playout.rate

    def add(self, item_id: str, pcm: np.ndarray) -> None:
        """Queue one chunk of the item's audio (int16 at the model's rate)."""
        if self.resampling:
            rs = self._resamplers.get(item_id)
            if rs is None:
                rs = self._resamplers[item_id] = Resampler(self.model_rate, self.playout.rate)
            pcm = rs.process(pcm)
        self.playout.add(item_id, pcm)

    def end(self, item_id: str) -> None:
        """The model sent all of the item's audio."""
        rs = self._resamplers.pop(item_id, None)
        if rs is not None:
            tail = rs.flush()
            if len(tail):
                self.playout.add(item_id, tail)
        self.playout.end_item(item_id)

    def drop_all(self) -> None:
        """The playout was flushed: forget the items in flight."""
        self._resamplers.clear()

    def to_playout(self, samples: int) -> int:
        """A sample offset at the model's rate, in playout samples."""
        return samples * self.playout.rate // self.model_rate
