"""SDES-SRTP units: the a=crypto attribute, the --sip-srtp policy on offers, SRTP/SRTCP round trips."""

from __future__ import annotations

import base64
import struct

import pytest
from aiortc.rtp import RtpPacket

from v2v.signaling.sip.sdp import SdpSession, parse_offer
from v2v.signaling.sip.srtp import CallSrtp, SrtpPlan, SrtpRefused, parse_crypto

KEY = bytes(range(30))
KEY_B64 = base64.b64encode(KEY).decode()

OFFER = f"""v=0
o=- 1 1 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 4000 RTP/SAVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=crypto:1 AES_CM_256_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31|1:4
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31
a=crypto:4 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}
a=ptime:20
"""
PLAIN = OFFER.replace("RTP/SAVP", "RTP/AVP").split("a=crypto")[0] + "a=ptime:20\n"


def rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return RtpPacket(payload_type=0, sequence_number=seq, timestamp=160 * seq, ssrc=ssrc,
                     payload=bytes([seq & 0xFF]) * 160).serialize()


def rtcp_rr(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)  # an empty receiver report


def test_crypto_attribute_parse_and_build() -> None:
    c = parse_crypto(f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31")
    assert (c.tag, c.suite, c.key, c.lifetime, c.mki) == (3, "AES_CM_128_HMAC_SHA1_80", KEY, "2^31", None)
    assert c.usable
    assert parse_crypto(c.line()) == c
    assert c.line() == f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31"
    with_mki = parse_crypto(f"crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31|1:4")
    assert with_mki.mki == "1:4" and not with_mki.usable  # libsrtp here takes no MKI
    assert not parse_crypto(f"crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64} UNENCRYPTED_SRTP").usable
    assert parse_crypto(f"crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64} WSH=128").usable
    assert not parse_crypto("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA").usable  # 3 bytes, not 30
    for bad in ("crypto:x AES inline:AAAA", "crypto:1 AES_CM_128_HMAC_SHA1_80 uri:http://k",
                "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "crypto:1"):
        with pytest.raises(ValueError):
            parse_crypto(bad)


def test_policy_allow_answers_savp_with_own_key_and_first_usable_suite() -> None:
    offer = parse_offer(OFFER)
    s = CallSrtp("allow")
    s.on_offer(offer)
    assert s.plan is not None and (s.plan.tag, s.plan.suite, s.plan.remote_key) == (3, "AES_CM_128_HMAC_SHA1_80", KEY)
    answer = s.sdp(SdpSession("192.0.2.1").build_answer(offer, 20000), 20000, offer)
    assert "m=audio 20000 RTP/SAVP 0 101\r\n" in answer
    (line,) = [x for x in answer.split("\r\n") if x.startswith("a=crypto:")]
    ours = parse_crypto(line[2:])
    assert (ours.tag, ours.suite) == (3, "AES_CM_128_HMAC_SHA1_80") and ours.usable and ours.key != KEY
    plain = CallSrtp("allow")
    plain.on_offer(parse_offer(PLAIN))
    assert plain.plan is None and plain.protect(b"x" * 20) == b"x" * 20


@pytest.mark.parametrize(("policy", "sdp", "why"), [
    ("require", PLAIN, "SRTP required"),
    ("off", OFFER, "disabled here"),
    ("allow", OFFER.replace("AES_CM_128", "F8_128"), "no usable SDES crypto suite"),
    ("allow", "\n".join(x for x in OFFER.split("\n") if not x.startswith("a=crypto")), "offered: none"),
])
def test_policy_refusals_say_why(policy: str, sdp: str, why: str) -> None:
    with pytest.raises(SrtpRefused, match=why) as e:
        CallSrtp(policy).on_offer(parse_offer(sdp))
    assert len(str(e.value)) <= 80  # it becomes the 488's reason phrase


def test_require_offers_savp_and_takes_the_answer() -> None:
    s = CallSrtp("require")
    s.our_offer()
    offer = s.sdp(SdpSession("192.0.2.1").build_offer(20000), 20000, None)
    assert "m=audio 20000 RTP/SAVP " in offer and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in offer
    assert s.unprotect(rtp(1)) is None  # no key of the peer's before its answer
    peer = parse_crypto(next(x for x in offer.split("\r\n") if x.startswith("a=crypto:"))[2:])
    answer = PLAIN.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=ptime", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}\na=ptime")
    s.on_answer(parse_offer(answer))
    them = SrtpPlan(1, "AES_CM_128_HMAC_SHA1_80", local_key=KEY, remote_key=peer.key).protector()
    assert s.unprotect(them.protect(rtp(7)) or b"") == rtp(7)
    with pytest.raises(SrtpRefused):
        CallSrtp("require").on_offer(parse_offer(PLAIN))


def test_reoffer_same_key_keeps_session_new_key_rekeys_plain_refused() -> None:
    s = CallSrtp("allow")
    s.on_offer(parse_offer(OFFER))
    first = s.current
    s.on_offer(parse_offer(OFFER.replace("a=ptime:20", "a=ptime:20\na=sendonly")))  # hold, same key
    assert s.current is first
    s.on_offer(parse_offer(OFFER.replace(KEY_B64, base64.b64encode(bytes(30)).decode())))
    assert s.current is not first and s.plan is not None and s.plan.remote_key == bytes(30)
    with pytest.raises(SrtpRefused, match="re-offered as plain"):
        s.on_offer(parse_offer(PLAIN))


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_round_trip_rtp_and_rtcp_and_drops(suite: str) -> None:
    drops: list[str] = []
    a = SrtpPlan(1, suite)
    b = SrtpPlan(1, suite, remote_key=a.local_key)
    a.remote_key = b.local_key
    pa, pb = a.protector(), b.protector()
    pb.on_drop = drops.append
    tag = 10 if suite.endswith("80") else 4
    for seq in range(1, 60):
        sealed = pa.protect(rtp(seq))
        assert sealed is not None and len(sealed) == len(rtp(seq)) + tag and sealed[12:] != rtp(seq)[12:]
        assert pb.unprotect(sealed) == rtp(seq)
    sealed_rtcp = pa.protect(rtcp_rr())
    assert sealed_rtcp is not None and len(sealed_rtcp) == len(rtcp_rr()) + 4 + 10  # E|index + tag
    assert pb.unprotect(sealed_rtcp) == rtcp_rr()
    replayed = pa.protect(rtp(60))
    assert replayed is not None and pb.unprotect(replayed) == rtp(60)
    assert pb.unprotect(replayed) is None  # the same packet again
    tampered = bytearray(pa.protect(rtp(61)) or b"")
    tampered[20] ^= 0x01
    assert pb.unprotect(bytes(tampered)) is None
    stranger = SrtpPlan(1, suite).protector().protect(rtp(62))
    assert stranger is not None and pb.unprotect(stranger) is None  # another key
    assert drops == ["replay", "auth", "auth"] and pb.stats.dropped["auth"] == 2
    assert pb.unprotect(pa.protect(rtp(63)) or b"") == rtp(63)  # and the stream goes on
