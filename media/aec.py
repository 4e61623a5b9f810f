"""Acoustic echo cancellation of a caller's input against the assistant's playout.

:class:`EchoCanceller` wraps WebRTC's AEC3 (the ``AudioProcessingModule`` of
the ``livekit`` wheel: native code, offline, CPU only; AEC3 with its own delay
estimator, plus a high-pass filter). It is fed two streams at the caller's
rate:

- :meth:`EchoCanceller.far`: the far-end reference, the exact samples the
  transport took from the playout buffer (at the playout rate; resampled
  here), pushed when the transport takes them;
- :meth:`EchoCanceller.process`: the caller's microphone; returns the same
  samples with the echo of the reference removed.

Both are cut into the 10 ms frames AEC3 works on; :meth:`process` returns
whole frames only (a piece that does not fill a frame waits for the next
call, so with 10/20 ms packets nothing waits). While no assistant audio went
out for :data:`IDLE_MS` both streams bypass AEC3 (a caller listening to
silence costs nothing). The delay between a reference
sample and its echo (network, the caller's jitter buffer, the room) is found
by AEC3 itself (it tracks 0 to ~500 ms and re-converges when it changes).

For a policy above it, the canceller also reports the recent level of the
reference (:meth:`far_level_dbfs`, the loudest 10 ms frame of the last
``window_ms``) and how much it removed while the reference played
(:attr:`removed_db`, and :attr:`echo_share`, the share of frames during
assistant audio that carried echo). No policy here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from .resample import Resampler

SUPPORTED_RATES = (8000, 16000, 32000, 48000)
SILENT_DBFS = -120.0
FAR_ACTIVE_DBFS = -50.0  # a reference frame at least this loud counts as assistant audio
ECHO_FRAME_DB = 12.0  # a microphone frame this much quieter after cancellation carried echo
LOUD_DBFS = -55.0  # microphone frames at least this loud during assistant audio judge the canceller
RESET_FRAMES = 40  # of the last this many such frames (0.4 s) ...
RESET_SHARE = 0.3  # ... fewer than this share cancelled: the canceller lost the echo path; start afresh
IDLE_MS = 1000  # reference silent this long (more than the longest delay + reverb tail): canceller idle
ECHO_SEEN_FRAMES = 20  # loud frames cancelled before the caller's line counts as echoing
CONVERGED_FRAMES = 200  # loud frames cancelled before the canceller counts as converged
RESET_GAP_S = 1.0  # at most once per this many seconds of microphone audio


def level_dbfs(frames: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each row of an int16 (n, k) array."""
    f = frames.astype(np.float32)
    ms = np.einsum("ij,ij->i", f, f) / max(1, f.shape[1])
    return 10.0 * np.log10(ms / (32768.0 * 32768.0) + 1e-12)


