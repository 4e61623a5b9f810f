"""Wiring SIP into the server: media for SIP calls and the servers' lifecycle.

:class:`RtpCallMedia` (SIP over UDP/TCP) runs a call on plain RTP;
:class:`WebRTCCallMedia` (SIP over WebSocket) runs it on aiortc, reusing
:mod:`signaling.webrtc`. Both create the call through the
:class:`~signaling.calls.CallManager` with the transport label (``sip_udp``,
``sip_tcp``, ``sip_ws``) and the request-URI user as profile.
:func:`start_sip` starts the UDP/TCP servers; :func:`setup_app` (the app's
plugin hook) adds ``GET /sip`` and the startup/cleanup hooks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCSessionDescription

from v2v.media.g711 import G711Codec
from v2v.media.playout import PlayoutBuffer
from v2v.worker.transport import QueueAudioInput

from ..calls import DispatchError
from .core import CallRequest, SipCore, SipMedia, SipReject
from .digest import DigestAuth
from .rtp_session import PortAllocator, RtpSession, public_address
from .sdp import AudioOffer, SdpError, SdpSession, parse_offer
from .udp_tcp import SipNetServers

if TYPE_CHECKING:
    from aiohttp import web

    from ..calls import Call, CallManager
    from ..config import ServerConfig

log = logging.getLogger("v2v.sip")


def _reject(e: DispatchError) -> SipReject:
    return SipReject(503 if e.status == 503 else 480, e.message[:80])


class RtpCallMedia(SipMedia):
    """A SIP call on plain RTP (G.711)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.awaiting_answer = False
        self.call: Call | None = None
        self.rtp: RtpSession | None = None
        self.sdp: SdpSession | None = None
        self.answer_sdp = ""
        self._tasks: set[asyncio.Task] = set()  # DTMF deliveries in flight

    @classmethod
    async def create(cls, sip: SipServers, creq: CallRequest) -> RtpCallMedia:
        self = cls()
        mgr = sip.manager
        offer = None
        if creq.offer_sdp.strip():
            try:
                offer = parse_offer(creq.offer_sdp)
            except SdpError as e:
                raise SipReject(488, str(e)[:80]) from e
        try:
            mgr.check_capacity(creq.transport)
        except DispatchError as e:
            raise _reject(e) from e
        sock = sip.ports.bind(sip.rtp_host)
        audio_in = QueueAudioInput(8000)
        playout = PlayoutBuffer()
        if offer is not None:
            codec, pt, dtmf_pt, remote = offer.codec, offer.payload_type, offer.dtmf_pt, (offer.address, offer.port)
        else:  # delayed offer: we offer PCMU/PCMA/telephone-event, the ACK answers
            codec, pt, dtmf_pt, remote = "PCMU", 0, 101, ("0.0.0.0", 0)
            self.awaiting_answer = True
        self.rtp = RtpSession(
            sock, codec, pt, dtmf_pt, remote, playout,
            audio_in.put, self._on_dtmf, self._on_timeout, timeout=sip.config.media_timeout,
        )
        if offer is not None:
            self.rtp.update_remote(remote, not offer.on_hold, offer.direction in ("sendrecv", "sendonly"))
        try:
            self.call = await mgr.create_call(
                creq.transport, creq.profile, audio_in, playout, f"{creq.remote[0]}:{creq.remote[1]}", start=False
            )
        except DispatchError as e:
            sock.close()
            raise _reject(e) from e
        except BaseException:
            sock.close()
            raise
        self.call.on_end(self._on_call_end)
        self.call.log.event("sip-call", sip_call_id=creq.call_id, codec=codec, rtp_port=self.rtp.local_port,
                            user=creq.user, from_uri=creq.from_uri, delayed_offer=offer is None)
        self.sdp = SdpSession(sip.public_host)
        if offer is not None:
            self.answer_sdp = self.sdp.build_answer(offer, self.rtp.local_port)
        else:
            self.answer_sdp = self.sdp.build_offer(self.rtp.local_port)
        return self

    async def start(self) -> None:
        assert self.rtp is not None and self.call is not None
        if self.call.ending:
            return
        await self.rtp.start()
        self.call.manager.start_call(self.call)

    def _apply(self, desc: AudioOffer) -> None:
        assert self.rtp is not None
        if desc.codec != self.rtp.codec.name or desc.payload_type != self.rtp.payload_type:
            self.rtp.codec = G711Codec(desc.codec)
            self.rtp.payload_type = desc.payload_type
        self.rtp.dtmf_pt = desc.dtmf_pt
        self.rtp.update_remote((desc.address, desc.port), not desc.on_hold, desc.direction in ("sendrecv", "sendonly"))

    async def reoffer(self, sdp: str) -> str:
        assert self.rtp is not None and self.sdp is not None
        offer = parse_offer(sdp)
        self._apply(offer)
        if self.call is not None:
            self.call.log.event("sip-hold" if offer.on_hold else "sip-unhold", direction=offer.direction)
        self.answer_sdp = self.sdp.build_answer(offer, self.rtp.local_port)
        return self.answer_sdp

    async def set_answer(self, sdp: str) -> None:
        self.awaiting_answer = False
        self._apply(parse_offer(sdp))

    def _on_dtmf(self, digit: str) -> None:
        if self.call is not None and not self.call.ending:
            task = asyncio.get_running_loop().create_task(self.dtmf(digit), name=f"sip-dtmf-{digit}")
            self._tasks.add(task)
            task.add_done_callback(self._dtmf_done)

    def _dtmf_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sip: DTMF delivery failed", exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def dtmf(self, digit: str) -> None:
        if self.call is not None and not self.call.ending:
            await self.call.session.dtmf(digit)

    def _on_timeout(self) -> None:
        if self.call is not None:
            self.call.end_soon("media-timeout")

    async def _on_call_end(self, reason: str) -> None:
        self.end_reason = reason
        self.ended.set()
        await self._cancel_tasks()
        if self.rtp is not None:
            await self.rtp.close()

    async def close(self, reason: str) -> None:
        if self.call is not None:
            await self.call.end(reason)
        elif self.rtp is not None:
            await self.rtp.close()
        await self._cancel_tasks()
        self.ended.set()


