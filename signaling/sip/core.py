"""The SIP user agent server: transactions, dialogs, and call setup/teardown.

Transport neutral: UDP, TCP and WebSocket servers hand every received message
to :meth:`SipCore.receive` with a :class:`Conn` saying how to answer (UDP:
back to the source address, rport/received style; TCP and WS: the same
connection). Media is somebody else's job: a :data:`MediaFactory` turns an
INVITE's SDP offer into a :class:`SipMedia` (plain RTP or WebRTC).

Implemented: OPTIONS, REGISTER (digest when users are configured), INVITE
(100, 180 + ring delay, 200 with SDP; 2xx retransmitted over UDP until ACK),
ACK, BYE both ways, CANCEL (200 + 487), re-INVITE/UPDATE (hold/unhold,
session timers), INFO dtmf-relay; retransmitted requests get the cached
response; malformed requests get 400 when they can be answered at all.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable

from v2v.worker.dtmf import DTMF_DIGITS
from v2v.worker.tasks import TaskSet

from .admission import Admission
from .dialog import (
    T1,
    T2,
    CallRequest,
    Conn,
    Dialog,
    MediaFactory,
    ServerTx,
    SipMedia,
    SipReject,
    new_branch,
    new_tag,
    resend_until_ack,
    tx_key,
)
from .digest import DigestAuth
from .message import (
    NameAddr,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    make_response,
    parse,
    salvage_bad_request,
)
from .profiles import pick_profile

__all__ = ["CallRequest", "Conn", "Dialog", "MediaFactory", "SipCore", "SipMedia", "SipReject"]

log = logging.getLogger("v2v.sip")

TX_LINGER = 32.0
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, REGISTER"
SERVER = "v2v"
MAX_REGISTRATIONS = 10_000  # registered AORs kept; the oldest go first


class SipCore:
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

    def contact(self, conn: Conn) -> str:
        if conn.transport in ("WS", "WSS"):
            return f"<sip:v2v@{self.public_host};transport=ws>"
        port = self.ports.get(conn.transport, conn.local[1])
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"<sip:v2v@{host}:{port};transport={conn.transport.lower()}>"

    # ------------------------------------------------------------ entry
    def receive(self, data: bytes, conn: Conn) -> None:
        """Handle one message (never raises)."""
        if not data.strip():
            return  # keep-alive
        try:
            msg = parse(data, stream=conn.reliable)
            if isinstance(msg, SipRequest):
                msg.validate()
        except (SipParseError, ValueError) as e:
            self.stats["bad"] += 1
            resp = salvage_bad_request(data)
            if resp is not None:
                resp.reason = f"Bad Request ({str(e)[:60]})".replace("\r", " ").replace("\n", " ")
                self._send(conn, resp)
            else:
                self.stats["dropped"] += 1
            log.info("sip: malformed message from %s:%s (%s)%s", conn.remote[0], conn.remote[1], e,
                     "" if resp else ", dropped")
            return
        try:
            if isinstance(msg, SipResponse):
                self._on_response(msg)
            else:
                self._fix_via(msg, conn)
                self._on_request(msg, conn)
        except (SipParseError, ValueError) as e:
            log.info("sip: bad %s: %s", getattr(msg, "method", "response"), e)
            if isinstance(msg, SipRequest) and msg.method != "ACK":
                self._respond(msg, conn, 400, f"Bad Request ({str(e)[:60]})", cache=False)
        except Exception:  # a bug must not take the transport down
            log.exception("sip: failed to handle %s", getattr(msg, "method", "a response"))
            if isinstance(msg, SipRequest) and msg.method != "ACK":
                self._respond(msg, conn, 500, cache=False)
        if self._purger is None:
            self._purge()  # arms the purge timer for the transactions this message left

    def _fix_via(self, req: SipRequest, conn: Conn) -> None:
        """RFC 3261 18.2.1 received + RFC 3581 rport on the top Via."""
        if conn.transport in ("WS", "WSS"):
            return
        vias = req.headers.get_all("Via")
        top = Via.parse(vias[0])
        changed = False
        if top.host.strip("[]") != conn.remote[0]:
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

    def _on_response(self, resp: SipResponse) -> None:
        branch = resp.vias[0].branch or ""
        fut = self._client_txs.get(branch)
        if fut is not None and not fut.done() and resp.status >= 200:
            fut.set_result(resp)

    def _on_request(self, req: SipRequest, conn: Conn) -> None:
        self._purge()
        m = req.method
        if m == "ACK":
            self._on_ack(req)
            return
        key = tx_key(req)
        table = self._invite_txs if m == "INVITE" else self._txs
        if m != "CANCEL" and key in table:  # retransmission
            tx = table[key]
            if tx.response is not None:
                conn.try_send(tx.response)
            return
        if self._closing and m in ("INVITE", "REGISTER"):
            self._respond(req, conn, 503, extra=[("Retry-After", "5")])
            return
        handler = {
            "OPTIONS": self._on_options, "REGISTER": self._on_register, "INVITE": self._on_invite,
            "BYE": self._on_bye, "CANCEL": self._on_cancel, "UPDATE": self._on_update, "INFO": self._on_info,
        }.get(m)
        if handler is None:
            if self._find_dialog(req) is None and req.to.tag:
                self._respond(req, conn, 481)
            else:
                self._respond(req, conn, 501 if m not in ("MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "PRACK", "PUBLISH") else 405,
                              extra=[("Allow", ALLOW)])
            return
        handler(req, conn)

    # ------------------------------------------------------------ simple methods
    def _on_options(self, req: SipRequest, conn: Conn) -> None:
        self._respond(req, conn, 200, to_tag=None if req.to.tag else new_tag(),
                      extra=[("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "timer"),
                             ("Contact", self.contact(conn))])

    def _admitted(self, req: SipRequest, conn: Conn) -> bool:
        """New INVITE or REGISTER: rate limit, then source allowlist or digest (see admission.py)."""
        adm = self.admission
        src = conn.remote[0]
        ws = conn.transport in ("WS", "WSS")
        # per source address; over WebSocket per connection (behind a TLS proxy all share one address)
        if adm is not None and not adm.rate_ok(f"{src}:{conn.remote[1]}" if ws else src, req.method):
            adm.refused(src, "rate-limit", req.method)
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
                adm.refused(src, "auth-failed" if header else "auth-required", req.method)
            self._respond(req, conn, 401, to_tag=new_tag(),
                          extra=[("WWW-Authenticate", self.auth.challenge(stale))])
            return False
        if adm is not None and adm.allow and not ws:
            adm.refused(src, "not-allowed", req.method)
            self._respond(req, conn, 403, "Forbidden (source not allowed)", to_tag=new_tag())
            return False
        return True

    def _purge_registrations(self) -> None:
        now = self.clock()
        for aor in [a for a, (_, until) in self.registrations.items() if until <= now]:
            del self.registrations[aor]

    def _on_register(self, req: SipRequest, conn: Conn) -> None:
        if not self._admitted(req, conn):
            return
        self._purge_registrations()
        extra: list[tuple[str, str]] = []
        default_exp = req.headers.get("Expires")
        aor = req.to.uri
        for raw in req.headers.get_all("Contact"):
            if raw.strip() == "*":
                self.registrations.pop(aor, None)
                continue
            c = NameAddr.parse(raw)
            exp_s = c.params.get("expires") or default_exp or "3600"
            exp = min(int(exp_s), 86400) if exp_s.isdigit() else 3600
            if exp == 0:
                self.registrations.pop(aor, None)
                continue
            c.params["expires"] = str(exp)
            self.registrations.pop(aor, None)  # a refresh makes it the newest
            self.registrations[aor] = (c.uri, self.clock() + exp)
            while len(self.registrations) > self.max_registrations:
                del self.registrations[next(iter(self.registrations))]
            extra.append(("Contact", str(c)))
            extra.append(("Expires", str(exp)))
        self._respond(req, conn, 200, to_tag=None if req.to.tag else new_tag(), extra=extra)

    def _find_dialog(self, req: SipRequest) -> Dialog | None:
        tag = req.to.tag
        if not tag:
            return None
        return self.dialogs.get((req.call_id, tag))

    def _on_info(self, req: SipRequest, conn: Conn) -> None:
        d = self._find_dialog(req)
        if d is None:
            self._respond(req, conn, 481)
            return
        ctype = req.content_type
        digit = None
        body = req.body.decode("utf-8", "replace")
        if ctype == "application/dtmf-relay":
            m = re.search(r"(?im)^\s*signal\s*=\s*(\S+)", body)
            digit = m.group(1) if m else None
        elif ctype == "application/dtmf":
            digit = body.strip() or None
        if digit is not None:
            digit = {"10": "*", "11": "#"}.get(digit, digit).upper()
            if len(digit) != 1 or digit not in DTMF_DIGITS:
                self._respond(req, conn, 400, "Bad DTMF digit")
                return
        self._respond(req, conn, 200)
        if digit and d.media is not None:
            self._tasks.spawn(d.media.dtmf(digit), f"sip-dtmf-{d.call_id}")

    def _on_update(self, req: SipRequest, conn: Conn) -> None:
        d = self._find_dialog(req)
        if d is None:
            self._respond(req, conn, 481)
            return
        self._tasks.spawn(self._refresh(d, req, conn), f"sip-update-{d.call_id}")

    async def _refresh(self, d: Dialog, req: SipRequest, conn: Conn) -> None:
        """re-INVITE or UPDATE: new offer (hold/unhold) and/or session refresh."""
        extra = [("Contact", self.contact(conn)), ("Allow", ALLOW)]
        se = req.headers.get("Session-Expires")
        if se:
            extra += [("Session-Expires", _refresher_uac(se)), ("Require", "timer")]
        contact = req.contact
        if contact is not None:
            d.remote_target = contact.uri
        body = b""
        if req.body and req.content_type == "application/sdp" and d.media is not None:
            try:
                body = (await d.media.reoffer(req.body.decode("utf-8", "replace"))).encode()
            except Exception as e:
                log.info("sip: re-offer rejected on %s: %s", d.call_id, e)
                self._respond(req, conn, 488)
                return
        elif req.method == "INVITE" and d.media is not None:
            body = d.media.answer_sdp.encode()  # offerless re-INVITE: re-send the current session
        self._respond(req, conn, 200, body=body, extra=extra)
        if req.method == "INVITE" and not conn.reliable:
            d.acked.clear()
            tx = self._invite_txs.get(tx_key(req))
            if tx is not None:
                self._tasks.spawn(self._retransmit_2xx(d, tx, conn, end_on_timeout=False), f"sip-2xx-{d.call_id}")

    # ------------------------------------------------------------ INVITE
    def _on_invite(self, req: SipRequest, conn: Conn) -> None:
        if req.to.tag:
            d = self._find_dialog(req)
            if d is None:
                self._respond(req, conn, 481)
                return
            d.conn = conn
            self._invite_txs[tx_key(req)] = ServerTx(None, conn, time.monotonic(), d)
            self._respond(req, conn, 100)
            self._tasks.spawn(self._refresh(d, req, conn), f"sip-reinvite-{d.call_id}")
            return
        if not self._admitted(req, conn):
            return
        unsupported = [x.strip() for r in req.headers.get_all("Require") for x in r.split(",")
                       if x.strip() and x.strip().lower() != "timer"]
        if unsupported:  # e.g. 100rel: RFC 3261 8.2.2.3
            self._respond(req, conn, 420, to_tag=new_tag(), extra=[("Unsupported", ", ".join(unsupported))])
            return
        if req.body and req.content_type not in ("application/sdp", ""):
            self._respond(req, conn, 415, extra=[("Accept", "application/sdp")])
            return
        if not req.body and conn.transport in ("WS", "WSS"):
            self._respond(req, conn, 488, "Offer Required")  # WebRTC media needs the caller's offer
            return
        req_uri = req.request_uri
        contact = req.contact
        d = Dialog(
            call_id=req.call_id, local_tag=new_tag(), remote_tag=req.from_.tag or "", invite=req, conn=conn,
            remote_target=contact.uri if contact else req.from_.uri, remote_cseq=req.cseq[0],
            route_set=list(req.headers.get_all("Record-Route")),
        )
        se = req.headers.get("Session-Expires")
        if se and "timer" in (req.headers.get("Supported") or "") + (req.headers.get("Require") or ""):
            d.session_expires = _refresher_uac(se)
        self.dialogs[d.key] = d
        self._invite_txs[tx_key(req)] = ServerTx(None, conn, time.monotonic(), d)
        self._respond(req, conn, 100)
        creq = CallRequest(
            call_id=req.call_id, transport=conn.label,
            profile=pick_profile(req_uri.user, self.profiles), user=req_uri.user,
            offer_sdp=req.body.decode("utf-8", "replace"), remote=conn.remote, from_uri=req.from_.uri,
        )
        d.task = self._tasks.spawn(self._setup(d, req, conn, creq), f"sip-invite-{d.call_id}")

    async def _setup(self, d: Dialog, req: SipRequest, conn: Conn, creq: CallRequest) -> None:
        extra = [("Contact", self.contact(conn)), ("Allow", ALLOW)]
        extra += [("Record-Route", rr) for rr in d.route_set]
        try:
            try:
                media = await self.media_factory(creq)
            except SipReject as e:
                if not d.cancelled.is_set():
                    self._final_error(d, req, conn, e.status, e.reason)
                return
            except Exception:
                log.exception("sip: cannot set up %s", d.call_id)
                if not d.cancelled.is_set():
                    self._final_error(d, req, conn, 500, None)
                return
            d.media = media
            if d.cancelled.is_set() or d.state == "terminated":
                await media.close("hangup")
                return
            self._respond(req, conn, 180, to_tag=d.local_tag, extra=extra)
            ring = asyncio.create_task(asyncio.sleep(self.ring_ms / 1000)) if self.ring_ms > 0 else None
            if ring is not None:
                cancel_wait = asyncio.create_task(d.cancelled.wait())
                await asyncio.wait({ring, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                ring.cancel()
                cancel_wait.cancel()
            if d.cancelled.is_set() or d.state == "terminated":
                await media.close("hangup")
                return
            extra_ok = list(extra)
            extra_ok.append(("Supported", "timer"))
            if d.session_expires:
                extra_ok += [("Session-Expires", d.session_expires), ("Require", "timer")]
            self._respond(req, conn, 200, to_tag=d.local_tag, body=media.answer_sdp.encode(), extra=extra_ok)
            d.final_sent = True
            d.state = "confirmed"
            await media.start()
            d.watch = self._tasks.spawn(self._watch_media(d), f"sip-watch-{d.call_id}")
            if not conn.reliable:
                tx = self._invite_txs.get(tx_key(req))
                if tx is not None:
                    await self._retransmit_2xx(d, tx, conn, end_on_timeout=True)
        except asyncio.CancelledError:
            if d.media is not None:
                await d.media.close("shutdown")
            raise

    def _final_error(self, d: Dialog, req: SipRequest, conn: Conn, status: int, reason: str | None) -> None:
        d.final_sent = True
        d.state = "terminated"
        self.dialogs.pop(d.key, None)
        self._respond(req, conn, status, reason, to_tag=d.local_tag)
        if not conn.reliable:
            tx = self._invite_txs.get(tx_key(req))
            if tx is not None:
                # Timers G/H: the dialog is already over, the response goes on until ACK
                self._tasks.spawn(resend_until_ack(d, tx, conn, while_live=False), f"sip-final-{d.call_id}")

    async def _retransmit_2xx(self, d: Dialog, tx: ServerTx, conn: Conn, end_on_timeout: bool) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx until ACK; no ACK in 64*T1 ends the call."""
        if await resend_until_ack(d, tx, conn, while_live=True):
            return
        if end_on_timeout and d.state != "terminated":
            log.info("sip: no ACK for %s, ending the call", d.call_id)
            await self.end_dialog(d, "no ACK", send_bye=True)

    async def _watch_media(self, d: Dialog) -> None:
        assert d.media is not None
        await d.media.ended.wait()
        if d.state != "terminated":
            await self.end_dialog(d, d.media.end_reason or "media ended", send_bye=True)

    def _on_ack(self, req: SipRequest) -> None:
        d = self.dialogs.get((req.call_id, req.to.tag or ""))
        if d is None:
            # ACK for a non-2xx final (the dialog is gone): match the transaction
            for tx in self._invite_txs.values():
                if tx.dialog is not None and tx.dialog.call_id == req.call_id and tx.dialog.local_tag == req.to.tag:
                    tx.dialog.acked.set()
            return
        first_ack = not d.acked.is_set()
        d.acked.set()
        if first_ack and req.body and d.media is not None and d.media.awaiting_answer:
            # delayed offer: the 200 carried our offer, the ACK carries the answer
            self._tasks.spawn(self._ack_answer(d, req.body.decode("utf-8", "replace")), f"sip-ack-sdp-{d.call_id}")

    async def _ack_answer(self, d: Dialog, sdp: str) -> None:
        assert d.media is not None
        try:
            await d.media.set_answer(sdp)
        except Exception as e:  # RFC 3261 13.2.2.4: a bad answer in ACK -> BYE
            log.info("sip: unusable answer in ACK for %s: %s", d.call_id, e)
            await self.end_dialog(d, "error", send_bye=True)

    def _on_cancel(self, req: SipRequest, conn: Conn) -> None:
        key = tx_key(req)
        tx = self._invite_txs.get((key[0], "INVITE", key[2]))
        if tx is None or tx.dialog is None:
            self._respond(req, conn, 481)
            return
        self._respond(req, conn, 200)
        d = tx.dialog
        if d.final_sent:
            return
        d.cancelled.set()
        self._final_error(d, d.invite, tx.conn, 487, None)
        self._tasks.spawn(self._close_media(d, "hangup"), f"sip-cancel-{d.call_id}")

    async def _close_media(self, d: Dialog, reason: str) -> None:
        if d.media is not None:
            await d.media.close(reason)

    def _on_bye(self, req: SipRequest, conn: Conn) -> None:
        d = self._find_dialog(req)
        if d is None:
            self._respond(req, conn, 481)
            return
        self._respond(req, conn, 200)
        self._tasks.spawn(self.end_dialog(d, "hangup", send_bye=False), f"sip-bye-{d.call_id}")

    # ------------------------------------------------------------ teardown
    async def end_dialog(self, d: Dialog, reason: str, send_bye: bool) -> None:
        if d.state == "terminated":
            return
        was_confirmed = d.final_sent
        d.state = "terminated"
        self.dialogs.pop(d.key, None)
        if not was_confirmed:
            # still ringing: answer the INVITE with an error
            self._respond(d.invite, d.conn, 503 if self._closing else 480, to_tag=d.local_tag)
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
        via_host = f"{secrets.token_hex(4)}.invalid" if ws else self.public_host
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

    def connection_lost(self, conn_is: Callable[[Conn], bool]) -> None:
        """A TCP/WS connection closed: its calls end (nobody can send us BYE)."""
        for d in list(self.dialogs.values()):
            if conn_is(d.conn):
                if not d.final_sent:
                    d.cancelled.set()
                self._tasks.spawn(self.end_dialog(d, "peer-closed", send_bye=False), f"sip-lost-{d.call_id}")

    async def close(self) -> None:
        self._closing = True
        if self._purger is not None:
            self._purger.cancel()
        await asyncio.gather(*(self.end_dialog(d, "shutdown", send_bye=True) for d in list(self.dialogs.values())),
                             return_exceptions=True)
        await self._tasks.cancel_all()


def _refresher_uac(se: str) -> str:
    value, _, _params = se.partition(";")
    value = value.strip()
    return f"{value if value.isdigit() else '1800'};refresher=uac"