class EchoCanceller:
    """AEC3 for one call: reference in with :meth:`far`, microphone through :meth:`process`."""

    def __init__(self, rate: int, ref_rate: int, noise_suppression: bool = False, window_ms: int = 600) -> None:
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"echo cancellation runs at {SUPPORTED_RATES}, not {rate} Hz")
        from livekit import rtc  # lazy: the native library loads only when a call uses AEC

        self._rtc: Any = rtc
        self._ns = noise_suppression
        self._apm = self._new_apm()
        self.rate = rate
        self.frame = rate // 100
        self._ref_resampler = Resampler(ref_rate, rate) if ref_rate != rate else None
        self._ref_pending = np.zeros(0, dtype=np.int16)
        self._mic_pending = np.zeros(0, dtype=np.int16)
        self._far_levels: deque[float] = deque([SILENT_DBFS], maxlen=max(1, window_ms // 10))
        self._far_active = 0  # far frames >= FAR_ACTIVE_DBFS still inside the window
        self._in_energy = 0.0  # microphone energy while the reference was active
        self._out_energy = 0.0  # the same after cancellation
        self.far_samples = 0
        self._far_quiet = IDLE_MS // 10  # reference frames since the last loud one (idle at the start)
        self.mic_samples = 0
        self.active_ms = 0  # microphone time processed while the reference was active
        self.echo_ms = 0  # of which frames where cancellation removed >= ECHO_FRAME_DB
        self._recent: deque[bool] = deque(maxlen=RESET_FRAMES)  # loud frames: cancelled or not
        self._cancelled_since_reset = 0
        self.cancelled_frames = 0  # loud microphone frames with echo removed, since the start
        self._last_reset = 0
        self.resets = 0

    # -- far end -------------------------------------------------------------
    def far(self, pcm: np.ndarray) -> None:
        """Reference samples just handed to the transport (at the playout rate)."""
        ref = self._ref_resampler.process(pcm) if self._ref_resampler else np.asarray(pcm, dtype=np.int16)
        buf = np.concatenate([self._ref_pending, ref]) if len(self._ref_pending) else ref
        n = len(buf) // self.frame
        self._ref_pending = buf[n * self.frame:].copy()
        if n == 0:
            return
        frames = buf[: n * self.frame].reshape(n, self.frame)
        levels = level_dbfs(frames)
        self._far_levels.extend(levels.tolist())
        self._far_active = sum(1 for lv in self._far_levels if lv >= FAR_ACTIVE_DBFS)
        loud = np.nonzero(levels >= FAR_ACTIVE_DBFS)[0]
        self._far_quiet = n - 1 - int(loud[-1]) if len(loud) else self._far_quiet + n
        if not self.idle:
            for row in frames:
                self._apm.process_reverse_stream(self._audio_frame(row))
        self.far_samples += n * self.frame

    @property
    def idle(self) -> bool:
        """No assistant audio for IDLE_MS: both streams skip the canceller (no echo can be left)."""
        return self._far_quiet * 10 >= IDLE_MS

    def far_level_dbfs(self) -> float:
        """The loudest reference frame of the recent window (dBFS)."""
        return max(self._far_levels)

    @property
    def far_active(self) -> bool:
        """Assistant audio went out within the recent window (its echo may still come back)."""
        return self._far_active > 0

    # -- near end --------------------------------------------------------------
    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Cancel the echo in microphone samples; returns whole 10 ms frames."""
        pcm = np.asarray(pcm, dtype=np.int16)
        buf = np.concatenate([self._mic_pending, pcm]) if len(self._mic_pending) else pcm
        n = len(buf) // self.frame
        self._mic_pending = buf[n * self.frame:].copy()
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        self.mic_samples += n * self.frame
        if self.idle:
            return buf[: n * self.frame].copy()
        out = np.empty(n * self.frame, dtype=np.int16)
        for i in range(n):
            frame = self._audio_frame(buf[i * self.frame:(i + 1) * self.frame])
            self._apm.set_stream_delay_ms(0)  # AEC3 estimates the delay itself
            self._apm.process_stream(frame)
            out[i * self.frame:(i + 1) * self.frame] = np.frombuffer(frame.data, dtype=np.int16)
        if self.far_active:
            src = buf[: n * self.frame].reshape(n, self.frame)
            res = out.reshape(n, self.frame)
            lin, lout = level_dbfs(src), level_dbfs(res)
            self._in_energy += float(np.sum(10 ** (lin / 10)))
            self._out_energy += float(np.sum(10 ** (lout / 10)))
            self.active_ms += n * 10
            cancelled = lin - lout >= ECHO_FRAME_DB
            self.echo_ms += int(np.count_nonzero(cancelled)) * 10
            loud = cancelled[lin >= LOUD_DBFS]
            self._recent.extend(loud.tolist())
            self._cancelled_since_reset += int(np.count_nonzero(loud))
            self.cancelled_frames += int(np.count_nonzero(loud))
            self._check_lost()
        return out

    def _new_apm(self) -> Any:
        return self._rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=self._ns, high_pass_filter=True)

    def _check_lost(self) -> None:
        """AEC3 re-converges slowly after a large delay jump (> ~150 ms): a fresh one converges in ~1 s."""
        recent = self._recent
        if len(recent) < RESET_FRAMES or self.mic_samples - self._last_reset < RESET_GAP_S * self.rate:
            return
        if sum(recent) < RESET_SHARE * len(recent):
            self._apm = self._new_apm()
            self._recent.clear()
            self._cancelled_since_reset = 0
            self._last_reset = self.mic_samples
            self.resets += 1

    @property
    def echo_seen(self) -> bool:
        """The microphone has carried echo of the reference (ECHO_SEEN_FRAMES loud frames cancelled)."""
        return self.cancelled_frames >= ECHO_SEEN_FRAMES

    @property
    def converged(self) -> bool:
        """It has cancelled echo (CONVERGED_FRAMES loud frames) since it started or last restarted."""
        return self._cancelled_since_reset >= CONVERGED_FRAMES

    @property
    def removed_db(self) -> float:
        """Echo return loss enhancement so far: microphone vs output energy while the reference played."""
        if self._in_energy <= 0.0:
            return 0.0
        return 10.0 * math.log10((self._in_energy + 1e-12) / (self._out_energy + 1e-12))

    @property
    def echo_share(self) -> float:
        """Share of the microphone frames during assistant audio that carried echo (0..1)."""
        return self.echo_ms / self.active_ms if self.active_ms else 0.0

    def _audio_frame(self, samples: np.ndarray) -> Any:
        return self._rtc.AudioFrame(bytearray(samples.tobytes()), self.rate, 1, self.frame)
