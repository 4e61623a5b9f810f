"""The ``local`` model: an offline voice assistant (the default of ``v2v serve``).

Speech to text with pocketsphinx (:mod:`.local_stt`), a rule-based brain with
real tools (:mod:`.local_brain`), speech at 24 kHz from espeak-ng
(:mod:`.local_tts`). It speaks the same protocol as a realtime model: the
worker pushes 24 kHz audio and commits turns (local turn detection); on
``create_response`` the brain either calls a tool (a :class:`FunctionCall`
event; the worker runs it from its registry, returns ``function_output`` and
asks for a response, which speaks the output) or answers directly. Speech is
streamed as espeak produces it (much faster than real time) with one
:class:`OutputTranscriptDelta` per word carrying the word's sample offset in
the item's audio. Recognition and synthesis run off the event loop.

The conversation is kept as items; ``truncate_item`` cuts an assistant item's
text to the words whose audio started before ``audio_end_ms``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..played_text import played_text
from . import local_brain as brain
from .base import (
    AudioDelta,
    AudioDone,
    Connected,
    FunctionCall,
    InputCommitted,
    InputTranscript,
    ModelCapabilities,
    ModelError,
    ModelFactory,
    ModelSession,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    ToolSpec,
)
from .local_stt import Recognizer, shared_recognizer
from .local_tts import OUT_RATE, EspeakTTS, shared_tts

log = logging.getLogger("v2v.model.local")

RATE = 24000
MAX_BUFFER = 20 * RATE  # caller audio kept for one turn (older audio is dropped)
_TRIM_FRAME = 240  # 10 ms
_TRIM_MARGIN = 30  # frames (300 ms) kept around the loud part
_ids = itertools.count(1)

ItemRole = Literal["user", "assistant", "system", "function_call", "function_call_output"]
_MESSAGE_ROLES: dict[str, ItemRole] = {"user": "user", "assistant": "assistant", "system": "system"}


@dataclass
class Item:
    """One conversation item."""

    id: str
    role: ItemRole
    text: str = ""
    answered: bool = False  # a response already took this item into account
    name: str = ""  # function_call: tool name
    call_id: str = ""  # function_call / function_call_output
    words: list[tuple[int, int]] = field(default_factory=list)  # assistant: (char start, sample offset)
    samples: int = 0  # assistant: audio samples sent
    truncated_ms: int | None = None
    intended: str = ""  # assistant: the whole text the response set out to say
    recognition: asyncio.Task[str] | None = None  # user audio item: pending recognition


@dataclass
class TurnStats:
    """Timings of one turn (benchmarks)."""

    kind: str  # "recognize" | "speak"
    seconds: float  # CPU-side wall time of the work (decode, or synthesis of the whole item)
    audio_seconds: float  # duration of the audio decoded or produced
    first_audio_s: float | None = None  # speak: from create_response to the first audio delta
    text: str = ""


def trim_quiet(pcm: np.ndarray) -> np.ndarray:
    """Keep the loud part of a turn (10 ms frames within 30 dB of the loudest) plus 300 ms each side."""
    n = len(pcm) // _TRIM_FRAME
    if n == 0:
        return pcm
    frames = pcm[: n * _TRIM_FRAME].astype(np.float32).reshape(n, _TRIM_FRAME)
    rms = np.sqrt((frames * frames).mean(axis=1))
    loud = np.flatnonzero(rms >= max(100.0, float(rms.max()) / 31.6))
    if len(loud) == 0:
        return pcm[:0]
    a = max(0, loud[0] - _TRIM_MARGIN) * _TRIM_FRAME
    b = min(len(pcm), (loud[-1] + 1 + _TRIM_MARGIN) * _TRIM_FRAME)
    return pcm[a:b]


_QUOTED = re.compile(r"[\"“]([^\"”]{2,})[\"”]")
_INSTRUCTION = re.compile(r"^\s*(greet|welcome|introduce|say hello|start|begin)\b", re.I)
_DTMF = re.compile(r"telephone key (\S)\]?", re.I)


def system_utterance(text: str) -> str:
    """What to say for a system message asking for a response (the greeting flow)."""
    m = _QUOTED.search(text)
    if m:
        return m.group(1).strip()
    m = re.match(r"^\s*say\s*:?\s*(.+)$", text, re.I | re.S)
    if m:
        return m.group(1).strip()
    if _INSTRUCTION.match(text) or not text.strip():
        return brain.GREETING
    return text.strip()


class _WordAligner:
    """Turns espeak word events into transcript pieces on whitespace-word boundaries.

    Each piece runs from a word's start to the next word's start (the first
    from the text's start), so the pieces concatenate to the full text.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.token_starts = [m.start() for m in re.finditer(r"\S+", text)] or [0]
        self.pending: tuple[int, int] | None = None  # (char start, sample offset) not yet emitted
        self.last_token = -1

    def add(self, char_start: int, offset: int) -> tuple[int, int, str] | None:
        """A word event; returns a finished (start, offset, text) piece, if any."""
        tok = max(0, bisect.bisect_right(self.token_starts, char_start) - 1)
        if tok <= self.last_token:
            return None
        self.last_token = tok
        start = self.token_starts[tok] if self.pending is not None else 0
        done = None
        if self.pending is not None:
            p_start, p_off = self.pending
            done = (p_start, p_off, self.text[p_start:start])
        self.pending = (start, offset)
        return done

    def finish(self) -> tuple[int, int, str] | None:
        if self.pending is None:
            return None
        p_start, p_off = self.pending
        self.pending = None
        return (p_start, p_off, self.text[p_start:])


class LocalSession(ModelSession):
    capabilities = ModelCapabilities(input_rate=RATE, output_rate=RATE, server_vad=False, truncation=True)

    def __init__(
        self,
        config: SessionConfig,
        *,
        tts: EspeakTTS | None = None,
        recognizer: Recognizer | None = None,
        voice: str | None = None,
    ) -> None:
        super().__init__(config)
        self.voice = config.voice or voice or None  # an espeak-ng voice name; None: en-us
        self._tts = tts
        self._recognizer = recognizer
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.items: list[Item] = []
        self.stats: collections.deque[TurnStats] = collections.deque(maxlen=200)  # recent turns
        self._response_task: asyncio.Task[None] | None = None
        self._response_cancel: threading.Event | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------
    async def connect(self) -> None:
        self._recognizer, self._tts = await load_engines(self._recognizer, self._tts)
        self.emit(Connected())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_response()
        for item in self.items:
            if item.recognition is not None and not item.recognition.done():
                item.recognition.cancel()
        await super().close()

    # -- input audio -------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            self.emit(ModelError("push_audio expects mono int16 samples", code="invalid_audio"))
            return
        self._buffer.append(pcm)
        self._buffered += len(pcm)
        while self._buffered - len(self._buffer[0]) >= MAX_BUFFER:
            self._buffered -= len(self._buffer.pop(0))

    async def commit_input(self) -> None:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.int16)
        self._buffer, self._buffered = [], 0
        item = Item(f"local_user_{next(_ids)}", "user")
        item.recognition = asyncio.get_running_loop().create_task(self._recognize(item, audio))
        self.items.append(item)
        self.emit(InputCommitted(item.id))
        try:
            await asyncio.shield(item.recognition)
        except asyncio.CancelledError:
            if not item.recognition.done():
                raise

    async def _recognize(self, item: Item, audio: np.ndarray) -> str:
        speech = trim_quiet(audio)
        assert self._recognizer is not None
        if len(speech) < RATE // 10:
            text = ""
        else:
            try:
                res = await self._recognizer.transcribe(speech, RATE)
            except Exception as exc:
                log.exception("local: recognition failed")
                self.emit(ModelError(f"speech recognition failed: {exc}", code="local_failure"))
                text = ""
            else:
                text = res.text
                self.stats.append(TurnStats("recognize", res.seconds, res.audio_seconds, text=text))
                log.info("local: heard %r (%.0f ms for %.2f s)", text, res.seconds * 1000, res.audio_seconds)
        item.text = text
        self.emit(InputTranscript(item.id, text, final=True))
        return text

    async def clear_input(self) -> None:
        self._buffer, self._buffered = [], 0

    # -- conversation ------------------------------------------------------
    async def send_message(self, role: str, text: str) -> None:
        if role not in ("user", "assistant", "system"):
            self.emit(ModelError(f"unknown message role {role!r}", code="invalid_value"))
            return
        item = Item(f"local_msg_{next(_ids)}", _MESSAGE_ROLES[role], str(text), answered=role == "assistant")
        self.items.append(item)

    async def function_output(self, call_id: str, output: str) -> None:
        if not any(i.role == "function_call" and i.call_id == call_id for i in self.items):
            self.emit(ModelError(f"no function call with call_id {call_id!r}", code="invalid_value"))
            return
        self.items.append(Item(f"local_out_{next(_ids)}", "function_call_output", str(output), call_id=call_id))

    async def create_response(self, *, instructions: str | None = None) -> None:
        if self._closed:
            return
        if self._response_task is not None and not self._response_task.done():
            self.emit(ModelError("a response is already in progress", code="conversation_already_has_active_response"))
            return
        self._response_cancel = threading.Event()
        self._response_task = asyncio.get_running_loop().create_task(
            self._respond(instructions, self._response_cancel, time.perf_counter())
        )

    async def cancel_response(self) -> None:
        await self._stop_response()

    async def _stop_response(self) -> None:
        task = self._response_task
        if task is None or task.done():
            return
        if self._response_cancel is not None:
            self._response_cancel.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 2.0)
        except TimeoutError:
            task.cancel()
        except Exception:
            pass

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        item = self._find(item_id)
        if item is None or item.role != "assistant":
            self.emit(ModelError(f"no assistant audio item {item_id!r}", code="invalid_value"))
            return
        if audio_end_ms < 0 or audio_end_ms * RATE // 1000 > item.samples:
            self.emit(ModelError(
                f"audio_end_ms {audio_end_ms} is outside the item's audio ({item.samples * 1000 // RATE} ms)",
                code="invalid_value",
            ))
            return
        cut = audio_end_ms * RATE // 1000
        item.text = played_text(item.text, cut, item.samples, item.words)[0]
        item.words = [w for w in item.words if w[1] < cut]
        item.samples = cut
        item.truncated_ms = audio_end_ms

    async def delete_item(self, item_id: str) -> None:
        item = self._find(item_id)
        if item is None:
            self.emit(ModelError(f"no item {item_id!r}", code="invalid_value"))
            return
        self.items.remove(item)

    def _find(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    @property
    def history(self) -> list[tuple[str, str]]:
        """(role, text) of the conversation so far."""
        return [(i.role, i.text) for i in self.items]

    # -- responses ---------------------------------------------------------
    async def _respond(self, instructions: str | None, cancel: threading.Event, t0: float) -> None:
        response_id = f"local_resp_{next(_ids)}"
        self.emit(ResponseCreated(response_id))
        status = "completed"
        try:
            target = await self._next_unanswered()
            if target is None:
                text = self._last_assistant_text() if instructions else ""
                await self._speak(response_id, text or "Is there anything else I can do for you?", cancel, t0)
            elif target.role == "function_call_output":
                call = next((i for i in self.items if i.role == "function_call" and i.call_id == target.call_id), None)
                name = call.name if call else ""
                await self._speak(response_id, brain.speak_tool_output(name, target.text), cancel, t0)
            elif target.role == "system":
                await self._speak(response_id, system_utterance(target.text), cancel, t0)
            else:
                decision = self._decide(target.text)
                if isinstance(decision, brain.ToolCall):
                    if self._tool_registered(decision.name):
                        self._call_tool(response_id, decision)
                    else:  # nobody runs tools for us: run our own
                        output = await _run_local_tool(decision)
                        await self._speak(response_id, brain.speak_tool_output(decision.name, output), cancel, t0)
                else:
                    await self._speak(response_id, decision.text, cancel, t0)
            if cancel.is_set():
                status = "cancelled"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception as exc:
            log.exception("local: response failed")
            status = "failed"
            self.emit(ModelError(f"local model failed: {exc}", code="local_failure"))
        finally:
            self.emit(ResponseDone(response_id, status))

    async def _next_unanswered(self) -> Item | None:
        """The newest item a response should answer; marks everything before it answered."""
        pending = [i for i in self.items if not i.answered and i.role in ("user", "system", "function_call_output")]
        if not pending:
            return None
        for i in pending:
            i.answered = True
        # A DTMF note or a system message after a user turn must not hide the user's words.
        target = pending[-1]
        if target.role == "system" and any(i.role in ("user", "function_call_output") for i in pending):
            target = [i for i in pending if i.role != "system"][-1]
        if target.recognition is not None:
            await asyncio.shield(target.recognition)
        return target

    def _decide(self, heard: str) -> brain.Decision:
        m = _DTMF.search(heard)
        if m and heard.lstrip().startswith("["):
            return brain.Say(f"You pressed {m.group(1)}.")
        return brain.decide(heard, self._unfinished())

    def _unfinished(self) -> str:
        """The unspoken rest of the last assistant answer, if the caller cut it short."""
        for i in reversed(self.items):
            if i.role == "assistant":
                if i.truncated_ms is None or not i.intended.startswith(i.text):
                    return ""
                return i.intended[len(i.text):]
        return ""

    def _tool_registered(self, name: str) -> bool:
        return any(t.name == name for t in self.config.tools)

    def _call_tool(self, response_id: str, decision: brain.ToolCall) -> None:
        call_id = f"local_call_{next(_ids)}"
        item = Item(f"local_fc_{next(_ids)}", "function_call", json.dumps(decision.arguments),
                    answered=True, name=decision.name, call_id=call_id)
        self.items.append(item)
        self.emit(FunctionCall(call_id, decision.name, item.text, item.id, response_id))

    def _last_assistant_text(self) -> str:
        for i in reversed(self.items):
            if i.role == "assistant" and i.text:
                return i.text
        return ""

    async def _speak(self, response_id: str, text: str, cancel: threading.Event, t0: float) -> None:
        assert self._tts is not None
        item = Item(f"local_item_{next(_ids)}", "assistant", "", answered=True, intended=text)
        self.items.append(item)
        aligner = _WordAligner(text)
        first_audio: float | None = None
        t_start = time.perf_counter()

        def piece(p: tuple[int, int, str] | None) -> None:
            if p is None or item.truncated_ms is not None:
                return
            start, offset, chunk = p
            item.words.append((start, offset))
            item.text += chunk
            self.emit(OutputTranscriptDelta(item.id, chunk, response_id, offset))

        async with contextlib.aclosing(self._tts.stream(text, cancel, self.voice)) as chunks:
            async for chunk in chunks:
                if cancel.is_set() or item.truncated_ms is not None:
                    break
                for w in chunk.words:
                    piece(aligner.add(w.start, w.offset))
                if len(chunk.pcm):
                    if first_audio is None:
                        first_audio = time.perf_counter() - t0
                    item.samples += len(chunk.pcm)
                    self.emit(AudioDelta(item.id, chunk.pcm, response_id))
        if cancel.is_set():
            return
        piece(aligner.finish())
        self.stats.append(TurnStats("speak", time.perf_counter() - t_start, item.samples / OUT_RATE,
                                    first_audio, text))
        self.emit(OutputTranscriptDone(item.id, item.text, response_id))
        self.emit(AudioDone(item.id, response_id))


async def load_engines(recognizer: Recognizer | None, tts: EspeakTTS | None) -> tuple[Recognizer, EspeakTTS]:
    """The given engines, else the process-wide ones, loaded (each on its own thread: first use ~0.3 s)."""
    recognizer = recognizer or shared_recognizer()
    tts = tts or shared_tts()
    await asyncio.gather(recognizer.ready(), tts.ready())
    return recognizer, tts


async def _run_local_tool(decision: brain.ToolCall) -> str:
    for spec, func in brain.tool_specs():
        if spec.name == decision.name:
            return await func(**decision.arguments)
    return json.dumps({"error": f"unknown tool {decision.name!r}"})


class LocalModelFactory(ModelFactory):
    """Opens :class:`LocalSession` objects; all sessions share one recognizer and one synthesizer."""

    name = "local"
    capabilities = LocalSession.capabilities

    def __init__(
        self, voice: str | None = None, tts: EspeakTTS | None = None, recognizer: Recognizer | None = None
    ) -> None:
        self.voice = voice  # espeak-ng voice name (``--voice``), e.g. "en-us+f3"; None: en-us
        self._tts = tts
        self._recognizer = recognizer

    def open(self, config: SessionConfig) -> LocalSession:
        return LocalSession(config, tts=self._tts, recognizer=self._recognizer, voice=self.voice)

    @staticmethod
    def tools() -> list[tuple[ToolSpec, brain.ToolFunc]]:
        """(ToolSpec, async function) pairs the server registers in its ToolRegistry:
        ``registry.register(spec.name, spec.description, spec.parameters, func)``."""
        return brain.tool_specs()

    async def warm_up(self) -> None:
        """Load the recognizer and synthesizer ahead of the first call (off the loop)."""
        self._recognizer, self._tts = await load_engines(self._recognizer, self._tts)
        if self.voice and not await self._tts.has_voice(self.voice):
            log.warning("local model: espeak-ng has no voice %r, using %r", self.voice, self._tts.voice)


__all__ = ["LocalModelFactory", "LocalSession", "Item", "TurnStats", "trim_quiet", "system_utterance"]
