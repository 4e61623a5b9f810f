"""One call's runtime: caller audio -> VAD + chunker -> model; model -> playout.

:class:`CallSession` is transport-neutral. A transport hands it an
:class:`~worker.transport.AudioInput` (mono int16 frames at a fixed rate) and
reads the assistant's voice from the :class:`~media.playout.PlayoutBuffer` it
was built with. Everything the call decides is published as
:mod:`worker.events` dataclasses to its listeners.

The session composes units with one job each: :class:`~worker.barge.BargeIn`
(pause, confirm, resume, truncate), :class:`~worker.pacing.TranscriptPacer`
(text as produced and as heard), :class:`~worker.tool_runner.ToolRunner` and
the :class:`~worker.responses.ResponseLedger`. Model events are dispatched by
type through ``_MODEL_EVENTS``.

Timing inside the call is counted in input samples: the caller's client sends
packets continuously (silence included), so the input position is the call's
clock, and a call driven from a WAV file behaves exactly like a live one.
Wall-clock time (one monotonic clock) is used only for reported latencies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from v2v.media.aec import EchoCanceller
from v2v.media.chunker import Chunker, ResamplingChunker
from v2v.media.playout import ItemPlayed, PlayoutBuffer, PlayoutEvent, PlayoutStarted, PlayoutStopped
from v2v.media.resample import Resampler
from v2v.media.vad import VadEvent, VoiceActivityDetector

from . import events as ev
from .barge import BargeIn
from .end_of_turn import EndOfTurn, end_of_turn_for
from .models import base as mb
from .pacing import TranscriptPacer
from .reply_audio import ReplyAudio
from .responses import ResponseLedger
from .tasks import TaskSet
from .tool_runner import ToolRunner
from .tools import ToolRegistry

log = logging.getLogger("v2v.call")

VAD_RATES = (8000, 16000, 32000, 48000)
CHUNK_MS = 100  # caller audio goes to the model in chunks of this length
DUPLEX_CHUNK_MS = 20  # ... one frame for a full-duplex model: it hears the caller as the caller talks
AEC_PROBE_MS = 8000  # aec=auto: after this much assistant audio, an echo canceller that found echo
AEC_PROBE_SHARE = 0.1  # in less than this share of it is bypassed (the client's own canceller did the work)


@dataclass
class CallConfig:
    turn_detection: Literal["local", "server"] = "local"
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 10
    vad_start_ms: int = 30
    vad_end_ms: int = 500
    vad_settle_ms: int = 120  # a step of stationary noise becomes the VAD's floor after this (media/vad.py)
    vad_rise_db: float = 4.5  # ... and a start needs its voiced run to span this much (speech is modulated;
    # 9 missed a third of the speech 10 dB above steady noise: bench/ns_bench.py, BENCHMARKS.md) ...
    vad_busy_rise_db: float = 9.0  # ... or this much over a busy, voice-like background (chatter, a TV)
    vad_onset_ms: int | None = 20  # eager pause: this much voiced input pauses an audible assistant (None: off)
    min_interruption_ms: int = 300
    false_interruption_timeout_ms: int = 1000
    greeting: str = ""
    tool_timeout_s: float = 10.0
    client_tool_timeout_s: float = 10.0
    text_only_retries: int = 1
    response_wait_s: float = 10.0  # wait for the model to finish a response before asking for another
    # echo cancellation of the caller's input against the playout: "on"; "auto" = on, then bypassed
    # once AEC_PROBE_MS of assistant audio showed no echo to remove (the client cancels it); "off"
    aec: Literal["auto", "on", "off"] = "off"
    aec_margin_db: float = 20.0  # on a line that echoes, while assistant audio may echo back, VAD
    # ignores input this far below its level (half of it until the canceller has converged)
    turn_model: Literal["off", "smart-turn"] = "off"  # semantic end of turn (worker/end_of_turn.py)
    turn_max_wait_ms: int = 1500  # ... the longest silence a turn the model found incomplete is held
    turn_pause_ms: int = 150  # ... the VAD's hangover with a model: the pause at which it is asked
    turn_threshold: float = 0.9  # ... probability of "complete" at or above which the turn ends there


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
        self.input_taps: list[Callable[[np.ndarray], None]] = []  # see every caller frame fed (recordings)
        self._tasks = TaskSet(f"call {call_id}")
        self._model_task: asyncio.Task | None = None
        self._connected = False
        self._caller_joined = False
        self._greeted = False
        self._text_only_retries = 0
        self._turn_end_t: float | None = None
        # input side (set up on the first frame, when the rate is known)
        self.input_rate = 0
        self.position = 0  # input samples consumed
        self._vad: VoiceActivityDetector | None = None
        self._vad_resampler: Resampler | None = None
        self._vad_rate = 0
        self._aec: EchoCanceller | None = None
        self._eot: EndOfTurn | None = None
        self._vad_floor = -55.0
        caps = self.model.capabilities
        chunk_ms = DUPLEX_CHUNK_MS if caps.full_duplex else CHUNK_MS
        self._chunk = caps.input_rate * chunk_ms // 1000
        self._chunker: Chunker | ResamplingChunker = Chunker(self._chunk)  # resampling once the rate is known
        self.reply_audio = ReplyAudio(playout, caps.output_rate)
        self._user_speaking = False
        self._eager = False  # the caller's speech so far is the VAD's tentative onset (an eager pause)
        # the units
        self.responses = ResponseLedger()
        self.pacer = TranscriptPacer(self.publish)
        self.barge = BargeIn(call_id, config, playout, self.model, self.responses, self.pacer, self.publish, clock)
        self.tool_runner = ToolRunner(call_id, self.tools, config, self.model, self.responses, self.publish,
                                      self._spawn, self._create_response)
        playout.add_listener(self._on_playout)
        playout.add_tap(self._on_played)

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
        assert self._vad is not None
        self.position += len(pcm)
        for tap in self.input_taps:
            tap(pcm)
        if self._aec is not None:
            pcm = self._cancel_echo(self._aec, pcm)
        if self._eot is not None:
            self._eot.feed(pcm)
        # VAD branch
        vad_pcm = self._vad_resampler.process(pcm) if self._vad_resampler else pcm
        for vev in self._vad.process(vad_pcm):
            self._on_vad(vev)
        self._check_barge()
        self.pacer.pace(self.playout)
        # model branch
        for chunk in self._chunker.push(pcm):
            await self.model.push_audio(chunk)

    async def close(self, reason: str = "hangup") -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        log.debug("call %s: ended (%s)", self.call_id, reason)
        self.playout.flush()
        self.tool_runner.cancel_client_calls()
        try:
            await self.model.close()
        except Exception:
            log.exception("call %s: model close failed", self.call_id)
        await self._tasks.cancel_all()
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
        return self.tool_runner.client_result(call_id, result)

    async def dtmf(self, digit: str) -> None:
        log.debug("call %s: DTMF %s", self.call_id, digit)
        self.publish(ev.DtmfReceived(digit))
        await self.model.send_message("user", f"[The caller pressed the telephone key {digit}]")

    @property
    def idle(self) -> bool:
        """Nobody is talking and nothing is pending (no response, tool or turn)."""
        busy = len(self._tasks) > int(self._model_task in self._tasks)
        return not (self._assistant_active() or self._user_speaking or busy)

    # ------------------------------------------------------------ internals
    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        return self._tasks.spawn(coro, f"{self.call_id}:{name}")

    def _set_state(self, state: ev.AgentState) -> None:
        if state != self.state and self.state != "ended":
            prev, self.state = self.state, state
            self.publish(ev.AgentStateChanged(state, prev))

    def _setup_input(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("input sample rate must be set before feeding audio")
        self.input_rate = rate
        self.barge.input_rate = rate
        vad_rate = rate if rate in VAD_RATES else 16000
        self._vad_resampler = Resampler(rate, vad_rate) if vad_rate != rate else None
        self._vad_rate = vad_rate
        c = self.config
        self._eot = end_of_turn_for(self.call_id, rate, c, self.server_vad, self._end_turn_by, self._spawn)
        self._vad = VoiceActivityDetector(
            vad_rate, aggressiveness=c.vad_aggressiveness, frame_ms=c.vad_frame_ms,
            start_ms=c.vad_start_ms, end_ms=c.vad_end_ms if self._eot is None else c.turn_pause_ms,
            settle_ms=c.vad_settle_ms, rise_db=c.vad_rise_db, busy_rise_db=c.vad_busy_rise_db, onset_ms=c.vad_onset_ms,
        )
        self._vad_floor = self._vad.energy_floor_dbfs
        if c.aec != "off":
            try:
                self._aec = EchoCanceller(rate, self.playout.rate)
            except (ImportError, ValueError) as exc:
                log.warning("call %s: no echo cancellation: %s", self.call_id, exc)
        model_rate = self.model.capabilities.input_rate
        if rate != model_rate:  # resampled per chunk, not per frame: the same chunks at the same frames
            self._chunker = ResamplingChunker(rate, model_rate, self._chunk)

    def _on_played(self, pcm: np.ndarray) -> None:
        """The transport took these playout samples: the echo canceller's reference."""
        if self._aec is not None:
            self._aec.far(pcm)

    def _cancel_echo(self, aec: EchoCanceller, pcm: np.ndarray) -> np.ndarray:
        """Remove the assistant's echo; keep the VAD above what is left of it."""
        out = aec.process(pcm)
        assert self._vad is not None
        floor = self._vad_floor
        if aec.far_active and aec.echo_seen:
            margin = self.config.aec_margin_db if aec.converged else self.config.aec_margin_db / 2
            floor = max(floor, aec.far_level_dbfs() - margin)
        self._vad.set_energy_floor(floor)
        if self.config.aec == "auto" and aec.active_ms >= AEC_PROBE_MS and aec.echo_share < AEC_PROBE_SHARE:
            log.info("call %s: no echo to cancel (%.0f %% of frames): echo canceller bypassed",
                     self.call_id, 100 * aec.echo_share)
            self._aec = None
            self._vad.set_energy_floor(self._vad_floor)
        return out

    def _input_samples(self, vad_samples: int) -> int:
        """A VAD sample position as an input sample position."""
        return vad_samples * self.input_rate // self._vad_rate

    def _assistant_active(self) -> bool:
        return self.playout.audible or self.playout.has_audio() or self.responses.current is not None

    # -- VAD and barge-in --------------------------------------------------
    def _on_vad(self, vev: VadEvent) -> None:
        onset = self._input_samples(vev.sample)
        decided = self._input_samples(vev.decided_at)
        if vev.kind == "onset":  # tentative: an eager pause, published as the caller speaking
            self._eager = self.barge.speech_onset(onset, decided, self.position, self._assistant_active())
            if self._eager:
                self._user_started(onset)
        elif vev.kind == "drop":  # the onset was not speech: no turn; an eager pause resumed
            if self._eager:
                self._eager = self._user_speaking = False
                self.publish(ev.UserStoppedSpeaking(onset))
                self.barge.speech_dropped(self.position)
                self._spawn(self.model.clear_input(), "clear-input")
        elif vev.kind == "start":
            if not self._eager:
                self._user_started(onset)
            self._eager = False
            self.barge.speech_started(onset, decided, self.position, self._assistant_active())
            if self._eot is not None:
                self._eot.speech_started(onset)
        else:
            self._user_speaking = False
            self.publish(ev.UserStoppedSpeaking(onset))
            if self.barge.speech_stopped():
                self._spawn(self.model.clear_input(), "clear-input")
                if self._eot is not None:
                    self._eot.drop()
            elif self._eot is not None:
                self._eot.speech_ended(onset)  # the model decides; it calls _end_turn_by
            elif not self.server_vad:
                self.publish(ev.TurnEnded("hangover"))
                self._spawn(self._end_turn(), "end-turn")

    def _user_started(self, onset: int) -> None:
        self._user_speaking = True
        self.publish(ev.UserStartedSpeaking(onset))
        log.debug("call %s: user started speaking at %.2fs", self.call_id, onset / self.input_rate)

    def _check_barge(self) -> None:
        assert self._vad is not None
        voiced_end = self._input_samples(self._vad.last_voiced_end)
        decision = self.barge.check(self.position, voiced_end, self._user_speaking)
        if decision == "confirm":
            self._spawn(self._interrupt(reason="speech"), "interrupt")
        elif decision == "resume" and not self.playout.has_audio() and self.responses.current is None:
            self._set_state("listening")

    def _end_turn_by(self, reason: str) -> None:
        log.debug("call %s: turn ended (%s)", self.call_id, reason)
        self.publish(ev.TurnEnded(reason))
        self._spawn(self._end_turn(), "end-turn")

    async def _end_turn(self) -> None:
        """Local turn detection: the caller's speech ended."""
        self._turn_end_t = self.clock()
        self._set_state("thinking")
        await self.model.commit_input()
        await self._create_response()

    async def _interrupt(self, reason: str) -> None:
        await self.barge.interrupt(reason)
        self.reply_audio.drop_all()
        self._set_state("listening")

    # -- playout events (called from the transport's sender) ---------------
    def _on_playout(self, pe: PlayoutEvent) -> None:
        if isinstance(pe, PlayoutStarted):
            self.pacer.started(pe.item_id)
            self._set_state("speaking")
            if self._turn_end_t is not None:
                ttfb = (self.clock() - self._turn_end_t) * 1000
                self._turn_end_t = None
                self.publish(ev.Metrics(ttfb_ms=ttfb))
        elif isinstance(pe, PlayoutStopped):
            if pe.reason == "paused":
                self.barge.playout_paused()
            self.pacer.stopped()
            if pe.reason == "drained":
                self._set_state("thinking" if self.responses.current is not None else "listening")
        elif isinstance(pe, ItemPlayed):
            self.responses.settled.add(pe.item_id)
            self.pacer.played_out(pe.item_id)

    # -- model events ------------------------------------------------------
    async def _model_loop(self) -> None:
        async for event in self.model.events():
            try:
                await self._on_model_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call %s: failed handling %s", self.call_id, type(event).__name__)

    async def _on_model_event(self, e: mb.ModelEvent) -> None:
        handler = _MODEL_EVENTS.get(type(e))
        if handler is None:
            return
        if isinstance(e, _ITEM_OUTPUT):
            fate = self.responses.fate(e.item_id, e.response_id)
            if fate == "delete":
                self._spawn(self.model.delete_item(e.item_id), "delete-item")
            if fate != "keep":
                return
        await handler(self, e)

    async def _on_audio_delta(self, e: mb.AudioDelta) -> None:
        if self._user_speaking:
            # the reply arrives while the caller is talking: hold it as a barge-in candidate
            self.barge.hold_reply(self.position)
        self.responses.had_audio = True
        self.reply_audio.add(e.item_id, e.pcm)

    async def _on_audio_done(self, e: mb.AudioDone) -> None:
        self.reply_audio.end(e.item_id)

    async def _on_transcript_delta(self, e: mb.OutputTranscriptDelta) -> None:
        offset = None if e.audio_offset is None else self.reply_audio.to_playout(e.audio_offset)
        self.pacer.delta(e.item_id, e.text, offset)

    async def _on_transcript_done(self, e: mb.OutputTranscriptDone) -> None:
        # settled: its audio already played to the end
        self.pacer.done(e.item_id, e.text, e.item_id in self.responses.settled)

    async def _on_text_delta(self, e: mb.TextDelta) -> None:
        self.publish(ev.BotLLMText(e.text, e.item_id))

    async def _on_input_transcript(self, e: mb.InputTranscript) -> None:
        if e.text or e.final:
            self.publish(ev.UserTranscript(e.text, e.final, e.item_id))

    async def _on_function_call(self, e: mb.FunctionCall) -> None:
        self.tool_runner.start(e)

    async def _on_speech_started(self, e: mb.SpeechStarted) -> None:
        if self._assistant_active():
            await self._interrupt(reason="server-vad")

    async def _on_speech_stopped(self, e: mb.SpeechStopped) -> None:
        self._turn_end_t = self.clock()

    async def _on_response_created(self, e: mb.ResponseCreated) -> None:
        self.responses.started(e.response_id)
        if self.state != "speaking":
            self._set_state("thinking")
        self.publish(ev.BotLLMStarted(e.response_id))

    async def _on_response_done(self, e: mb.ResponseDone) -> None:
        self.responses.finished(e.response_id)
        self.publish(ev.BotLLMStopped(e.response_id, e.status))
        if (
            e.status == "completed" and e.text_only and not self.responses.had_audio
            and self._text_only_retries < self.config.text_only_retries
        ):
            self._text_only_retries += 1
            log.debug("call %s: text-only response, asking again for audio", self.call_id)
            await self._create_response("Say your previous answer aloud.")
            return
        self._text_only_retries = 0
        if self.state == "thinking" and not self.playout.has_audio() and not self.tool_runner.running:
            self._set_state("listening")

    async def _on_connected(self, e: mb.Connected) -> None:
        self._connected = True
        if self.state == "initializing":
            self._set_state("listening")
        self._maybe_greet()

    async def _on_disconnected(self, e: mb.Disconnected) -> None:
        self._connected = False
        if e.fatal:
            self.publish(ev.CallError(f"model disconnected: {e.reason}", fatal=True))
            self._spawn(self.close("model-error"), "close")
        else:
            self.responses.lost()

    async def _on_model_error(self, e: mb.ModelError) -> None:
        self.publish(ev.CallError(e.message, fatal=e.fatal))
        if e.fatal:
            self._spawn(self.close("model-error"), "close")

    async def _create_response(self, instructions: str | None = None) -> None:
        if self.responses.current is not None and not await self.responses.wait_idle(self.config.response_wait_s):
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


# output of an assistant item: dropped when its response was interrupted
_ITEM_OUTPUT = (mb.AudioDelta, mb.AudioDone, mb.OutputTranscriptDelta, mb.OutputTranscriptDone)

# model event type -> handler (TextDone and InputCommitted need nothing)
_MODEL_EVENTS: dict[type, Callable[[CallSession, Any], Awaitable[None]]] = {
    mb.AudioDelta: CallSession._on_audio_delta,
    mb.AudioDone: CallSession._on_audio_done,
    mb.OutputTranscriptDelta: CallSession._on_transcript_delta,
    mb.OutputTranscriptDone: CallSession._on_transcript_done,
    mb.TextDelta: CallSession._on_text_delta,
    mb.InputTranscript: CallSession._on_input_transcript,
    mb.FunctionCall: CallSession._on_function_call,
    mb.SpeechStarted: CallSession._on_speech_started,
    mb.SpeechStopped: CallSession._on_speech_stopped,
    mb.ResponseCreated: CallSession._on_response_created,
    mb.ResponseDone: CallSession._on_response_done,
    mb.Connected: CallSession._on_connected,
    mb.Disconnected: CallSession._on_disconnected,
    mb.ModelError: CallSession._on_model_error,
}
