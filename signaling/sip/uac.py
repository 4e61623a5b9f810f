"""Outbound calls: the SIP user agent client (RFC 3261 13.2, 17.1.1) that dials through the trunk.

:meth:`Dialer.dial` opens the call's media through the core's media factory
exactly like an inbound INVITE without an offer (the dispatcher's worker binds
RTP and writes our offer, ``awaiting_answer``), sends the INVITE to the trunk
(Timer A retransmissions, Timer B), reports ringing (180/183), answers one
401/407 with digest credentials, CANCELs when nobody answers within the dial
timeout, and ACKs every final response (re-ACKing retransmissions for 64*T1).
A 2xx gives its SDP answer to the media (``set_answer``), starts it, and
registers a :class:`UacDialog` in the core, whose in-dialog handling then
answers the callee's BYE, re-INVITE, UPDATE and INFO; our BYE (the call ended
on our side) goes out through ``SipCore.end_dialog`` as for any call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from v2v.worker.tasks import TaskSet

from .dialog import T1, T2, CallRequest, Conn, Dialog, SipMedia, SipReject, new_branch, new_tag
from .message import Headers, SipRequest, SipResponse, SipUri
from .trunk import TIMER_B, USER_AGENT, TrunkLink, with_credentials

__all__ = ["DialOutcome", "Dialer", "UacDialog", "outcome_of"]

log = logging.getLogger("v2v.sip.dial")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
BUSY = (486, 600)
NO_ANSWER = (408, 480, 487)
OUTCOMES = ("answered", "busy", "no-answer", "rejected", "failed")


@dataclass
class DialOutcome:
    """How a dial ended: ``answered`` (``call_id`` names the call), ``busy``, ``no-answer``,
    ``rejected`` (``sip_status``/``reason``) or ``failed`` (``detail`` says why)."""

    outcome: str
    sip_status: int = 0
    reason: str = ""
    detail: str = ""
    call_id: str = ""  # v2v's call id (as in logs, webhooks, /metrics): answered calls only
    sip_call_id: str = ""
    ringing: bool = False
    elapsed_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "ringing": self.ringing, "elapsed_ms": self.elapsed_ms}
        if self.call_id:
            out["call_id"] = self.call_id
        if self.sip_call_id:
            out["sip_call_id"] = self.sip_call_id
        if self.sip_status:
            out["sip_status"], out["reason"] = self.sip_status, self.reason
        if self.detail:
            out["detail"] = self.detail
        return out


def outcome_of(status: int, cancelled: bool) -> str:
    """The outcome of a final non-2xx response (``cancelled``: we sent CANCEL for no answer)."""
    if status in BUSY:
        return "busy"
    if cancelled or status in NO_ANSWER:
        return "no-answer"
    return "rejected"


@dataclass
class UacDialog(Dialog):
    """A dialog we created by calling out: our requests in it (BYE) have our From and their To
    (with their tag), see :meth:`Dialog.request`."""

    we_called = True


@dataclass
class _Attempt:
    """One dial's INVITE transaction state."""

    invite: SipRequest
    conn: Conn
    deadline: float  # monotonic: CANCEL when no final response by then
    ringing: bool = False
    provisional: bool = False
    cancel: bytes | None = None  # our CANCEL, once sent
    cancel_done: bool = False  # its final response came
    cancel_interval: float = T1
    give_up: float = field(default_factory=lambda: time.monotonic() + TIMER_B)  # Timer B; none once ringing

    @property
    def branch(self) -> str:
        return self.invite.vias[0].branch or ""


