"""A WAV-file transport: run a whole call from a WAV (or array) with no network.

The caller's audio is fed in 20 ms frames and the assistant's playout is read
20 ms at a time, in lockstep: one step is one 20 ms frame each way, exactly as
a live transport would exchange them. By default steps run as fast as the
model allows (virtual time, for tests); ``realtime=True`` paces them with the
monotonic clock (for models behind real I/O, and for the headless client).
After the input ends, silence keeps flowing for ``tail_s`` seconds (a live
caller's client sends packets while it listens). WAV files are read and
written on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from v2v.media.playout import PlayoutBuffer

from . import events as ev
from .call import CallConfig, CallSession
from .models.base import ModelFactory, SessionConfig
from .tools import ToolRegistry

STEP_MS = 20
OUT_RATE = 24000  # the playout rate of the models shipped


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and rate of a 16-bit PCM WAV (channels averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, ch = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if ch > 1:
        data = (data.reshape(-1, ch).astype(np.int32).sum(axis=1) // ch).astype(np.int16)
    return data.astype(np.int16), rate


def write_wav(path: str | Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


@dataclass
class TimedEvent:
    step: int  # 20 ms step index at which the event was published
    position: int  # caller input sample position then
    event: ev.CallEvent


@dataclass
class WavCallResult:
    output: np.ndarray  # assistant audio as sent, at output_rate, one 20 ms frame per step
    input_rate: int
    steps: int
    events: list[TimedEvent] = field(default_factory=list)
    call: CallSession | None = None
    output_rate: int = OUT_RATE

    def of_type(self, cls: type) -> list[TimedEvent]:
        return [t for t in self.events if isinstance(t.event, cls)]

    def frame(self, step: int) -> np.ndarray:
        n = self.output_rate * STEP_MS // 1000
        return self.output[step * n : (step + 1) * n]


async def run_wav_call(
    model: ModelFactory,
    audio: str | Path | np.ndarray,
    rate: int | None = None,
    *,
    config: CallConfig | None = None,
    session_config: SessionConfig | None = None,
    tools: ToolRegistry | None = None,
    tail_s: float = 3.0,
    realtime: bool = False,
    record: str | Path | None = None,
    call_id: str = "wav",
    on_step: Any = None,
    stop_when_idle: bool = False,
    playout_rate: int | None = None,
) -> WavCallResult:
    """Run one call over ``audio`` (a WAV path or an int16 array at ``rate``).

    ``on_step(step, call)`` (optional, may be async) runs before each step, for
    tests that act mid-call. ``stop_when_idle`` ends the tail early once the
    assistant has nothing left to say. The playout runs at ``playout_rate``
    (default: the model's output rate).
    """
    pcm, rate = await _load(audio, rate)
    out_rate = playout_rate or model.capabilities.output_rate
    playout = PlayoutBuffer(out_rate)
    call = CallSession(call_id, model, config or CallConfig(), playout, tools, session_config)
    call.input_rate = rate
    result = WavCallResult(np.zeros(0, np.int16), rate, 0, call=call, output_rate=out_rate)
    run = _Lockstep(call, pcm, result)
    call.add_listener(run.record)
    await call.start()
    try:
        await run.steps(tail_s, realtime, on_step, stop_when_idle)
    finally:
        result.steps = len(run.out_frames)
        result.output = np.concatenate(run.out_frames) if run.out_frames else np.zeros(0, np.int16)
        await call.close("input-ended")
    if record is not None:
        await asyncio.to_thread(write_wav, record, result.output, out_rate)
    return result


async def _load(audio: str | Path | np.ndarray, rate: int | None) -> tuple[np.ndarray, int]:
    if isinstance(audio, (str, Path)):
        return await asyncio.to_thread(read_wav, audio)  # file I/O off the event loop
    if rate is None:
        raise ValueError("rate is required for array input")
    return np.asarray(audio, dtype=np.int16), rate


class _Lockstep:
    """Feeds the input and reads the playout one 20 ms step at a time."""

    def __init__(self, call: CallSession, pcm: np.ndarray, result: WavCallResult) -> None:
        self.call = call
        self.pcm = pcm
        self.result = result
        self.step = 0
        self.in_step = result.input_rate * STEP_MS // 1000
        self.out_step = result.output_rate * STEP_MS // 1000
        self.out_frames: list[np.ndarray] = []

    def record(self, e: ev.CallEvent) -> None:
        self.result.events.append(TimedEvent(self.step, self.call.position, e))

    def frame(self, step: int) -> np.ndarray:
        """The step's input frame (padded with silence past the end)."""
        frame = self.pcm[step * self.in_step : (step + 1) * self.in_step]
        if len(frame) < self.in_step:
            frame = np.concatenate([frame, np.zeros(self.in_step - len(frame), dtype=np.int16)])
        return frame

    async def steps(self, tail_s: float, realtime: bool, on_step: Any, stop_when_idle: bool) -> None:
        call = self.call
        total_steps = -(-len(self.pcm) // self.in_step) + int(tail_s * 1000 / STEP_MS)
        t0 = time.monotonic()
        for step in range(total_steps):
            self.step = step
            if call.ended.is_set():
                break
            if on_step is not None:
                r = on_step(step, call)
                if asyncio.iscoroutine(r):
                    await r
            await call.feed(self.frame(step))
            if realtime:
                due = t0 + (step + 1) * STEP_MS / 1000
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                await _settle()
            self.out_frames.append(call.playout.read(self.out_step))
            if stop_when_idle and step * self.in_step >= len(self.pcm) and call.idle:
                break


async def _settle(rounds: int = 8) -> None:
    """Let in-process model tasks run (virtual time: no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
