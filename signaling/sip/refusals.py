"""Every refused or failed INVITE explained: one WARNING line and a count by status and reason.

:class:`Refusals` is the core's record of INVITEs (and re-INVITE/UPDATE
offers) it did not take: a 488 for an offer it cannot use, 420, 415, 481,
503 (overload, shutting down), 480, 500, and a 200 never ACKed (counted as
408, as RFC 3261's timer H would). Each one is logged once at WARNING with
the status, a reason label, the detail, the source and the offer's codecs
(its rtpmap names), and counted through ``on_refusal(status, reason)`` --
``v2v_sip_refusals_total{status,reason}`` in /metrics, the counter admission
refusals (403, 503 rate limit, 401 challenges) already feed. A CANCEL's 487
is the caller's own doing and is not a refusal.

A 488 also carries the reason in its status line and in a ``Warning`` header
(RFC 3261 20.43: 301 incompatible network address formats for an address
family mismatch, 305 incompatible media format for no common codec, 399
otherwise).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable

from .addr import bracket
from .dialog import Conn
from .message import REASONS as PHRASES
from .message import SipRequest

log = logging.getLogger("v2v.sip")

# reason label -> the status it usually goes with (label values are a fixed set: /metrics stays small)
REASONS: dict[str, int] = {
    "bad-offer": 488,  # unparseable SDP, a host name in c=, no audio stream
    "no-common-codec": 488,  # nothing offered that we take (--sip-codecs)
    "address-family": 488,  # IPv6 offer with no IPv6 media address here, or the reverse
    "srtp-policy": 488,  # --sip-srtp refuses the offer's profile or crypto
    "offer-required": 488,  # an offerless INVITE over WebSocket (WebRTC needs the caller's offer)
    "unsupported-extension": 420,
    "unsupported-media-type": 415,
    "unknown-dialog": 481,
    "overloaded": 503,  # no capacity, draining, no worker
    "shutting-down": 503,
    "unavailable": 480,  # the media could not be set up elsewhere
    "ended-before-answer": 480,  # the call ended while ringing (the caller's connection went, ...)
    "no-ack": 408,  # our 200 OK was never acknowledged
    "internal-error": 500,
}
ADMISSION_STATUS = {"not-allowed": 403, "rate-limit": 503, "auth-required": 401, "auth-failed": 401}  # admission.py
STATIC_CODECS = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000", 18: "G729/8000"}
_WARN_CODE = {"address-family": 301, "no-common-codec": 305}
_CTRL = re.compile(r"[\x00-\x1f\x7f\"\\]")


def clean(text: str, limit: int = 160) -> str:
    """Caller-influenced text made safe for a log line, a reason phrase and a quoted Warning text."""
    return _CTRL.sub("?", text)[:limit]


def classify(status: int, detail: str | None) -> str:
    """The reason label of a refusal from its status and detail text (the worker's error message)."""
    text = detail or ""
    if status == 488:
        if "no common codec" in text or "PCMU or PCMA" in text:
            return "no-common-codec"
        if "SRTP" in text or "crypto" in text:
            return "srtp-policy"
        if re.search(r"\bIPv[46]\b", text):
            return "address-family"
        if "Offer Required" in text:
            return "offer-required"
        return "bad-offer"
    return {503: "overloaded", 480: "unavailable", 500: "internal-error"}.get(status, "other")


def offer_codecs(body: bytes | str) -> list[str]:
    """The codecs an SDP offers on its audio lines (rtpmap names, static payload types named), in order."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    names: dict[int, str] = {}
    fmts: list[int] = []
    audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            audio = bool(parts) and parts[0] == "audio"
            if audio:
                fmts += [int(f) for f in parts[3:] if f.isascii() and f.isdigit() and len(f) <= 3]
        elif audio and line.startswith("a=rtpmap:"):
            num, _, enc = line[9:].partition(" ")
            if num.isascii() and num.isdigit() and len(num) <= 3:
                names[int(num)] = "/".join(enc.strip().split("/")[:2])
    out: list[str] = []
    for pt in fmts:
        name = clean(names.get(pt) or STATIC_CODECS.get(pt) or f"pt{pt}", 40)
        if name not in out:
            out.append(name)
    return out[:12]


def describe(req: SipRequest) -> str:
    """``INVITE (offer: PCMU/8000, opus/48000)``, ``INVITE (no offer)`` or the method alone."""
    if req.method not in ("INVITE", "UPDATE"):
        return req.method
    codecs = offer_codecs(req.body) if req.body else []
    return f"{req.method} (offer: {', '.join(codecs) or 'none'})" if req.body else f"{req.method} (no offer)"


class Refusals:
    """Counts and logs refused INVITEs; ``on_refusal(status, reason)`` feeds /metrics."""

    def __init__(self, on_refusal: Callable[[int, str], None] | None = None) -> None:
        self.on_refusal = on_refusal
        self.counts: Counter[tuple[int, str]] = Counter()

    def record(self, req: SipRequest, conn: Conn, status: int, reason: str, detail: str | None = None, *,
               exc_info: bool = False) -> None:
        """One refusal: count it, log it once (call it once per refused request, not per retransmission)."""
        self.counts[(status, reason)] += 1
        if self.on_refusal is not None:
            self.on_refusal(status, reason)
        log.warning("sip: refused %s from %s %s:%s: %d %s%s; Call-ID %s", describe(req), conn.transport.lower(),
                    bracket(conn.remote[0]), conn.remote[1], status, reason, f" ({clean(detail)})" if detail else "",
                    clean(req.call_id, 80), exc_info=exc_info)

    @staticmethod
    def response_parts(status: int, reason: str, detail: str | None) -> tuple[str | None, list[tuple[str, str]]]:
        """The reason phrase and extra headers that say why: a 488 names it in both."""
        if not detail:
            return None, []
        if status != 488:  # the usual phrase, the detail after it
            return f"{PHRASES.get(status, 'Error')} ({clean(detail, 80)})", []
        return clean(detail, 100), [("Warning", f'{_WARN_CODE.get(reason, 399)} v2v "{clean(detail, 200)}"')]


__all__ = ["ADMISSION_STATUS", "REASONS", "Refusals", "classify", "clean", "describe", "offer_codecs"]
