"""SDES-SRTP (RFC 4568) for SIP calls on plain RTP: ``a=crypto`` and the packet protector.

A trunk offers ``m=audio ... RTP/SAVP`` (or ``RTP/SAVPF``) with one or more
``a=crypto:<tag> <suite> inline:<base64 key||salt>[|lifetime][|MKI:len]``
lines. :func:`negotiate` applies the ``--sip-srtp`` policy to the offer's
chosen audio line and picks the first crypto line we can use
(``AES_CM_128_HMAC_SHA1_80`` or ``_32``, no MKI, no session parameters but
the harmless ``WSH``); the answer carries the same tag and suite with a key of
our own (:func:`secure_answer` rewrites the plain answer's audio line).

Policies: ``allow`` (default) answers SRTP offers with SRTP and plain offers
with plain RTP; ``require`` refuses a plain offer with 488 and makes our own
offers (INVITE without SDP) SAVP with a crypto line; ``off`` refuses an SRTP
offer with 488 (the reason says why) rather than answering it with a
rejected stream, so a trunk configured for SRTP learns at once.

:class:`SrtpProtector` wraps pylibsrtp (libsrtp 2): :meth:`~SrtpProtector.protect`
and :meth:`~SrtpProtector.unprotect` take RTP or RTCP (told apart by the
packet type byte, RFC 5761) and never raise: a packet that fails
authentication or the replay check is dropped (``None``) and counted by reason.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pylibsrtp import Error as LibSrtpError
from pylibsrtp import Policy, Session

from .sdp import AudioOffer, MediaLine, SdpError

__all__ = [
    "POLICIES", "SECURE_PROTOS", "SUITES", "CallSrtp", "CryptoAttr", "SrtpPlan", "SrtpProtector", "SrtpRefused",
    "negotiate", "offer_plan", "parse_crypto", "secure_answer", "secure_offer",
]

log = logging.getLogger("v2v.sip.srtp")

POLICIES = ("off", "allow", "require")
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
# suite -> libsrtp profile; both use a 128-bit key and a 112-bit salt (30 bytes inline)
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_SALT_LEN = 30
HARMLESS_PARAMS = ("WSH=",)  # window size hint: libsrtp's default window serves
# auth: the tag does not match (tampered, another key); replay: seen before or too old; plain: too short
# to carry SRTP's tag (a packet sent in clear, e.g. baresip's RTCP "PING"); no-key: the peer's key is not
# known yet (our offer, before its answer); error: anything else libsrtp refuses
DROP_REASONS = ("auth", "replay", "plain", "no-key", "error")
SRTCP_TRAILER = 4 + 10  # E flag + index, and an 80-bit tag for both suites (RFC 3711 section 3.4)
_CRYPTO_RE = re.compile(r"^crypto:(\d{1,9})\s+(\S+)\s+(\S+)(?:\s+(.*))?$", re.I)


class SrtpRefused(SdpError):
    """The offer does not meet the SRTP policy, or has no crypto line we can use (488 + this reason)."""


@dataclass(frozen=True)
class CryptoAttr:
    """One ``a=crypto`` line (RFC 4568 section 9.1) with a single inline key."""

    tag: int
    suite: str
    key: bytes  # master key || master salt, 30 bytes
    lifetime: str | None = None
    mki: str | None = None
    params: tuple[str, ...] = ()

    def line(self) -> str:
        """The attribute as SDP (without ``a=``)."""
        key = "inline:" + base64.b64encode(self.key).decode()
        if self.lifetime:
            key += "|" + self.lifetime
        if self.mki:
            key += "|" + self.mki
        return " ".join([f"crypto:{self.tag} {self.suite} {key}", *self.params])

    @property
    def usable(self) -> bool:
        """A suite we have, one key of the right length, no MKI, no session parameter that changes the wire."""
        return (self.suite in SUITES and len(self.key) == KEY_SALT_LEN and self.mki is None
                and all(p.upper().startswith(HARMLESS_PARAMS) for p in self.params))


def parse_crypto(attr: str) -> CryptoAttr:
    """Parse the value of an ``a=crypto`` attribute (``crypto:1 SUITE inline:...``); ValueError if malformed."""
    m = _CRYPTO_RE.match(attr.strip())
    if m is None:
        raise ValueError(f"malformed crypto attribute {attr[:60]!r}")
    tag, suite, key_params, rest = int(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
    first, _, more = key_params.partition(";")  # several keys (with MKIs): only the first is looked at
    if not first.lower().startswith("inline:"):
        raise ValueError("crypto key method is not inline")
    parts = first[7:].split("|")
    try:
        key = base64.b64decode(parts[0], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("crypto key is not base64") from None
    lifetime = mki = None
    for p in parts[1:]:
        if ":" in p:
            mki = p
        else:
            lifetime = p
    if more:
        mki = mki or "multiple-keys"
    return CryptoAttr(tag, suite, key, lifetime, mki, tuple((rest or "").split()))


def _new_key() -> bytes:
    return os.urandom(KEY_SALT_LEN)


@dataclass
class SrtpPlan:
    """What a call's SRTP will be: the suite, our key (sent in SDP) and the peer's (None until its answer)."""

    tag: int
    suite: str
    local_key: bytes = field(default_factory=_new_key, repr=False)
    remote_key: bytes | None = field(default=None, repr=False)

    @property
    def local_attr(self) -> CryptoAttr:
        return CryptoAttr(self.tag, self.suite, self.local_key)

    def protector(self) -> SrtpProtector:
        return SrtpProtector(self.suite, self.local_key, self.remote_key)


def _crypto_attrs(media: MediaLine) -> list[CryptoAttr]:
    out = []
    for a in media.attrs:
        if a.lower().startswith("crypto:"):
            try:
                out.append(parse_crypto(a))
            except ValueError as e:
                log.info("srtp: ignoring %s", e)
    return out


def negotiate(media: MediaLine, policy: str) -> SrtpPlan | None:
    """The SRTP of our answer to an offer's audio line: a plan (SRTP) or None (plain RTP).

    Raises :class:`SrtpRefused` (488) when the policy forbids the offer or no
    crypto line is usable.
    """
    secure = media.proto.upper() in SECURE_PROTOS
    if not secure:
        if policy == "require":
            raise SrtpRefused("SRTP required (--sip-srtp require), offer is plain RTP/AVP")
        return None
    if policy == "off":
        raise SrtpRefused("SRTP offered (RTP/SAVP) but disabled here (--sip-srtp off)")
    attrs = _crypto_attrs(media)
    for c in attrs:
        if c.usable:
            return SrtpPlan(c.tag, c.suite, remote_key=c.key)
    offered = ", ".join(sorted({c.suite for c in attrs})) or "none"
    raise SrtpRefused(f"no usable SDES crypto suite (offered: {offered}; "
                      f"want {' or '.join(SUITES)}, no MKI)"[:80])


def offer_plan(policy: str) -> SrtpPlan | None:
    """Our own offer's SRTP (INVITE without SDP): SAVP with AES_CM_128_HMAC_SHA1_80 under ``require``."""
    return SrtpPlan(1, "AES_CM_128_HMAC_SHA1_80") if policy == "require" else None


