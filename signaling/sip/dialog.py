"""SIP dialog-layer types shared by the core and the media glue.

:class:`Conn` says where a message came from and how to answer it;
:class:`SipMedia` is one call's media (plain RTP or WebRTC) as the core sees
it; :class:`Dialog` and :class:`ServerTx` are the dialog and server
transaction state of RFC 3261 sections 12 and 17.
"""

from __future__ import annotations

import asyncio
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .message import SipMessage, SipRequest


@dataclass
class Conn:
    """Where a message came from, and how to send back."""

    transport: str  # UDP | TCP | WS
    remote: tuple[str, int]
    local: tuple[str, int]
    send: Callable[[bytes], None]
    is_open: Callable[[], bool] = lambda: True

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"

    @property
    def label(self) -> str:
        return {"UDP": "sip_udp", "TCP": "sip_tcp", "WS": "sip_ws", "WSS": "sip_ws"}[self.transport]


class SipReject(Exception):
    def __init__(self, status: int, reason: str | None = None) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.status = status
        self.reason = reason


class SipMedia(ABC):
    """One call's media + worker, created from an offer (see MediaFactory)."""

    answer_sdp: str  # our answer, or our offer when the INVITE had none (delayed offer)
    ended: asyncio.Event
    end_reason: str = ""
    awaiting_answer: bool = False  # delayed offer: the answer comes in the ACK

    async def set_answer(self, sdp: str) -> None:
        """The caller's answer to our offer (delayed offer, in the ACK)."""
        raise NotImplementedError

    @abstractmethod
    async def start(self) -> None:
        """The 200 OK went out: start sending media and the call itself."""

    @abstractmethod
    async def reoffer(self, sdp: str) -> str:
        """A re-INVITE/UPDATE offer (hold, unhold, new address) -> answer SDP."""

    @abstractmethod
    async def dtmf(self, digit: str) -> None: ...

    @abstractmethod
    async def close(self, reason: str) -> None: ...


@dataclass
class CallRequest:
    call_id: str
    transport: str  # sip_udp | sip_tcp | sip_ws
    profile: str | None
    user: str
    offer_sdp: str
    remote: tuple[str, int]
    from_uri: str


MediaFactory = Callable[[CallRequest], Awaitable[SipMedia]]


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    invite: SipRequest
    conn: Conn
    remote_target: str
    local_cseq: int = 0
    remote_cseq: int = 0
    route_set: list[str] = field(default_factory=list)
    media: SipMedia | None = None
    state: str = "early"  # early | confirmed | terminated
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    final_sent: bool = False
    task: asyncio.Task | None = None
    watch: asyncio.Task | None = None
    session_expires: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.local_tag


@dataclass
class ServerTx:
    response: bytes | None
    conn: Conn
    created: float
    dialog: Dialog | None = None


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def tx_key(msg: SipMessage) -> tuple[str, str, str]:
    """(branch, method, sent-by); ACK and CANCEL map onto their INVITE's branch."""
    top = msg.vias[0]
    _, method = msg.cseq
    sent_by = f"{top.host}:{top.port or ''}"
    return top.branch or msg.call_id + msg.header("CSeq"), method, sent_by
