"""Semantic end of turn: at each pause, an end-of-turn model says whether the caller is done.

Without a model (``--turn-model off``) the call's VAD ends the turn after its
fixed silence hangover (``vad_end_ms``, 500 ms). With one, the call's VAD ends
its speech segment after a short pause (:data:`PAUSE_MS`) and
:class:`EndOfTurn` decides what that pause is:

- the model (Smart Turn v3, :mod:`worker.turn_model`) hears the turn so far
  (from :data:`PRE_SPEECH_MS` before its first onset, the last 8 s at most, at
  16 kHz) and returns the probability that the utterance is complete;
- at or above :data:`THRESHOLD`: the turn ends now;
- below: the turn is held; the caller speaking again (a VAD start) continues
  the same turn; ``max_wait_ms`` of silence after the last voiced frame ends it;
- the model failing: the turn ends after the fixed hangover, as without it.

A burst the barge-in logic claimed (the caller talking over the assistant and
stopping) is not a turn: :meth:`EndOfTurn.drop` forgets it. The model runs off
the event loop (its own thread); a result that arrives after the caller spoke
again is ignored. Positions are input samples, as everywhere in the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from v2v.media.resample import Resampler

from .turn_model import MODEL_RATE, TurnPrediction, shared_smart_turn, smart_turn_missing

if TYPE_CHECKING:
    from .call import CallConfig

log = logging.getLogger("v2v.turn")

PAUSE_MS = 150  # silence after the last voiced frame at which the model is asked (the VAD's hangover;
# CallConfig.turn_pause_ms)
PRE_SPEECH_MS = 500  # audio before the turn's first onset the model hears (as Pipecat gives it)
WINDOW_S = 8  # the model hears at most this much
THRESHOLD = 0.9  # probability of "complete" at or above which the turn ends at the pause (Pipecat: 0.5; 0.9
# was chosen on recorded human speech: bench/turn_human.py, BENCHMARKS.md "Turn-taking")
DEFAULT_MAX_WAIT_MS = 1500

Reason = Literal["model", "max-wait", "fallback"]


class TurnPredictor(Protocol):
    async def predict(self, audio: np.ndarray) -> TurnPrediction: ...


@dataclass(frozen=True)
class TurnDecision:
    """One pause's outcome (kept for benchmarks and logs)."""

    asked_at: int  # input position when the model was asked (the VAD's end decision)
    voiced_end: int  # input position of the end of the last voiced frame
    probability: float | None  # None: the model failed
    ended: bool  # the turn ended at this pause (else held)
    cpu_ms: float = 0.0
    wall_ms: float = 0.0


