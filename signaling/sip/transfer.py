"""Blind call transfer over SIP: REFER out in the caller's dialog, NOTIFY sipfrag back (RFC 3515).

:class:`SipTransfers` carries out a :class:`~v2v.signaling.dispatch.TransferRequested`
event (from the model's ``transfer_call`` tool or the HTTP action, wherever the
call's worker runs) for a dialog held on this signaling node:

1. REFER in the dialog with ``Refer-To: <target>`` and ``Referred-By`` (UDP: resent
   at T1, 2*T1, ... until a final response);
2. a refusal (any final status but 2xx) or no answer: the transfer failed, the call goes on;
3. on 202 Accepted: wait for the NOTIFY whose ``message/sipfrag`` body carries a
   final status (every NOTIFY is answered 200); a 2xx sipfrag: the transfer
   worked and the call ends on our side (BYE, reason ``transferred``); a
   failure sipfrag, a terminated subscription without a final status, or none in
   :data:`NOTIFY_TIMEOUT_S`: failed, the call goes on.

The outcome goes back to the call's holder with
:meth:`~v2v.signaling.dispatch.Dispatcher.transfer_done`. The core routes
in-dialog NOTIFYs here (:meth:`SipTransfers.on_notify`); REFER's responses
come back through its client transactions like a BYE's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field

from v2v.worker.tasks import TaskSet

from ..dispatch import Dispatcher, DispatchError, TransferRequested, TransferResult
from .dialog import T1, T2, Conn, Dialog, SipMedia, new_branch
from .message import NameAddr, SipParseError, SipRequest, SipResponse, SipUri
from .ua_base import SipCoreBase

__all__ = ["NOTIFY_TIMEOUT_S", "REFER_TIMEOUT_S", "SipTransfers", "refer_to_uri", "sipfrag_status"]

log = logging.getLogger("v2v.sip")

REFER_TIMEOUT_S = 6.0  # the REFER's final response (a shortened Timer F: the tool waits on it)
NOTIFY_TIMEOUT_S = 20.0  # after 202: the NOTIFY with the target's final answer (its ringing included)
USER_AGENT = "v2v"
_SIPFRAG = re.compile(r"^\s*SIP/2\.0\s+(\d{3})(?:[ \t]+([^\r\n]*))?", re.I)


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a ``message/sipfrag`` body (``SIP/2.0 200 OK``), or None."""
    m = _SIPFRAG.match(body.decode("utf-8", "replace"))
    return (int(m.group(1)), (m.group(2) or "").strip()) if m else None


def refer_to_uri(target: str, d: Dialog) -> str:
    """``target`` as a Refer-To URI: a sip:/sips:/tel: URI as is; a bare number or name goes to the
    other side's domain: the trunk that sent the call (the host of its From URI), or for a call we
    dialled, the host we dialled (our INVITE's To URI)."""
    t = target.strip().strip("<>")
    if re.match(r"^(sips?|tel):", t, re.I):
        return t
    try:
        host = SipUri.parse((d.invite.to if d.we_called else d.invite.from_).uri).host
    except (SipParseError, ValueError):
        host = d.conn.remote[0]
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"sip:{t}@{host}"


@dataclass
class _Pending:
    """One transfer in flight: the final sipfrag status, when a NOTIFY brings it."""

    final: asyncio.Future[tuple[int, str]]
    notifies: list[int] = field(default_factory=list)


