"""Our in-dialog requests (BYE, REFER) on the wire, for a dialog we answered and one we dialled.

The exact bytes are pinned: the From/To roles (our tag on our side, theirs on theirs, the
caller's From verbatim), the CSeq numbering, the route set in order, Via, Max-Forwards and the
request URI (the remote target).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from v2v.signaling.dispatch import Dispatcher
from v2v.signaling.sip.dialog import Conn, Dialog
from v2v.signaling.sip.message import SipRequest, parse
from v2v.signaling.sip.transfer import USER_AGENT, SipTransfers
from v2v.signaling.sip.ua_base import SipCoreBase
from v2v.signaling.sip.uac import UacDialog

VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKours;rport"

INBOUND_INVITE = (
    b"INVITE sip:bot@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKtheirs\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"Alice\"  <sip:alice@198.51.100.7>;tag=alicetag\r\n"
    b"To: <sip:bot@192.0.2.1>\r\n"
    b"Call-ID: call-in@198.51.100.7\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)

OUTBOUND_INVITE = (
    b"INVITE sip:+15551234@trunk.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdial;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:v2v@192.0.2.1>;tag=ourtag\r\n"
    b"To: \"Callee\" <sip:+15551234@trunk.example>\r\n"
    b"Call-ID: call-out@v2v\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)

ROUTES = ["<sip:proxy1.example;lr>", "<sip:proxy2.example;lr>"]


def _conn() -> Conn:
    return Conn("UDP", ("198.51.100.7", 5062), ("192.0.2.1", 5060), lambda _data: None)


def _invite(data: bytes) -> SipRequest:
    msg = parse(data)
    assert isinstance(msg, SipRequest)
    return msg


def _inbound(local_cseq: int = 0) -> Dialog:
    return Dialog(call_id="call-in@198.51.100.7", local_tag="bottag", remote_tag="alicetag",
                  invite=_invite(INBOUND_INVITE), conn=_conn(), remote_target="sip:alice@198.51.100.7:5062",
                  local_cseq=local_cseq, route_set=list(ROUTES), state="confirmed")


def _outbound() -> UacDialog:
    return UacDialog(call_id="call-out@v2v", local_tag="ourtag", remote_tag="calleetag",
                     invite=_invite(OUTBOUND_INVITE), conn=_conn(), remote_target="sip:callee@203.0.113.9:5070",
                     local_cseq=2, route_set=list(ROUTES), state="confirmed")


def _wire(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_bye_of_a_dialog_we_answered() -> None:
    d = _inbound()
    assert d.bye_request(VIA, "v2v-test").serialize() == _wire([
        "BYE sip:alice@198.51.100.7:5062 SIP/2.0",
        f"Via: {VIA}",
        "Max-Forwards: 70",
        "From: <sip:bot@192.0.2.1>;tag=bottag",
        "To: \"Alice\"  <sip:alice@198.51.100.7>;tag=alicetag",  # the caller's From as it came
        "Call-ID: call-in@198.51.100.7",
        "CSeq: 2 BYE",  # our first request in the dialog: CSeq 2 (1 is skipped)
        "Route: <sip:proxy1.example;lr>",
        "Route: <sip:proxy2.example;lr>",
        "User-Agent: v2v-test",
    ])
    assert d.local_cseq == 2
    assert d.bye_request(VIA, "v2v-test").cseq == (3, "BYE")  # a second request counts on


def test_bye_of_a_dialog_we_dialled() -> None:
    d = _outbound()
    assert d.bye_request(VIA, "v2v-test").serialize() == _wire([
        "BYE sip:callee@203.0.113.9:5070 SIP/2.0",
        f"Via: {VIA}",
        "Max-Forwards: 70",
        "From: <sip:v2v@192.0.2.1>;tag=ourtag",
        "To: \"Callee\" <sip:+15551234@trunk.example>;tag=calleetag",
        "Call-ID: call-out@v2v",
        "CSeq: 3 BYE",  # the INVITE's CSeq (2, after a digest retry) + 1
        "Route: <sip:proxy1.example;lr>",
        "Route: <sip:proxy2.example;lr>",
        "User-Agent: v2v-test",
    ])
    assert d.local_cseq == 3


@pytest.mark.parametrize("start, first", [(0, 2), (1, 2), (5, 6)])
def test_bye_cseq_numbering_of_an_answered_dialog(start: int, first: int) -> None:
    assert _inbound(start).bye_request(VIA, "x").cseq == (first, "BYE")


def _refer(d: Dialog) -> bytes:
    """The REFER request's bytes, its fresh branch replaced by ``BRANCH``."""
    core = SimpleNamespace(public_host="192.0.2.1", ports={"UDP": 5060})  # what the builder reads of the core
    transfers = SipTransfers(cast(SipCoreBase, core), cast(Dispatcher, None))
    branch, req = transfers._refer_request(d, "sip:agent@pbx.example", "to a person")
    return req.serialize().replace(branch.encode(), b"BRANCH")


def test_refer_of_a_dialog_we_answered() -> None:
    assert _refer(_inbound(3)) == _wire([
        "REFER sip:alice@198.51.100.7:5062 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=BRANCH;rport",
        "Max-Forwards: 70",
        "From: <sip:bot@192.0.2.1>;tag=bottag",
        "To: \"Alice\"  <sip:alice@198.51.100.7>;tag=alicetag",
        "Call-ID: call-in@198.51.100.7",
        "CSeq: 4 REFER",
        "Route: <sip:proxy1.example;lr>",
        "Route: <sip:proxy2.example;lr>",
        "Contact: <sip:v2v@192.0.2.1>",
        "Refer-To: <sip:agent@pbx.example>",
        "Referred-By: <sip:bot@192.0.2.1>",
        f"User-Agent: {USER_AGENT}",
        "Subject: to a person",
    ])



def test_refer_of_a_dialog_we_dialled_has_our_from_and_their_to() -> None:
    assert _refer(_outbound()) == _wire([
        "REFER sip:callee@203.0.113.9:5070 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=BRANCH;rport",
        "Max-Forwards: 70",
        "From: <sip:v2v@192.0.2.1>;tag=ourtag",
        "To: \"Callee\" <sip:+15551234@trunk.example>;tag=calleetag",
        "Call-ID: call-out@v2v",
        "CSeq: 3 REFER",
        "Route: <sip:proxy1.example;lr>",
        "Route: <sip:proxy2.example;lr>",
        "Contact: <sip:v2v@192.0.2.1>",
        "Refer-To: <sip:agent@pbx.example>",
        "Referred-By: <sip:v2v@192.0.2.1>",
        f"User-Agent: {USER_AGENT}",
        "Subject: to a person",
    ])


def test_refer_to_a_bare_number_goes_to_the_other_sides_domain() -> None:
    """A bare target goes to the trunk's domain: the caller's From host for a call we answered, the
    host we dialled for a call we placed (never our own address); URIs pass as they are."""
    from v2v.signaling.sip.transfer import refer_to_uri

    assert refer_to_uri("200", _inbound()) == "sip:200@198.51.100.7"
    assert refer_to_uri("+15550000", _outbound()) == "sip:+15550000@trunk.example"
    assert refer_to_uri("<sips:desk@pbx.example>", _outbound()) == "sips:desk@pbx.example"
    assert refer_to_uri("tel:+15550000", _inbound()) == "tel:+15550000"
