"""Outbound calls on a signaling node: ``POST /api/calls/dial``, the trunk registration, metrics.

With ``--sip-trunk`` set, :func:`setup_outbound` builds the :class:`~.trunk.TrunkLink`,
the :class:`~.uac.Dialer` and (``--sip-register``) the
:class:`~.register_client.Registration`, and adds the dial endpoint. The
endpoint is under ``/api/``, so the app's middleware guards it like every
call-creating endpoint (origin check; a token with ``--auth-secret``; a token
that pins a profile may only dial with it). It waits for the outcome and
answers JSON: ``answered`` (200, with the ``call_id``, which its dialer may end
with ``DELETE /api/calls/{call_id}``), ``busy``/``rejected``
(502, with the SIP status and reason), ``no-answer`` (504), ``failed`` (502;
504 when the trunk never answered; 503 when no worker could take the call).
Each dial is one log line and a count in ``v2v_sip_dials_total{outcome}``;
``v2v_sip_registered`` is 1 while the registration holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from ..auth import TokenClaims
from ..config import ServerConfig
from ..dispatch import CallEnded, CallEvent, UnknownCall
from ..metrics import ServerMetrics
from .profiles import pick_profile
from .register_client import Registration
from .trunk import Trunk, TrunkLink
from .uac import OUTCOMES, Dialer, DialOutcome

__all__ = ["OUTBOUND_APP_KEY", "Outbound", "http_status", "setup_outbound"]

log = logging.getLogger("v2v.sip.dial")

MAX_DIAL_TIMEOUT_S = 300.0  # a request's own "timeout" is capped here
MAX_OWNED = 10_000  # dialed calls remembered for DELETE /api/calls/{id}


def http_status(out: DialOutcome) -> int:
    """The HTTP status of a dial's answer (the JSON body says which outcome)."""
    if out.outcome == "answered":
        return 200
    if out.outcome == "no-answer":
        return 504
    if out.outcome == "failed" and out.sip_status == 503:
        return 503  # our own overload: no worker could take the call (the trunk's 503 is "rejected")
    if out.outcome == "failed" and not out.sip_status:
        return 504 if "no response" in out.detail else 502
    return 502


