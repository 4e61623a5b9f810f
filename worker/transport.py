"""The transport seam: what a transport hands a call.

A transport (WebRTC via aiortc, SIP/RTP, a WAV file) gives the worker an
:class:`AudioInput` -- an async iterator of mono int16 numpy frames at a fixed
``sample_rate`` -- and reads the assistant's voice from a
:class:`media.playout.PlayoutBuffer` at real-time pace (``read(n)`` hands out
samples at the rate the transport built the buffer with, and counts them as
played; the call resamples the model's voice to that rate). It may also carry a text control
channel (the RTVI data channel). The worker never learns which transport it is
on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np


class AudioInput(Protocol):
    sample_rate: int

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class QueueAudioInput:
    """An :class:`AudioInput` fed by a transport with :meth:`put`.

    It survives the transport replacing its source (a restarted peer
    connection keeps feeding the same input); :meth:`end` finishes it.
    """

    def __init__(self, sample_rate: int, maxsize: int = 500) -> None:
        self.sample_rate = sample_rate
        self._q: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize)

    def put(self, pcm: np.ndarray) -> None:
        try:
            self._q.put_nowait(pcm)
        except asyncio.QueueFull:  # consumer stalled: drop the oldest frame
            self._q.get_nowait()
            self._q.put_nowait(pcm)

    def end(self) -> None:
        try:
            self._q.put_nowait(None)
        except asyncio.QueueFull:
            self._q.get_nowait()
            self._q.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        while True:
            pcm = await self._q.get()
            if pcm is None:
                return
            yield pcm
