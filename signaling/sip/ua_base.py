"""The SIP user agent server's shared state and plumbing (the base of :class:`~.core.SipCore`).

Transaction tables, responses (cached per server transaction), the Contact we
give out, Via fix-up (received/rport), admission (rate limit, allowlist,
digest), and dialog teardown (BYE out, 2xx retransmission). The method
handlers live in :mod:`.core`, :mod:`.registrar` and :mod:`.in_dialog`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from v2v.worker.tasks import TaskSet

from .addr import bracket, ip_family, is_wildcard, plain_ip, route_source
from .admission import Admission
from .dialog import T1, T2, Conn, Dialog, MediaFactory, ServerTx, new_branch, new_tag, resend_until_ack, tx_key
from .digest import DigestAuth
from .message import SipMessage, SipRequest, SipResponse, Via, make_response
from .refusals import Refusals, describe

log = logging.getLogger("v2v.sip")

TX_LINGER = 32.0
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, REGISTER"
SERVER = "v2v"
MAX_REGISTRATIONS = 10_000  # registered AORs kept; the oldest go first


class SipCoreBase:
    """State and helpers shared by the SIP method handlers (see the module docstring)."""

    def __init__(
        self,
        media_factory: MediaFactory,
        *,
        public_host: str,
        auth: DigestAuth | None = None,
        ring_ms: int = 0,
        profiles: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.media_factory = media_factory
        self.admission = admission
        self.public_host = public_host
        self.auth = auth if auth and auth.enabled else None
        self.ring_ms = ring_ms
        self.profiles = profiles or {}
        self.ports = ports or {}
        self.dialogs: dict[tuple[str, str], Dialog] = {}
        self.registrations: dict[str, tuple[str, float]] = {}  # aor -> (contact, expires at), oldest first
        self.max_registrations = MAX_REGISTRATIONS
        self.clock: Callable[[], float] = time.time  # registration expiry clock (tests move it)
        self._invite_txs: dict[tuple[str, str, str], ServerTx] = {}
        self._txs: dict[tuple[str, str, str], ServerTx] = {}
        self._client_txs: dict[str, asyncio.Future[SipResponse]] = {}
        self._tasks = TaskSet("sip")
        self._closing = False
        self._purger: asyncio.TimerHandle | None = None
        self.stats = {"bad": 0, "dropped": 0}
        self.refusals = Refusals()  # refused INVITEs: one WARNING each, v2v_sip_refusals_total (refusals.py)
        self.client_hooks: dict[str, Callable[[SipResponse], None]] = {}  # top Via branch -> handler (trunk.py)
        # requests handled by other modules (NOTIFY: transfer.py), tried after the core's own
        self.extra_handlers: dict[str, Callable[[SipRequest, Conn], None]] = {}

    # ------------------------------------------------------------ plumbing
    def _send(self, conn: Conn, msg: SipMessage) -> bytes:
        data = msg.serialize()
        conn.try_send(data)
        return data

    def _respond(self, req: SipRequest, conn: Conn, status: int, reason: str | None = None, *,
                 to_tag: str | None = None, body: bytes = b"", extra: list[tuple[str, str]] | None = None,
                 cache: bool = True) -> SipResponse:
        extra = list(extra or [])
        extra.append(("Server", SERVER))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        resp = make_response(req, status, reason, to_tag=to_tag, body=body, extra=extra)
        data = self._send(conn, resp)
        if cache and req.method not in ("ACK",):
            key = tx_key(req)
            table = self._invite_txs if req.method == "INVITE" else self._txs
            tx = table.get(key)
            if tx is None:
                table[key] = ServerTx(data, conn, time.monotonic())
            elif status >= 101 or tx.response is None:
                tx.response = data
        return resp

    def _refuse(self, req: SipRequest, conn: Conn, status: int, reason: str, detail: str | None = None, *,
                to_tag: str | None = None, extra: list[tuple[str, str]] | None = None) -> None:
        """Answer ``req`` with a refusal that says why (phrase; Warning on a 488) and record it once."""
        phrase, why = self.refusals.response_parts(status, reason, detail)
        self.refusals.record(req, conn, status, reason, detail)
        self._respond(req, conn, status, phrase, to_tag=to_tag, extra=[*(extra or []), *why])

    def _purge(self) -> None:
        """Drop transactions older than TX_LINGER; re-armed on a timer while any are left (not only on traffic)."""
        now = time.monotonic()
        for table in (self._txs, self._invite_txs):
            for k in [k for k, tx in table.items() if now - tx.created > TX_LINGER]:
                del table[k]
        if self._purger is None and not self._closing and (self._txs or self._invite_txs):
            self._purger = asyncio.get_running_loop().call_later(TX_LINGER / 4, self._purge_tick)

    def _purge_tick(self) -> None:
        self._purger = None
        self._purge()

    def local_host(self, conn: Conn) -> str:
        """Our address toward ``conn``'s peer (Contact, Via): the public one when its family fits the peer's."""
        v = ip_family(conn.remote[0])
        if conn.transport in ("WS", "WSS") or v is None or ip_family(self.public_host) in (None, v):
            return self.public_host
        if not is_wildcard(conn.local[0]) and ip_family(conn.local[0]) == v:
            return conn.local[0]
        return route_source(conn.remote[0]) or self.public_host  # dual-stack: the other family's address

    def contact(self, conn: Conn, req: SipRequest | None = None) -> str:
        if conn.transport in ("WS", "WSS"):
            return f"<sip:v2v@{self.public_host};transport=ws>"
        port = self.ports.get(conn.transport, conn.local[1])
        if conn.transport == "TLS" and req is not None and req.request_uri.scheme == "sips":
            return f"<sips:v2v@{bracket(self.local_host(conn))}:{port}>"  # RFC 3261 12.1.1: sips asks sips
        return f"<sip:v2v@{bracket(self.local_host(conn))}:{port};transport={conn.transport.lower()}>"

    def _fix_via(self, req: SipRequest, conn: Conn) -> None:
        """RFC 3261 18.2.1 received + RFC 3581 rport on the top Via."""
        if conn.transport in ("WS", "WSS"):
            return
        vias = req.headers.get_all("Via")
        top = Via.parse(vias[0])
        changed = False
        if plain_ip(top.host) != conn.remote[0]:
            top.params["received"] = conn.remote[0]
            changed = True
        if "rport" in top.params and top.params["rport"] is None:
            top.params["rport"] = str(conn.remote[1])
            top.params.setdefault("received", conn.remote[0])
            changed = True
        if changed:
            rest = vias[1:]
            req.headers.remove("Via")
            req.headers.items.insert(0, ("Via", str(top)))
            for i, v in enumerate(rest):
                req.headers.items.insert(1 + i, ("Via", v))

    def _admitted(self, req: SipRequest, conn: Conn) -> bool:
        """New INVITE or REGISTER: rate limit, then source allowlist or digest (see admission.py)."""
        adm = self.admission
        src = conn.remote[0]
        ws = conn.transport in ("WS", "WSS")
        # per source address; over WebSocket per connection (behind a TLS proxy all share one address)
        if adm is not None and not adm.rate_ok(f"{src}:{conn.remote[1]}" if ws else src, req.method):
            adm.refused(src, "rate-limit", describe(req))
            self._respond(req, conn, 503, "Service Unavailable (rate limit)", to_tag=new_tag(),
                          extra=[("Retry-After", str(adm.limiter.retry_after()))])
            return False
        if adm is not None and not ws and adm.allowed_source(src):
            return True
        if self.auth is not None:
            header = req.headers.get("Authorization")
            ok, stale, _user = self.auth.check(req.method, header)
            if ok:
                return True
            if adm is not None and not stale:
                adm.refused(src, "auth-failed" if header else "auth-required", describe(req))
            self._respond(req, conn, 401, to_tag=new_tag(),
                          extra=[("WWW-Authenticate", self.auth.challenge(stale))])
            return False
        if adm is not None and adm.allow and not ws:
            adm.refused(src, "not-allowed", describe(req))
            self._respond(req, conn, 403, "Forbidden (source not allowed)", to_tag=new_tag())
            return False
        return True

    def _find_dialog(self, req: SipRequest) -> Dialog | None:
        tag = req.to.tag
        if not tag:
            return None
        return self.dialogs.get((req.call_id, tag))

    # ------------------------------------------------------------ teardown
    async def _retransmit_2xx(self, d: Dialog, tx: ServerTx, conn: Conn, end_on_timeout: bool) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx until ACK; no ACK in 64*T1 ends the call."""
        if await resend_until_ack(d, tx, conn, while_live=True):
            return
        if end_on_timeout and d.state != "terminated":
            self.refusals.record(d.invite, conn, 408, "no-ack", "our 200 OK was never acknowledged; call ended")
            await self.end_dialog(d, "no ACK", send_bye=True)

    async def _watch_media(self, d: Dialog) -> None:
        assert d.media is not None
        await d.media.ended.wait()
        if d.state != "terminated":
            await self.end_dialog(d, d.media.end_reason or "media ended", send_bye=True)

    async def _close_media(self, d: Dialog, reason: str) -> None:
        if d.media is not None:
            await d.media.close(reason)

    async def end_dialog(self, d: Dialog, reason: str, send_bye: bool) -> None:
        if d.state == "terminated":
            return
        was_confirmed = d.final_sent
        d.state = "terminated"
        self.dialogs.pop(d.key, None)
        if not was_confirmed:
            # still ringing: answer the INVITE with an error
            self._refuse(d.invite, d.conn, 503 if self._closing else 480,
                         "shutting-down" if self._closing else "ended-before-answer", reason, to_tag=d.local_tag)
            d.final_sent = True
        if d.watch is not None and d.watch is not asyncio.current_task():
            d.watch.cancel()
        if d.media is not None:
            await d.media.close(reason)
        if send_bye and was_confirmed:
            await self._send_bye(d)
        log.info("sip: call %s ended (%s)", d.call_id, reason)

    async def _send_bye(self, d: Dialog) -> None:
        conn = d.conn
        if not conn.is_open():
            return
        branch = new_branch()
        ws = conn.transport in ("WS", "WSS")
        via_host = f"{secrets.token_hex(4)}.invalid" if ws else bracket(self.local_host(conn))
        via_port = "" if ws else f":{self.ports.get(conn.transport, conn.local[1])}"
        bye = d.bye_request(f"SIP/2.0/{conn.transport} {via_host}{via_port};branch={branch};rport", SERVER)
        fut: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._client_txs[branch] = fut
        data = bye.serialize()
        try:
            interval = T1
            deadline = time.monotonic() + (4.0 if not conn.reliable else 2.0)
            while time.monotonic() < deadline and conn.is_open():
                if not conn.try_send(data):
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(fut), min(interval, deadline - time.monotonic()))
                    return
                except TimeoutError:
                    if conn.reliable:
                        continue
                    interval = min(interval * 2, T2)
        finally:
            self._client_txs.pop(branch, None)
