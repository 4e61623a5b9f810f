"""One call's OpenAI Realtime session: the client primitives, composed from the parts.

:class:`~.link.RealtimeLink` keeps the socket up (reconnect, restore),
:class:`~.conversation.Conversation` is the local copy of the conversation,
:class:`~.events.EventTranslator` turns server events into typed events.
Client events are built in the GA shape (``session.update`` with
``session.type="realtime"``, PCM 24 kHz both ways).
"""

from __future__ import annotations

import base64

import numpy as np

from ..base import ModelCapabilities, SessionConfig, ToolSpec
from .conversation import JSON, Conversation, Item, new_id
from .endpoint import RATE, RealtimeSettings, log
from .events import EventTranslator
from .link import RealtimeLink
from .ws_model import WsModelSession


def tool_body(t: ToolSpec) -> JSON:
    """A :class:`ToolSpec` as a Realtime API function tool."""
    return {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}


class OpenAIRealtimeSession(WsModelSession[RealtimeLink]):
    """One call's OpenAI Realtime connection (see the package docstring)."""

    def __init__(self, settings: RealtimeSettings, capabilities: ModelCapabilities, config: SessionConfig,
                 api_key: str) -> None:
        super().__init__(settings, capabilities, config, api_key)
        self.conversation = Conversation()
        self.translator = EventTranslator(self.conversation, self.emit)
        self.link = RealtimeLink(settings, api_key, self.conversation, on_event=self.translator.dispatch,
                                 emit=self.emit, session_body=self._session_body)

    def _session_body(self) -> JSON:
        c = self.config
        audio_in: JSON = {"format": {"type": "audio/pcm", "rate": RATE}}
        if c.input_transcription:
            audio_in["transcription"] = {"model": self._settings.transcription_model}
        if c.turn_detection == "server":
            audio_in["turn_detection"] = {"type": "server_vad", "create_response": True, "interrupt_response": False}
        else:
            audio_in["turn_detection"] = None
        audio_out: JSON = {"format": {"type": "audio/pcm", "rate": RATE}}
        if c.voice:
            audio_out["voice"] = c.voice
        body: JSON = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": audio_out},
            "tools": [tool_body(t) for t in c.tools],
        }
        if c.instructions:
            body["instructions"] = c.instructions
        if c.tools:
            body["tool_choice"] = "auto"
        return body

    # -- lifecycle ---------------------------------------------------------------
    async def _send(self, ev: JSON) -> bool:
        return await self.link.send(ev)

    async def _send_or_defer(self, ev: JSON) -> None:
        """``response.create``: sent now, or once the connection is back."""
        if not await self._send(ev) and not self.link.closing and not self.link.fatal:
            self.link.pending_response = ev

    # -- primitives --------------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray) -> None:
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        if data:
            await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode("ascii")})

    async def commit_input(self) -> None:
        await self._send({"type": "input_audio_buffer.commit"})

    async def clear_input(self) -> None:
        await self._send({"type": "input_audio_buffer.clear"})

    async def send_message(self, role: str, text: str) -> None:
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown role {role!r}")
        item = self.conversation.add(Item(id=new_id(), kind="message", role=role, text=text, live=False))
        body = item.to_create()
        if body is not None:
            item.live = await self._send({"type": "conversation.item.create", "item": body})

    async def function_output(self, call_id: str, output: str) -> None:
        item = self.conversation.add(
            Item(id=new_id(), kind="function_call_output", call_id=call_id, output=output, live=False))
        item.live = await self._send({"type": "conversation.item.create", "item": item.to_create()})

    async def create_response(self, *, instructions: str | None = None) -> None:
        ev: JSON = {"type": "response.create"}
        if instructions:
            ev["response"] = {"instructions": instructions}
        await self._send_or_defer(ev)

    async def cancel_response(self) -> None:
        resp = self.conversation.current
        if resp is None:
            log.debug("openai realtime: no response in progress, cancel not sent")
            return
        await self._send({"type": "response.cancel", "response_id": resp.id})

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        item = self.conversation.get(item_id)
        if item is None:
            log.warning("openai realtime: truncate of unknown item %s ignored", item_id)
            return
        end_ms = self.conversation.truncate(item, audio_end_ms)
        if end_ms < max(0, int(audio_end_ms)):
            log.warning("openai realtime: truncate of %s at %d ms clamped to the %d ms received",
                        item_id, audio_end_ms, end_ms)
        if item.audio_live:
            await self._send({"type": "conversation.item.truncate", "item_id": item_id,
                              "content_index": content_index, "audio_end_ms": end_ms})
        elif self.link.ready:
            # Restored as text on this connection: replace it with the cut text.
            await self._replace_item(item)

    async def _replace_item(self, item: Item) -> None:
        prev = self.conversation.previous_live(item.id)
        await self._send({"type": "conversation.item.delete", "item_id": item.id})
        body = item.to_create()
        if body is None:
            self.conversation.pop(item.id)
            return
        item.live = await self._send({"type": "conversation.item.create", "item": body, "previous_item_id": prev})

    async def delete_item(self, item_id: str) -> None:
        item = self.conversation.pop(item_id)
        if item is None or not item.live:
            log.debug("openai realtime: item %s not on this connection; delete not sent", item_id)
            return
        await self._send({"type": "conversation.item.delete", "item_id": item_id})

    async def update_session(self, *, instructions: str | None = None, tools: list[ToolSpec] | None = None) -> None:
        await super().update_session(instructions=instructions, tools=tools)
        body: JSON = {"type": "realtime"}
        if instructions is not None:
            body["instructions"] = instructions
        if tools is not None:
            body["tools"] = [tool_body(t) for t in tools]
            body["tool_choice"] = "auto" if tools else "none"
        await self._send({"type": "session.update", "session": body})

