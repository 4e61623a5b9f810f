"""One call's runtime: caller audio -> VAD + chunker -> model; model -> playout.

:class:`CallSession` is transport-neutral. A transport hands it an
:class:`~worker.transport.AudioInput` (mono int16 frames at a fixed rate) and
reads the assistant's voice from the :class:`~media.playout.PlayoutBuffer` it
was built with. Everything the call decides is published as
:mod:`worker.events` dataclasses to its listeners.

Timing inside the call is counted in input samples: the caller's client sends
packets continuously (silence included), so the input position is the call's
clock, and a call driven from a WAV file behaves exactly like a live one.
Wall-clock time (one monotonic clock) is used only for reported latencies.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from v2v.media.chunker import MODEL_CHUNK, Chunker
from v2v.media.playout import ItemPlayed, PlayoutBuffer, PlayoutEvent, PlayoutStarted, PlayoutStopped
from v2v.media.resample import Resampler
from v2v.media.vad import VadEvent, VoiceActivityDetector

from . import events as ev
from .models import base as mb
from .tools import ToolRegistry

log = logging.getLogger("v2v.call")

VAD_RATES = (8000, 16000, 32000, 48000)
MODEL_RATE = 24000
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"')\]]*\s")


@dataclass
class CallConfig:
    turn_detection: Literal["local", "server"] = "local"
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 10
    vad_start_ms: int = 30
    vad_end_ms: int = 500
    min_interruption_ms: int = 300
    false_interruption_timeout_ms: int = 1000
    greeting: str = ""
    tool_timeout_s: float = 10.0
    client_tool_timeout_s: float = 10.0
    text_only_retries: int = 1
    response_wait_s: float = 10.0  # wait for the model to finish a response before asking for another


@dataclass
class _ItemText:
    """Assistant transcript of one response item, and how much was shown."""

    text: str = ""
    chars: list[int] = field(default_factory=list)  # char position where each timed word starts
    audio: list[int] = field(default_factory=list)  # its audio sample offset in the item (ascending)
    emitted: int = 0  # characters already published as bot-output
    sentence_from: int = 0  # characters already published as bot-transcription
    done: bool = False


@dataclass
class _Barge:
    onset: int  # input sample of the speech onset
    decided_at: int  # input sample of the VAD decision
    paused_at: int  # input sample position when playout was paused
    t_decided: float
    ended: bool = False  # the burst's VAD end was seen
    t_paused: float | None = None


class CallSession:
    def __init__(
        self,
        call_id: str,
        model: mb.ModelFactory,
        config: CallConfig,
        playout: PlayoutBuffer,
        tools: ToolRegistry | None = None,
        session_config: mb.SessionConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self.config = config
        self.playout = playout
        self.tools = tools or ToolRegistry()
        self.clock = clock
        sc = session_config or mb.SessionConfig()
        sc.turn_detection = config.turn_detection
        if not sc.tools and len(self.tools):
            sc.tools = self.tools.specs()
        self.model = model.open(sc)
        self.server_vad = config.turn_detection == "server" and self.model.capabilities.server_vad
        self.state: ev.AgentState = "initializing"
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._listeners: list[Callable[[ev.CallEvent], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._model_task: asyncio.Task | None = None
        self._connected = False
        self._caller_joined = False
        self._greeted = False
        # input side (set up on the first frame, when the rate is known)
        self.input_rate = 0
        self.position = 0  # input samples consumed
        self._vad: VoiceActivityDetector | None = None
        self._vad_resampler: Resampler | None = None
        self._vad_ratio = 1.0
        self._model_resampler: Resampler | None = None
        self._chunker = Chunker(MODEL_CHUNK)
        self._user_speaking = False
        self._barge: _Barge | None = None
        self._turn_end_t: float | None = None
        # model side
        self._response_id: str | None = None  # response in progress
        self._response_idle = asyncio.Event()
        self._response_idle.set()
        self._response_had_audio = False
        self._text_only_retries = 0
        self._cancelled: set[str] = set()  # response ids whose audio is dropped
        self._item_response: dict[str, str] = {}  # item id -> response id
        self._settled: set[str] = set()  # items played to the end, truncated or deleted
        self._tool_batches: dict[str, int] = {}  # response id -> its tool calls still running
        self._texts: dict[str, _ItemText] = {}
        self._bot_speaking_item: str | None = None
        self._client_calls: dict[str, asyncio.Future] = {}
        self._tools_running = 0
        playout.add_listener(self._on_playout)

    # ------------------------------------------------------------------ API
    def add_listener(self, cb: Callable[[ev.CallEvent], None]) -> None:
        self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[ev.CallEvent], None]) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    def publish(self, event: ev.CallEvent) -> None:
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:  # a listener must never break the call
                log.exception("call %s: listener failed on %s", self.call_id, type(event).__name__)

    async def start(self) -> None:
        """Open the model session and start consuming its events."""
        self._model_task = self._spawn(self._model_loop(), "model-events")
        try:
            await self.model.connect()
        except Exception as exc:
            log.warning("call %s: model connect failed: %s", self.call_id, exc)
            self.publish(ev.CallError(f"model connection failed: {exc}", fatal=True))
            await self.close("model-error")

    def caller_joined(self) -> None:
        """The caller is present (first audio arrived); greet when ready."""
        if not self._caller_joined:
            self._caller_joined = True
            self._maybe_greet()

    async def run(self, audio_in: Any) -> None:
        """Consume the caller's audio until the input ends or the call ends."""
        self.input_rate = audio_in.sample_rate
        async for pcm in audio_in:
            if self.ended.is_set():
                break
            await self.feed(pcm)

    async def feed(self, pcm: np.ndarray) -> None:
        """Process one frame of caller audio (mono int16 at ``input_rate``)."""
        if self._vad is None:
            self._setup_input(self.input_rate)
            self.caller_joined()
        self.position += len(pcm)
        # VAD branch
        vad_pcm = self._vad_resampler.process(pcm) if self._vad_resampler else pcm
        for vev in self._vad.process(vad_pcm):
            self._on_vad(vev)
        self._check_barge()
        self._pace_output()
        # model branch
        model_pcm = self._model_resampler.process(pcm) if self._model_resampler else pcm
        for chunk in self._chunker.push(model_pcm):
            await self.model.push_audio(chunk)

    async def close(self, reason: str = "hangup") -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        log.debug("call %s: ended (%s)", self.call_id, reason)
        self.playout.flush()
        for fut in self._client_calls.values():
            if not fut.done():
                fut.cancel()
        try:
            await self.model.close()
        except Exception:
            log.exception("call %s: model close failed", self.call_id)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._set_state("ended")
        self.publish(ev.CallEnded(reason))

    async def send_text(self, text: str, run_immediately: bool = True, audio_response: bool = True) -> None:
        """A typed user message (RTVI send-text)."""
        if self._assistant_active():
            await self._interrupt(reason="text")
        await self.model.send_message("user", text)
        if run_immediately:
            await self._create_response(None if audio_response else "Answer in text only.")

    async def update_instructions(self, text: str) -> None:
        await self.model.update_session(instructions=text)

    async def append_context(self, role: str, text: str, run_immediately: bool = False) -> None:
        await self.model.send_message(role, text)
        if run_immediately:
            await self._create_response()

    async def client_function_result(self, call_id: str, result: Any) -> bool:
        fut = self._client_calls.get(call_id)
        if fut is None or fut.done():
            return False
        fut.set_result(result)
        return True

    async def dtmf(self, digit: str) -> None:
        log.debug("call %s: DTMF %s", self.call_id, digit)
        self.publish(ev.DtmfReceived(digit))
        await self.model.send_message("user", f"[The caller pressed the telephone key {digit}]")

    # ------------------------------------------------------------ internals
    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_state(self, state: ev.AgentState) -> None:
        if state != self.state and self.state != "ended":
            prev, self.state = self.state, state
            self.publish(ev.AgentStateChanged(state, prev))

    def _setup_input(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("input sample rate must be set before feeding audio")
        self.input_rate = rate
        vad_rate = rate if rate in VAD_RATES else 16000
        self._vad_resampler = Resampler(rate, vad_rate) if vad_rate != rate else None
        self._vad_ratio = rate / vad_rate
        c = self.config
        self._vad = VoiceActivityDetector(
            vad_rate, aggressiveness=c.vad_aggressiveness, frame_ms=c.vad_frame_ms,
            start_ms=c.vad_start_ms, end_ms=c.vad_end_ms,
        )
        self._model_resampler = Resampler(rate, MODEL_RATE) if rate != MODEL_RATE else None

    def _ms(self, ms: int) -> int:
        return self.input_rate * ms // 1000

    def _assistant_active(self) -> bool:
        return self.playout.audible or self.playout.has_audio() or self._response_id is not None

    @property
    def idle(self) -> bool:
        """Nobody is talking and nothing is pending (no response, tool or turn)."""
        busy = self._tasks - ({self._model_task} if self._model_task else set())
        return not (self._assistant_active() or self._user_speaking or busy)

    # -- VAD and barge-in --------------------------------------------------
    def _on_vad(self, vev: VadEvent) -> None:
        onset = int(vev.sample * self._vad_ratio)
        decided = int(vev.decided_at * self._vad_ratio)
        if vev.kind == "start":
            self._user_speaking = True
            self.publish(ev.UserStartedSpeaking(onset))
            log.debug("call %s: user started speaking at %.2fs", self.call_id, onset / self.input_rate)
            if self._barge is not None:
                # speech again while a burst is pending: measure from the new onset
                self._barge.onset = onset
                self._barge.ended = False
            elif self._assistant_active():
                self.playout.pause()
                self._barge = _Barge(onset, decided, self.position, self.clock())
                log.debug("call %s: barge-in candidate, playout paused", self.call_id)
        else:
            self._user_speaking = False
            self.publish(ev.UserStoppedSpeaking(onset))
            if self._barge is not None:
                self._barge.ended = True
                self._spawn(self.model.clear_input(), "clear-input")
            elif not self.server_vad:
                self._spawn(self._end_turn(), "end-turn")

    def _check_barge(self) -> None:
        b = self._barge
        if b is None:
            return
        voiced = int(self._vad.last_voiced_end * self._vad_ratio) - b.onset
        if not b.ended and voiced >= self._ms(self.config.min_interruption_ms):
            self._barge = None
            self._spawn(self._interrupt(reason="speech"), "interrupt")
        elif self.position - b.paused_at >= self._ms(self.config.false_interruption_timeout_ms) and (
            b.ended or not self._user_speaking
        ):
            self._barge = None
            item = self.playout.current_item or ""
            log.debug("call %s: false interruption, playout resumed", self.call_id)
            self.publish(ev.FalseInterruption(item))
            self.playout.resume()
            if not self.playout.has_audio() and self._response_id is None:
                self._set_state("listening")

    async def _end_turn(self) -> None:
        """Local turn detection: the caller's speech ended."""
        self._turn_end_t = self.clock()
        self._set_state("thinking")
        await self.model.commit_input()
        await self._create_response()

    async def _interrupt(self, reason: str) -> None:
        """Confirmed interruption: cancel, truncate at played samples, drop the rest."""
        self._barge = None
        self.playout.pause()
        response_id = self._response_id
        if response_id is not None:
            self._cancelled.add(response_id)
            await self.model.cancel_response()
        flushed = self.playout.flush()
        for item_id in flushed:
            if self._item_response.get(item_id):
                self._cancelled.add(self._item_response[item_id])
        # items of the dropped responses that never reached playout: nothing heard
        for item_id, rid in self._item_response.items():
            if rid in self._cancelled and item_id not in flushed and item_id not in self._settled:
                flushed[item_id] = (0, 0)
        head: tuple[str, int, bool] | None = None
        for item_id, (played, received) in flushed.items():
            self._settled.add(item_id)
            played = min(played, received)
            audio_end_ms = played * 1000 // MODEL_RATE
            deleted = played == 0
            if deleted:
                await self.model.delete_item(item_id)
            else:
                await self.model.truncate_item(item_id, 0, audio_end_ms)
            spoken, unspoken = self._cut_text(item_id, played, received)
            log.debug(
                "call %s: interrupted (%s) item %s at %d ms of %d ms%s",
                self.call_id, reason, item_id, audio_end_ms, received * 1000 // MODEL_RATE,
                " (deleted)" if deleted else "",
            )
            self.publish(ev.ItemTruncated(item_id, audio_end_ms, deleted))
            if spoken or unspoken:
                self.publish(ev.BotOutput(item_id, "", final=True, interrupted=True, spoken=spoken, unspoken=unspoken))
            if head is None:
                head = (item_id, audio_end_ms, deleted)
        self.publish(ev.BotInterrupted(*(head or ("", 0, True))))
        if self._bot_speaking_item is not None:
            self.publish(ev.BotStoppedSpeaking(self._bot_speaking_item))
            self._bot_speaking_item = None
        self._set_state("listening")

    def _cut_text(self, item_id: str, played: int, received: int) -> tuple[str, str]:
        it = self._texts.pop(item_id, None)
        if it is None or not it.text:
            return "", ""
        cut = self._spoken_chars(it, played, received)
        # word-aligned: never end inside a word
        while cut < len(it.text) and cut > 0 and not it.text[cut - 1].isspace() and not it.text[cut].isspace():
            cut -= 1
        return it.text[:cut].strip(), it.text[cut:].strip()

    @staticmethod
    def _spoken_chars(it: _ItemText, played: int, received: int) -> int:
        """Characters of the item's text spoken after ``played`` samples.

        With word timings: every word that started before ``played``;
        otherwise in proportion to the audio received.
        """
        if it.audio:
            started = bisect.bisect_left(it.audio, played)
            if started == 0:
                return 0
            return it.chars[started] if started < len(it.chars) else len(it.text)
        if received <= 0:
            return 0
        return len(it.text) * min(played, received) // received

    def _pace_output(self) -> None:
        """Publish bot-output text as the playout reaches it."""
        item_id = self._bot_speaking_item
        if item_id is None:
            return
        it = self._texts.get(item_id)
        if it is None or not it.text:
            return
        played = self.playout.played(item_id)
        received = self.playout.received(item_id)
        upto = self._spoken_chars(it, played, received)
        # publish whole words only
        while upto < len(it.text) and upto > it.emitted and not it.text[upto].isspace():
            upto -= 1
        if upto > it.emitted:
            text = it.text[it.emitted : upto]
            it.emitted = upto
            if text.strip():
                self.publish(ev.BotOutput(item_id, text))

    # -- playout events (called from the transport's sender) ---------------
    def _on_playout(self, pe: PlayoutEvent) -> None:
        if isinstance(pe, PlayoutStarted):
            if self._bot_speaking_item is None:
                self.publish(ev.BotStartedSpeaking(pe.item_id))
            self._bot_speaking_item = pe.item_id
            self._set_state("speaking")
            if self._turn_end_t is not None:
                ttfb = (self.clock() - self._turn_end_t) * 1000
                self._turn_end_t = None
                self.publish(ev.Metrics(ttfb_ms=ttfb))
        elif isinstance(pe, PlayoutStopped):
            if pe.reason == "paused" and self._barge is not None and self._barge.t_paused is None:
                self._barge.t_paused = self.clock()
                lat = (self._barge.decided_at - self._barge.onset) / self.input_rate * 1000
                lat += (self._barge.t_paused - self._barge.t_decided) * 1000
                self.publish(ev.Metrics(barge_in_ms=lat))
            if self._bot_speaking_item is not None:
                self.publish(ev.BotStoppedSpeaking(self._bot_speaking_item))
                self._bot_speaking_item = None
            if pe.reason == "drained":
                self._set_state("thinking" if self._response_id is not None else "listening")
        elif isinstance(pe, ItemPlayed):
            self._settled.add(pe.item_id)
            it = self._texts.get(pe.item_id)
            if it is not None and (it.done or not it.text):
                self._finish_item_text(pe.item_id)

    def _finish_item_text(self, item_id: str) -> None:
        it = self._texts.pop(item_id, None)
        if it is None:
            return
        rest = it.text[it.emitted :]
        if rest.strip():
            self.publish(ev.BotOutput(item_id, rest))
        self.publish(ev.BotOutput(item_id, "", final=True, spoken=it.text.strip()))

    # -- model events ------------------------------------------------------
    async def _model_loop(self) -> None:
        async for event in self.model.events():
            try:
                await self._on_model_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call %s: failed handling %s", self.call_id, type(event).__name__)

    def _dropped(self, item_id: str, response_id: str) -> bool:
        """Track which response an item belongs to; True if that response was
        interrupted (its output is dropped, and a new item of it is deleted)."""
        if not response_id:
            return False
        self._item_response.setdefault(item_id, response_id)
        if response_id not in self._cancelled:
            return False
        if item_id not in self._settled:
            self._settled.add(item_id)
            self._spawn(self.model.delete_item(item_id), "delete-item")
        return True

    async def _on_model_event(self, e: mb.ModelEvent) -> None:
        if isinstance(e, (mb.AudioDelta, mb.AudioDone, mb.OutputTranscriptDelta, mb.OutputTranscriptDone)):
            if self._dropped(e.item_id, e.response_id):
                return
        if isinstance(e, mb.AudioDelta):
            if self._user_speaking and self._barge is None and not self.playout.audible and not self.playout.paused:
                # the reply arrives while the caller is talking: hold it as a barge-in candidate
                self.playout.pause()
                self._barge = _Barge(self.position, self.position, self.position, self.clock())
            self._response_had_audio = True
            self.playout.add(e.item_id, e.pcm)
        elif isinstance(e, mb.AudioDone):
            self.playout.end_item(e.item_id)
        elif isinstance(e, mb.OutputTranscriptDelta):
            it = self._texts.setdefault(e.item_id, _ItemText())
            if e.audio_offset is not None:
                it.chars.append(len(it.text) + len(e.text) - len(e.text.lstrip()))
                it.audio.append(e.audio_offset)
            it.text += e.text
            self._publish_sentences(e.item_id, it, final=False)
        elif isinstance(e, mb.OutputTranscriptDone):
            it = self._texts.setdefault(e.item_id, _ItemText())
            if e.text and len(e.text) >= len(it.text):
                it.text = e.text
            it.done = True
            self._publish_sentences(e.item_id, it, final=True)
            if e.item_id in self._settled:  # its audio already played to the end
                self._finish_item_text(e.item_id)
        elif isinstance(e, mb.TextDelta):
            self.publish(ev.BotLLMText(e.text, e.item_id))
        elif isinstance(e, mb.TextDone):
            pass
        elif isinstance(e, mb.InputTranscript):
            if e.text or e.final:
                self.publish(ev.UserTranscript(e.text, e.final, e.item_id))
        elif isinstance(e, mb.FunctionCall):
            self._tools_running += 1
            self._tool_batches[e.response_id] = self._tool_batches.get(e.response_id, 0) + 1
            self._spawn(self._run_tool(e), f"tool-{e.name}")
        elif isinstance(e, mb.SpeechStarted):
            if self._assistant_active():
                await self._interrupt(reason="server-vad")
        elif isinstance(e, mb.SpeechStopped):
            self._turn_end_t = self.clock()
        elif isinstance(e, mb.ResponseCreated):
            self._response_id = e.response_id
            self._response_idle.clear()
            self._response_had_audio = False
            if self.state != "speaking":
                self._set_state("thinking")
            self.publish(ev.BotLLMStarted(e.response_id))
        elif isinstance(e, mb.ResponseDone):
            if self._response_id == e.response_id:
                self._response_id = None
                self._response_idle.set()
            self.publish(ev.BotLLMStopped(e.response_id, e.status))
            if (
                e.status == "completed" and e.text_only and not self._response_had_audio
                and self._text_only_retries < self.config.text_only_retries
            ):
                self._text_only_retries += 1
                log.debug("call %s: text-only response, asking again for audio", self.call_id)
                await self._create_response("Say your previous answer aloud.")
                return
            self._text_only_retries = 0
            if self.state == "thinking" and not self.playout.has_audio() and not self._tools_running:
                self._set_state("listening")
        elif isinstance(e, mb.Connected):
            self._connected = True
            if self.state == "initializing":
                self._set_state("listening")
            self._maybe_greet()
        elif isinstance(e, mb.Disconnected):
            self._connected = False
            if e.fatal:
                self.publish(ev.CallError(f"model disconnected: {e.reason}", fatal=True))
                self._spawn(self.close("model-error"), "close")
            else:
                self._response_id = None
                self._response_idle.set()
        elif isinstance(e, mb.ModelError):
            self.publish(ev.CallError(e.message, fatal=e.fatal))
            if e.fatal:
                self._spawn(self.close("model-error"), "close")
        elif isinstance(e, mb.InputCommitted):
            pass

    def _publish_sentences(self, item_id: str, it: _ItemText, final: bool) -> None:
        """One bot-transcription per completed sentence (the rest when final)."""
        pending = it.text[it.sentence_from :]
        cuts = [m.end() for m in _SENTENCE_END.finditer(pending)]
        if final and (not cuts or cuts[-1] < len(pending)):
            cuts.append(len(pending))
        start = 0
        for cut in cuts:
            sentence = pending[start:cut].strip()
            start = cut
            if sentence:
                self.publish(ev.BotTranscript(sentence, item_id))
        it.sentence_from += start

    async def _create_response(self, instructions: str | None = None) -> None:
        if self._response_id is not None:
            try:
                await asyncio.wait_for(self._response_idle.wait(), self.config.response_wait_s)
            except TimeoutError:
                log.warning("call %s: previous response still running, asking anyway", self.call_id)
        await self.model.create_response(instructions=instructions)

    def _maybe_greet(self) -> None:
        if self._greeted or not (self._connected and self._caller_joined) or not self.config.greeting:
            return
        self._greeted = True
        self._spawn(self._greet(), "greeting")

    async def _greet(self) -> None:
        await self.model.send_message("system", self.config.greeting)
        await self._create_response()

    # -- tools -------------------------------------------------------------
    async def _run_tool(self, call: mb.FunctionCall) -> None:
        # counted from the FunctionCall event on (see _on_model_event), so the
        # response that carried the call ending does not read as "idle"
        try:
            await self._run_tool_inner(call)
        finally:
            self._tools_running -= 1

    async def _run_tool_inner(self, call: mb.FunctionCall) -> None:
        tool = self.tools.get(call.name)
        self.publish(ev.FunctionCallStarted(call.call_id, call.name))
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
        except ValueError as exc:
            args = {}
            result: Any = {"error": f"invalid arguments: {exc}"}
            tool = None
        else:
            result = {"error": f"unknown tool {call.name!r}"}
        self.publish(ev.FunctionCallInProgress(call.call_id, call.name, args, bool(tool and tool.client_side)))
        cancelled = False
        if tool is not None and tool.client_side:
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            self._client_calls[call.call_id] = fut
            timeout = tool.timeout or self.config.client_tool_timeout_s
            try:
                result = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                result = {"error": f"client did not answer within {timeout:g} s"}
            finally:
                self._client_calls.pop(call.call_id, None)
        elif tool is not None and tool.func is not None:
            timeout = tool.timeout or self.config.tool_timeout_s
            try:
                result = await asyncio.wait_for(tool.func(**args), timeout)
            except TimeoutError:
                result = {"error": f"tool {call.name!r} timed out after {timeout:g} s"}
            except asyncio.CancelledError:
                cancelled = True
                raise
            except Exception as exc:
                log.warning("call %s: tool %s raised %r", self.call_id, call.name, exc)
                result = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                if cancelled:
                    self.publish(ev.FunctionCallStopped(call.call_id, call.name, None, cancelled=True))
        output = result if isinstance(result, str) else json.dumps(result, default=str)
        self.publish(ev.FunctionCallStopped(call.call_id, call.name, result))
        await self.model.function_output(call.call_id, output)
        # one new response per batch: once the asking response is over, all its
        # calls are known; the last one to finish asks for the answer
        if self._response_id is not None and self._response_id == call.response_id:
            try:
                await asyncio.wait_for(self._response_idle.wait(), self.config.response_wait_s)
            except TimeoutError:
                pass
        left = self._tool_batches.get(call.response_id, 1) - 1
        if left > 0:
            self._tool_batches[call.response_id] = left
            return
        self._tool_batches.pop(call.response_id, None)
        await self._create_response()