def answer_plan(plan: SrtpPlan, media: MediaLine) -> None:
    """The peer's answer to our SAVP offer: its key, same tag and suite (SrtpRefused otherwise)."""
    if media.proto.upper() not in SECURE_PROTOS:
        raise SrtpRefused("our SRTP offer was answered with plain RTP")
    for c in _crypto_attrs(media):
        if c.tag == plan.tag and c.suite == plan.suite and c.usable:
            plan.remote_key = c.key
            return
    raise SrtpRefused("the answer has no crypto line matching our offer")


def _rewrite_audio(sdp: str, port: int, plan: SrtpPlan, proto: str) -> str:
    """Our SDP's audio line at ``port`` made ``proto`` with our crypto line right after it."""
    lines = sdp.split("\r\n")
    for i, line in enumerate(lines):
        parts = line.split(" ")
        if line.startswith("m=audio ") and len(parts) >= 3 and parts[1] == str(port):
            parts[2] = proto
            lines[i] = " ".join(parts)
            lines.insert(i + 1, "a=" + plan.local_attr.line())
            return "\r\n".join(lines)
    raise ValueError("no audio line to secure in our SDP")


def secure_answer(answer: str, port: int, plan: SrtpPlan, offer_proto: str) -> str:
    """A plain answer made SRTP: the offer's SAVP/SAVPF profile and our crypto line."""
    return _rewrite_audio(answer, port, plan, offer_proto.upper())


def secure_offer(offer: str, port: int, plan: SrtpPlan) -> str:
    """Our plain offer made RTP/SAVP with our crypto line."""
    return _rewrite_audio(offer, port, plan, "RTP/SAVP")


def _is_rtcp(packet: bytes) -> bool:
    return len(packet) >= 2 and 192 <= packet[1] <= 223  # RFC 5761 section 4


@dataclass
class SrtpStats:
    protected: int = 0
    unprotected: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


