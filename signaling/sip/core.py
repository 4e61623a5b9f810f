"""The SIP user agent server: transactions, dialogs, and call setup/teardown.

Transport neutral: UDP, TCP and WebSocket servers hand every received message
to :meth:`SipCore.receive` with a :class:`Conn` saying how to answer (UDP:
back to the source address, rport/received style; TCP and WS: the same
connection). Media is somebody else's job: a :data:`MediaFactory` turns an
INVITE's SDP offer into a :class:`SipMedia` (plain RTP or WebRTC).

Implemented (handlers split over this module, registrar.py and in_dialog.py): OPTIONS, REGISTER (digest when users are configured), INVITE
(100, 180 + ring delay, 200 with SDP; 2xx retransmitted over UDP until ACK),
ACK, BYE both ways, CANCEL (200 + 487), re-INVITE/UPDATE (hold/unhold,
session timers), INFO dtmf-relay; retransmitted requests get the cached
response; malformed requests get 400 when they can be answered at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .dialog import (
    CallRequest,
    Conn,
    Dialog,
    MediaFactory,
    ServerTx,
    SipMedia,
    SipReject,
    new_tag,
    resend_until_ack,
    tx_key,
)
from .in_dialog import InDialogMixin, refresher_uac
from .message import SipParseError, SipRequest, SipResponse, parse, salvage_bad_request
from .profiles import pick_profile
from .refusals import classify
from .registrar import RegistrarMixin
from .ua_base import ALLOW, log

__all__ = ["CallRequest", "Conn", "Dialog", "MediaFactory", "SipCore", "SipMedia", "SipReject"]


class SipCore(InDialogMixin, RegistrarMixin):
    """The SIP UAS: entry point, dispatch, OPTIONS, INVITE/ACK/CANCEL/BYE (state and helpers in :mod:`.ua_base`)."""

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

    def _on_response(self, resp: SipResponse) -> None:
        branch = resp.vias[0].branch or ""
        hook = self.client_hooks.get(branch)  # our outbound transactions (trunk.py: dials, REGISTER)
        if hook is not None:
            hook(resp)
            return
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
            if m == "INVITE":
                self._refuse(req, conn, 503, "shutting-down", "shutting down", extra=[("Retry-After", "5")])
            else:
                self._respond(req, conn, 503, extra=[("Retry-After", "5")])
            return
        handler = {
            "OPTIONS": self._on_options, "REGISTER": self._on_register, "INVITE": self._on_invite,
            "BYE": self._on_bye, "CANCEL": self._on_cancel, "UPDATE": self._on_update, "INFO": self._on_info,
        }.get(m) or self.extra_handlers.get(m)
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
                             ("Contact", self.contact(conn, req))])

    # ------------------------------------------------------------ INVITE
    def _on_invite(self, req: SipRequest, conn: Conn) -> None:
        if req.to.tag:
            d = self._find_dialog(req)
            if d is None:
                self._refuse(req, conn, 481, "unknown-dialog", "re-INVITE for no dialog of ours")
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
            self._refuse(req, conn, 420, "unsupported-extension", f"Require: {', '.join(unsupported)}",
                         to_tag=new_tag(), extra=[("Unsupported", ", ".join(unsupported))])
            return
        if req.body and req.content_type not in ("application/sdp", ""):
            self._refuse(req, conn, 415, "unsupported-media-type", f"Content-Type: {req.content_type}",
                         extra=[("Accept", "application/sdp")])
            return
        if not req.body and conn.transport in ("WS", "WSS"):
            self._refuse(req, conn, 488, "offer-required", "Offer Required")  # WebRTC media needs the caller's offer
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
            d.session_expires = refresher_uac(se)
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
        extra = [("Contact", self.contact(conn, req)), ("Allow", ALLOW)]
        extra += [("Record-Route", rr) for rr in d.route_set]
        try:
            try:
                media = await self.media_factory(creq)
            except SipReject as e:
                if not d.cancelled.is_set():
                    self._final_error(d, req, conn, e.status, e.reason, refused=True)
                return
            except Exception as e:
                if not d.cancelled.is_set():
                    self.refusals.record(req, conn, 500, "internal-error", f"{type(e).__name__}: {e}", exc_info=True)
                    self._final_error(d, req, conn, 500, None)
                else:
                    log.exception("sip: cannot set up %s", d.call_id)
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

    def _final_error(self, d: Dialog, req: SipRequest, conn: Conn, status: int, reason: str | None,
                     refused: bool = False) -> None:
        """A final error for the INVITE; ``refused``: a refusal, recorded and explained (see refusals.py)."""
        d.final_sent = True
        d.state = "terminated"
        self.dialogs.pop(d.key, None)
        if refused:
            self._refuse(req, conn, status, classify(status, reason), reason, to_tag=d.local_tag)
        else:
            self._respond(req, conn, status, reason, to_tag=d.local_tag)
        if not conn.reliable:
            tx = self._invite_txs.get(tx_key(req))
            if tx is not None:
                # Timers G/H: the dialog is already over, the response goes on until ACK
                self._tasks.spawn(resend_until_ack(d, tx, conn, while_live=False), f"sip-final-{d.call_id}")

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

    def _on_bye(self, req: SipRequest, conn: Conn) -> None:
        d = self._find_dialog(req)
        if d is None:
            self._respond(req, conn, 481)
            return
        self._respond(req, conn, 200)
        self._tasks.spawn(self.end_dialog(d, "hangup", send_bye=False), f"sip-bye-{d.call_id}")

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