class WebRTCCallMedia(SipMedia):
    """A SIP-over-WebSocket call: the media is WebRTC, through :mod:`signaling.webrtc`."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.wc: Any = None
        self.answer_sdp = ""

    @classmethod
    async def create(cls, sip: SipServers, creq: CallRequest) -> WebRTCCallMedia:
        self = cls()
        mgr = sip.manager
        try:
            self.wc, self.answer_sdp = await mgr.webrtc.answer(
                creq.offer_sdp, f"{creq.remote[0]}:{creq.remote[1]}", transport=creq.transport,
                profile=creq.profile, call_id=f"{creq.transport}-{uuid.uuid4().hex[:12]}", rtvi=False, start=False,
            )
        except DispatchError as e:
            raise (SipReject(488, e.message[:80]) if e.status == 400 else _reject(e)) from e
        call = self.wc.call
        call.on_end(self._on_call_end)
        call.log.event("sip-call", sip_call_id=creq.call_id, user=creq.user, from_uri=creq.from_uri)
        return self

    async def start(self) -> None:
        self.wc.start()

    async def reoffer(self, sdp: str) -> str:
        self.answer_sdp = await self.wc.renegotiate(RTCSessionDescription(sdp=sdp, type="offer"), False)
        return self.answer_sdp

    async def dtmf(self, digit: str) -> None:
        call = self.wc.call if self.wc is not None else None
        if call is not None and not call.ending:
            await call.session.dtmf(digit)

    def _on_call_end(self, reason: str) -> None:
        self.end_reason = reason
        self.ended.set()

    async def close(self, reason: str) -> None:
        call = self.wc.call if self.wc is not None else None
        if call is not None:
            await call.end(reason)
        self.ended.set()


def parse_users(items: list[str] | str | None) -> dict[str, str]:
    """`["alice:secret", ...]` or "alice:secret,bob:pw" -> {"alice": "secret", ...}."""
    if not items:
        return {}
    if isinstance(items, str):
        items = items.split(",")
    users: dict[str, str] = {}
    for it in items:
        it = it.strip()
        if not it:
            continue
        user, sep, pw = it.partition(":")
        if not sep or not user:
            raise ValueError(f"SIP user must look like name:password, not {it!r}")
        users[user] = pw
    return users


@dataclass
class SipServers:
    """Everything SIP of one server process. ``await close()`` ends it all."""

    manager: CallManager
    config: ServerConfig
    core: SipCore = field(init=False)
    net: SipNetServers | None = None
    public_host: str = ""
    rtp_host: str = ""
    ports: PortAllocator = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.rtp_host = cfg.host
        self.public_host = public_address(cfg.sip_public_address, cfg.host)
        self.ports = PortAllocator.parse(cfg.rtp_ports)
        auth = DigestAuth(parse_users(cfg.sip_users), realm=cfg.extra.get("sip_realm", "v2v"))
        self.core = SipCore(
            self._media_factory, public_host=self.public_host, auth=auth, ring_ms=cfg.sip_ring_ms,
            profiles=cfg.extra.get("profiles", {}),
        )

    async def _media_factory(self, creq: CallRequest) -> SipMedia:
        if creq.transport == "sip_ws":
            return await WebRTCCallMedia.create(self, creq)
        return await RtpCallMedia.create(self, creq)

    async def start_net(self, port: int | None = None) -> None:
        self.net = SipNetServers(self.core)
        await self.net.start(self.config.host, self.config.sip_port if port is None else port)
        log.info("SIP over UDP and TCP on %s:%d (public address %s)", self.config.host, self.net.port,
                 self.public_host)

    @property
    def port(self) -> int:
        return self.net.port if self.net else 0

    async def close(self) -> None:
        await self.core.close()
        if self.net is not None:
            await self.net.close()


async def start_sip(app_or_manager: Any, config: ServerConfig) -> SipServers:
    """Start SIP over UDP/TCP (when ``config.sip_port`` is set) for a manager or an app."""
    from ..app import MANAGER

    manager = app_or_manager[MANAGER] if not hasattr(app_or_manager, "create_call") else app_or_manager
    servers = SipServers(manager, config)
    if config.sip_port is not None:
        await servers.start_net()
    return servers


def setup_app(app: web.Application, manager: CallManager, config: ServerConfig) -> None:
    """Plugin hook of :func:`signaling.app.create_app`: /sip + UDP/TCP servers."""

    from .ws import sip_websocket_handler

    servers = SipServers(manager, config)
    app[SIP_APP_KEY] = servers
    app.router.add_get("/sip", sip_websocket_handler)

    async def on_startup(app: web.Application) -> None:
        if config.sip_port is not None:
            await servers.start_net()

    async def on_shutdown(app: web.Application) -> None:
        await servers.close()

    app.on_startup.append(on_startup)
    # before the manager closes its calls, so BYEs go out
    app.on_shutdown.insert(0, on_shutdown)


def _app_key() -> Any:
    from aiohttp import web

    return web.AppKey("v2v_sip", SipServers)


SIP_APP_KEY = _app_key()
