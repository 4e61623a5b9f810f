"""Wiring SIP into a signaling node: dialogs here, media wherever the dispatcher puts it.

The SIP dialogs (UDP, TCP, WebSocket) stay on the signaling node; each call's
media (plain RTP for ``sip_udp``/``sip_tcp``, WebRTC for ``sip_ws``) is opened
through the :class:`~v2v.signaling.dispatch.Dispatcher`, in this process or on
a worker. :func:`setup_app` adds ``GET /sip`` and the startup/cleanup hooks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from aiohttp import web
from prometheus_client import Counter

from ..config import ServerConfig
from ..conn_limit import SourceLimit
from ..dispatch import CallEnded, CallEvent, Dispatcher, DispatchError, MediaRequest, TransferRequested, UnknownCall
from ..metrics import ServerMetrics
from .admission import REASONS, Admission, exposure_warning, parse_networks
from .core import CallRequest, SipCore, SipMedia, SipReject
from .digest import DigestAuth
from .outbound import setup_outbound
from .refusals import ADMISSION_STATUS
from .refusals import REASONS as INVITE_REASONS
from .rtp_session import public_address
from .tls import SipTlsServer, start_listener
from .transfer import SipTransfers
from .udp_tcp import SipNetServers
from .ws import sip_websocket_handler

__all__ = ["SIP_APP_KEY", "DispatchedMedia", "SipServers", "parse_users", "setup_app"]

log = logging.getLogger("v2v.sip")


def _reject(e: DispatchError) -> SipReject:
    """A dispatcher's refusal as a SIP status: bad offer 488, overload 503, else 480."""
    if e.status == 400:  # the core cuts the phrase and puts the whole reason in a Warning (refusals.py)
        return SipReject(488, e.message[:200])
    return SipReject(503 if e.status == 503 else 480, e.message[:200])