class SrtpProtector:
    """Encrypts what we send and authenticates/decrypts what comes, for one call.

    ``rx_key`` None (our SAVP offer before its answer): every inbound packet is
    dropped as ``no-key``. ``on_drop(reason)`` is called for each dropped
    packet (the call's metrics count it).
    """

    def __init__(self, suite: str, tx_key: bytes, rx_key: bytes | None,
                 on_drop: Callable[[str], None] | None = None) -> None:
        profile = SUITES[suite]
        self.suite = suite
        self._min_rtp = 12 + (4 if suite.endswith("_32") else 10)
        self._tx = Session(Policy(key=tx_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        self._rx = (Session(Policy(key=rx_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
                    if rx_key is not None else None)
        self.stats = SrtpStats()
        self.on_drop = on_drop
        self._logged: set[str] = set()

    def protect(self, packet: bytes) -> bytes | None:
        """SRTP (or SRTCP) of a plain packet; None if libsrtp refuses it (logged once per reason)."""
        try:
            out = self._tx.protect_rtcp(packet) if _is_rtcp(packet) else self._tx.protect(packet)
        except (LibSrtpError, ValueError, TypeError) as e:
            self._log_once("protect", f"srtp: cannot protect a packet ({e})")
            return None
        self.stats.protected += 1
        return out

    def unprotect(self, packet: bytes) -> bytes | None:
        """The plain packet of an SRTP (or SRTCP) one; None (dropped, counted) when it fails."""
        if self._rx is None:
            self._drop("no-key", "")
            return None
        rtcp = _is_rtcp(packet)
        if len(packet) < (8 + SRTCP_TRAILER if rtcp else self._min_rtp):
            self._drop("plain", f"{len(packet)}-byte {'RTCP' if rtcp else 'RTP'} packet without SRTP's tag")
            return None
        try:
            out = self._rx.unprotect_rtcp(packet) if rtcp else self._rx.unprotect(packet)
        except LibSrtpError as e:
            text = str(e)  # "unable to perform desired validation": an SRTCP E flag saying "not encrypted"
            self._drop("auth" if "authentication" in text else "replay" if "replay" in text
                       else "plain" if "validation" in text else "error", text)
            return None
        except (ValueError, TypeError) as e:
            self._drop("error", str(e))
            return None
        self.stats.unprotected += 1
        return out

    def _drop(self, reason: str, detail: str) -> None:
        self.stats.dropped[reason] += 1
        self._log_once(reason, f"srtp: dropping inbound packets that fail: {reason} ({detail or 'no key yet'})")
        if self.on_drop is not None:
            self.on_drop(reason)

    def _log_once(self, key: str, text: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.info("%s", text)


class CallSrtp:
    """One call's SRTP through offer/answer and re-offers; the RTP session's protect/unprotect hook.

    Plain (no plan): packets pass unchanged. A re-offer with the same key
    keeps the session (hold/unhold); a new key re-keys both directions; an
    SRTP call re-offered as plain RTP is refused (no silent downgrade).
    """

    def __init__(self, policy: str, on_drop: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self.on_drop = on_drop
        self.plan: SrtpPlan | None = None
        self.current: SrtpProtector | None = None

    @property
    def suite(self) -> str:
        return self.plan.suite if self.plan is not None else ""

    def _set(self, plan: SrtpPlan | None) -> None:
        self.plan = plan
        self.current = plan.protector() if plan is not None else None
        if self.current is not None:
            self.current.on_drop = self.on_drop

    def on_offer(self, offer: AudioOffer) -> None:
        """The caller's (re-)offer: the plan of our answer (SrtpRefused: 488)."""
        media = offer.media[offer.audio_index]
        if self.plan is not None and media.proto.upper() not in SECURE_PROTOS:
            raise SrtpRefused("SRTP call re-offered as plain RTP")
        plan = negotiate(media, self.policy)
        old = self.plan
        if old is not None and plan is not None and (old.suite, old.remote_key) == (plan.suite, plan.remote_key):
            old.tag = plan.tag
            return  # same keys: the session and its replay state go on
        self._set(plan)

    def our_offer(self) -> None:
        """We make the offer (INVITE without SDP): SAVP under ``require``; inbound waits for the answer."""
        self._set(offer_plan(self.policy))

    def on_answer(self, answer: AudioOffer) -> None:
        """The answer to our offer (in the ACK)."""
        if self.plan is None:
            return
        answer_plan(self.plan, answer.media[answer.audio_index])
        self._set(self.plan)

    def sdp(self, text: str, port: int, offer: AudioOffer | None) -> str:
        """Our SDP made SRTP when the plan is (answer to ``offer``, or our own offer when it is None)."""
        if self.plan is None:
            return text
        if offer is None:
            return secure_offer(text, port, self.plan)
        return secure_answer(text, port, self.plan, offer.media[offer.audio_index].proto)

    def protect(self, packet: bytes) -> bytes | None:
        return packet if self.current is None else self.current.protect(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        return packet if self.current is None else self.current.unprotect(packet)
