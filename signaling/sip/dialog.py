"""SIP dialog-layer types shared by the core and the media glue.

:class:`Conn` says where a message came from and how to answer it;
:class:`SipMedia` is one call's media (plain RTP or WebRTC) as the core sees
it; :class:`Dialog` and :class:`ServerTx` are the dialog and server
transaction state of RFC 3261 sections 12 and 17.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

from .message import Headers, SipMessage, SipRequest

log = logging.getLogger("v2v.sip")

T1 = 0.5  # RFC 3261 timer values, seconds
T2 = 4.0


@dataclass
class Conn:
    """Where a message came from, and how to send back."""

    transport: str  # UDP | TCP | TLS | WS
    remote: tuple[str, int]
    local: tuple[str, int]
    send: Callable[[bytes], None]
    is_open: Callable[[], bool] = lambda: True

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"

    @property
    def label(self) -> str:
        return {"UDP": "sip_udp", "TCP": "sip_tcp", "TLS": "sip_tls", "WS": "sip_ws", "WSS": "sip_ws"}[self.transport]

    def try_send(self, data: bytes) -> bool:
        """Send if the connection is open; False when it is closed or went away under us."""
        if not self.is_open():
            return False
        try:
            self.send(data)
        except Exception as e:  # the transport's own errors: the peer is gone, nothing to answer
            log.debug("sip send failed: %s", e)
            return False
        return True


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
    we_called: ClassVar[bool] = False  # True in UacDialog: we sent the INVITE

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.local_tag

    @property
    def local_uri(self) -> str:
        """Our address in this dialog: the URI of the INVITE's To (we answered), or its From (we called)."""
        return (self.invite.from_ if self.we_called else self.invite.to).uri

    def request(self, method: str, via: str) -> SipRequest:
        """A new request of ours in this dialog (RFC 3261 12.2.1.1), next local CSeq, to the remote
        target through the route set: Via, Max-Forwards, From, To, Call-ID, CSeq and Route headers;
        the caller adds the rest.

        The INVITE's From goes out verbatim (it carries the caller's tag); its To gets the callee's
        tag. We answered: From is that To with our tag, To the From. We called (``we_called``): From
        is the From, To the To with their tag.
        """
        self.local_cseq = max(self.local_cseq, 1) + 1  # we called: it starts at our INVITE's (>= 1)
        callee = self.invite.to
        callee.params["tag"] = self.remote_tag if self.we_called else self.local_tag
        caller = self.invite.header("From")
        ours, theirs = (caller, str(callee)) if self.we_called else (str(callee), caller)
        h = Headers()
        h.add("Via", via)
        h.add("Max-Forwards", "70")
        h.add("From", ours)
        h.add("To", theirs)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.local_cseq} {method}")
        for r in self.route_set:
            h.add("Route", r)
        return SipRequest(h, b"", method=method, uri=self.remote_target)

    def bye_request(self, via: str, user_agent: str) -> SipRequest:
        """Our BYE (next local CSeq)."""
        bye = self.request("BYE", via)
        bye.headers.add("User-Agent", user_agent)
        return bye


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


async def resend_until_ack(d: Dialog, tx: ServerTx, conn: Conn, *, while_live: bool) -> bool:
    """Resend the INVITE's final response (UDP) at T1, 2*T1, ... up to T2 until ACK or 64*T1.

    The one retransmit-until-ACK loop: 2xx (RFC 3261 13.3.1.4, ``while_live``: stops when
    the dialog ends) and non-2xx (Timers G/H, the dialog is already over). True when ACKed.
    """
    interval = T1
    deadline = time.monotonic() + 64 * T1
    while time.monotonic() < deadline and not (while_live and d.state == "terminated"):
        try:
            await asyncio.wait_for(d.acked.wait(), interval)
            return True
        except TimeoutError:
            if tx.response:
                conn.try_send(tx.response)
            interval = min(interval * 2, T2)
    return d.acked.is_set()
