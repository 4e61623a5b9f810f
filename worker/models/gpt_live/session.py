"""One call's GPT-Live session: full duplex, the model decides when to speak.

GPT-Live has no turns, responses or items: the caller's audio streams in
(``session.input_audio.append``, never committed), the model's audio and
transcripts stream out on one session timeline. The worker's interface is
item-based, so this session cuts the model's output into *utterances*: the
first output delta after a pause opens one (``ResponseCreated``, a fresh item
id), a pause of ``segment_gap_s`` without output closes it (``AudioDone``,
``OutputTranscriptDone``, ``ResponseDone``). The caller's input transcript of
a turn becomes final when the model starts answering.

Barge-in: the model hears the caller and stops by itself; GPT-Live has no
cancel and no truncation (``capabilities.truncation`` is False). When the
worker cancels, the utterance is marked cancelled and whatever the model still
sends of it (until the next pause) stays in that cancelled response, which the
worker drops; the played text is what v2v reports.

Tools: ``client`` delegation. The session's tools are listed in the
instructions; ``session.delegation.created`` becomes a :class:`FunctionCall`
(call id = delegation id) of the tool that best matches what was said since
the previous delegation (the delegation carries no task text), with ``{}``
arguments; its output goes back as ``session.commentary.append`` for that
delegation.

Reconnect: like the Realtime session (backoff, fatal 401/403); the new
``session.start`` carries the conversation so far as text ``input``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..base import (
    AudioDelta,
    AudioDone,
    FunctionCall,
    InputTranscript,
    ModelCapabilities,
    ModelError,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    ToolSpec,
)
from ..openai_realtime.conversation import JSON
from ..openai_realtime.endpoint import RealtimeSettings, log, scrub
from ..openai_realtime.ws_model import WsModelSession
from .link import LiveLink

RATE = 24000
MAX_HISTORY = 128  # messages GPT-Live takes in session.start's input
MAX_APPEND_CHARS = 1500  # appended context is limited to 500 tokens


@dataclass
class _Utterance:
    """One stretch of model output between pauses."""

    item_id: str
    response_id: str
    samples: int = 0
    text: str = ""
    cancelled: bool = False


@dataclass
class _Said:
    role: str  # "user" | "assistant"
    text: str
    start_ms: int = 0


@dataclass
class _Timeline:
    """What was said, for restoring a session and for reading a delegated task."""

    said: list[_Said] = field(default_factory=list)
    user_item: str = ""  # the caller's turn in progress
    user_text: str = ""
    last_delegation_ms: int = -1

    def add(self, role: str, text: str, start_ms: int) -> None:
        if self.said and self.said[-1].role == role and role == "user":
            self.said[-1].text += text
        else:
            self.said.append(_Said(role, text, start_ms))

    def history(self) -> list[JSON]:
        out: list[JSON] = []
        for s in self.said[-MAX_HISTORY:]:
            text = s.text.strip()
            if not text:
                continue
            ctype = "output_text" if s.role == "assistant" else "input_text"
            out.append({"type": "message", "role": s.role, "content": [{"type": ctype, "text": text}]})
        return out

    def since(self, offset_ms: int) -> str:
        """The text said between the previous delegation and ``offset_ms``."""
        lo = self.last_delegation_ms
        self.last_delegation_ms = offset_ms
        return " ".join(s.text for s in self.said if lo <= s.start_ms <= offset_ms)


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower().replace("_", " ")) if len(w) > 2}


def pick_tool(tools: list[ToolSpec], said: str) -> ToolSpec | None:
    """The tool whose name and description share the most words with ``said`` (the first on a tie)."""
    if not tools:
        return None
    heard = _words(said)
    return max(tools, key=lambda t: (len(_words(t.name) & heard) * 2 + len(_words(t.description) & heard)))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class GptLiveSession(WsModelSession[LiveLink]):
    """One call's GPT-Live connection (see the module docstring)."""

    def __init__(self, settings: RealtimeSettings, capabilities: ModelCapabilities, config: SessionConfig,
                 api_key: str, *, segment_gap_s: float = 0.4) -> None:
        super().__init__(settings, capabilities, config, api_key)
        self._gap = segment_gap_s
        self._utt: _Utterance | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.timeline = _Timeline()
        self.delegations: dict[str, str] = {}  # delegation id -> tool name
        self._now_ms = 0  # the latest session-timeline position seen
        self._tasks: set[asyncio.Task[None]] = set()
        self.link = LiveLink(settings, api_key, on_event=self._on_event, emit=self.emit,
                             start_body=self._start_body, on_drop=self._on_drop)

    # -- session.start -------------------------------------------------------------
    def _start_body(self) -> JSON:
        c = self.config
        body: JSON = {
            "model": self._settings.model,
            "audio": {"format": {"type": "audio/pcm", "rate": RATE}},
            "delegation": {"type": "client"},
        }
        if c.voice:
            body["audio"]["output"] = {"voice": c.voice}
        instructions = c.instructions
        if c.tools:
            listed = "\n".join(f"- {t.name}: {t.description}" for t in c.tools)
            instructions = (instructions + "\n\n" if instructions else "") + (
                "Delegate to the application when the caller needs one of these; "
                "say which one you are using:\n" + listed)
        if instructions:
            body["instructions"] = instructions
        history = self.timeline.history()
        if history:
            body["input"] = history
        return body

    # -- lifecycle -----------------------------------------------------------------
    async def _before_close(self) -> None:
        if self.link.ready:
            await self.link.send({"type": "session.close"})
        self._cancel_timer()

    def _on_drop(self, reason: str) -> None:
        self._end_utterance("failed")
        self._finish_user_turn()
        self._lost(reason)

    # -- output utterances ----------------------------------------------------------
    def _utterance(self, start_ms: int) -> _Utterance:
        u = self._utt
        if u is None:
            self._finish_user_turn()
            u = self._utt = _Utterance(item_id=_new_id("live_item"), response_id=_new_id("live_resp"))
            self.timeline.add("assistant", "", start_ms)
            self.emit(ResponseCreated(response_id=u.response_id))
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self._gap, self._end_utterance, "completed")
        return u

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end_utterance(self, status: str) -> None:
        self._cancel_timer()
        u, self._utt = self._utt, None
        if u is None:
            return
        if u.cancelled:
            status = "cancelled"
        if u.samples:
            self.emit(AudioDone(item_id=u.item_id, response_id=u.response_id))
        self.emit(OutputTranscriptDone(item_id=u.item_id, text=u.text, response_id=u.response_id))
        self.emit(ResponseDone(response_id=u.response_id, status=status))

    def _finish_user_turn(self) -> None:
        t = self.timeline
        if t.user_item:
            self.emit(InputTranscript(item_id=t.user_item, text=t.user_text.strip(), final=True))
        t.user_item, t.user_text = "", ""

    # -- server events ------------------------------------------------------------------
    def _on_event(self, ev: JSON) -> None:
        handler = _HANDLERS.get(str(ev.get("type", "")))
        if handler is None:
            log.debug("gpt-live: event %s ignored", ev.get("type"))
            return
        handler(self, ev)

    def _audio_delta(self, ev: JSON) -> None:
        pcm = np.frombuffer(base64.b64decode(ev.get("delta", "")), dtype="<i2").astype(np.int16)
        u = self._utterance(self._now_ms)
        u.samples += len(pcm)
        self.emit(AudioDelta(item_id=u.item_id, pcm=pcm, response_id=u.response_id))

    def _output_transcript(self, ev: JSON) -> None:
        text = str(ev.get("delta", ""))
        self._now_ms = max(self._now_ms, int(ev.get("end_ms", 0)))
        u = self._utterance(int(ev.get("start_ms", 0)))
        u.text += text
        if self.timeline.said:
            self.timeline.said[-1].text += text
        self.emit(OutputTranscriptDelta(item_id=u.item_id, text=text, response_id=u.response_id))

    def _input_transcript(self, ev: JSON) -> None:
        t = self.timeline
        text = str(ev.get("delta", ""))
        self._now_ms = max(self._now_ms, int(ev.get("end_ms", 0)))
        if not t.user_item:
            t.user_item = _new_id("live_user")
        t.user_text += text
        t.add("user", text, int(ev.get("start_ms", 0)))
        self.emit(InputTranscript(item_id=t.user_item, text=t.user_text.strip(), final=False))

    def _delegation(self, ev: JSON) -> None:
        d: JSON = ev.get("delegation") or {}
        if d.get("target") != "client":
            log.info("gpt-live: delegation %s to %s (handled by the server)", d.get("id"), d.get("target"))
            return
        said = self.timeline.since(int(ev.get("offset_ms", 0)))
        tool = pick_tool(self.config.tools, said)
        did = str(d.get("id", ""))
        if tool is None:
            task = asyncio.get_running_loop().create_task(self._append(
                "session.thinking.append", "No application tool is available for this.", did))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.delegations[did] = tool.name
        self.emit(FunctionCall(call_id=did, name=tool.name, arguments="{}"))

    def _error(self, ev: JSON) -> None:
        err: JSON = ev.get("error") or {}
        message = scrub(str(err.get("message") or "error"))
        code = str(err.get("code") or "")
        log.warning("gpt-live: server error %s: %s", code or err.get("type"), message)
        self.emit(ModelError(message=message, code=code, fatal=False))

    def _closed(self, ev: JSON) -> None:
        reason = str(ev.get("reason", ""))
        if self._closing or reason in ("close_requested", "connection_lost"):
            log.info("gpt-live: session closed (%s)", reason)
            return  # ours, or a drop the link reconnects from
        self._end_utterance("failed")
        self.link.end(f"the GPT-Live session ended ({reason})", f"session_{reason}")

    def _log(self, ev: JSON) -> None:
        log.debug("gpt-live: %s %s", ev.get("type"), scrub(str(ev.get("message") or ev.get("code") or "")))

    # -- primitives -----------------------------------------------------------------
    async def _append(self, etype: str, content: str, delegation_id: str | None = None) -> None:
        await self.link.send({"type": etype, "content": content[:MAX_APPEND_CHARS], "delegation_id": delegation_id})

    async def push_audio(self, pcm: np.ndarray) -> None:
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        if data:
            await self.link.send({"type": "session.input_audio.append",
                                  "audio": base64.b64encode(data).decode("ascii")})

    async def commit_input(self) -> None:
        """Full duplex: the caller's audio streams on, nothing to commit."""

    async def clear_input(self) -> None:
        """Full duplex: audio already sent cannot be taken back."""

    async def send_message(self, role: str, text: str) -> None:
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown role {role!r}")
        if role == "system":
            await self._append("session.instructions.append", text)
        elif role == "user":
            self.timeline.add("user", text, 0)
            await self._append("session.instructions.append", f"The caller wrote: {text}")
        else:
            self.timeline.add("assistant", text, 0)
            await self._append("session.thinking.append", f"You already said: {text}")

    async def create_response(self, *, instructions: str | None = None) -> None:
        """The model decides when to speak; instructions, if any, are appended."""
        if instructions:
            await self._append("session.instructions.append", instructions)

    async def cancel_response(self) -> None:
        if self._utt is not None:
            self._utt.cancelled = True

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        log.debug("gpt-live: no truncation (item %s at %d ms)", item_id, audio_end_ms)

    async def delete_item(self, item_id: str) -> None:
        log.debug("gpt-live: no items to delete (%s)", item_id)

    async def function_output(self, call_id: str, output: str) -> None:
        if call_id not in self.delegations:
            log.warning("gpt-live: output for unknown delegation %s ignored", call_id)
            return
        name = self.delegations.pop(call_id)
        await self._append("session.commentary.append", _result_text(name, output), call_id)

    async def update_session(self, *, instructions: str | None = None, tools: list[ToolSpec] | None = None) -> None:
        """Instructions are immutable after start: changes are appended; tools take effect at once."""
        await super().update_session(instructions=None, tools=tools)
        if instructions:
            await self._append("session.instructions.append", instructions)


def _result_text(name: str, output: str) -> str:
    try:
        value: Any = json.loads(output)
    except ValueError:
        value = output
    return f"Result of {name}: {value if isinstance(value, str) else json.dumps(value)}"


_HANDLERS = {
    "session.output_audio.delta": GptLiveSession._audio_delta,
    "session.output_transcript.delta": GptLiveSession._output_transcript,
    "session.input_transcript.delta": GptLiveSession._input_transcript,
    "session.delegation.created": GptLiveSession._delegation,
    "error": GptLiveSession._error,
    "session.closed": GptLiveSession._closed,
    "info": GptLiveSession._log,
    "session.started": GptLiveSession._log,
    "session.usage.updated": GptLiveSession._log,
}
