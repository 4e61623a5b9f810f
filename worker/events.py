"""Call events: what one call's runtime tells the outside world.

The :class:`~worker.call.CallSession` publishes these dataclasses to its
listeners (the RTVI data channel, logs, metrics, tests). They are transport
and protocol neutral; ``worker.rtvi`` turns them into RTVI messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AgentState = Literal["initializing", "listening", "thinking", "speaking", "ended"]


@dataclass
class AgentStateChanged:
    state: AgentState
    previous: AgentState


@dataclass
class UserStartedSpeaking:
    sample: int  # input sample position (at the call's input rate) of the onset


@dataclass
class UserStoppedSpeaking:
    sample: int


@dataclass
class BotStartedSpeaking:
    item_id: str


@dataclass
class BotStoppedSpeaking:
    item_id: str


@dataclass
class BotInterrupted:
    """One confirmed interruption of the assistant (published once per barge-in)."""

    item_id: str  # the item the caller was hearing ("" if none had started)
    played_ms: int  # what the caller heard of that item; its truncation point
    deleted: bool  # nothing of it was heard: it was deleted instead


@dataclass
class ItemTruncated:
    """One assistant item cut to what was heard (or deleted) by an interruption."""

    item_id: str
    audio_end_ms: int
    deleted: bool


@dataclass
class FalseInterruption:
    item_id: str


@dataclass
class UserTranscript:
    text: str
    final: bool
    item_id: str = ""


@dataclass
class BotTranscript:
    """A sentence (or the whole text) of the assistant's answer, as produced."""

    text: str
    item_id: str = ""


@dataclass
class BotOutput:
    """Assistant text paced to audible playout.

    ``text`` is the newly spoken part. When ``final`` the item is over; if it
    was interrupted, ``spoken`` is all that was heard and ``unspoken`` the rest.
    """

    item_id: str
    text: str
    final: bool = False
    interrupted: bool = False
    spoken: str = ""
    unspoken: str = ""


@dataclass
class BotLLMStarted:
    response_id: str


@dataclass
class BotLLMStopped:
    response_id: str
    status: str


@dataclass
class BotLLMText:
    text: str
    item_id: str = ""


@dataclass
class FunctionCallStarted:
    call_id: str
    name: str


@dataclass
class FunctionCallInProgress:
    call_id: str
    name: str
    arguments: dict[str, Any]
    client_side: bool = False


@dataclass
class FunctionCallStopped:
    call_id: str
    name: str
    result: Any = None
    cancelled: bool = False


@dataclass
class Metrics:
    """ttfb_ms: end of caller speech -> first reply sample handed to the transport."""

    ttfb_ms: float | None = None
    barge_in_ms: float | None = None
    processor: str = "v2v"


@dataclass
class CallError:
    message: str
    fatal: bool = False


@dataclass
class DtmfReceived:
    digit: str


@dataclass
class CallEnded:
    reason: str


@dataclass
class TurnEnded:
    """Local turn detection ended the caller's turn: ``hangover`` (the fixed silence), ``model`` (the
    end-of-turn model said the caller is done), ``max-wait`` (held as mid-sentence, then silence), or
    ``fallback`` (the model failed: the fixed silence)."""

    reason: str


CallEvent = (
    AgentStateChanged | UserStartedSpeaking | UserStoppedSpeaking | BotStartedSpeaking
    | BotStoppedSpeaking | BotInterrupted | ItemTruncated | FalseInterruption | UserTranscript
    | BotTranscript | BotOutput | BotLLMStarted | BotLLMStopped | BotLLMText | FunctionCallStarted
    | FunctionCallInProgress | FunctionCallStopped | Metrics | CallError | DtmfReceived | CallEnded | TurnEnded
)

