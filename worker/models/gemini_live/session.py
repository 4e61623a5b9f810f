"""One call's Gemini Live session: 16 kHz in, 24 kHz out, server turn-taking, no truncation.

Client messages (camelCase JSON, as ``google.genai.types.LiveClientMessage``
describes them): ``setup`` (model, audio response, voice, system instruction,
function declarations, input and output transcription, session resumption),
``realtimeInput.audio`` (PCM 16 kHz), ``clientContent`` (text turns),
``toolResponse``.

Server messages -> typed events: a model turn's ``modelTurn`` audio parts and
``outputTranscription`` become one item of one response (``ResponseCreated``
at its first output, ``ResponseDone`` at ``turnComplete``);
``inputTranscription`` is the caller's transcript, final when the model
answers; ``toolCall`` -> :class:`FunctionCall`; ``interrupted`` (the caller
spoke over the model; the server discards the rest of the turn) ->
:class:`SpeechStarted` and the turn ends as cancelled. Gemini cannot truncate
(``capabilities.truncation`` is False): the worker reports the played text and
drops the remainder.

Reconnect: with the last ``sessionResumptionUpdate`` handle the session is
resumed on the server; without one the conversation so far is sent again as
text turns.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import (
    AudioDelta,
    AudioDone,
    FunctionCall,
    InputTranscript,
    ModelCapabilities,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    ToolSpec,
)
from ..openai_realtime.conversation import JSON
from ..openai_realtime.endpoint import RealtimeSettings, log
from ..openai_realtime.ws_model import WsModelSession
from .link import GeminiLink

IN_RATE = 16000
OUT_RATE = 24000
MAX_HISTORY = 64


@dataclass
class _Turn:
    item_id: str
    response_id: str
    samples: int = 0
    text: str = ""
    cancelled: bool = False


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def b64bytes(data: str) -> bytes:
    """Proto JSON bytes: standard or URL-safe base64, padded or not (both are valid on the wire)."""
    data = data.strip()
    return base64.urlsafe_b64decode(data.replace("+", "-").replace("/", "_") + "=" * (-len(data) % 4))


def function_declaration(t: ToolSpec) -> JSON:
    return {"name": t.name, "description": t.description, "parametersJsonSchema": t.parameters}


class GeminiLiveSession(WsModelSession[GeminiLink]):
    """One call's Gemini Live connection (see the module docstring)."""

    def __init__(self, settings: RealtimeSettings, capabilities: ModelCapabilities, config: SessionConfig,
                 api_key: str) -> None:
        super().__init__(settings, capabilities, config, api_key)
        self._turn: _Turn | None = None
        self._user_item = ""
        self._user_text = ""
        self._pending_text = False  # text turns sent since the model last answered
        self.history: list[tuple[str, str]] = []  # (role "user" | "model", text)
        self.resume_handle = ""
        self.calls: dict[str, str] = {}  # call id -> function name
        self.link = GeminiLink(settings, api_key, on_event=self._on_event, emit=self.emit,
                               setup_body=self._setup_body, after_setup=self._restore, on_drop=self._on_drop)

    # -- setup and restore -----------------------------------------------------------------
    def _setup_body(self) -> JSON:
        c = self.config
        gen: JSON = {"responseModalities": ["AUDIO"]}
        if c.voice:
            gen["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": c.voice}}}
        body: JSON = {"model": self._settings.model, "generationConfig": gen,
                      "outputAudioTranscription": {}, "sessionResumption": {}}
        if self.resume_handle:
            body["sessionResumption"] = {"handle": self.resume_handle}
        if c.input_transcription:
            body["inputAudioTranscription"] = {}
        if c.instructions:
            body["systemInstruction"] = {"parts": [{"text": c.instructions}]}
        if c.tools:
            body["tools"] = [{"functionDeclarations": [function_declaration(t) for t in c.tools]}]
        return body

    def _restore(self) -> list[JSON]:
        """Messages that give a new (not resumed) session the conversation so far."""
        if self.resume_handle or not self.history:
            return []
        turns = [{"role": role, "parts": [{"text": text.strip()}]}
                 for role, text in self.history[-MAX_HISTORY:] if text.strip()]
        return [{"clientContent": {"turns": turns, "turnComplete": False}}] if turns else []

    # -- lifecycle ----------------------------------------------------------------------------
    def _on_drop(self, reason: str) -> None:
        self._end_turn("failed")
        self._finish_user_turn()
        self._lost(reason)

    # -- turns ---------------------------------------------------------------------------------
    def _model_turn(self) -> _Turn:
        if self._turn is None:
            self._finish_user_turn()
            self._pending_text = False
            self._turn = _Turn(item_id=_new_id("gemini_item"), response_id=_new_id("gemini_turn"))
            self.emit(ResponseCreated(response_id=self._turn.response_id))
        return self._turn

    def _end_turn(self, status: str) -> None:
        t, self._turn = self._turn, None
        if t is None:
            return
        if t.cancelled and status == "completed":
            status = "cancelled"
        if t.samples:
            self.emit(AudioDone(item_id=t.item_id, response_id=t.response_id))
        self.emit(OutputTranscriptDone(item_id=t.item_id, text=t.text, response_id=t.response_id))
        self.emit(ResponseDone(response_id=t.response_id, status=status))
        if t.text:
            self.history.append(("model", t.text))

    def _finish_user_turn(self) -> None:
        if self._user_item:
            text = self._user_text.strip()
            self.emit(InputTranscript(item_id=self._user_item, text=text, final=True))
            if text:
                self.history.append(("user", text))
        self._user_item, self._user_text = "", ""

    # -- server messages -------------------------------------------------------------------------
    def _on_event(self, ev: JSON) -> None:
        if "serverContent" in ev:
            self._server_content(ev["serverContent"] or {})
        elif "toolCall" in ev:
            self._tool_call(ev["toolCall"] or {})
        elif "sessionResumptionUpdate" in ev:
            upd = ev["sessionResumptionUpdate"] or {}
            if upd.get("resumable") and upd.get("newHandle"):
                self.resume_handle = str(upd["newHandle"])
        elif "toolCallCancellation" in ev:
            log.info("gemini live: tool calls cancelled: %s", (ev["toolCallCancellation"] or {}).get("ids"))
        elif "goAway" in ev:
            log.info("gemini live: the server will close the session in %s", (ev["goAway"] or {}).get("timeLeft"))
        else:
            log.debug("gemini live: message %s ignored", ",".join(ev))

    def _server_content(self, sc: JSON) -> None:
        if "inputTranscription" in sc:
            text = str((sc["inputTranscription"] or {}).get("text") or "")
            if text:
                if not self._user_item:
                    self._user_item = _new_id("gemini_user")
                self._user_text += text
                self.emit(InputTranscript(item_id=self._user_item, text=self._user_text.strip(), final=False))
        if sc.get("interrupted"):
            self.emit(SpeechStarted())
            if self._turn is not None:
                self._turn.cancelled = True
            self._end_turn("cancelled")
        for part in (sc.get("modelTurn") or {}).get("parts") or []:
            data = (part.get("inlineData") or {}).get("data")
            if data:
                pcm = np.frombuffer(b64bytes(str(data)), dtype="<i2").astype(np.int16)
                t = self._model_turn()
                t.samples += len(pcm)
                self.emit(AudioDelta(item_id=t.item_id, pcm=pcm, response_id=t.response_id))
        if "outputTranscription" in sc:
            text = str((sc["outputTranscription"] or {}).get("text") or "")
            if text:
                t = self._model_turn()
                t.text += text
                self.emit(OutputTranscriptDelta(item_id=t.item_id, text=text, response_id=t.response_id))
        if sc.get("turnComplete"):
            self._end_turn("completed")

    def _tool_call(self, tc: JSON) -> None:
        for fc in tc.get("functionCalls") or []:
            call_id = str(fc.get("id") or _new_id("gemini_call"))
            name = str(fc.get("name", ""))
            self.calls[call_id] = name
            self.emit(FunctionCall(call_id=call_id, name=name, arguments=json.dumps(fc.get("args") or {})))

    # -- primitives --------------------------------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray) -> None:
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        if data:
            await self.link.send({"realtimeInput": {"audio": {
                "data": base64.b64encode(data).decode("ascii"), "mimeType": f"audio/pcm;rate={IN_RATE}"}}})

    async def commit_input(self) -> None:
        """Gemini's own activity detection ends the caller's turn."""

    async def clear_input(self) -> None:
        """Audio already streamed cannot be taken back."""

    async def send_message(self, role: str, text: str) -> None:
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown role {role!r}")
        grole = "model" if role == "assistant" else "user"
        self.history.append((grole, text))
        if grole == "user":
            self._pending_text = True
        await self.link.send({"clientContent": {"turns": [{"role": grole, "parts": [{"text": text}]}],
                                                "turnComplete": False}})

    async def create_response(self, *, instructions: str | None = None) -> None:
        """Ends a text turn (the model answers it); audio turns are answered on their own."""
        turns = [{"role": "user", "parts": [{"text": instructions}]}] if instructions else []
        if not turns and not self._pending_text:
            return
        self._pending_text = False
        body: JSON = {"turnComplete": True}
        if turns:
            body["turns"] = turns
        await self.link.send({"clientContent": body})

    async def cancel_response(self) -> None:
        """No cancel in Gemini Live: the model stops when the caller speaks; what it still sends of
        this turn stays in the cancelled response (the worker drops it)."""
        if self._turn is not None:
            self._turn.cancelled = True

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        log.debug("gemini live: no truncation (item %s at %d ms)", item_id, audio_end_ms)

    async def delete_item(self, item_id: str) -> None:
        log.debug("gemini live: no items to delete (%s)", item_id)

    async def function_output(self, call_id: str, output: str) -> None:
        name = self.calls.pop(call_id, None)
        if name is None:
            log.warning("gemini live: output for unknown call %s ignored", call_id)
            return
        try:
            value: Any = json.loads(output)
        except ValueError:
            value = output
        response = value if isinstance(value, dict) else {"output": value}
        await self.link.send({"toolResponse": {"functionResponses": [
            {"id": call_id, "name": name, "response": response}]}})

    async def update_session(self, *, instructions: str | None = None, tools: list[ToolSpec] | None = None) -> None:
        """Applies from the next (re)connection; the live setup cannot change."""
        await super().update_session(instructions=instructions, tools=tools)
