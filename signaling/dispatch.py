"""The dispatcher seam: what signaling asks of whoever holds the calls' media.

Signaling (HTTP offer/answer, SIP dialogs) talks to a :class:`Dispatcher` only
in the plain data of this module: SDP text, ICE candidates, call ids, and
:class:`CallEvent` messages coming back. Three implementations exist and
signaling does not know which one it has:

- :class:`v2v.signaling.host.CallHost`: the calls live in this process;
- :class:`v2v.signaling.pool.remote.PoolDispatcher` over local worker processes
  (``v2v serve --workers N``) or over Redis-registered workers
  (``v2v serve --redis URL``), both speaking :mod:`v2v.signaling.pool.protocol`.

Every message is a dataclass made of JSON types, so a remote implementation
sends :func:`dataclasses.asdict` of it and rebuilds it with ``Type(**data)``.
Errors carry an HTTP-like status; SIP maps them to SIP statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "BadRequest",
    "CallKey",
    "Forbidden",
    "Listeners",
    "CallEnded",
    "CallEvent",
    "DispatchError",
    "Dispatcher",
    "EventListener",
    "IceCandidateInit",
    "MediaAnswer",
    "MediaRequest",
    "OfferAnswer",
    "OfferRequest",
    "Overloaded",
    "TransferRequested",
    "TransferResult",
    "UnknownCall",
    "WorkerInfo",
    "error_from_status",
]

log = logging.getLogger("v2v.dispatch")

# -----------------------------------------------------------------------------
# Requests and answers
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallKey:
    """What an HTTP caller presents, besides the call's ``pc_id``, to act on a WebRTC call.

    The ``pc_id`` is unguessable and only its creator gets it; ``owner`` is the
    subject of the caller's access token ("" without ``--auth-secret``) and must
    be the creator's. Internal callers (SIP dialogs, shutdown) pass no key.
    """

    owner: str = ""


@dataclass
class OfferRequest:
    """A WebRTC offer of ``POST /api/offer`` (Pipecat SmallWebRTC's body).

    ``owner`` is the subject of the caller's token: a re-offer must come from the
    call's creator, a new call keeps it. ``profile`` is pinned by the caller's
    token (else ``requestData.profile`` chooses).
    """

    sdp: str
    type: str = "offer"
    pc_id: str | None = None
    restart_pc: bool = False
    request_data: Any = None
    peer: str = ""  # "host:port" of the HTTP client, for logs
    owner: str = ""
    profile: str | None = None

    @property
    def key(self) -> CallKey:
        return CallKey(self.owner)


@dataclass
class OfferAnswer:
    sdp: str
    type: str
    pc_id: str

    def to_json(self) -> dict[str, str]:
        return {"sdp": self.sdp, "type": self.type, "pc_id": self.pc_id}


@dataclass
class IceCandidateInit:
    candidate: str  # "candidate:..." or the bare attribute; "" = end of candidates
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


@dataclass
class MediaRequest:
    """The media of a SIP call: the INVITE's offer (or none: delayed offer).

    ``transport`` is the call's label: ``sip_ws`` gets WebRTC media,
    ``sip_udp``/``sip_tcp`` plain RTP. ``call_id`` is chosen by signaling and
    names the call in every later request and event.
    """

    call_id: str
    transport: str
    offer_sdp: str
    peer: str
    profile: str | None = None
    sip_call_id: str = ""
    user: str = ""
    from_uri: str = ""


@dataclass
class MediaAnswer:
    call_id: str
    sdp: str  # our answer, or our offer when the INVITE had none
    awaiting_answer: bool = False  # delayed offer: the caller's answer comes in the ACK
    worker: str = ""  # the name of the worker holding the media


@dataclass
class WorkerInfo:
    """One row of ``GET /api/workers`` (shared/DESIGN.md section 4)."""

    name: str
    address: str
    active_calls: int
    capacity: int
    state: str  # "ready" | "draining"
    last_seen_s: float = 0.0


# -----------------------------------------------------------------------------
# Events back from the calls
# -----------------------------------------------------------------------------


@dataclass
class CallEvent:
    """Something signaling must act on; ``call_id`` names the call."""

    call_id: str


@dataclass
class CallEnded(CallEvent):
    """The call is over (its media released): SIP sends BYE if the caller did not."""

    reason: str = "hangup"
    transport: str = ""
    worker: str = ""


@dataclass
class TransferRequested(CallEvent):
    """The call's holder asks signaling to transfer the caller (blind, SIP REFER) to ``target``.

    Signaling answers with :meth:`Dispatcher.transfer_done` and the same ``request_id``; a
    node that holds no SIP dialog for the call ignores it.
    """

    request_id: str = ""
    target: str = ""
    reason: str = ""


@dataclass
class TransferResult:
    """How a transfer went: accepted (the call ends as ``transferred``) or not, and why."""

    ok: bool
    detail: str
    status: int = 0  # the SIP status that decided (REFER refusal or NOTIFY sipfrag), 0 if none


EventListener = Callable[[CallEvent], None]


# -----------------------------------------------------------------------------
# Errors
# -----------------------------------------------------------------------------


class DispatchError(Exception):
    """An error with an HTTP-like status that signaling reports as is."""

    status = 400

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(DispatchError):
    status = 400


class Forbidden(DispatchError):
    """The call exists but the caller's :class:`CallKey` is not its creator's."""

    status = 403


class UnknownCall(DispatchError):
    status = 404


class Overloaded(DispatchError):
    status = 503


def error_from_status(status: int, message: str, retry_after: int | None = None) -> DispatchError:
    """Rebuild the error a remote worker reported by its status."""
    cls = {400: BadRequest, 403: Forbidden, 404: UnknownCall, 503: Overloaded}.get(status, DispatchError)
    err = cls(message, retry_after=retry_after)
    if cls is DispatchError:
        err.status = status
    return err


# -----------------------------------------------------------------------------
# The seam
# -----------------------------------------------------------------------------


class Dispatcher(Protocol):
    """What signaling needs from the holder of the calls (in-process or remote).

    WebRTC calls are named by ``pc_id``, SIP calls by the ``call_id`` of their
    :class:`MediaRequest`; :meth:`hangup` takes either. A ``key`` (HTTP callers)
    must be the WebRTC call's :class:`CallKey` (else :class:`Forbidden`; a call that
    is not an HTTP WebRTC call is unknown to a key); ``None`` (SIP, internal)
    skips the check. Errors are :class:`DispatchError` subclasses.
    """

    async def start(self) -> None: ...

    async def close(self, reason: str = "shutdown") -> None: ...

    # WebRTC (POST/PATCH/DELETE /api/offer)
    async def offer(self, req: OfferRequest) -> OfferAnswer: ...

    async def add_candidates(
        self, pc_id: str, candidates: list[IceCandidateInit], key: CallKey | None = None
    ) -> None: ...

    async def hangup(self, call_id: str, reason: str = "hangup", key: CallKey | None = None) -> None: ...

    # SIP media (the dialog stays with signaling)
    async def open_media(self, req: MediaRequest) -> MediaAnswer: ...

    async def start_media(self, call_id: str) -> None: ...

    async def reoffer(self, call_id: str, sdp: str) -> str: ...

    async def set_answer(self, call_id: str, sdp: str) -> None: ...

    async def dtmf(self, call_id: str, digit: str) -> None: ...

    # transfer: asked by the call's holder (tool or HTTP), carried out by the SIP dialog's node
    async def transfer(self, call_id: str, target: str, reason: str = "", key: CallKey | None = None
                       ) -> TransferResult: ...

    async def transfer_done(self, call_id: str, request_id: str, result: TransferResult) -> None: ...

    # events, load, health
    def add_listener(self, listener: EventListener) -> None: ...

    def active_calls(self, transport: str | None = None) -> int: ...

    def not_ready_reason(self) -> str | None: ...

    async def workers(self) -> list[WorkerInfo]: ...


@dataclass
class Listeners:
    """A small fan-out of :class:`CallEvent` to listeners; a failing one is logged."""

    listeners: list[EventListener] = field(default_factory=list)

    def add(self, listener: EventListener) -> None:
        self.listeners.append(listener)

    def emit(self, event: CallEvent) -> None:
        for cb in list(self.listeners):
            try:
                cb(event)
            except Exception:
                log.exception("call event listener failed")
