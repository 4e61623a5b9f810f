"""The model session interface: capabilities, typed events, and the session ABC.

A *model factory* describes what a model can do (:class:`ModelCapabilities`) and
opens :class:`ModelSession` objects, one per call. A session offers the
client-to-server primitives of a realtime speech model (push audio, commit,
create/cancel responses, truncate/delete items, tool outputs...) and yields
typed :data:`ModelEvent` dataclasses from :meth:`ModelSession.events`.

All audio crossing this interface is mono int16 numpy at the model's rate
(24 kHz for every model shipped), in exact sample counts.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# --------------------------------------------------------------------------
# Configuration handed to a session
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCapabilities:
    input_rate: int = 24000
    output_rate: int = 24000
    server_vad: bool = False
    truncation: bool = True
    # the model owns turn-taking and streams its voice live (GPT-Live): the worker plays it as it
    # comes, never pauses or holds it for caller speech, and streams the caller in 20 ms chunks
    full_duplex: bool = False


@dataclass
class ToolSpec:
    """A function the model may call (JSON-schema parameters)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass
class ContextMessage:
    """A conversation item restored or injected as text."""

    role: Literal["system", "user", "assistant"]
    text: str


@dataclass
class SessionConfig:
    instructions: str = ""
    voice: str = ""
    tools: list[ToolSpec] = field(default_factory=list)
    turn_detection: Literal["server", "local"] = "local"
    input_transcription: bool = True


# --------------------------------------------------------------------------
# Events a session yields (server -> client)
# --------------------------------------------------------------------------


@dataclass
class Connected:
    pass


@dataclass
class Disconnected:
    reason: str
    fatal: bool = False  # True: the session will not reconnect


@dataclass
class AudioDelta:
    item_id: str
    pcm: np.ndarray  # int16 mono at output_rate
    response_id: str = ""
    content_index: int = 0


@dataclass
class AudioDone:
    item_id: str
    response_id: str = ""


@dataclass
class OutputTranscriptDelta:
    item_id: str
    text: str
    response_id: str = ""
    # Sample offset (at output_rate) in the item's audio where this text is
    # spoken, when the model knows it (the local model does); None otherwise.
    audio_offset: int | None = None


@dataclass
class OutputTranscriptDone:
    item_id: str
    text: str
    response_id: str = ""


@dataclass
class InputTranscript:
    item_id: str
    text: str
    final: bool


@dataclass
class TextDelta:
    item_id: str
    text: str
    response_id: str = ""


@dataclass
class TextDone:
    item_id: str
    text: str
    response_id: str = ""


@dataclass
class FunctionCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as the model produced it
    item_id: str = ""
    response_id: str = ""


@dataclass
class SpeechStarted:
    """Server VAD detected caller speech."""

    audio_start_ms: int = 0
    item_id: str = ""


@dataclass
class SpeechStopped:
    audio_end_ms: int = 0
    item_id: str = ""


@dataclass
class InputCommitted:
    item_id: str = ""


@dataclass
class ResponseCreated:
    response_id: str


@dataclass
class ResponseDone:
    response_id: str
    status: str = "completed"  # completed | cancelled | failed | incomplete
    # True when the response carried text but no audio (the worker may ask again).
    text_only: bool = False
    usage: dict[str, Any] | None = None


@dataclass
class ModelError:
    message: str
    code: str = ""
    fatal: bool = False


ModelEvent = (
    Connected
    | Disconnected
    | AudioDelta
    | AudioDone
    | OutputTranscriptDelta
    | OutputTranscriptDone
    | InputTranscript
    | TextDelta
    | TextDone
    | FunctionCall
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | ResponseCreated
    | ResponseDone
    | ModelError
)


# --------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------


class ModelSession(abc.ABC):
    """One call's connection to a model.

    Primitives are coroutines (a remote model sends them over a socket); they
    must not block the event loop. Events are read with ``async for ev in
    session.events()``; the iterator ends after :meth:`close`.
    """

    capabilities: ModelCapabilities

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._events: asyncio.Queue[ModelEvent | None] = asyncio.Queue()

    # -- lifecycle ---------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the session; emits :class:`Connected` when ready."""

    async def close(self) -> None:
        """Close the session; ends :meth:`events`."""
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[ModelEvent]:
        while True:
            ev = await self._events.get()
            if ev is None:
                return
            yield ev

    def emit(self, ev: ModelEvent) -> None:
        self._events.put_nowait(ev)

    # -- input audio -------------------------------------------------------
    @abc.abstractmethod
    async def push_audio(self, pcm: np.ndarray) -> None:
        """Append one chunk of caller audio (int16 mono at input_rate)."""

    @abc.abstractmethod
    async def commit_input(self) -> None:
        """End the caller's turn: the buffered audio becomes a user item."""

    @abc.abstractmethod
    async def clear_input(self) -> None:
        """Drop the buffered caller audio."""

    # -- conversation ------------------------------------------------------
    async def set_context(self, messages: list[ContextMessage]) -> None:
        """Replace/seed the conversation with text items."""
        for m in messages:
            await self.send_message(m.role, m.text)

    @abc.abstractmethod
    async def send_message(self, role: str, text: str) -> None:
        """Add a text message item to the conversation."""

    @abc.abstractmethod
    async def create_response(self, *, instructions: str | None = None) -> None:
        """Ask the model to answer now."""

    @abc.abstractmethod
    async def cancel_response(self) -> None:
        """Stop the response in progress (no-op when none is)."""

    @abc.abstractmethod
    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """Cut an assistant audio item to what the caller heard."""

    @abc.abstractmethod
    async def delete_item(self, item_id: str) -> None:
        """Remove an item from the conversation."""

    @abc.abstractmethod
    async def function_output(self, call_id: str, output: str) -> None:
        """Return a tool's output for ``call_id``."""

    async def update_session(
        self, *, instructions: str | None = None, tools: list[ToolSpec] | None = None
    ) -> None:
        """Change instructions and/or tools for the rest of the session."""
        if instructions is not None:
            self.config.instructions = instructions
        if tools is not None:
            self.config.tools = list(tools)


class ModelFactory(abc.ABC):
    """Describes a model and opens sessions on it."""

    name: str = "model"
    capabilities: ModelCapabilities = ModelCapabilities()

    @abc.abstractmethod
    def open(self, config: SessionConfig) -> ModelSession:
        """Return a new, not yet connected session."""