class Dialer:
    """Places outbound calls through a trunk; the answered ones join the core's dialogs."""

    def __init__(self, core: Any, link: TrunkLink, dial_timeout: float) -> None:
        self.core = core  # SipCore: media_factory, dialogs, end_dialog
        self.link = link
        self.dial_timeout = dial_timeout
        self._tasks = TaskSet("sip-dial")
        self._closing = False

    async def dial(self, to: str, profile: str | None, timeout: float | None = None) -> DialOutcome:
        """Call ``to`` (a sip: URI or a number at the trunk); never raises for what the far end does."""
        started = time.monotonic()
        sip_call_id = f"{secrets.token_hex(12)}@v2v"
        out = DialOutcome("failed", sip_call_id=sip_call_id)
        try:
            out = await self._dial(to, profile, timeout or self.dial_timeout, sip_call_id)
        except OSError as e:
            out.detail = f"trunk unreachable: {e}"[:200]
        except SipReject as e:  # the media could not be opened (overload, bad profile)
            out.sip_status, out.reason, out.detail = e.status, e.reason or "", "no media for the call"
        except ValueError as e:  # a malformed final response (SipParseError) or target
            out.detail = f"bad SIP from the trunk: {e}"[:120]
        except Exception:  # a bug: the API still gets an answer, the media is closed (finally in _dial)
            log.exception("sip: dial %s failed", sip_call_id)
            out.detail = "internal error"
        out.elapsed_ms = int((time.monotonic() - started) * 1000)
        return out

    async def _dial(self, to: str, profile: str | None, timeout: float, sip_call_id: str) -> DialOutcome:
        link = self.link
        uri = link.trunk.target_uri(to)
        addr = await link.resolve()
        conn = await link.connect(addr)
        creq = CallRequest(call_id=sip_call_id, transport=conn.label, profile=profile,
                           user=SipUri.parse(uri).user, offer_sdp="", remote=addr, from_uri=uri)
        media: SipMedia = await self.core.media_factory(creq)
        answered = False
        try:
            att, resp = await self._invite(uri, conn, sip_call_id, media, timeout)
            out = DialOutcome("failed", sip_call_id=sip_call_id, ringing=att.ringing)
            if resp is None:
                out.detail = "no answer to our CANCEL" if att.cancel else "no response from the trunk"
                return out
            out.sip_status, out.reason = resp.status, resp.reason
            if resp.status in (401, 407):
                out.detail = ("the trunk refused our credentials" if link.trunk.credentials else
                              "the trunk wants credentials (--sip-trunk-user, --sip-trunk-password)")
                return out
            if resp.status >= 300:
                out.outcome = outcome_of(resp.status, att.cancel is not None)
                return out
            answered = await self._answered(att, resp, media)
            if att.cancel is not None:  # answered as we gave up: that call is ended at once
                out.outcome, out.detail = "no-answer", "answered after the dial timeout (ended)"
            elif answered:
                out.outcome, out.call_id = "answered", getattr(media, "call_id", "")
            else:
                out.detail = "the callee's SDP answer is unusable"
            return out
        finally:
            if not answered:
                await media.close("hangup")

    async def _invite(self, uri: str, conn: Conn, sip_call_id: str, media: SipMedia,
                      timeout: float) -> tuple[_Attempt, SipResponse | None]:
        """The INVITE and, after a 401/407, one more with credentials (CSeq + 1, same dialog ids)."""
        link = self.link
        from_ = f"<{link.trunk.from_uri()}>;tag={new_tag()}"
        deadline = time.monotonic() + timeout
        att: _Attempt | None = None
        resp: SipResponse | None = None
        for cseq in (1, 2):
            invite = link.request("INVITE", uri, from_, f"<{uri}>", sip_call_id, cseq, extra=[
                ("Contact", link.contact()), ("Allow", ALLOW),  # no "Supported: timer": we do not refresh
                ("Content-Type", "application/sdp")], body=media.answer_sdp.encode())
            if att is not None and resp is not None:
                header = self._credentials(resp, invite)
                if header is None:
                    break
                invite.headers.add(*header)
            att = _Attempt(invite, conn, deadline, ringing=att.ringing if att else False)
            resp = await self._transact(att)
            if resp is None or resp.status not in (401, 407) or att.cancel is not None:
                break
        assert att is not None
        return att, resp

    def _credentials(self, resp: SipResponse, invite: SipRequest) -> tuple[str, str] | None:
        creds = self.link.trunk.credentials
        if creds is None:
            return None
        return with_credentials(resp, creds, "INVITE", invite.uri)

    async def _transact(self, att: _Attempt) -> SipResponse | None:
        """Send the INVITE, retransmit until a provisional (Timer A, B), CANCEL at the deadline.

        -> the final response (ACKed, retransmissions re-ACKed in the background), or None.
        """
        q = self.link.open_tx(att.branch)
        data = att.invite.serialize()
        att.conn.try_send(data)
        interval, handed = T1, False
        try:
            while True:
                now = time.monotonic()
                if att.provisional and att.cancel is None and now >= att.deadline:
                    self._send_cancel(att)
                if now >= att.give_up:
                    return None
                wait = att.give_up - now
                if att.cancel is None and not att.provisional:
                    wait = min(wait, interval)
                elif att.cancel is not None and not att.cancel_done:
                    wait = min(wait, att.cancel_interval)
                elif att.cancel is None:
                    wait = min(wait, att.deadline - now)
                try:
                    resp = await asyncio.wait_for(q.get(), max(wait, 0.0))
                except TimeoutError:
                    if att.conn.reliable:
                        continue  # TCP/TLS: no retransmissions, Timer B alone
                    if att.cancel is None and not att.provisional:
                        att.conn.try_send(data)  # Timer A
                        interval *= 2
                    elif att.cancel is not None and not att.cancel_done:
                        att.conn.try_send(att.cancel)  # Timer E of the CANCEL
                        att.cancel_interval = min(att.cancel_interval * 2, T2)
                    continue
                try:
                    final = self._on_response(att, resp)
                except ValueError as e:  # a response with a malformed CSeq/To: dropped, as a lost one
                    log.info("sip: dial %s: bad response ignored: %s", att.invite.call_id, e)
                    continue
                if final is not None:
                    ack = self._ack(att, final)
                    att.conn.try_send(ack)  # now: a retried INVITE must not overtake it
                    handed = True  # the linger task re-ACKs retransmissions and closes the transaction
                    self._tasks.spawn(self._linger(att, q, ack), f"sip-dial-ack-{att.branch}")
                    return final
        finally:
            if not handed:
                self.link.close_tx(att.branch)

    def _on_response(self, att: _Attempt, resp: SipResponse) -> SipResponse | None:
        """A response on the INVITE's branch: the final one, or None (provisional, CANCEL's own)."""
        num, method = resp.cseq
        if method == "CANCEL":
            att.cancel_done = att.cancel_done or resp.status >= 200
            return None
        if method != "INVITE" or num != att.invite.cseq[0]:
            return None
        if resp.status < 200:
            if not att.provisional and att.cancel is None:
                att.give_up = math.inf  # a proceeding INVITE waits for its final response (or our CANCEL)
            att.provisional = True
            if resp.status in (180, 183) and not att.ringing:
                att.ringing = True
                log.debug("sip: dial %s ringing (%d %s)", att.invite.call_id, resp.status, resp.reason)
            if att.cancel is None and time.monotonic() >= att.deadline:
                self._send_cancel(att)
            return None
        return resp

    def _send_cancel(self, att: _Attempt) -> None:
        """RFC 3261 9.1: CANCEL with the INVITE's Via (branch), URI, From, To, Call-ID, CSeq number."""
        inv = att.invite
        h = Headers()
        h.add("Via", inv.header("Via"))
        h.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            h.add(name, inv.header(name))
        h.add("CSeq", f"{inv.cseq[0]} CANCEL")
        for r in inv.headers.get_all("Route"):
            h.add("Route", r)
        h.add("User-Agent", USER_AGENT)
        att.cancel = SipRequest(h, b"", method="CANCEL", uri=inv.uri).serialize()
        att.conn.try_send(att.cancel)
        att.give_up = time.monotonic() + TIMER_B  # the 487 (or a late 200) should come by then
        log.debug("sip: dial %s not answered in time, CANCEL sent", inv.call_id)

    def _ack(self, att: _Attempt, resp: SipResponse) -> bytes:
        """The ACK of a final response: non-2xx on the INVITE's branch (17.1.1.3), 2xx a new
        request to the remote target through the dialog's route set (13.2.2.4)."""
        inv = att.invite
        h = Headers()
        to_val = resp.header("To")
        if resp.status >= 300:
            uri = inv.uri
            h.add("Via", inv.header("Via"))
            routes = inv.headers.get_all("Route")
        else:
            contact = resp.contact
            uri = contact.uri if contact else inv.uri
            h.add("Via", self.link.via(new_branch()))
            routes = list(reversed(resp.headers.get_all("Record-Route"))) or inv.headers.get_all("Route")
        h.add("Max-Forwards", "70")
        h.add("From", inv.header("From"))
        h.add("To", to_val)
        h.add("Call-ID", inv.call_id)
        h.add("CSeq", f"{inv.cseq[0]} ACK")
        for r in routes:
            h.add("Route", r)
        if inv.headers.get("Authorization") or inv.headers.get("Proxy-Authorization"):
            for name in ("Authorization", "Proxy-Authorization"):
                for v in inv.headers.get_all(name):
                    h.add(name, v)
        h.add("User-Agent", USER_AGENT)
        return SipRequest(h, b"", method="ACK", uri=uri).serialize()

    async def _linger(self, att: _Attempt, q: asyncio.Queue[SipResponse], ack: bytes) -> None:
        """ACK the final response's retransmissions for 64*T1 (Timer D / 2xx re-ACK)."""
        deadline = time.monotonic() + TIMER_B
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    resp = await asyncio.wait_for(q.get(), left)
                except TimeoutError:
                    return
                if resp.status >= 200 and resp.cseq == (att.invite.cseq[0], "INVITE"):
                    att.conn.try_send(ack)
        finally:
            self.link.close_tx(att.branch)

    async def _answered(self, att: _Attempt, resp: SipResponse, media: SipMedia) -> bool:
        """A 2xx: the answer to the media, the dialog into the core, media started. False: unusable
        answer (the call is ended with BYE)."""
        inv = att.invite
        contact = resp.contact
        d = UacDialog(
            call_id=inv.call_id, local_tag=inv.from_.tag or "", remote_tag=resp.to.tag or "", invite=inv,
            conn=att.conn, remote_target=contact.uri if contact else inv.uri, local_cseq=inv.cseq[0],
            route_set=list(reversed(resp.headers.get_all("Record-Route"))) or inv.headers.get_all("Route"),
            media=media, state="confirmed", final_sent=True,
        )
        d.acked.set()
        self.core.dialogs[d.key] = d
        ok = bool(resp.body) and att.cancel is None and not self._closing
        if ok:
            try:
                await media.set_answer(resp.body.decode("utf-8", "replace"))
            except Exception as e:  # a bad answer in the 2xx: ACK (done) then BYE (RFC 3261 13.2.2.4)
                log.info("sip: dial %s: unusable answer: %s", inv.call_id, e)
                ok = False
        if not ok:
            await self.core.end_dialog(d, "hangup", send_bye=True)
            return False
        try:
            await media.start()
        except Exception:  # the worker lost it: the dialog must not outlive its media
            await self.core.end_dialog(d, "error", send_bye=True)
            raise
        d.watch = self._tasks.spawn(self._watch(d), f"sip-dial-watch-{inv.call_id}")
        return True

    async def _watch(self, d: UacDialog) -> None:
        """The call ended on our side (model, media timeout, hang-up by API): BYE the callee."""
        assert d.media is not None
        await d.media.ended.wait()
        if d.state != "terminated":
            await self.core.end_dialog(d, d.media.end_reason or "media ended", send_bye=True)

    async def close(self) -> None:
        """Stop dialling (in-progress dials end as failed); answered calls are the core's to end."""
        self._closing = True
        await self._tasks.cancel_all()
