"""Voice activity detection on webrtcvad with hysteresis and sample positions.

`VoiceActivityDetector` takes int16 mono PCM at a rate webrtcvad supports
(8/16/32/48 kHz) in pieces of any size, cuts it into 10/20/30 ms frames and
decides per frame. A frame is *voiced* when all three hold (cheapest first):

1. energy floor: its RMS is at least `energy_floor_dbfs` (near-silence is
   never speech);
2. noise gate: its level is at least `noise_margin_db` above the noise floor,
   the minimum frame level of the last `noise_window_ms` (this frame
   included). The level is measured on a box-car decimated (~8 kHz, the band
   webrtcvad looks at), pre-emphasised copy of the signal, so the slow
   low-frequency swings of pink noise and the out-of-band energy of white
   noise at 48 kHz do not count. Stationary noise and tones sit at the floor
   and are rejected, however loud; webrtcvad alone flags such noise for
   seconds after it begins (its noise model adapts slowly);
3. webrtcvad (one `is_speech` call per frame) says speech.

Hysteresis:

* start: `start_ms` of *consecutive* voiced frames (rounded up to whole
  frames, at least one). Consecutive rather than k-of-n keeps the decision
  exactly `start_ms` after the onset, which the barge-in budget needs. The
  start event's `sample` is the first sample of that voiced run; `decided_at`
  is the end of the frame that completed it.
* end: `end_ms` of consecutive unvoiced frames while speaking. The end
  event's `sample` is the end of the last voiced frame; `decided_at` is the
  end of the frame that completed the hangover.

Line noise that starts abruptly (a phone line opening: silence, then steady
noise) sits far above a floor learnt on the silence, and webrtcvad takes it for
speech. With ``settle_ms`` > 0 the gate adapts before it decides:

* settle: while not speaking, once the last ``settle_ms`` of frame levels all
  lie within ``noise_margin_db`` of each other and at least that far above the
  floor, they *are* the new floor (the window restarts from them): a step of
  stationary noise is gated after ``settle_ms`` instead of ``noise_window_ms``;
* evidence: a start also needs the current voiced run's levels to span at
  least ``rise_db`` (speech is modulated, a noise step is flat), so the step
  never starts speech before the floor has settled on it. On a busy
  background (at least ``busy_share`` of the frames heard while nobody was
  speaking, over the last ``noise_window_ms``, were voiced: chatter, a TV) the
  span needed is ``busy_rise_db``: babble is modulated too, and only a voice
  well above it should start a turn. On a quiet or steady background the
  smaller span lets speech 5-10 dB above steady noise start.

Eager onset (``onset_ms`` set): after ``onset_ms`` of consecutive voiced
frames an ``onset`` event (tentative speech, for a cheap reversible pause)
comes before the ``start``; if no start follows before ``drop_ms`` of
unvoiced frames (or the floor settles on it: it was a noise step), a ``drop``
event retracts it. A start that follows an onset
carries the onset's sample.

Events depend only on whole frames, so the way the input is split into pieces
never changes them. Positions count input samples since the first sample fed
(or since `reset()`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

SUPPORTED_RATES = (8000, 16000, 32000, 48000)
SUPPORTED_FRAME_MS = (10, 20, 30)
PREEMPHASIS = 0.97
BUSY_MIN_FRAMES = 3  # voiced background frames that make a busy background, however few were heard
_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class VadEvent:
    """Speech start or end; positions in input samples."""

    kind: Literal["start", "end", "onset", "drop"]
    sample: int  # where speech began (start, onset) / ended (end, drop: the last voiced sample)
    decided_at: int  # input position at which the decision was made


class VoiceActivityDetector:
    """webrtcvad plus an energy floor and a noise gate, with start/end hysteresis."""

    def __init__(
        self,
        sample_rate: int,
        aggressiveness: int = 2,
        frame_ms: int = 10,
        start_ms: int = 30,
        end_ms: int = 500,
        energy_floor_dbfs: float = -55.0,
        noise_margin_db: float = 6.0,
        noise_window_ms: int = 2000,
        settle_ms: int = 0,
        rise_db: float = 4.5,
        busy_rise_db: float = 9.0,
        busy_share: float = 0.05,
        onset_ms: int | None = None,
        drop_ms: int = 100,
    ) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported VAD sample rate {sample_rate} (use one of {SUPPORTED_RATES})")
        if frame_ms not in SUPPORTED_FRAME_MS:
            raise ValueError(f"unsupported VAD frame length {frame_ms} ms (use one of {SUPPORTED_FRAME_MS})")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0..3, not {aggressiveness}")
        if min(start_ms, end_ms, noise_window_ms, settle_ms, drop_ms, onset_ms or 0) < 0:
            raise ValueError("start_ms, end_ms, noise_window_ms, settle_ms, onset_ms and drop_ms must be >= 0")
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.energy_floor_dbfs = energy_floor_dbfs
        self.noise_margin_db = noise_margin_db
        self.noise_window_ms = noise_window_ms
        self.frame_len = sample_rate * frame_ms // 1000
        self.start_frames = max(1, math.ceil(start_ms / frame_ms))
        self.end_frames = max(1, math.ceil(end_ms / frame_ms))
        self._decim = sample_rate // 8000  # box-car factor to ~8 kHz (frame_len is a multiple)
        self._box = np.ones(self._decim, dtype=np.float32)  # box-car sums as one matrix-vector product
        self._window_frames = max(1, noise_window_ms // frame_ms)
        self.settle_frames = math.ceil(settle_ms / frame_ms)  # 0: no settling, no evidence needed
        self.rise_db = rise_db
        self.busy_rise_db = busy_rise_db
        self.busy_share = busy_share
        self.onset_frames = None if onset_ms is None else max(1, math.ceil(onset_ms / frame_ms))
        self.drop_frames = max(1, math.ceil(drop_ms / frame_ms))
        self._floor_power = (32768.0 * 10 ** (energy_floor_dbfs / 20)) ** 2  # mean square, int16 units
        self.reset()

    def set_energy_floor(self, dbfs: float) -> None:
        """Change the energy floor from the next frame on (e.g. above an echo canceller's residual)."""
        if dbfs != self.energy_floor_dbfs:
            self.energy_floor_dbfs = dbfs
            self._floor_power = (32768.0 * 10 ** (dbfs / 20)) ** 2

    def reset(self) -> None:
        """Forget all state (a fresh webrtcvad instance; positions restart at 0)."""
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._pending = np.zeros(0, dtype=np.int16)
        self.position = 0  # samples consumed (including a buffered partial frame)
        self.speaking = False
        self.last_voiced_end = 0
        self._frames_done = 0  # whole frames classified
        self._run_start = 0  # first sample of the current voiced run
        self._run = 0  # consecutive voiced frames
        self._silent = 0  # consecutive unvoiced frames
        self._prev = np.float32(0.0)  # last decimated sample (pre-emphasis across pieces)
        self._levels = _WindowMin(self._window_frames)
        self._recent: deque[float] = deque(maxlen=max(1, self.settle_frames))  # levels for settling
        self._run_lo = self._run_hi = 0.0  # level range of the current voiced run
        self._bg: deque[bool] = deque(maxlen=self._window_frames)  # voiced flags of frames heard while not speaking
        self._bg_voiced = 0  # how many of them are True
        self.tentative = False  # an onset was reported and neither a start nor a drop followed
        self._onset = 0
        self.settled = 0  # how many times the floor settled on a step of stationary noise

    def process(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed int16 mono samples (any length); return the events they complete."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"VAD input must be int16, not {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"VAD input must be mono 1-D, got shape {pcm.shape}")
        self.position += len(pcm)
        buf = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        fl = self.frame_len
        n = len(buf) // fl
        self._pending = buf[n * fl :].copy() if len(buf) > n * fl else _EMPTY
        if n == 0:
            return []
        frames = buf[: n * fl].reshape(n, fl)
        if self._prev == 0 and not np.count_nonzero(frames):  # count_nonzero: 4x cheaper than .any()
            # exact silence after silence (or at the start): level 0 dB (10 log10(0 + 1)), not loud --
            # what the arithmetic below gives, without it
            levels, loud, data = [0.0] * n, [False] * n, b""
        else:
            f = frames.astype(np.float32)
            loud = (np.einsum("ij,ij->i", f, f) / fl >= self._floor_power).tolist()
            levels = self._levels_db(f.reshape(-1), n)
            data = frames.tobytes()
        step = fl * 2
        is_speech = self._vad.is_speech
        rate = self.sample_rate
        margin = self.noise_margin_db
        events: list[VadEvent] = []
        pos = self._frames_done * fl
        for i in range(n):
            lv = levels[i]
            floor = self._floor(lv)
            voiced = loud[i] and lv - floor >= margin and is_speech(data[i * step : (i + 1) * step], rate)
            if not self.speaking:
                self._background(voiced)
            start, pos = pos, pos + fl
            if voiced:
                self._voiced(lv, start, pos, events)
            else:
                self._unvoiced(pos, events)
        self._frames_done += n
        return events

    def _floor(self, lv: float) -> float:
        """Add a frame level to the window; return the noise floor (settled on a noise step)."""
        hist = self._levels
        hist.append(lv)
        floor = hist.min()
        if self.settle_frames and not self.speaking:
            recent = self._recent
            recent.append(lv)
            if len(recent) == self.settle_frames:
                lo = min(recent)
                if lo - floor >= self.noise_margin_db and max(recent) - lo < self.noise_margin_db:
                    hist.clear()
                    hist.extend(recent)
                    self.settled += 1
                    floor = lo
                    self._silent = max(self._silent, self.drop_frames - 1)  # an onset on it: drop at once
        return floor

    def _background(self, voiced: bool) -> None:
        """Count the voiced frames among those heard while nobody speaks (a sliding window)."""
        bg = self._bg
        if len(bg) == bg.maxlen and bg[0]:
            self._bg_voiced -= 1
        bg.append(voiced)
        self._bg_voiced += voiced

    @property
    def busy(self) -> bool:
        """The background is busy (voice-like: babble, a TV): a start needs ``busy_rise_db``. The current
        voiced run (the candidate itself) does not count; from the first frames on, 3 voiced ones will."""
        voiced = self._bg_voiced - min(self._run, self._bg_voiced)
        return voiced >= max(BUSY_MIN_FRAMES, self.busy_share * len(self._bg))

    def _voiced(self, lv: float, start: int, pos: int, events: list[VadEvent]) -> None:
        if self._run == 0:
            self._run_start = start
            self._run_lo = self._run_hi = lv
        else:
            self._run_lo, self._run_hi = min(self._run_lo, lv), max(self._run_hi, lv)
        self._run += 1
        self._silent = 0
        self.last_voiced_end = pos
        if self.speaking:
            return
        if self.onset_frames is not None and not self.tentative and self._run >= self.onset_frames:
            self.tentative = True
            self._onset = self._run_start
            events.append(VadEvent("onset", self._onset, pos))
        rise = self.busy_rise_db if self.busy else self.rise_db
        if self._run >= self.start_frames and (not self.settle_frames or self._run_hi - self._run_lo >= rise):
            self.speaking = True
            self._recent.clear()
            for _ in range(min(self._run, len(self._bg))):  # the run was the speaker, not the background
                self._bg_voiced -= self._bg.pop()
            events.append(VadEvent("start", self._onset if self.tentative else self._run_start, pos))
            self.tentative = False

    def _unvoiced(self, pos: int, events: list[VadEvent]) -> None:
        self._run = 0
        self._silent += 1
        if self.speaking and self._silent >= self.end_frames:
            self.speaking = False
            events.append(VadEvent("end", self.last_voiced_end, pos))
        elif self.tentative and self._silent >= self.drop_frames:
            self.tentative = False
            events.append(VadEvent("drop", self.last_voiced_end, pos))

    def _levels_db(self, flat: np.ndarray, n: int) -> list[float]:
        """Per-frame level (dB, int16 units) of the decimated, pre-emphasised signal."""
        k = self._decim
        # the sums of k int16 samples are exact in float32 in any order: bit-identical to .mean(axis=1)
        low = flat.reshape(-1, k) @ self._box / np.float32(k) if k > 1 else flat
        emph = np.empty_like(low)
        emph[0] = low[0] - PREEMPHASIS * self._prev
        emph[1:] = low[1:] - PREEMPHASIS * low[:-1]
        self._prev = low[-1]
        e = emph.reshape(n, -1)
        return (10.0 * np.log10(np.einsum("ij,ij->i", e, e) / e.shape[1] + 1.0)).tolist()


class _WindowMin:
    """The minimum of the last ``size`` values appended, in O(1) amortised per value (a monotonic
    deque: only values that can still become the minimum are kept), instead of ``min()`` over the
    whole window every frame."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._count = 0
        self._mono: deque[tuple[int, float]] = deque()  # (index, value), values strictly increasing

    def append(self, value: float) -> None:
        mono = self._mono
        while mono and mono[-1][1] >= value:
            mono.pop()
        mono.append((self._count, value))
        self._count += 1
        if mono[0][0] <= self._count - 1 - self.size:
            mono.popleft()

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.append(v)

    def clear(self) -> None:
        self._mono.clear()

    def min(self) -> float:
        return self._mono[0][1]
