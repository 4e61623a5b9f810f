"""The in-process implementation of the dispatcher seam: this process holds the calls.

:class:`CallHost` composes the :class:`~v2v.signaling.calls.CallManager` (call
pipelines, model factories, limits, metrics), the WebRTC transport (aiortc
peer connections) and the plain-RTP media of SIP calls. Plain ``v2v serve``
hands it to signaling directly; a ``v2v worker`` process serves it to remote
signaling nodes over :mod:`v2v.signaling.pool.protocol`. Either way it is
driven only through the :class:`~v2v.signaling.dispatch.Dispatcher` methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from typing import Protocol

from v2v.worker.models.base import ModelFactory
from v2v.worker.transfer import TransferOutcome, target_allowed

from .calls import Call, CallManager
from .config import ServerConfig
from .dispatch import (
    CallEnded,
    CallEvent,
    CallKey,
    DispatchError,
    EventListener,
    Forbidden,
    IceCandidateInit,
    Listeners,
    MediaAnswer,
    MediaRequest,
    OfferAnswer,
    OfferRequest,
    Overloaded,
    TransferRequested,
    TransferResult,
    UnknownCall,
    WorkerInfo,
)
from .metrics import ServerMetrics
from .rtp_call import RtpCall, RtpMediaConfig
from .sip.addr import MediaAddresses
from .sip.rtp_session import PortAllocator, public_address
from .webrtc import WebRTCCall, WebRTCTransport

__all__ = ["CallHost"]

log = logging.getLogger("v2v.host")

# a transfer's answer from the dialog's node: the REFER's (<= 5 s) plus the final NOTIFY's (<= 20 s),
# within the pool RPC's 30 s
TRANSFER_WAIT_S = 28.0


class HostedMedia(Protocol):
    """The media side of a SIP call as the host drives it."""

    @property
    def call(self) -> Call | None: ...

    async def start(self) -> None: ...

    async def reoffer(self, sdp: str) -> str: ...

    async def set_answer(self, sdp: str) -> None: ...


class WebRTCSipMedia:
    """A SIP-over-WebSocket call: WebRTC media through the WebRTC transport."""

    def __init__(self, wc: WebRTCCall) -> None:
        self.wc = wc
        self.call = wc.call

    async def start(self) -> None:
        self.wc.start()

    async def reoffer(self, sdp: str) -> str:
        return await self.wc.renegotiate_sdp(sdp)

    async def set_answer(self, sdp: str) -> None:
        raise DispatchError("a WebRTC call needs the caller's offer")


class CallHost:
    """Holds calls in this process; implements :class:`~v2v.signaling.dispatch.Dispatcher`."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        factories: dict[str, ModelFactory] | None = None,
        *,
        name: str = "",
    ) -> None:
        self.config = config
        self.name = name or config.name or socket.gethostname()
        self.manager = CallManager(config, metrics, factories)
        self.metrics = self.manager.metrics
        self.webrtc = WebRTCTransport(self.manager)
        self.draining = False
        self.started_at = time.monotonic()
        self._media: dict[str, HostedMedia] = {}
        self._listeners = Listeners()
        self._rtp: RtpMediaConfig | None = None
        self._transfers: dict[str, asyncio.Future[TransferResult]] = {}  # request id -> its answer
        self.manager.add_end_listener(self._on_call_end)
        self.manager.transferer = self._transfer_call

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        await self.manager.start()

    async def close(self, reason: str = "shutdown") -> None:
        await self.manager.close(reason)
        await self.webrtc.close()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.add(listener)

    async def drain(self, timeout: float) -> int:
        """Take no new call (offers 503, ``/readyz`` 503) and wait until the last call ends or
        ``timeout`` seconds pass; returns the calls left (the caller ends them with its reason)."""
        self.draining = True
        ended = asyncio.Event()

        def check(_: CallEvent | None = None) -> None:
            if self.active_calls() == 0:
                ended.set()

        self._listeners.add(check)
        try:
            check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), max(0.0, timeout))
        finally:
            self._listeners.listeners.remove(check)
        return self.active_calls()

    def _on_call_end(self, call: Call, reason: str) -> None:
        self._media.pop(call.call_id, None)
        self._listeners.emit(CallEnded(call.call_id, reason, call.transport, self.name))

    def _check_open(self, transport: str) -> None:
        if self.draining:
            raise Overloaded(f"worker {self.name} is draining", retry_after=self.manager.RETRY_AFTER_S)
        self.manager.check_capacity(transport)

    # -- WebRTC ------------------------------------------------------------
    async def offer(self, req: OfferRequest) -> OfferAnswer:
        if not self.webrtc.has_call(req.pc_id):
            self._check_open("webrtc")
        return await self.webrtc.offer(req, req.peer)

    async def add_candidates(self, pc_id: str, candidates: list[IceCandidateInit], key: CallKey | None = None) -> None:
        await self.webrtc.add_candidates(pc_id, candidates, key)

    async def hangup(self, call_id: str, reason: str = "hangup", key: CallKey | None = None) -> None:
        if key is not None:
            self.webrtc.owned(call_id, key)  # an HTTP hang-up: only the call's creator
        await self.manager.hangup(call_id, reason)

    # -- SIP media ---------------------------------------------------------
    def _rtp_config(self) -> RtpMediaConfig:
        if self._rtp is None:
            cfg = self.config
            host = cfg.media_address[0] if cfg.media_address else cfg.host
            self._rtp = RtpMediaConfig(
                rtp_host=host,
                public_host=public_address(cfg.advertise or cfg.sip_public_address, host),
                ports=PortAllocator.parse(cfg.rtp_ports),
                media_timeout=cfg.media_timeout,
                srtp=cfg.sip_srtp,  # --sip-srtp (sip/srtp.py)
                codecs=tuple(c.upper() for c in cfg.sip_codecs),  # --sip-codecs (checked by validate)
                addresses=MediaAddresses(list(cfg.media_address) or [cfg.host],
                                         cfg.advertise or cfg.sip_public_address or None),  # per family
            )
        return self._rtp

    async def open_media(self, req: MediaRequest) -> MediaAnswer:
        self._check_open(req.transport)
        media: HostedMedia
        if req.transport == "sip_ws":
            wc, sdp = await self.webrtc.answer(
                req.offer_sdp, req.peer, transport=req.transport, profile=req.profile,
                call_id=req.call_id, rtvi=False, start=False,
            )
            assert wc.call is not None
            wc.call.log.event("sip-call", sip_call_id=req.sip_call_id, user=req.user, from_uri=req.from_uri)
            media, awaiting = WebRTCSipMedia(wc), False
        else:
            rtp = await RtpCall.create(self.manager, self._rtp_config(), req)
            media, sdp, awaiting = rtp, rtp.answer_sdp, rtp.awaiting_answer
        self._media[req.call_id] = media
        return MediaAnswer(req.call_id, sdp, awaiting, self.name)

    def hosted(self, call_id: str) -> HostedMedia | None:
        """The media of SIP call ``call_id`` held here (RtpCall or WebRTC), if any."""
        return self._media.get(call_id)

    def _media_of(self, call_id: str) -> HostedMedia:
        media = self._media.get(call_id)
        if media is None or media.call is None or media.call.ending:
            raise UnknownCall(f"unknown call {call_id!r}")
        return media

    async def start_media(self, call_id: str) -> None:
        await self._media_of(call_id).start()

    async def reoffer(self, call_id: str, sdp: str) -> str:
        return await self._media_of(call_id).reoffer(sdp)

    async def set_answer(self, call_id: str, sdp: str) -> None:
        await self._media_of(call_id).set_answer(sdp)

    async def dtmf(self, call_id: str, digit: str) -> None:
        call = self.manager.get(call_id)
        if call is None or call.ending:
            raise UnknownCall(f"unknown call {call_id!r}")
        await call.session.dtmf(digit)

    # -- transfer ------------------------------------------------------------
    async def transfer(self, call_id: str, target: str, reason: str = "", key: CallKey | None = None
                       ) -> TransferResult:
        """The HTTP action: the same path as the model's ``transfer_call`` tool."""
        if call_id not in self._media and key is not None:
            self.webrtc.owned(call_id, key)  # a WebRTC call: only its creator (a SIP call has no HTTP owner)
        call = self.manager.get(call_id)
        if call is None or call.ending:
            raise UnknownCall(f"unknown call {call_id!r}")
        if not target_allowed(target, self.config.transfer_targets):
            raise Forbidden(f"target {target!r} is not allowed (--transfer-targets)")
        outcome = await self.manager.transfer(call_id, target, reason)
        return TransferResult(outcome.ok, outcome.detail, outcome.status)

    async def _transfer_call(self, call: Call, target: str, reason: str) -> TransferOutcome:
        """A SIP caller: ask the dialog's signaling node (a TransferRequested event) and wait for its
        :meth:`transfer_done`; a WebRTC caller cannot be transferred."""
        if call.call_id not in self._media:
            return TransferOutcome(False, "transfer is unavailable for this caller (not a phone call)")
        request_id = uuid.uuid4().hex
        fut: asyncio.Future[TransferResult] = asyncio.get_running_loop().create_future()
        self._transfers[request_id] = fut
        try:
            self._listeners.emit(TransferRequested(call.call_id, request_id, target, reason))
            result = await asyncio.wait_for(fut, TRANSFER_WAIT_S)
        except TimeoutError:
            return TransferOutcome(False, f"no answer from the phone side within {TRANSFER_WAIT_S:g} s")
        finally:
            self._transfers.pop(request_id, None)
        return TransferOutcome(result.ok, result.detail, result.status)

    async def transfer_done(self, call_id: str, request_id: str, result: TransferResult) -> None:
        fut = self._transfers.get(request_id)
        if fut is None:
            raise UnknownCall(f"no transfer {request_id!r} waits on call {call_id!r}")
        if not fut.done():
            fut.set_result(result)

    # -- load and health ----------------------------------------------------
    def active_calls(self, transport: str | None = None) -> int:
        return self.manager.active_calls(transport)

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return f"worker {self.name} is draining"
        return self.manager.not_ready_reason()

    @property
    def capacity(self) -> int:
        return self.config.capacity or self.config.max_calls

    def info(self, address: str = "") -> WorkerInfo:
        return WorkerInfo(
            name=self.name,
            address=address or self.config.advertise or self.config.host,
            active_calls=self.active_calls(),
            capacity=self.capacity,
            state="draining" if self.draining else "ready",
            last_seen_s=0.0,
        )

    async def workers(self) -> list[WorkerInfo]:
        """A plain ``v2v serve`` lists itself as the one worker."""
        return [self.info()]