class EndOfTurn:
    """One call's end-of-turn decision; the call feeds it audio and VAD events."""

    def __init__(
        self,
        call_id: str,
        input_rate: int,
        predictor: TurnPredictor,
        end_turn: Callable[[Reason], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
        max_wait_ms: int = DEFAULT_MAX_WAIT_MS,
        fallback_ms: int = 500,
        threshold: float = THRESHOLD,
        pause_ms: int = PAUSE_MS,
    ) -> None:
        self.call_id = call_id
        self.input_rate = input_rate
        self.predictor = predictor
        self._end_turn = end_turn
        self._spawn = spawn
        self.threshold = threshold
        self.max_wait = input_rate * max_wait_ms // 1000
        self.fallback = max(0, input_rate * (fallback_ms - pause_ms) // 1000)
        self._rs = Resampler(input_rate, MODEL_RATE) if input_rate != MODEL_RATE else None
        self._ring = np.zeros(MODEL_RATE * WINDOW_S, dtype=np.int16)  # the last 8 s at 16 kHz (256 KB)
        self._buf_end = 0  # 16 kHz samples fed in total (the ring's write position, unwrapped)
        self.position = 0  # input samples fed
        self.turn_open = False
        self._onset16 = 0  # 16 kHz position of the open turn's first onset
        self._hold_until: int | None = None  # input position at which a held turn ends
        self._hold_reason: Reason = "max-wait"  # ... and how that end is reported
        self._gen = 0  # bumped by every VAD start: a result for an older pause is stale
        self.pending: asyncio.Task | None = None
        self.decisions: deque[TurnDecision] = deque(maxlen=64)

    # -- audio ------------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> None:
        """The caller's audio (input rate, after echo cancellation), before the VAD sees it."""
        self.position += len(pcm)
        x = self._rs.process(pcm) if self._rs is not None else pcm
        if len(x):
            self._append(x)
        if self._hold_until is not None and self.position >= self._hold_until:
            self._finish(self._hold_reason)

    def _append(self, x: np.ndarray) -> None:
        ring, k = self._ring, len(self._ring)
        x = x[-k:]
        i = self._buf_end % k
        head = min(len(x), k - i)
        ring[i : i + head] = x[:head]
        ring[: len(x) - head] = x[head:]
        self._buf_end += len(x)

    def _segment(self) -> np.ndarray:
        """The open turn from PRE_SPEECH_MS before its onset to now, float32 at 16 kHz (last 8 s at most)."""
        ring, k = self._ring, len(self._ring)
        start = max(self._onset16 - MODEL_RATE * PRE_SPEECH_MS // 1000, self._buf_end - k, 0)
        n = self._buf_end - start
        end = self._buf_end % k
        seg = ring[end - n : end] if n <= end else np.concatenate([ring[end - n :], ring[:end]])
        return seg.astype(np.float32) / 32768.0

    # -- VAD events -------------------------------------------------------------
    def speech_started(self, onset: int) -> None:
        """VAD start: a new turn, or the held one goes on (the pause was mid-sentence)."""
        self._gen += 1
        self._hold_until = None
        if not self.turn_open:
            self.turn_open = True
            self._onset16 = onset * MODEL_RATE // self.input_rate

    def speech_ended(self, voiced_end: int) -> None:
        """VAD end after PAUSE_MS: ask the model (the turn ends, or is held, when it answers)."""
        if not self.turn_open:
            return
        self._hold_until = None
        self.pending = self._spawn(self._ask(self._gen, voiced_end, self.position), "end-of-turn")

    def drop(self) -> None:
        """The burst was the barge-in logic's (talking over the assistant): no turn to end."""
        self._gen += 1
        self.turn_open = False
        self._hold_until = None

    # -- decision ---------------------------------------------------------------
    async def _ask(self, gen: int, voiced_end: int, asked_at: int) -> None:
        try:
            pred: TurnPrediction | None = await self.predictor.predict(self._segment())
        except Exception as exc:
            log.warning("call %s: end-of-turn model failed (%s): fixed hangover", self.call_id, exc)
            pred = None
        if gen != self._gen or not self.turn_open:
            return  # the caller spoke again meanwhile (or the turn was dropped)
        if pred is None:
            self.decisions.append(TurnDecision(asked_at, voiced_end, None, False))
            self._hold_until = max(self.position, asked_at + self.fallback)
            self._hold_reason = "fallback"
            return
        done = pred.probability >= self.threshold
        self.decisions.append(TurnDecision(asked_at, voiced_end, pred.probability, done, pred.cpu_ms, pred.wall_ms))
        log.debug("call %s: end of turn p=%.2f (%.0f ms): %s", self.call_id, pred.probability, pred.wall_ms,
                  "done" if done else "held")
        if done:
            self._finish("model")
        else:
            self._hold_until = max(self.position, voiced_end + self.max_wait)
            self._hold_reason = "max-wait"

    def _finish(self, reason: Reason) -> None:
        self.turn_open = False
        self._hold_until = None
        self._gen += 1
        self._end_turn(reason)


def end_of_turn_for(
    call_id: str,
    input_rate: int,
    config: CallConfig,
    server_vad: bool,
    end_turn: Callable[[Reason], None],
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task],
) -> EndOfTurn | None:
    """The call's end-of-turn decider, or None (no model configured or installed; the model's server VAD)."""
    if config.turn_model == "off" or server_vad:
        return None
    missing = smart_turn_missing()
    if missing is not None:
        log.warning("call %s: no end-of-turn model (%s): fixed %d ms hangover", call_id, missing, config.vad_end_ms)
        return None
    return EndOfTurn(call_id, input_rate, shared_smart_turn(), end_turn, spawn,
                     max_wait_ms=config.turn_max_wait_ms, fallback_ms=config.vad_end_ms,
                     threshold=config.turn_threshold, pause_ms=config.turn_pause_ms)
