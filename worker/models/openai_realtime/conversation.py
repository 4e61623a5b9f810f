"""The local copy of the conversation: its items, what audio each carried, responses in flight.

The mirror holds user transcripts, the assistant's transcripts (cut when
truncated), function calls and their outputs, in conversation order, so a
new connection can be given the conversation so far as text
(:meth:`Conversation.restorable`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ...played_text import played_text
from .endpoint import RATE

JSON = dict[str, Any]  # a client or server event, or a part of one, as parsed from JSON

ItemKind = Literal["message", "function_call", "function_call_output"]


@dataclass
class Item:
    """One conversation item as the model knows it."""

    id: str
    kind: ItemKind
    role: str = ""
    text: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str = ""
    audio_samples: int = 0  # assistant audio received for this item
    truncated: bool = False
    live: bool = True  # exists on the current connection
    audio_live: bool = False  # has audio on the current connection (truncatable)
    response_id: str = ""

    def to_create(self) -> JSON | None:
        """The GA ``conversation.item.create`` item restoring this one as text."""
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.arguments or "{}",
            }
        if self.kind == "function_call_output":
            return {
                "id": self.id,
                "type": "function_call_output",
                "call_id": self.call_id,
                "output": self.output,
            }
        if not self.text.strip():
            return None
        ctype = "output_text" if self.role == "assistant" else "input_text"
        return {
            "id": self.id,
            "type": "message",
            "role": self.role,
            "content": [{"type": ctype, "text": self.text}],
        }


@dataclass
class Response:
    """A response in flight: how much audio it carried, which items are still streaming."""

    id: str
    audio_samples: int = 0
    text_seen: bool = False
    audio_items: set[str] = field(default_factory=set)
    open_audio_items: set[str] = field(default_factory=set)


def new_id() -> str:
    """A client-side item id."""
    return "v2v_" + secrets.token_hex(10)


_KINDS: dict[str, ItemKind] = {
    "message": "message",
    "function_call": "function_call",
    "function_call_output": "function_call_output",
}


class Conversation:
    """The ordered mirror of the conversation and the responses in flight."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}  # in conversation order
        self.responses: dict[str, Response] = {}
        self.current: Response | None = None  # the response in progress
        self.emitted_calls: set[str] = set()  # call_ids already handed to the worker
        self.input_partial: dict[str, str] = {}  # item_id -> input transcript so far

    # -- items ----------------------------------------------------------------
    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def add(self, item: Item) -> Item:
        self.items[item.id] = item
        return item

    def pop(self, item_id: str) -> Item | None:
        return self.items.pop(item_id, None)

    def mirror(self, raw: JSON, response_id: str = "") -> Item | None:
        """Record a server item (from *.added/created/done) in the mirror."""
        iid = raw.get("id")
        kind = _KINDS.get(str(raw.get("type")))
        if not iid:
            return None
        item = self.items.get(iid)
        if item is None:
            if kind is None:
                return None
            role = str(raw.get("role", "")) if kind == "message" else ""
            item = self.add(Item(id=iid, kind=kind, role=role))
        item.live = True
        if response_id:
            item.response_id = response_id
        if kind == "function_call":
            item.call_id = raw.get("call_id") or item.call_id
            item.name = raw.get("name") or item.name
            item.arguments = raw.get("arguments") or item.arguments
        elif kind == "function_call_output":
            item.call_id = raw.get("call_id") or item.call_id
            item.output = raw.get("output") or item.output
        elif kind == "message" and not item.text:
            for part in raw.get("content") or []:
                text = part.get("text") or part.get("transcript")
                if text:
                    item.text += text
        return item

    def messages_of(self, response_id: str) -> list[Item]:
        return [i for i in self.items.values() if i.response_id == response_id and i.kind == "message"]

    def previous_live(self, item_id: str) -> str:
        """The id of the nearest live item before ``item_id`` (``"root"`` if none)."""
        ids = list(self.items)
        i = ids.index(item_id) - 1
        while i >= 0 and not self.items[ids[i]].live:
            i -= 1
        return ids[i] if i >= 0 else "root"

    def truncate(self, item: Item, end_ms: int) -> int:
        """Cut ``item``'s text to its first ``end_ms`` of audio (clamped to what was
        received); returns the clamped ``end_ms``."""
        received_ms = item.audio_samples * 1000 // RATE
        end_ms = min(max(0, int(end_ms)), received_ms)
        if item.audio_samples:
            item.text = played_text(item.text, end_ms * RATE // 1000, item.audio_samples)[0]
        item.truncated = True
        return end_ms

    # -- responses ------------------------------------------------------------
    def response(self, response_id: str) -> Response:
        """The response ``response_id`` (created on first mention)."""
        r = self.responses.get(response_id)
        if r is None:
            r = self.responses[response_id] = Response(id=response_id)
        return r

    def finish(self, response_id: str) -> Response:
        """Forget the response (on ``response.done``); returns what was known of it."""
        r = self.responses.pop(response_id, None) or Response(id=response_id)
        if self.current is not None and self.current.id == response_id:
            self.current = None
        return r

    def first_call(self, call_id: str, name: str, arguments: str, item_id: str) -> bool:
        """Record a complete function call; False if it was already handed over."""
        if not call_id or call_id in self.emitted_calls:
            return False
        self.emitted_calls.add(call_id)
        item = self.items.get(item_id)
        if item is not None:
            item.call_id, item.name, item.arguments = call_id, name, arguments
        return True

    # -- connections ----------------------------------------------------------
    def connection_lost(self) -> Response | None:
        """Nothing is on the server any more; returns the response that was in progress."""
        resp, self.current = self.current, None
        self.responses.clear()
        for item in self.items.values():
            item.live = item.audio_live = False
        return resp

    def restorable(self) -> Iterator[tuple[Item, JSON]]:
        """(item, create body) for each item a new connection should be given, in order.

        Every item is marked not live first; the caller marks each one live once sent.
        A function call cut off mid-arguments (never handed over) is not restored.
        """
        for item in self.items.values():
            item.live = False
        for item in list(self.items.values()):
            body = item.to_create()
            if item.kind == "function_call" and item.call_id not in self.emitted_calls:
                body = None
            if body is not None:
                yield item, body