class DispatchedMedia(SipMedia):
    """A SIP call's media as the dialog sees it, held by whoever the dispatcher picked.

    The dialog drives it through the :class:`~v2v.signaling.dispatch.Dispatcher`
    by ``call_id``; a :class:`~v2v.signaling.dispatch.CallEnded` event from the
    call's holder sets :attr:`ended` (the core then sends BYE).
    """

    def __init__(self, dispatcher: Dispatcher, call_id: str) -> None:
        self.dispatcher = dispatcher
        self.call_id = call_id
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.answer_sdp = ""
        self.awaiting_answer = False

    def mark_ended(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def open(self, req: MediaRequest) -> None:
        try:
            answer = await self.dispatcher.open_media(req)
        except DispatchError as e:
            raise _reject(e) from e
        self.answer_sdp, self.awaiting_answer = answer.sdp, answer.awaiting_answer

    async def start(self) -> None:
        try:
            await self.dispatcher.start_media(self.call_id)
        except UnknownCall:
            self.mark_ended(self.end_reason or "hangup")

    async def reoffer(self, sdp: str) -> str:
        self.answer_sdp = await self.dispatcher.reoffer(self.call_id, sdp)
        return self.answer_sdp

    async def set_answer(self, sdp: str) -> None:
        self.awaiting_answer = False
        await self.dispatcher.set_answer(self.call_id, sdp)

    async def dtmf(self, digit: str) -> None:
        try:
            await self.dispatcher.dtmf(self.call_id, digit)
        except UnknownCall:
            pass  # the call is ending: the digit has nobody to reach

    async def close(self, reason: str) -> None:
        if not self.ended.is_set():
            try:
                await self.dispatcher.hangup(self.call_id, reason)
            except UnknownCall:
                pass  # already over
            self.mark_ended(reason)


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


class SipServers:
    """Everything SIP of one signaling node. ``await close()`` ends it all."""

    def __init__(self, dispatcher: Dispatcher, config: ServerConfig) -> None:
        self.dispatcher = dispatcher
        self.config = config
        self.net: SipNetServers | None = None
        self.public_host = public_address(config.sip_public_address, config.host)
        self._media: dict[str, DispatchedMedia] = {}
        auth = DigestAuth(parse_users(config.sip_users), realm=config.sip_realm)
        self.admission = Admission(parse_networks(config.sip_allow), rate=config.sip_rate)
        self.tcp_limit = SourceLimit(config.max_conns_per_source, "sip_tcp")
        self.tls: SipTlsServer | None = None  # --sip-tls-port (tls.py)
        self.tls_failed: Callable[[], None] | None = None  # counts failed TLS handshakes in /metrics
        self.core = SipCore(
            self._media_factory, public_host=self.public_host, auth=auth, ring_ms=config.sip_ring_ms,
            profiles=config.profiles, admission=self.admission,
        )
        self.transfers = SipTransfers(self.core, dispatcher)  # REFER out, NOTIFY in
        self.core.extra_handlers["NOTIFY"] = self.transfers.on_notify
        dispatcher.add_listener(self._on_event)

    def _on_event(self, event: CallEvent) -> None:
        media = self._media.get(event.call_id)
        if media is not None and isinstance(event, CallEnded):
            del self._media[event.call_id]
            media.mark_ended(event.reason)
        elif media is not None and isinstance(event, TransferRequested):
            self.transfers.on_event(event, media)

    async def _media_factory(self, creq: CallRequest) -> SipMedia:
        call_id = f"{creq.transport}-{uuid.uuid4().hex[:12]}"
        media = DispatchedMedia(self.dispatcher, call_id)
        self._media[call_id] = media
        req = MediaRequest(
            call_id=call_id, transport=creq.transport, offer_sdp=creq.offer_sdp,
            peer=f"{creq.remote[0]}:{creq.remote[1]}", profile=creq.profile, sip_call_id=creq.call_id,
            user=creq.user, from_uri=creq.from_uri,
        )
        try:
            await media.open(req)
        except BaseException:
            self._media.pop(call_id, None)
            raise
        return media

    async def start_net(self, port: int | None = None) -> None:
        port = self.config.sip_port if port is None else port
        if port is None:
            raise ValueError("SIP over UDP/TCP needs a port (--sip-port)")
        self.net = SipNetServers(self.core, self.tcp_limit)
        await self.net.start(self.config.host, port)
        log.info("SIP over UDP and TCP on %s:%d (public address %s)", self.config.host, self.net.port,
                 self.public_host)
        warning = exposure_warning(self.config.host, bool(self.config.sip_users), bool(self.config.sip_allow))
        if warning:
            log.warning("%s", warning)

    def count_refusals(self, metrics: ServerMetrics) -> None:
        """Count refusals in ``metrics`` as ``v2v_sip_refusals_total{status,reason}``: admission's and the core's."""
        counter = Counter("v2v_sip_refusals_total", "SIP INVITEs refused or failed (and REGISTERs refused by "
                          "admission), by status and reason", ["status", "reason"], registry=metrics.registry)
        for r in REASONS:
            counter.labels(status=str(ADMISSION_STATUS[r]), reason=r)
        for r, st in INVITE_REASONS.items():
            counter.labels(status=str(st), reason=r)
        self.admission.on_refusal = lambda reason: counter.labels(status=str(ADMISSION_STATUS.get(reason, 0)),
                                                                  reason=reason).inc()
        self.core.refusals.on_refusal = lambda status, reason: counter.labels(status=str(status), reason=reason).inc()
        self.tcp_limit.count_in(metrics)  # v2v_connection_refusals_total{listener="sip_tcp"}
        self.tls_failed = metrics.sip_tls_failures.inc

    async def start_tls(self, port: int | None = None) -> None:
        """SIP over TLS on ``--sip-tls-port`` (or ``port``) at ``--host``; ValueError for an unusable certificate."""
        cfg = self.config
        self.tls = await start_listener(self.core, cfg.host, (cfg.sip_tls_port if port is None else port) or 0,
                                        cfg.sip_tls_cert, cfg.sip_tls_key, self.tcp_limit, self.tls_failed)
        warning = exposure_warning(cfg.host, bool(cfg.sip_users), bool(cfg.sip_allow))
        if warning and self.net is None:  # TLS alone: start_net did not say it
            log.warning("%s", warning)

    @property
    def port(self) -> int:
        return self.net.port if self.net else 0

    async def close(self) -> None:
        await self.transfers.close()
        await self.core.close()
        if self.net is not None:
            await self.net.close()
        if self.tls is not None:
            await self.tls.close()


SIP_APP_KEY = web.AppKey("v2v_sip", SipServers)


def setup_app(app: web.Application, dispatcher: Dispatcher, config: ServerConfig) -> SipServers:
    """Add SIP to a signaling app: ``GET /sip`` and, with ``--sip-port``, UDP/TCP servers."""
    servers = SipServers(dispatcher, config)
    app[SIP_APP_KEY] = servers
    metrics = next((v for v in app.values() if isinstance(v, ServerMetrics)), None)  # what /metrics renders
    if metrics is not None:
        servers.count_refusals(metrics)
    app.router.add_get("/sip", sip_websocket_handler(servers.core))

    async def on_startup(app: web.Application) -> None:
        if config.sip_port is not None:
            await servers.start_net()
        if config.sip_tls_port is not None:
            await servers.start_tls()

    async def on_shutdown(app: web.Application) -> None:
        await servers.close()

    app.on_startup.append(on_startup)
    # before the dispatcher closes its calls, so BYEs go out
    app.on_shutdown.insert(0, on_shutdown)
    setup_outbound(app, servers, config, metrics)  # POST /api/calls/dial; --sip-trunk (outbound.py)
    return servers
