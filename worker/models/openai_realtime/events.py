"""Server events -> the typed events of :mod:`v2v.worker.models.base`, keeping the mirror current.

GA event names and the beta aliases compatible providers still send are both
understood (:data:`BETA_ALIASES`). :class:`EventTranslator` looks each event's
handler up in a table by type; unknown types are logged and ignored.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np

from ..base import (
    AudioDelta,
    AudioDone,
    FunctionCall,
    InputCommitted,
    InputTranscript,
    ModelError,
    ModelEvent,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
)
from .conversation import JSON, Conversation, Item
from .endpoint import log, scrub

# Beta event names that compatible providers still send -> their GA name.
BETA_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}

Handler = Callable[["EventTranslator", JSON, str], None]


class EventTranslator:
    """Applies server events to a :class:`Conversation` and emits the typed events."""

    def __init__(self, conversation: Conversation, emit: Callable[[ModelEvent], None]) -> None:
        self.conv = conversation
        self.emit = emit

    def dispatch(self, ev: JSON) -> None:
        """Handle one server event (raises on a malformed one; the reader logs and goes on)."""
        t = str(ev.get("type", ""))
        t = BETA_ALIASES.get(t, t)
        handler = _HANDLERS.get(t)
        if handler is None:
            log.debug("openai realtime: event %s ignored", t)
            return
        handler(self, ev, ev.get("response_id", "") or "")

    # -- output audio and text ------------------------------------------------
    def _audio_delta(self, ev: JSON, rid: str) -> None:
        pcm = np.frombuffer(base64.b64decode(ev.get("delta", "")), dtype="<i2").astype(np.int16)
        item_id = ev["item_id"]
        item = self.conv.get(item_id) or self.conv.mirror(
            {"id": item_id, "type": "message", "role": "assistant"}, rid)
        if item is not None:
            item.audio_samples += len(pcm)
            item.audio_live = True
        r = self.conv.response(rid)
        r.audio_samples += len(pcm)
        r.audio_items.add(item_id)
        r.open_audio_items.add(item_id)
        self.emit(AudioDelta(item_id=item_id, pcm=pcm, response_id=rid,
                             content_index=int(ev.get("content_index", 0))))

    def _audio_done(self, ev: JSON, rid: str) -> None:
        self.conv.response(rid).open_audio_items.discard(ev["item_id"])
        self.emit(AudioDone(item_id=ev["item_id"], response_id=rid))

    def _transcript_delta(self, ev: JSON, rid: str) -> None:
        item = self.conv.get(ev["item_id"])
        if item is not None and not item.truncated:
            item.text += ev.get("delta", "")
        self.emit(OutputTranscriptDelta(item_id=ev["item_id"], text=ev.get("delta", ""), response_id=rid))

    def _transcript_done(self, ev: JSON, rid: str) -> None:
        item = self.conv.get(ev["item_id"])
        if item is not None and not item.truncated:
            item.text = ev.get("transcript", item.text)
        self.emit(OutputTranscriptDone(item_id=ev["item_id"], text=ev.get("transcript", ""), response_id=rid))

    def _text_delta(self, ev: JSON, rid: str) -> None:
        self.conv.response(rid).text_seen = True
        item = self.conv.get(ev["item_id"])
        if item is not None:
            item.text += ev.get("delta", "")
        self.emit(TextDelta(item_id=ev["item_id"], text=ev.get("delta", ""), response_id=rid))

    def _text_done(self, ev: JSON, rid: str) -> None:
        self.conv.response(rid).text_seen = True
        item = self.conv.get(ev["item_id"])
        if item is not None:
            item.text = ev.get("text", item.text)
        self.emit(TextDone(item_id=ev["item_id"], text=ev.get("text", ""), response_id=rid))

    # -- items ----------------------------------------------------------------
    def _arguments_done(self, ev: JSON, rid: str) -> None:
        self._function_call(ev.get("call_id", ""), ev.get("name", ""), ev.get("arguments", ""),
                            ev.get("item_id", ""), rid)

    def _output_item_added(self, ev: JSON, rid: str) -> None:
        self.conv.mirror(ev.get("item") or {}, rid)

    def _output_item_done(self, ev: JSON, rid: str) -> None:
        raw = ev.get("item") or {}
        item = self.conv.mirror(raw, rid)
        if item is not None and item.kind == "function_call" and raw.get("status") == "completed":
            self._call_item(item, rid)

    def _item_added(self, ev: JSON, rid: str) -> None:
        self.conv.mirror(ev.get("item") or {})

    def _item_deleted(self, ev: JSON, rid: str) -> None:
        item = self.conv.get(ev.get("item_id", ""))
        if item is not None and item.live:
            # Our own replace (delete + re-create) keeps the mirror entry.
            item.live = False

    def _function_call(self, call_id: str, name: str, arguments: str, item_id: str, rid: str) -> None:
        if self.conv.first_call(call_id, name, arguments, item_id):
            self.emit(FunctionCall(call_id=call_id, name=name, arguments=arguments,
                                   item_id=item_id, response_id=rid))

    def _call_item(self, item: Item, rid: str) -> None:
        self._function_call(item.call_id, item.name, item.arguments, item.id, rid)

    # -- input ----------------------------------------------------------------
    def _speech_started(self, ev: JSON, rid: str) -> None:
        self.emit(SpeechStarted(audio_start_ms=int(ev.get("audio_start_ms", 0)), item_id=ev.get("item_id", "")))

    def _speech_stopped(self, ev: JSON, rid: str) -> None:
        self.emit(SpeechStopped(audio_end_ms=int(ev.get("audio_end_ms", 0)), item_id=ev.get("item_id", "")))

    def _committed(self, ev: JSON, rid: str) -> None:
        iid = ev.get("item_id", "")
        if iid and self.conv.get(iid) is None:
            self.conv.add(Item(id=iid, kind="message", role="user"))
        self.emit(InputCommitted(item_id=iid))

    def _input_delta(self, ev: JSON, rid: str) -> None:
        iid = ev.get("item_id", "")
        text = self.conv.input_partial.get(iid, "") + (ev.get("delta") or "")
        self.conv.input_partial[iid] = text
        self.emit(InputTranscript(item_id=iid, text=text, final=False))

    def _input_completed(self, ev: JSON, rid: str) -> None:
        iid = ev.get("item_id", "")
        self.conv.input_partial.pop(iid, None)
        text = ev.get("transcript", "") or ""
        item = self.conv.get(iid)
        if item is not None:
            item.text = text
        self.emit(InputTranscript(item_id=iid, text=text, final=True))

    def _input_failed(self, ev: JSON, rid: str) -> None:
        err = ev.get("error") or {}
        self.conv.input_partial.pop(ev.get("item_id", ""), None)
        log.warning("openai realtime: input transcription failed for %s: %s",
                    ev.get("item_id"), scrub(str(err.get("message", ""))))

    # -- responses and errors -------------------------------------------------
    def _response_created(self, ev: JSON, rid: str) -> None:
        resp = ev.get("response") or {}
        r = self.conv.response(resp.get("id", ""))
        self.conv.current = r
        self.emit(ResponseCreated(response_id=r.id))

    def _response_done(self, ev: JSON, _rid: str) -> None:
        resp: JSON = ev.get("response") or {}
        rid = resp.get("id", "") or ""
        r = self.conv.finish(rid)
        status = resp.get("status") or "completed"
        text_in_output = False
        for raw in resp.get("output") or []:
            item = self.conv.mirror(raw, rid)
            if raw.get("type") == "message":
                text_in_output = text_in_output or any(
                    part.get("type") in ("output_text", "text") and part.get("text")
                    for part in raw.get("content") or [])
            if item is not None and raw.get("type") == "function_call" and status == "completed":
                self._call_item(item, rid)
        for item_id in sorted(r.open_audio_items):
            self.emit(AudioDone(item_id=item_id, response_id=rid))
        text_only = r.audio_samples == 0 and (r.text_seen or text_in_output)
        if text_only:
            log.warning("openai realtime: response %s came back as text only", rid)
        if status == "failed":
            err = ((resp.get("status_details") or {}).get("error") or {})
            log.warning("openai realtime: response %s failed: %s", rid, scrub(str(err.get("message", ""))))
        usage = resp.get("usage")
        self.emit(ResponseDone(response_id=rid, status=status, text_only=text_only,
                               usage=usage if isinstance(usage, dict) else None))

    def _error(self, ev: JSON, rid: str) -> None:
        err: JSON = ev.get("error") or {}
        code = str(err.get("code") or "")
        message = scrub(str(err.get("message") or "error"))
        if code == "response_cancel_not_active":
            log.info("openai realtime: cancel raced the end of the response (ignored)")
            return
        log.warning("openai realtime: server error %s: %s", code or err.get("type"), message)
        self.emit(ModelError(message=message, code=code, fatal=False))

    def _log_only(self, ev: JSON, rid: str) -> None:
        if ev.get("type") == "rate_limits.updated":
            log.debug("openai realtime: rate limits %s", ev.get("rate_limits"))
        else:
            log.debug("openai realtime: %s", ev.get("type"))

    def _nothing(self, ev: JSON, rid: str) -> None:
        pass


_HANDLERS: dict[str, Handler] = {
    "response.output_audio.delta": EventTranslator._audio_delta,
    "response.output_audio.done": EventTranslator._audio_done,
    "response.output_audio_transcript.delta": EventTranslator._transcript_delta,
    "response.output_audio_transcript.done": EventTranslator._transcript_done,
    "response.output_text.delta": EventTranslator._text_delta,
    "response.output_text.done": EventTranslator._text_done,
    "response.function_call_arguments.done": EventTranslator._arguments_done,
    "response.output_item.added": EventTranslator._output_item_added,
    "response.output_item.done": EventTranslator._output_item_done,
    "conversation.item.added": EventTranslator._item_added,
    "conversation.item.done": EventTranslator._item_added,
    "conversation.item.deleted": EventTranslator._item_deleted,
    "conversation.item.truncated": EventTranslator._nothing,
    "input_audio_buffer.speech_started": EventTranslator._speech_started,
    "input_audio_buffer.speech_stopped": EventTranslator._speech_stopped,
    "input_audio_buffer.committed": EventTranslator._committed,
    "conversation.item.input_audio_transcription.delta": EventTranslator._input_delta,
    "conversation.item.input_audio_transcription.completed": EventTranslator._input_completed,
    "conversation.item.input_audio_transcription.failed": EventTranslator._input_failed,
    "response.created": EventTranslator._response_created,
    "response.done": EventTranslator._response_done,
    "error": EventTranslator._error,
    "session.created": EventTranslator._log_only,
    "session.updated": EventTranslator._log_only,
    "rate_limits.updated": EventTranslator._log_only,
}
