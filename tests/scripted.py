"""A scripted model for call-level tests: records every client-to-server
primitive and answers with a configurable long reply, tool calls or delays."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from v2v.worker.models import base as mb

RATE = 24000
_ids = itertools.count(1)


def reply_signal(seconds: float, seed: int = 1) -> np.ndarray:
    """Noise-like audio with no zero samples, so played samples can be counted."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    mag = rng.integers(1000, 6000, n)
    sign = np.where(rng.random(n) < 0.5, -1, 1)
    return (mag * sign).astype(np.int16)


@dataclass
class Script:
    reply_seconds: float = 5.0
    reply_text: str = "one two three four five six seven eight nine ten"
    first_audio_delay_steps: int = 0  # loop yields before the first delta (simulated thinking)
    tool_call: tuple[str, str] | None = None  # (name, json args) requested by the first response
    tool_calls: list[tuple[str, str]] | None = None  # several calls in the first response
    transcript_done_delay: int = 0  # loop yields between AudioDone and OutputTranscriptDone
    second_item_delay: int | None = None  # yields before a second audio item of the same response
    commit_delay: int = 0  # loop yields commit_input takes (like speech-to-text on the turn)
    ignore_cancel: bool = False  # keep streaming after response.cancel (events already in flight)
    connect_event: asyncio.Event | None = None  # connect completes when set
    server_vad: bool = False


class ScriptedSession(mb.ModelSession):
    def __init__(self, config: mb.SessionConfig, script: Script, log: list) -> None:
        super().__init__(config)
        self.capabilities = mb.ModelCapabilities(server_vad=script.server_vad)
        self.script = script
        self.calls: list[tuple[str, Any]] = log
        self._task: asyncio.Task | None = None
        self._tool_pending = [script.tool_call] if script.tool_call else list(script.tool_calls or [])

    def _rec(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))

    async def connect(self) -> None:
        self._rec("connect")
        if self.script.connect_event is not None:
            asyncio.get_running_loop().create_task(self._late_connect())
        else:
            self.emit(mb.Connected())

    async def _late_connect(self) -> None:
        await self.script.connect_event.wait()
        self.emit(mb.Connected())

    async def close(self) -> None:
        self._rec("close")
        if self._task:
            self._task.cancel()
        await super().close()

    async def push_audio(self, pcm: np.ndarray) -> None:
        self.calls.append(("push_audio", len(pcm)))

    async def commit_input(self) -> None:
        self._rec("commit_input")
        for _ in range(self.script.commit_delay):
            await asyncio.sleep(0)

    async def clear_input(self) -> None:
        self._rec("clear_input")

    async def send_message(self, role: str, text: str) -> None:
        self._rec("send_message", (role, text))

    async def create_response(self, *, instructions: str | None = None) -> None:
        self._rec("create_response", instructions)
        self._task = asyncio.get_running_loop().create_task(self._respond())

    async def _respond(self) -> None:
        n = next(_ids)
        rid, item = f"resp_{n}", f"item_{n}"
        self.emit(mb.ResponseCreated(rid))
        status = "completed"
        try:
            if self._tool_pending:
                for k, (name, args) in enumerate(self._tool_pending):
                    self.emit(mb.FunctionCall(f"call_{n}_{k}", name, args, f"{item}_{k}", rid))
                self._tool_pending = []
                return
            for _ in range(self.script.first_audio_delay_steps):
                await asyncio.sleep(0)
            audio = reply_signal(self.script.reply_seconds, n)
            words = self.script.reply_text.split()
            for w, word in enumerate(words):
                self.emit(mb.OutputTranscriptDelta(item, (" " if w else "") + word, rid))
            for i in range(0, len(audio), 2400):
                self.emit(mb.AudioDelta(item, audio[i : i + 2400], rid))
                await asyncio.sleep(0)
            self.emit(mb.AudioDone(item, rid))
            for _ in range(self.script.transcript_done_delay):
                await asyncio.sleep(0)
            self.emit(mb.OutputTranscriptDone(item, self.script.reply_text, rid))
            if self.script.second_item_delay is not None:
                for _ in range(self.script.second_item_delay):
                    await asyncio.sleep(0)
                second = f"{item}_b"
                self.emit(mb.AudioDelta(second, reply_signal(1.0, n + 1000), rid))
                self.emit(mb.AudioDone(second, rid))
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self.emit(mb.ResponseDone(rid, status))

    async def cancel_response(self) -> None:
        self._rec("cancel_response")
        if self._task and not self._task.done() and not self.script.ignore_cancel:
            self._task.cancel()

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        self._rec("truncate_item", (item_id, content_index, audio_end_ms))

    async def delete_item(self, item_id: str) -> None:
        self._rec("delete_item", item_id)

    async def function_output(self, call_id: str, output: str) -> None:
        self._rec("function_output", (call_id, output))


@dataclass
class ScriptedFactory(mb.ModelFactory):
    script: Script = field(default_factory=Script)
    calls: list = field(default_factory=list)
    name: str = "scripted"

    def open(self, config: mb.SessionConfig) -> ScriptedSession:
        self.session = ScriptedSession(config, self.script, self.calls)
        return self.session

    def names(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] != "push_audio"]

    def of(self, name: str) -> list[Any]:
        return [c[1] for c in self.calls if c[0] == name]
