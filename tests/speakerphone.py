"""A simulated speakerphone caller for echo-cancellation tests and bench/aec_bench.py.

The caller's microphone hears the assistant audio the call actually sent
(read from the playout, 20 ms per step, as a transport does), through a
synthetic room impulse response, delayed (the delay may change mid-call),
attenuated, plus line noise and, optionally, the caller's own speech. The
assistant is a model that answers every response request with a fixed
recording of speech, so the echo is speech, not noise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.scripted import Script, ScriptedFactory, ScriptedSession
from v2v.media.playout import PlayoutBuffer
from v2v.media.resample import Resampler
from v2v.worker import events as ev
from v2v.worker.call import CallConfig, CallSession
from v2v.worker.models import base as mb

STEP_MS = 20
_ids = itertools.count(1)


def room_ir(rate: int, rt60: float = 0.3, seed: int = 0) -> np.ndarray:
    """A synthetic room impulse response: direct path plus exponentially decaying diffuse tail (unit energy)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rt60 * rate))
    t = np.arange(n) / rate
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.5
    ir[0] = 1.0
    return ir / np.sqrt(np.sum(ir ** 2))


class SpeechSession(ScriptedSession):
    """Answers each create_response with the same speech recording (24 kHz)."""

    speech: np.ndarray

    async def _respond(self) -> None:
        n = next(_ids)
        rid, item = f"sp_resp_{n}", f"sp_item_{n}"
        self.emit(mb.ResponseCreated(rid))
        status = "completed"
        try:
            for i in range(0, len(self.speech), 2400):
                self.emit(mb.AudioDelta(item, self.speech[i:i + 2400], rid))
                await asyncio.sleep(0)
            self.emit(mb.AudioDone(item, rid))
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self.emit(mb.ResponseDone(rid, status))


@dataclass
class SpeechFactory(ScriptedFactory):
    speech: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))

    def open(self, config: mb.SessionConfig) -> ScriptedSession:
        s = SpeechSession(config, Script(), self.calls)
        s.speech = self.speech
        self.session = s
        return s


@dataclass
class Room:
    gain_db: float = -10.0
    delays_ms: tuple[tuple[float, int], ...] = ((0.0, 150),)  # (from second, delay ms): a changing delay
    rt60: float = 0.3
    ir_seed: int = 0
    noise_dbfs: float = -60.0  # line noise (white); below -100: none

    def delay_at(self, t: float) -> int:
        d = self.delays_ms[0][1]
        for start, ms in self.delays_ms:
            if t >= start:
                d = ms
        return d


@dataclass
class SpeakerphoneResult:
    events: list[tuple[float, ev.CallEvent]]
    assistant_s: float  # seconds of assistant audio that went out
    cpu_s: float
    call_s: float
    removed_db: float
    echo_share: float = 0.0

    def count(self, cls: type) -> int:
        return sum(1 for _, e in self.events if isinstance(e, cls))

    def times(self, cls: type) -> list[float]:
        return [t for t, e in self.events if isinstance(e, cls)]


async def run_speakerphone(
    assistant: np.ndarray,
    seconds: float,
    room: Room,
    *,
    rate: int = 16000,
    aec: str = "on",
    caller: np.ndarray | None = None,
    caller_at: float = 0.0,
    config: CallConfig | None = None,
) -> SpeakerphoneResult:
    """A call of ``seconds``: the assistant answers at once with ``assistant`` (24 kHz); the caller's
    microphone carries its echo through ``room``, plus ``caller`` (at ``rate``) from ``caller_at`` s."""
    factory = SpeechFactory(speech=assistant)
    cfg = config or CallConfig(turn_detection="local", greeting="speak", aec=aec)  # type: ignore[arg-type]  # aec is a str here
    playout = PlayoutBuffer(24000)
    call = CallSession("speakerphone", factory, cfg, playout)
    call.input_rate = rate
    events: list[tuple[float, ev.CallEvent]] = []
    call.add_listener(lambda e: events.append((call.position / rate, e)))
    step_in, step_out = rate * STEP_MS // 1000, 24000 * STEP_MS // 1000
    steps = int(seconds * 1000 / STEP_MS)
    ir = room_ir(rate, room.rt60, room.ir_seed) * 10 ** (room.gain_db / 20)
    echo = np.zeros(steps * step_in + len(ir) + rate, dtype=np.float64)
    mic = np.zeros(steps * step_in, dtype=np.float64)
    if caller is not None:
        at = int(caller_at * rate)
        part = caller[: max(0, len(mic) - at)]
        mic[at:at + len(part)] += part
    rng = np.random.default_rng(room.ir_seed + 7)
    if room.noise_dbfs > -100:
        mic += rng.standard_normal(len(mic)) * 32768 * 10 ** (room.noise_dbfs / 20)
    up = Resampler(24000, rate)
    assistant_samples = 0
    await call.start()
    cpu0 = time.process_time()
    try:
        for step in range(steps):
            lo = step * step_in
            frame = np.clip(mic[lo:lo + step_in] + echo[lo:lo + step_in], -32768, 32767).astype(np.int16)
            await call.feed(frame)
            for _ in range(8):
                await asyncio.sleep(0)
            out = playout.read(step_out)
            assistant_samples += int(np.count_nonzero(out) > 0) * step_out
            played = up.process(out).astype(np.float64)
            if np.any(played):
                at = lo + room.delay_at(lo / rate) * rate // 1000
                echo[at:at + len(played) + len(ir) - 1] += np.convolve(played, ir)
    finally:
        cpu = time.process_time() - cpu0
        aec_unit = call._aec
        removed = aec_unit.removed_db if aec_unit is not None else 0.0
        share = aec_unit.echo_share if aec_unit is not None else 0.0
        await call.close("input-ended")
    return SpeakerphoneResult(events, assistant_samples / 24000, cpu, steps * STEP_MS / 1000, removed, share)


def speech_started(result: SpeakerphoneResult, after: float = 0.0) -> list[float]:
    return [t for t in result.times(ev.UserStartedSpeaking) if t >= after]


def interrupted(result: SpeakerphoneResult) -> list[float]:
    return result.times(ev.BotInterrupted)


def summary(result: SpeakerphoneResult) -> dict[str, Any]:
    return {
        "speech_starts": len(result.times(ev.UserStartedSpeaking)),
        "interruptions": result.count(ev.BotInterrupted),
        "false_interruptions": result.count(ev.FalseInterruption),
        "assistant_s": round(result.assistant_s, 2),
        "removed_db": round(result.removed_db, 1),
        "echo_share": round(result.echo_share, 2),
    }
