"""A protocol-faithful fake of the OpenAI Realtime API (GA) for tests.

An aiohttp WebSocket server on an ephemeral loopback port, at
``http://127.0.0.1:<port>/v1`` (so ``OPENAI_BASE_URL`` can point at it). It

* validates every client event against a strict discriminated union of the
  members of ``openai.types.realtime.RealtimeClientEvent`` (re-wrapped with
  pydantic's ``Field(discriminator="type")``, strict JSON mode, and no unknown
  fields anywhere: the SDK models allow extras, the fake flags them);
* records every client event (``events``, per connection ``conn.events``) and
  every protocol violation (``violations``): invalid events, unknown item ids,
  truncation beyond the audio it sent for that item, ``response.cancel`` with no
  response in progress, ``response.create`` while one is, empty commits...
  answering each with the ``error`` event the real API sends;
* builds every server event from the ``openai`` package's server event models,
  so they are valid too;
* streams replies faster than real time (a tone, or the caller's audio echoed
  back), with transcript deltas, in delta chunks;
* implements energy-based server VAD (speech_started / speech_stopped /
  committed and an automatic response), input transcription, cancel,
  truncate, delete, function calls, text-only replies, a 401 for a wrong key,
  handshake failures and a dropped connection mid-response (all configurable).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args

import numpy as np
import pydantic
from aiohttp import WSMsgType, web
from openai.types.realtime import RealtimeClientEvent
from openai.types.realtime.conversation_item_added import ConversationItemAdded
from openai.types.realtime.conversation_item_deleted_event import ConversationItemDeletedEvent
from openai.types.realtime.conversation_item_done import ConversationItemDone
from openai.types.realtime.conversation_item_input_audio_transcription_completed_event import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
)
from openai.types.realtime.conversation_item_input_audio_transcription_delta_event import (
    ConversationItemInputAudioTranscriptionDeltaEvent,
)
from openai.types.realtime.conversation_item_truncated_event import ConversationItemTruncatedEvent
from openai.types.realtime.input_audio_buffer_cleared_event import InputAudioBufferClearedEvent
from openai.types.realtime.input_audio_buffer_committed_event import InputAudioBufferCommittedEvent
from openai.types.realtime.input_audio_buffer_speech_started_event import (
    InputAudioBufferSpeechStartedEvent,
)
from openai.types.realtime.input_audio_buffer_speech_stopped_event import (
    InputAudioBufferSpeechStoppedEvent,
)
from openai.types.realtime.rate_limits_updated_event import RateLimitsUpdatedEvent
from openai.types.realtime.realtime_error_event import RealtimeErrorEvent
from openai.types.realtime.realtime_server_event import ConversationItemRetrieved
from openai.types.realtime.response_audio_delta_event import ResponseAudioDeltaEvent
from openai.types.realtime.response_audio_done_event import ResponseAudioDoneEvent
from openai.types.realtime.response_audio_transcript_delta_event import (
    ResponseAudioTranscriptDeltaEvent,
)
from openai.types.realtime.response_audio_transcript_done_event import (
    ResponseAudioTranscriptDoneEvent,
)
from openai.types.realtime.response_content_part_added_event import ResponseContentPartAddedEvent
from openai.types.realtime.response_content_part_done_event import ResponseContentPartDoneEvent
from openai.types.realtime.response_created_event import ResponseCreatedEvent
from openai.types.realtime.response_done_event import ResponseDoneEvent
from openai.types.realtime.response_function_call_arguments_delta_event import (
    ResponseFunctionCallArgumentsDeltaEvent,
)
from openai.types.realtime.response_function_call_arguments_done_event import (
    ResponseFunctionCallArgumentsDoneEvent,
)
from openai.types.realtime.response_output_item_added_event import ResponseOutputItemAddedEvent
from openai.types.realtime.response_output_item_done_event import ResponseOutputItemDoneEvent
from openai.types.realtime.response_text_delta_event import ResponseTextDeltaEvent
from openai.types.realtime.response_text_done_event import ResponseTextDoneEvent
from openai.types.realtime.session_created_event import SessionCreatedEvent
from openai.types.realtime.session_updated_event import SessionUpdatedEvent

RATE = 24000

_MEMBERS = get_args(get_args(RealtimeClientEvent)[0])
CLIENT_EVENT_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    Annotated[Union[_MEMBERS], pydantic.Field(discriminator="type")]  # noqa: UP007 -- _MEMBERS is a runtime tuple of types; `|` cannot spread it
)

# GA server event name -> the beta name some compatible providers send.
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}

DEFAULT_SESSION: dict[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "output_modalities": ["audio"],
    "instructions": "You are a helpful assistant.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "marin", "speed": 1.0},
    },
    "tools": [],
    "tool_choice": "auto",
}


def validate_client_event(raw: str) -> tuple[dict[str, Any] | None, str | None]:
    """(event, None) when ``raw`` is a valid GA client event, else (None, why)."""
    try:
        model = CLIENT_EVENT_ADAPTER.validate_json(raw, strict=True)
    except pydantic.ValidationError as e:
        return None, str(e).replace("\n", " | ")[:600]
    extras = _extras(model, model.type)
    if extras:
        return None, f"unknown field(s) {', '.join(extras)}"
    return json.loads(raw), None


def _extras(obj: Any, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(obj, pydantic.BaseModel):
        out += [f"{path}.{k}" for k in (obj.model_extra or {})]
        for name in type(obj).model_fields:
            out += _extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += _extras(v, f"{path}[{i}]")
    return out


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def tone(ms: int, freq: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    n = ms * RATE // 1000
    t = np.arange(n) / RATE
    x = np.round(amplitude * np.sin(2 * np.pi * freq * t + 0.1)).astype(np.int16)
    x[x == 0] = 1  # no zero samples: played samples can be counted in a recording
    return x


@dataclass
class FakeToolCall:
    """A function call the fake model makes after the next user turn."""

    name: str
    arguments: str = "{}"


@dataclass
class _Resp:
    id: str
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Dropped(Exception):
    pass


class FakeConnection:
    """One WebSocket connection: its session, conversation and input buffer."""

    def __init__(self, server: FakeRealtimeServer, index: int, ws: web.WebSocketResponse,
                 request: web.Request, model: str) -> None:
        self.server = server
        self.index = index
        self.ws = ws
        self.request = request
        self.model = model
        self.session: dict[str, Any] = copy.deepcopy(DEFAULT_SESSION)
        self.session["model"] = model
        self.events: list[dict[str, Any]] = []  # valid client events received
        self.sent: list[dict[str, Any]] = []  # server events sent
        self.items: dict[str, dict[str, Any]] = {}  # the conversation, in order
        self.audio_sent: dict[str, int] = {}  # assistant item -> samples sent
        self.buffer: list[np.ndarray] = []
        self.buffer_samples = 0
        self.total_samples = 0  # all audio appended this session
        self.response: _Resp | None = None
        self.finished: dict[str, float] = {}  # response id -> monotonic time of response.done
        self.closed = asyncio.Event()
        self._lock = asyncio.Lock()
        # server VAD state
        self._carry = np.zeros(0, np.int16)
        self._speaking = False
        self._silence_ms = 0
        self._speech_item = ""
        self._turns = 0

    # -- helpers ---------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.server._ids):06d}{self.index:02d}fake"

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        return (self.session.get("audio") or {}).get("input", {}).get("turn_detection")

    @property
    def transcription(self) -> dict[str, Any] | None:
        return (self.session.get("audio") or {}).get("input", {}).get("transcription")

    async def send(self, cls: type[pydantic.BaseModel], **fields: Any) -> None:
        """Build a server event with the SDK model (validating it) and send it."""
        ev = cls(event_id=self._id("event"), **fields).model_dump(mode="json", exclude_unset=True)
        if self.server.beta_event_names and ev["type"] in BETA_NAMES:
            ev["type"] = BETA_NAMES[ev["type"]]
        async with self._lock:
            if self.ws.closed:
                raise _Dropped()
            await self.ws.send_str(json.dumps(ev))
        self.sent.append(ev)
        await self.server._notify()

    async def error(self, message: str, code: str, client_event: dict[str, Any] | None,
                    violation: bool = True, etype: str = "invalid_request_error") -> None:
        if violation:
            what = (client_event or {}).get("type", "?")
            self.server.violations.append(f"conn {self.index}: {what}: {code}: {message}")
        err: dict[str, Any] = {"message": message, "type": etype, "code": code}
        if client_event and client_event.get("event_id"):
            err["event_id"] = client_event["event_id"]
        await self.send(RealtimeErrorEvent, type="error", error=err)

    # -- main loop -------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.server.garbage_frames:
                await self.ws.send_str(self.server.garbage_frames.pop(0))
            await self.send(SessionCreatedEvent, type="session.created", session=self.session)
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.server.violations.append(f"conn {self.index}: binary frame")
        except (_Dropped, ConnectionError):
            pass
        finally:
            r = self.response
            if r is not None and r.task is not None:
                r.task.cancel()
                try:
                    await r.task
                except (asyncio.CancelledError, Exception):
                    pass
            self.closed.set()
            await self.server._notify()

    async def handle(self, raw: str) -> None:
        ev, why = validate_client_event(raw)
        if ev is None:
            try:
                bad = json.loads(raw)
            except ValueError:
                bad = {"type": "?"}
            self.server.events.append(bad if isinstance(bad, dict) else {"type": "?"})
            await self.error(f"Invalid client event: {why}", "invalid_event",
                             bad if isinstance(bad, dict) else None)
            return
        self.events.append(ev)
        self.server.events.append(ev)
        await self.server._notify()
        handler = getattr(self, "on_" + ev["type"].replace(".", "_"))
        await handler(ev)

    # -- session ---------------------------------------------------------------
    async def on_session_update(self, ev: dict[str, Any]) -> None:
        s = ev["session"]
        if s.get("type") != "realtime":
            await self.error("Only realtime sessions are supported here", "invalid_value", ev)
            return
        fmt_in = ((s.get("audio") or {}).get("input") or {}).get("format")
        fmt_out = ((s.get("audio") or {}).get("output") or {}).get("format")
        for fmt in (fmt_in, fmt_out):
            if fmt is not None and (fmt.get("type") != "audio/pcm" or fmt.get("rate") != RATE):
                await self.error(f"the fake expects audio/pcm at 24 kHz, got {fmt}",
                                 "invalid_value", ev)
                return
        self.session = _deep_merge(self.session, s)
        await self.send(SessionUpdatedEvent, type="session.updated", session=self.session)

    # -- input audio -----------------------------------------------------------
    async def on_input_audio_buffer_append(self, ev: dict[str, Any]) -> None:
        try:
            data = base64.b64decode(ev["audio"], validate=True)
        except ValueError:
            await self.error("audio is not valid base64", "invalid_value", ev)
            return
        if len(data) % 2:
            await self.error("odd number of bytes for pcm16 audio", "invalid_value", ev)
            return
        pcm = np.frombuffer(data, "<i2").astype(np.int16)
        self.buffer.append(pcm)
        self.buffer_samples += len(pcm)
        self.total_samples += len(pcm)
        td = self.turn_detection
        if td is not None and td.get("type") == "server_vad":
            await self._vad(pcm, td)

    async def _vad(self, pcm: np.ndarray, td: dict[str, Any]) -> None:
        frame = RATE // 100  # 10 ms
        data = np.concatenate([self._carry, pcm])
        n = len(data) // frame
        self._carry = data[n * frame:]
        if n == 0:
            return
        frames = data[: n * frame].reshape(n, frame).astype(np.float64)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        end_pos = self.total_samples - len(self._carry)  # sample after the last full frame
        silence_needed = int(td.get("silence_duration_ms") or self.server.vad_silence_ms)
        prefix = int(td.get("prefix_padding_ms") or 300)
        for i, level in enumerate(rms):
            pos_ms = (end_pos - (n - i) * frame) * 1000 // RATE
            if level >= self.server.vad_threshold:
                self._silence_ms = 0
                if not self._speaking:
                    self._speaking = True
                    self._speech_item = self._id("item")
                    await self.send(InputAudioBufferSpeechStartedEvent,
                                    type="input_audio_buffer.speech_started",
                                    audio_start_ms=max(0, pos_ms - prefix),
                                    item_id=self._speech_item)
                    if td.get("interrupt_response", True) and self.response is not None:
                        await self._cancel(self.response, "turn_detected")
            elif self._speaking:
                self._silence_ms += 10
                if self._silence_ms >= silence_needed:
                    self._speaking = False
                    self._silence_ms = 0
                    await self.send(InputAudioBufferSpeechStoppedEvent,
                                    type="input_audio_buffer.speech_stopped",
                                    audio_end_ms=pos_ms + 10, item_id=self._speech_item)
                    await self._commit(self._speech_item)
                    if td.get("create_response", True):
                        if self.response is None:
                            self._start_response(None)
                        else:
                            self.server.skipped_vad_responses += 1

    async def on_input_audio_buffer_commit(self, ev: dict[str, Any]) -> None:
        if self.buffer_samples < RATE // 10:
            await self.error(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self.buffer_samples * 1000 / RATE:.2f}ms "
                "of audio.", "input_audio_buffer_commit_empty", ev)
            return
        item_id = self._speech_item if self._speaking else self._id("item")
        self._speaking = False
        self._silence_ms = 0
        await self._commit(item_id)

    async def _commit(self, item_id: str) -> None:
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.int16)
        self.buffer, self.buffer_samples = [], 0
        prev = next(reversed(self.items), None)
        self._turns += 1
        transcript = self.server.transcript_for(pcm, self._turns)
        item = {"id": item_id, "type": "message", "role": "user", "object": "realtime.item",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.items[item_id] = {**item, "_pcm": pcm, "_text": transcript}
        self.server.committed_audio.append(pcm)
        await self.send(InputAudioBufferCommittedEvent, type="input_audio_buffer.committed",
                        item_id=item_id, previous_item_id=prev)
        await self.send(ConversationItemAdded, type="conversation.item.added", item=item,
                        previous_item_id=prev)
        await self.send(ConversationItemDone, type="conversation.item.done", item=item,
                        previous_item_id=prev)
        if self.transcription is not None:
            half = len(transcript) // 2
            for delta in (transcript[:half], transcript[half:]):
                await self.send(ConversationItemInputAudioTranscriptionDeltaEvent,
                                type="conversation.item.input_audio_transcription.delta",
                                item_id=item_id, content_index=0, delta=delta)
            await self.send(ConversationItemInputAudioTranscriptionCompletedEvent,
                            type="conversation.item.input_audio_transcription.completed",
                            item_id=item_id, content_index=0, transcript=transcript,
                            usage={"type": "duration", "seconds": len(pcm) / RATE})

    async def on_input_audio_buffer_clear(self, ev: dict[str, Any]) -> None:
        self.buffer, self.buffer_samples = [], 0
        self._speaking = False
        await self.send(InputAudioBufferClearedEvent, type="input_audio_buffer.cleared")

    async def on_output_audio_buffer_clear(self, ev: dict[str, Any]) -> None:
        await self.error("output_audio_buffer.clear is only supported for WebRTC/SIP",
                         "invalid_event", ev)

    # -- conversation ----------------------------------------------------------
    async def on_conversation_item_create(self, ev: dict[str, Any]) -> None:
        item = dict(ev["item"])
        prev = ev.get("previous_item_id")
        if prev is not None and prev != "root" and prev not in self.items:
            await self.error(f"Previous item with id '{prev}' not found", "item_not_found", ev)
            return
        item_id = item.get("id") or self._id("item")
        if item_id in self.items:
            await self.error(f"Item with id '{item_id}' already exists", "duplicate_item_id", ev)
            return
        if len(item_id) > 32:
            await self.error("item id longer than 32 characters", "invalid_value", ev)
            return
        t = item["type"]
        if t == "message":
            role = item["role"]
            allowed = {"user": {"input_text", "input_audio", "input_image"},
                       "system": {"input_text"}, "assistant": {"output_text"}}[role]
            for part in item.get("content") or []:
                if part.get("type") not in allowed:
                    await self.error(f"content type {part.get('type')!r} is not allowed for a "
                                     f"{role} item", "invalid_value", ev)
                    return
        elif t == "function_call_output":
            calls = {i.get("call_id") for i in self.items.values() if i["type"] == "function_call"}
            if item["call_id"] not in calls:
                await self.error(f"No tool call found with call_id '{item['call_id']}'",
                                 "invalid_value", ev)
                return
        elif t != "function_call":
            await self.error(f"item type {t!r} not supported by the fake", "invalid_value", ev)
            return
        item["id"] = item_id
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if prev is None:
            prev = next(reversed(self.items), None)
        self._insert(item, prev)
        await self.send(ConversationItemAdded, type="conversation.item.added", item=item,
                        previous_item_id=prev if prev != "root" else None)
        await self.send(ConversationItemDone, type="conversation.item.done", item=item,
                        previous_item_id=prev if prev != "root" else None)

    def _insert(self, item: dict[str, Any], prev: str | None) -> None:
        if prev is None or prev == next(reversed(self.items), None):
            self.items[item["id"]] = item
            return
        out: dict[str, dict[str, Any]] = {}
        if prev == "root":
            out[item["id"]] = item
        for k, v in self.items.items():
            out[k] = v
            if k == prev:
                out[item["id"]] = item
        self.items = out

    async def on_conversation_item_retrieve(self, ev: dict[str, Any]) -> None:
        item = self.items.get(ev["item_id"])
        if item is None:
            await self.error(f"Item with id '{ev['item_id']}' not found", "item_not_found", ev)
            return
        await self.send(ConversationItemRetrieved, type="conversation.item.retrieved",
                        item=_public(item))

    async def on_conversation_item_truncate(self, ev: dict[str, Any]) -> None:
        item = self.items.get(ev["item_id"])
        if item is None:
            await self.error(f"Item with id '{ev['item_id']}' not found", "item_not_found", ev)
            return
        if item["type"] != "message" or item.get("role") != "assistant" or \
                ev["item_id"] not in self.audio_sent:
            await self.error("Only assistant messages with audio can be truncated",
                             "invalid_value", ev)
            return
        if ev["content_index"] != 0:
            await self.error("content_index out of range", "invalid_value", ev)
            return
        sent = self.audio_sent[ev["item_id"]]
        if ev["audio_end_ms"] < 0 or ev["audio_end_ms"] * RATE > sent * 1000:
            await self.error(
                f"audio_end_ms {ev['audio_end_ms']} is beyond the {sent * 1000 // RATE} ms of "
                "audio sent for this item", "invalid_value", ev)
            return
        self.server.truncations.append((ev["item_id"], ev["audio_end_ms"]))
        for part in item.get("content") or []:
            part["transcript"] = ""
        await self.send(ConversationItemTruncatedEvent, type="conversation.item.truncated",
                        item_id=ev["item_id"], content_index=0, audio_end_ms=ev["audio_end_ms"])

    async def on_conversation_item_delete(self, ev: dict[str, Any]) -> None:
        if ev["item_id"] not in self.items:
            await self.error(f"Item with id '{ev['item_id']}' not found", "item_not_found", ev)
            return
        del self.items[ev["item_id"]]
        self.server.deletions.append(ev["item_id"])
        await self.send(ConversationItemDeletedEvent, type="conversation.item.deleted",
                        item_id=ev["item_id"])

    # -- responses -------------------------------------------------------------
    async def on_response_create(self, ev: dict[str, Any]) -> None:
        if self.response is not None:
            await self.error(f"Conversation already has an active response in progress: "
                             f"{self.response.id}", "conversation_already_has_active_response",
                             ev)
            return
        self._start_response(ev.get("response"))

    async def on_response_cancel(self, ev: dict[str, Any]) -> None:
        r = self.response
        rid = ev.get("response_id")
        if r is None or (rid and rid != r.id):
            finished = self.finished.get(rid or "")
            race = finished is not None and time.monotonic() - finished < self.server.race_window
            if race:
                self.server.cancel_races += 1
            await self.error("Cancellation failed: no active response found",
                             "response_cancel_not_active", ev, violation=not race)
            return
        await self._cancel(r, "client_cancelled")

    async def _cancel(self, r: _Resp, reason: str) -> None:
        r.cancel_reason = reason
        await r.done.wait()

    def _start_response(self, params: dict[str, Any] | None) -> None:
        r = _Resp(id=self._id("resp"))
        self.response = r
        r.task = asyncio.create_task(self._respond(r, params or {}))

    def _last_user_text(self) -> str:
        for item in reversed(self.items.values()):
            if item["type"] == "function_call_output":
                return ""
            if item["type"] == "message" and item.get("role") == "user":
                return item.get("_text") or " ".join(
                    p.get("text") or "" for p in item.get("content") or [])
        return ""

    async def _respond(self, r: _Resp, params: dict[str, Any]) -> None:
        srv = self.server
        try:
            modalities = params.get("output_modalities") or self.session.get("output_modalities")
            voice = (self.session.get("audio") or {}).get("output", {}).get("voice")
            await self.send(ResponseCreatedEvent, type="response.created", response={
                "id": r.id, "object": "realtime.response", "status": "in_progress",
                "conversation_id": "conv_fake", "output": [], "output_modalities": modalities,
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": RATE},
                                     "voice": voice}}})
            await self.send(RateLimitsUpdatedEvent, type="rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 1.0},
                {"name": "tokens", "limit": 100000, "remaining": 99000, "reset_seconds": 1.0}])
            tool_names = {t.get("name") for t in self.session.get("tools") or []}
            last = next(reversed(self.items.values()), None)
            after_user = last is not None and last["type"] == "message" and \
                last.get("role") == "user"
            if srv.tool_calls and after_user and srv.tool_calls[0].name in tool_names:
                output = await self._function_call(r, srv.tool_calls.pop(0))
            elif srv.text_only_responses > 0 or modalities == ["text"]:
                if modalities != ["text"]:
                    srv.text_only_responses -= 1
                output = await self._text(r)
            else:
                output = await self._audio(r)
            status = "cancelled" if r.cancel_reason else "completed"
            resp: dict[str, Any] = {
                "id": r.id, "object": "realtime.response", "status": status,
                "conversation_id": "conv_fake", "output": output,
                "output_modalities": modalities,
                "usage": {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
                          "input_token_details": {"text_tokens": 5, "audio_tokens": 15,
                                                  "cached_tokens": 0},
                          "output_token_details": {"text_tokens": 4, "audio_tokens": 6}}}
            if r.cancel_reason:
                resp["status_details"] = {"type": "cancelled", "reason": r.cancel_reason}
            self.response = None
            self.finished[r.id] = time.monotonic()
            srv.responses.append(resp)
            await self.send(ResponseDoneEvent, type="response.done", response=resp)
        except (_Dropped, ConnectionError):
            pass
        finally:
            if self.response is r:
                self.response = None
            r.done.set()
            await srv._notify()

    async def _new_item(self, r: _Resp, item: dict[str, Any]) -> str | None:
        prev = next(reversed(self.items), None)
        self.items[item["id"]] = item
        await self.send(ResponseOutputItemAddedEvent, type="response.output_item.added",
                        response_id=r.id, output_index=0, item=_public(item))
        await self.send(ConversationItemAdded, type="conversation.item.added",
                        item=_public(item), previous_item_id=prev)
        return prev

    async def _finish_item(self, r: _Resp, item: dict[str, Any], prev: str | None) -> None:
        item["status"] = "incomplete" if r.cancel_reason else "completed"
        await self.send(ResponseOutputItemDoneEvent, type="response.output_item.done",
                        response_id=r.id, output_index=0, item=_public(item))
        await self.send(ConversationItemDone, type="conversation.item.done", item=_public(item),
                        previous_item_id=prev)

    async def _audio(self, r: _Resp) -> list[dict[str, Any]]:
        srv = self.server
        srv._reply_count += 1
        last = self._last_user_text()
        if srv.reply_mode == "echo" and srv.committed_audio and self.items and \
                next(reversed(self.items.values())).get("_pcm") is not None:
            pcm = next(reversed(self.items.values()))["_pcm"]
        elif srv.reply_audio is not None:
            pcm = srv.reply_audio(srv._reply_count)
        else:
            pcm = tone(srv.reply_ms)
        text = srv.reply_text(srv._reply_count, last)
        item_id = self._id("item")
        item = {"id": item_id, "type": "message", "role": "assistant",
                "object": "realtime.item", "status": "in_progress", "content": []}
        prev = await self._new_item(r, item)
        await self.send(ResponseContentPartAddedEvent, type="response.content_part.added",
                        response_id=r.id, item_id=item_id, output_index=0, content_index=0,
                        part={"type": "audio", "transcript": ""})
        self.audio_sent[item_id] = 0
        chunk = srv.delta_ms * RATE // 1000
        n_chunks = max(1, -(-len(pcm) // chunk))
        words = text.split(" ")
        spoken = ""
        common = {"response_id": r.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        for k in range(n_chunks):
            if r.cancel_reason:
                break
            part = pcm[k * chunk:(k + 1) * chunk]
            await self.send(ResponseAudioDeltaEvent, type="response.output_audio.delta",
                            delta=base64.b64encode(part.astype("<i2").tobytes()).decode(),
                            **common)
            self.audio_sent[item_id] += len(part)
            lo, hi = k * len(words) // n_chunks, (k + 1) * len(words) // n_chunks
            if hi > lo:
                delta = (" " if spoken else "") + " ".join(words[lo:hi])
                spoken += delta
                await self.send(ResponseAudioTranscriptDeltaEvent,
                                type="response.output_audio_transcript.delta", delta=delta,
                                **common)
            if self.index in srv.drop_connections and k + 1 >= srv.drop_after_deltas:
                srv.drop_connections.discard(self.index)
                srv.drops += 1
                transport = self.request.transport
                if transport is not None:
                    transport.abort()
                raise _Dropped()
            await asyncio.sleep(len(part) / RATE / srv.speed if srv.speed else 0)
        await self.send(ResponseAudioDoneEvent, type="response.output_audio.done", **common)
        await self.send(ResponseAudioTranscriptDoneEvent,
                        type="response.output_audio_transcript.done", transcript=spoken, **common)
        await self.send(ResponseContentPartDoneEvent, type="response.content_part.done",
                        part={"type": "audio", "transcript": spoken}, **common)
        item["content"] = [{"type": "output_audio", "transcript": spoken}]
        await self._finish_item(r, item, prev)
        return [_public(item)]

    async def _text(self, r: _Resp) -> list[dict[str, Any]]:
        srv = self.server
        srv._reply_count += 1
        text = srv.reply_text(srv._reply_count, self._last_user_text())
        item_id = self._id("item")
        item = {"id": item_id, "type": "message", "role": "assistant",
                "object": "realtime.item", "status": "in_progress", "content": []}
        prev = await self._new_item(r, item)
        common = {"response_id": r.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send(ResponseContentPartAddedEvent, type="response.content_part.added",
                        part={"type": "text", "text": ""}, **common)
        out = ""
        for w in text.split(" "):
            delta = (" " if out else "") + w
            out += delta
            await self.send(ResponseTextDeltaEvent, type="response.output_text.delta",
                            delta=delta, **common)
        await self.send(ResponseTextDoneEvent, type="response.output_text.done", text=out,
                        **common)
        await self.send(ResponseContentPartDoneEvent, type="response.content_part.done",
                        part={"type": "text", "text": out}, **common)
        item["content"] = [{"type": "output_text", "text": out}]
        await self._finish_item(r, item, prev)
        return [_public(item)]

    async def _function_call(self, r: _Resp, call: FakeToolCall) -> list[dict[str, Any]]:
        item_id = self._id("item")
        call_id = self._id("call")
        item = {"id": item_id, "type": "function_call", "object": "realtime.item",
                "status": "in_progress", "call_id": call_id, "name": call.name, "arguments": ""}
        prev = await self._new_item(r, item)
        half = len(call.arguments) // 2
        for delta in (call.arguments[:half], call.arguments[half:]):
            await self.send(ResponseFunctionCallArgumentsDeltaEvent,
                            type="response.function_call_arguments.delta", response_id=r.id,
                            item_id=item_id, output_index=0, call_id=call_id, delta=delta)
        await self.send(ResponseFunctionCallArgumentsDoneEvent,
                        type="response.function_call_arguments.done", response_id=r.id,
                        item_id=item_id, output_index=0, call_id=call_id, name=call.name,
                        arguments=call.arguments)
        item["arguments"] = call.arguments
        await self._finish_item(r, item, prev)
        self.server.function_calls.append((call_id, call.name, call.arguments))
        return [_public(item)]


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


class FakeRealtimeServer:
    """The fake Realtime API. ``async with FakeRealtimeServer() as fake: fake.base_url``."""

    def __init__(
        self,
        api_key: str = "sk-test-fake-key-0123456789",
        *,
        reply_ms: int = 1000,
        reply_mode: str = "tone",  # "tone" | "echo" (the last committed user audio)
        delta_ms: int = 100,
        speed: float = 20.0,  # times real time; 0 = as fast as possible
        vad_threshold: float = 800.0,  # RMS of a 10 ms frame
        vad_silence_ms: int = 500,
        beta_event_names: bool = False,
    ) -> None:
        self.api_key = api_key
        self.reply_ms = reply_ms
        self.reply_mode = reply_mode
        self.delta_ms = delta_ms
        self.speed = speed
        self.vad_threshold = vad_threshold
        self.vad_silence_ms = vad_silence_ms
        self.beta_event_names = beta_event_names
        # controls
        self.handshake_statuses: list[int] = []  # e.g. [503]: the next handshake fails so
        self.tool_calls: list[FakeToolCall] = []  # made after the next user turns
        self.text_only_responses = 0  # the next N responses come back as text only
        self.drop_connections: set[int] = set()  # connection indexes dropped mid-response
        self.drop_after_deltas = 3
        # raw text frames sent on the next connections before session.created
        # (one string per connection, e.g. "not json" or "[1, 2]")
        self.garbage_frames: list[str] = []
        self.race_window = 0.25  # s: a cancel this soon after response.done is a race
        self.reply_audio: Callable[[int], np.ndarray] | None = None  # reply n -> pcm
        self.reply_text: Callable[[int, str], str] = (
            lambda n, heard: f"This is reply number {n} from the fake model.")
        self.transcript_for: Callable[[np.ndarray, int], str] = (
            lambda pcm, n: f"user turn {n} of {len(pcm) * 1000 // RATE} ms")
        # records
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections: list[FakeConnection] = []
        self.handshakes: list[int] = []  # HTTP status of each handshake
        self.auth_headers: list[str] = []
        self.truncations: list[tuple[str, int]] = []
        self.deletions: list[str] = []
        self.function_calls: list[tuple[str, str, str]] = []
        self.responses: list[dict[str, Any]] = []
        self.committed_audio: list[np.ndarray] = []
        self.cancel_races = 0
        self.skipped_vad_responses = 0
        self.drops = 0
        self._reply_count = 0
        self._ids = itertools.count(1)
        self._cond: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        self._cond = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/v1/realtime", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for c in self.connections:
            if not c.ws.closed:
                await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _notify(self) -> None:
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``pred()`` holds (checked after every event in and out)."""
        assert self._cond is not None
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(pred), timeout)

    def client_events(self, etype: str, conn: int | None = None) -> list[dict[str, Any]]:
        src = self.events if conn is None else self.connections[conn].events
        return [e for e in src if e.get("type") == etype]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model = request.query.get("model", "")
        auth = request.headers.get("Authorization", "")
        self.auth_headers.append(auth)
        if self.handshake_statuses:
            status = self.handshake_statuses.pop(0)
            self.handshakes.append(status)
            await self._notify()
            return web.json_response({"error": {"message": "The server is overloaded",
                                                "type": "server_error"}}, status=status)
        if auth != f"Bearer {self.api_key}":
            self.handshakes.append(401)
            await self._notify()
            given = auth.removeprefix("Bearer ")
            # The real API echoes (part of) the key it got: the client must not log it.
            return web.json_response({"error": {
                "message": f"Incorrect API key provided: {given}.",
                "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        if not model:
            self.handshakes.append(400)
            return web.json_response({"error": {"message": "model is required",
                                                "type": "invalid_request_error"}}, status=400)
        self.handshakes.append(101)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = FakeConnection(self, len(self.connections), ws, request, model)
        self.connections.append(conn)
        await conn.run()
        return ws


async def _main(port: int, key: str) -> None:
    server = FakeRealtimeServer(api_key=key)
    await server.start(port)
    print(f"fake Realtime API at {server.base_url} (key {key!r}); try:\n"
          f"  OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY={key} v2v serve --model openai",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        print(f"violations: {server.violations}", flush=True)
        await server.close()


if __name__ == "__main__":  # python -m tests.fake_realtime [port] [key]
    import sys

    try:
        asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 8089,
                          sys.argv[2] if len(sys.argv) > 2 else "sk-fake"))
    except KeyboardInterrupt:
        pass
