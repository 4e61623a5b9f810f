"""In-dialog requests: INFO (DTMF relay), UPDATE and re-INVITE (new offer, hold, session refresh)."""

from __future__ import annotations

import re

from v2v.worker.dtmf import DTMF_DIGITS

from .dialog import Conn, Dialog, tx_key
from .message import SipRequest
from .refusals import classify
from .ua_base import ALLOW, SipCoreBase


class InDialogMixin(SipCoreBase):
    """INFO/UPDATE/re-INVITE handling for :class:`~.core.SipCore`."""

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
        extra = [("Contact", self.contact(conn, req)), ("Allow", ALLOW)]
        se = req.headers.get("Session-Expires")
        if se:
            extra += [("Session-Expires", refresher_uac(se)), ("Require", "timer")]
        contact = req.contact
        if contact is not None:
            d.remote_target = contact.uri
        body = b""
        if req.body and req.content_type == "application/sdp" and d.media is not None:
            try:
                body = (await d.media.reoffer(req.body.decode("utf-8", "replace"))).encode()
            except Exception as e:  # the worker's BadRequest (or its transport's error): 488 saying why
                detail = str(getattr(e, "message", "") or e) or type(e).__name__
                self._refuse(req, conn, 488, classify(488, detail), detail)
                return
        elif req.method == "INVITE" and d.media is not None:
            body = d.media.answer_sdp.encode()  # offerless re-INVITE: re-send the current session
        self._respond(req, conn, 200, body=body, extra=extra)
        if req.method == "INVITE" and not conn.reliable:
            d.acked.clear()
            tx = self._invite_txs.get(tx_key(req))
            if tx is not None:
                self._tasks.spawn(self._retransmit_2xx(d, tx, conn, end_on_timeout=False), f"sip-2xx-{d.call_id}")


def refresher_uac(se: str) -> str:
    value, _, _params = se.partition(";")
    value = value.strip()
    return f"{value if value.isdigit() else '1800'};refresher=uac"