class SipTransfers:
    """The transfers of one signaling node's dialogs (see the module docstring)."""

    def __init__(self, core: SipCoreBase, dispatcher: Dispatcher) -> None:
        self.core = core
        self.dispatcher = dispatcher
        self._pending: dict[tuple[str, str], _Pending] = {}  # dialog key -> its transfer in flight
        self._tasks = TaskSet("sip-transfer")

    # -- entry points -------------------------------------------------------------
    def on_event(self, event: TransferRequested, media: SipMedia) -> None:
        """A transfer asked for a call whose dialog is here: run it (in the background)."""
        d = next((d for d in self.core.dialogs.values() if d.media is media), None)
        if d is None:
            self._tasks.spawn(self._answer(event, TransferResult(False, "the call is over")), "sip-transfer-gone")
            return
        self._tasks.spawn(self._run(event, d), f"sip-transfer-{d.call_id}")

    def on_notify(self, req: SipRequest, conn: Conn) -> None:
        """An in-dialog NOTIFY: answered 200 (481 outside a dialog); a final sipfrag settles the REFER."""
        tag = req.to.tag or ""
        d = self.core.dialogs.get((req.call_id, tag))
        if d is None:
            self.core._respond(req, conn, 481)
            return
        event = (req.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != "refer":
            self.core._respond(req, conn, 489)  # Bad Event: we subscribed to nothing else
            return
        self.core._respond(req, conn, 200)
        pending = self._pending.get(d.key)
        if pending is None or pending.final.done():
            return
        frag = sipfrag_status(req.body) if req.content_type == "message/sipfrag" else None
        if frag is not None:
            pending.notifies.append(frag[0])
            if frag[0] >= 200:
                pending.final.set_result(frag)
                return
        state = (req.headers.get("Subscription-State") or "").lower()
        if state.startswith("terminated"):  # the subscription ended without a final status
            pending.final.set_result((0, f"subscription {state}"))

    async def close(self) -> None:
        await self._tasks.cancel_all()

    # -- one transfer -----------------------------------------------------------------
    async def _run(self, event: TransferRequested, d: Dialog) -> None:
        result = await self.refer(d, event.target, event.reason)
        log.info("sip: transfer of %s to %s: %s (%s)", d.call_id, event.target,
                 "accepted" if result.ok else "failed", result.detail)
        await self._answer(event, result)
        if result.ok:
            await self.core.end_dialog(d, "transferred", send_bye=True)

    async def _answer(self, event: TransferRequested, result: TransferResult) -> None:
        try:
            await self.dispatcher.transfer_done(event.call_id, event.request_id, result)
        except DispatchError as e:
            log.info("sip: transfer result for %s not delivered: %s", event.call_id, e.message)

    async def refer(self, d: Dialog, target: str, reason: str = "") -> TransferResult:
        """Send REFER and wait for the outcome (see the module docstring)."""
        if d.state != "confirmed":
            return TransferResult(False, "the call is not established")
        if d.key in self._pending:
            return TransferResult(False, "a transfer of this call is already in progress")
        pending = _Pending(asyncio.get_running_loop().create_future())
        self._pending[d.key] = pending
        try:
            resp = await self._send(d, self._refer_request(d, refer_to_uri(target, d), reason))
            if resp is None:
                return TransferResult(False, f"no answer to REFER within {REFER_TIMEOUT_S:g} s")
            if resp.status >= 300:
                return TransferResult(False, f"the caller's side refused the transfer: {resp.status} {resp.reason}",
                                      resp.status)
            try:
                status, text = await asyncio.wait_for(asyncio.shield(pending.final), NOTIFY_TIMEOUT_S)
            except TimeoutError:
                return TransferResult(False, f"no final transfer status within {NOTIFY_TIMEOUT_S:g} s")
            if 200 <= status < 300:
                return TransferResult(True, f"transferred ({status} {text})".replace(" )", ")"), status)
            if status == 0:
                return TransferResult(False, f"the transfer ended without an answer ({text})")
            return TransferResult(False, f"the transfer target answered {status} {text}".rstrip(), status)
        finally:
            self._pending.pop(d.key, None)

    def _via(self, conn: Conn) -> tuple[str, str]:
        branch = new_branch()
        ws = conn.transport in ("WS", "WSS")
        host = f"{secrets.token_hex(4)}.invalid" if ws else self.core.public_host
        port = "" if ws else f":{self.core.ports.get(conn.transport, conn.local[1])}"
        return branch, f"SIP/2.0/{conn.transport} {host}{port};branch={branch};rport"

    def _refer_request(self, d: Dialog, refer_to: str, reason: str) -> tuple[str, SipRequest]:
        """REFER in dialog ``d`` (next local CSeq, From and To as in any request of ours: Dialog.request)."""
        branch, via = self._via(d.conn)
        req = d.request("REFER", via)
        h = req.headers
        host = f"[{self.core.public_host}]" if ":" in self.core.public_host else self.core.public_host
        h.add("Contact", f"<sip:v2v@{host}>")
        h.add("Refer-To", f"<{refer_to}>")
        h.add("Referred-By", str(NameAddr("", d.local_uri, {})))
        h.add("User-Agent", USER_AGENT)
        if reason.strip():
            h.add("Subject", re.sub(r"[\r\n]+", " ", reason.strip())[:120])
        return branch, req

    async def _send(self, d: Dialog, tx: tuple[str, SipRequest]) -> SipResponse | None:
        """A non-INVITE client transaction: resent over UDP (T1 doubling to T2) until a final response."""
        branch, req = tx
        conn = d.conn
        fut: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self.core._client_txs[branch] = fut
        data = req.serialize()
        interval = T1
        deadline = time.monotonic() + REFER_TIMEOUT_S
        try:
            while True:
                if not conn.try_send(data):
                    return None
                left = deadline - time.monotonic()
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), left if conn.reliable else min(interval, left))
                except TimeoutError:
                    if conn.reliable or time.monotonic() >= deadline:
                        return None
                    interval = min(interval * 2, T2)
        finally:
            self.core._client_txs.pop(branch, None)