class Outbound:
    """The trunk, its dialer and its registration, for one signaling node."""

    def __init__(self, servers: Any, config: ServerConfig, metrics: ServerMetrics | None) -> None:
        self.config = config
        trunk = Trunk.parse(config.sip_trunk, config.sip_trunk_user, config.sip_trunk_password, config.sip_caller_id)
        self.link = TrunkLink(trunk, servers.core, lambda: servers.net.udp if servers.net is not None else None,
                              servers.public_host, lambda: servers.port)
        self.dialer = Dialer(servers.core, self.link, config.sip_dial_timeout)
        self.registration = Registration(self.link) if config.sip_register else None
        self.dials = Counter("v2v_sip_dials_total", "Outbound calls placed through the trunk, by outcome",
                             ["outcome"], registry=metrics.registry if metrics else None)
        for o in OUTCOMES:
            self.dials.labels(outcome=o)
        reg = self.registration
        if reg is not None and metrics is not None:
            Gauge("v2v_sip_registered", "1 while our registration at the trunk's registrar holds (--sip-register)",
                  registry=metrics.registry).set_function(lambda: 1.0 if reg.registered else 0.0)
        self._pending: set[asyncio.Task[DialOutcome]] = set()
        self.dispatcher = servers.dispatcher
        self.owners: dict[str, str] = {}  # answered call id -> the dialer's token subject ("" without tokens)
        servers.dispatcher.add_listener(self._on_event)

    def _on_event(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            self.owners.pop(event.call_id, None)

    async def hangup(self, call_id: str, owner: str) -> None:
        """End a call this node dialed (its BYE goes out); UnknownCall unless ``owner`` dialed it."""
        if self.owners.get(call_id) != owner:
            raise UnknownCall(f"no call {call_id!r} dialed here by this caller")
        await self.dispatcher.hangup(call_id, "hangup")

    async def dial(self, to: str, profile: str | None, timeout: float | None = None, owner: str = "") -> DialOutcome:
        """Place one call, count it, log it (one line); ``owner`` (a token subject) may hang it up."""
        started = time.monotonic()
        task = asyncio.ensure_future(self.dialer.dial(to, profile, timeout))
        self._pending.add(task)
        try:
            out = await asyncio.shield(task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not task.cancelled() or (me is not None and me.cancelling()):
                raise
            out = DialOutcome("failed", detail="the server is shutting down",  # close() ended the dial
                              elapsed_ms=int((time.monotonic() - started) * 1000))
        finally:
            self._pending.discard(task)
        self.dials.labels(outcome=out.outcome).inc()
        if out.call_id:
            self.owners[out.call_id] = owner
            while len(self.owners) > MAX_OWNED:  # calls that ended before we noted them: the oldest go
                del self.owners[next(iter(self.owners))]
        status = f" sip_status={out.sip_status} reason={out.reason!r}" if out.sip_status else ""
        detail = f" detail={out.detail!r}" if out.detail else ""
        log.info("sip: dial to=%s profile=%s outcome=%s%s ringing=%s elapsed_ms=%d call_id=%s sip_call_id=%s%s",
                 to, profile or "-", out.outcome, status, "yes" if out.ringing else "no", out.elapsed_ms,
                 out.call_id or "-", out.sip_call_id or "-", detail)
        return out

    async def start(self) -> None:
        if self.registration is not None:
            self.registration.start()

    async def close(self) -> None:
        """unREGISTER, end the dials still ringing (their callers get ``failed``)."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self.registration is not None:
            await self.registration.close()
        await self.dialer.close()


OUTBOUND_APP_KEY = web.AppKey("v2v_outbound", Outbound)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _claims(request: web.Request) -> TokenClaims:
    """The verified token the app's middleware stored on the request (none without --auth-secret)."""
    return next((v for v in request.values() if isinstance(v, TokenClaims)), TokenClaims())


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads((await request.read()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


async def post_dial(request: web.Request) -> web.Response:
    """``POST /api/calls/dial`` ``{"to": "sip:+1555...@trunk", "profile": "NAME", "timeout": S}``."""
    outbound = request.app.get(OUTBOUND_APP_KEY)
    if outbound is None:
        return _error(404, "outbound calls are not configured on this server (--sip-trunk)")
    body = await _body(request)
    if body is None:
        return _error(400, "body must be a JSON object")
    to, profile, timeout = body.get("to"), body.get("profile"), body.get("timeout")
    if not isinstance(to, str) or not to.strip() or len(to) > 256:
        return _error(400, "'to' must be a sip: URI or a phone number")
    if profile is not None and not isinstance(profile, str):
        return _error(400, "'profile' must be a string")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= MAX_DIAL_TIMEOUT_S):
        return _error(400, f"'timeout' must be a number of seconds in (0, {MAX_DIAL_TIMEOUT_S:g}]")
    claims = _claims(request)
    if claims.profile and profile not in (None, "", claims.profile):
        return _error(403, f"the access token is for profile {claims.profile!r}")
    profile = profile or claims.profile or None
    if profile is not None and pick_profile(profile, outbound.config.profiles) is None:
        return _error(400, f"unknown profile {profile!r} (echo or one of --profiles)")
    try:
        outbound.link.trunk.target_uri(to)
    except ValueError as e:
        return _error(400, str(e)[:120])
    out = await outbound.dial(to, profile.lower() if profile else None, float(timeout) if timeout else None,
                              owner=claims.subject)
    return web.json_response(out.to_json(), status=http_status(out))


async def delete_call(request: web.Request) -> web.Response:
    """``DELETE /api/calls/{call_id}``: hang up a call this server dialed (only its dialer's token subject)."""
    outbound = request.app.get(OUTBOUND_APP_KEY)
    call_id = request.match_info["call_id"]
    try:
        if outbound is None:
            raise UnknownCall("no dialed call here")
        await outbound.hangup(call_id, _claims(request).subject)
    except UnknownCall:
        return _error(404, f"no call {call_id[:40]!r} dialed here by this caller")
    return web.json_response({"status": "success"})


def setup_outbound(app: web.Application, servers: Any, config: ServerConfig,
                   metrics: ServerMetrics | None) -> Outbound | None:
    """``POST /api/calls/dial`` and ``DELETE /api/calls/{id}`` always (404 without a trunk); the trunk's
    parts with ``--sip-trunk``."""
    app.router.add_post("/api/calls/dial", post_dial)
    app.router.add_delete("/api/calls/{call_id}", delete_call)
    if not config.sip_trunk:
        return None
    outbound = Outbound(servers, config, metrics)
    app[OUTBOUND_APP_KEY] = outbound

    async def on_startup(app: web.Application) -> None:
        await outbound.start()

    async def on_shutdown(app: web.Application) -> None:
        await outbound.close()

    async def on_cleanup(app: web.Application) -> None:
        await outbound.link.close()  # the TCP/TLS connection, once its calls had their BYE

    app.on_startup.append(on_startup)  # after SIP's own: the UDP socket is up
    app.on_shutdown.insert(0, on_shutdown)  # before SIP closes its socket
    app.on_cleanup.append(on_cleanup)
    return outbound
