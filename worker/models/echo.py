"""The ``echo`` model: deterministic, offline, dependency-free.

Each committed user turn is answered by streaming that turn's audio back (its
leading and trailing near-silence trimmed) as one response item, in 100 ms
deltas and faster than real time, as real models do. A text message is
answered with a short tone per word and the text as transcript. Every
primitive received is recorded in ``calls`` (useful to tests and benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np

from .base import (
    AudioDelta,
    AudioDone,
    Connected,
    InputCommitted,
    InputTranscript,
    ModelCapabilities,
    ModelFactory,
    ModelSession,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
)

RATE = 24000
DELTA = 2400  # samples per audio delta (100 ms)
_TRIM_FRAME = 240  # 10 ms
_TRIM_RMS = 300.0  # int16 RMS below which a 10 ms frame counts as silence

_ids = itertools.count(1)


def trim_silence(pcm: np.ndarray) -> np.ndarray:
    """Drop leading and trailing 10 ms frames quieter than ``_TRIM_RMS``."""
    n = len(pcm) // _TRIM_FRAME
    if n == 0:
        return pcm[:0]
    frames = pcm[: n * _TRIM_FRAME].astype(np.float32).reshape(n, _TRIM_FRAME)
    loud = np.flatnonzero(np.sqrt((frames * frames).mean(axis=1)) >= _TRIM_RMS)
    if len(loud) == 0:
        return pcm[:0]
    return pcm[loud[0] * _TRIM_FRAME : (loud[-1] + 1) * _TRIM_FRAME]


def _tone(words: int) -> np.ndarray:
    t = np.arange(int(0.15 * RATE)) / RATE
    beep = (3000 * np.sin(2 * np.pi * 660 * t)).astype(np.int16)
    gap = np.zeros(int(0.1 * RATE), dtype=np.int16)
    return np.concatenate([np.concatenate([beep, gap]) for _ in range(max(1, words))])


class EchoSession(ModelSession):
    capabilities = ModelCapabilities(server_vad=False, truncation=True)

    def __init__(self, config: SessionConfig, *, pace: float = 0.0) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, object]] = []  # (primitive, its arguments)
        self._pending: list[np.ndarray] = []
        self._reply_source: np.ndarray | None = None
        self._reply_text: str | None = None
        self._stream_task: asyncio.Task | None = None
        self._pace = pace  # seconds to yield between deltas (0 = as fast as the loop allows)
        self.items: dict[str, dict[str, int | str]] = {}  # item_id -> role, samples, text

    async def connect(self) -> None:
        self.calls.append(("connect", None))
        self.emit(Connected())

    async def close(self) -> None:
        self.calls.append(("close", None))
        if self._stream_task:
            self._stream_task.cancel()
        await super().close()

    async def push_audio(self, pcm: np.ndarray) -> None:
        self._pending.append(pcm)

    async def commit_input(self) -> None:
        audio = np.concatenate(self._pending) if self._pending else np.zeros(0, np.int16)
        self._pending = []
        item_id = f"echo_user_{next(_ids)}"
        self.calls.append(("commit_input", len(audio)))
        self._reply_source = trim_silence(audio)
        self._reply_text = None
        self.items[item_id] = {"role": "user", "samples": len(audio)}
        self.emit(InputCommitted(item_id))
        self.emit(InputTranscript(item_id, "", final=True))

    async def clear_input(self) -> None:
        self.calls.append(("clear_input", None))
        self._pending = []

    async def send_message(self, role: str, text: str) -> None:
        self.calls.append(("send_message", (role, text)))
        if role == "user":
            self._reply_source = None
            self._reply_text = text

    async def create_response(self, *, instructions: str | None = None) -> None:
        self.calls.append(("create_response", instructions))
        if self._stream_task and not self._stream_task.done():
            return
        if self._reply_text is not None:
            text = self._reply_text
            audio = _tone(len(text.split()))
        else:
            audio = self._reply_source if self._reply_source is not None else np.zeros(0, np.int16)
            text = ""
        self._reply_source = None
        self._reply_text = None
        self._stream_task = asyncio.get_running_loop().create_task(self._stream(audio, text))

    async def _stream(self, audio: np.ndarray, text: str) -> None:
        n = next(_ids)
        response_id, item_id = f"echo_resp_{n}", f"echo_item_{n}"
        self.items[item_id] = {"role": "assistant", "samples": len(audio), "text": text}
        self.emit(ResponseCreated(response_id))
        status = "completed"
        try:
            words = text.split()
            for i in range(0, len(audio), DELTA):
                self.emit(AudioDelta(item_id, audio[i : i + DELTA].copy(), response_id))
                if i == 0 and words:
                    for w, word in enumerate(words):
                        offset = len(audio) * w // len(words)
                        self.emit(OutputTranscriptDelta(item_id, (" " if w else "") + word, response_id, offset))
                await asyncio.sleep(self._pace)
            if text:
                self.emit(OutputTranscriptDone(item_id, text, response_id))
            self.emit(AudioDone(item_id, response_id))
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self.emit(ResponseDone(response_id, status))

    async def cancel_response(self) -> None:
        self.calls.append(("cancel_response", None))
        if self._stream_task and not self._stream_task.done():
            self._stream_task.cancel()

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        self.calls.append(("truncate_item", (item_id, content_index, audio_end_ms)))
        item = self.items.get(item_id)
        if item is not None:
            item["truncated_ms"] = audio_end_ms

    async def delete_item(self, item_id: str) -> None:
        self.calls.append(("delete_item", item_id))
        self.items.pop(item_id, None)

    async def function_output(self, call_id: str, output: str) -> None:
        self.calls.append(("function_output", (call_id, output)))


class EchoModelFactory(ModelFactory):
    name = "echo"
    capabilities = EchoSession.capabilities

    def __init__(self, pace: float = 0.0) -> None:
        self.pace = pace

    def open(self, config: SessionConfig) -> EchoSession:
        return EchoSession(config, pace=self.pace)


__all__ = ["EchoModelFactory", "EchoSession", "trim_silence"]
