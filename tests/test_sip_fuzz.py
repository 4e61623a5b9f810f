"""Property/fuzz tests (hypothesis, fixed budgets, derandomized so CI is bounded and repeatable)
over the SDP parser, the SIP parser and stream framer, and the transaction layer of a real
server, while a live SIP call alongside keeps its media flowing; afterwards the UDP and TCP
transports still answer and a new call still connects."""

from __future__ import annotations

import asyncio
import logging
import secrets

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sip.harness import running_server, wait_for
from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp
from v2v.signaling.sip.core import Conn
from v2v.signaling.sip.message import SipParseError, SipRequest, StreamFramer, parse
from v2v.signaling.sip.sdp import SdpError, SdpSession, check_address, parse_offer

TONE = (6000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)


def budget(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- strategies
_junk = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
_num = st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["", "0", "65535", "65536", "99999999999",
                                                                    "1e3", "-1", "0x10", " 8"]), _junk)
_addr = st.one_of(st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "::", "[::1]", "192.0.2.1/127", "host.example",
                                   "256.1.1.1", "fe80::1%eth0", ""]), _junk)
_sdp_line = st.one_of(
    st.builds(lambda a, b: f"c=IN {a} {b}", st.sampled_from(["IP4", "IP6", "XX"]), _addr),
    st.builds(lambda p, f: f"m=audio {p} RTP/AVP {f}", _num, st.sampled_from(["0 8 101", "8", "96", "", "x y"])),
    st.builds(lambda k, p, t: f"m={k} {p} {t} 0", st.sampled_from(["audio", "video", "application", ""]), _num,
              st.sampled_from(["RTP/AVP", "RTP/SAVPF", "rtp/avpf", "UDP/TLS/RTP/SAVPF"])),
    st.builds(lambda p, e: f"a=rtpmap:{p} {e}", _num, st.sampled_from(["PCMU/8000", "PCMA/8000", "telephone-event/8000",
                                                                       "PCMU", "/", "opus/48000/2", "PCMA/x"])),
    st.sampled_from(["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "a=ptime:20", "a=ptime:x", "v=0",
                     "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=", "=", "m=", "c="]),
    _junk.map(lambda t: "a=" + t),
    _junk,
)
_VALID = [ln if not ln.startswith("o=") else "o=tester 1 1 IN IP4 127.0.0.1" for ln in offer_sdp(4000).strip().split("\r\n")]


@st.composite
def _mutated_offer(draw: st.DrawFn) -> list[str]:
    """A valid offer with a few lines replaced, inserted or dropped."""
    lines = list(_VALID)
    # the fields a caller controls, drawn from edge values
    lines = [ln.replace("4000", draw(st.one_of(st.just("4000"), _num)), 1) if ln.startswith("m=") else ln
             for ln in lines]
    lines = [ln.replace("127.0.0.1", draw(st.one_of(st.just("127.0.0.1"), _addr)), 1) if ln.startswith("c=") else ln
             for ln in lines]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(lines)))
        op = draw(st.sampled_from(["replace", "insert", "drop"]))
        if op == "insert" or i == len(lines):
            lines.insert(i, draw(_sdp_line))
        elif op == "replace":
            lines[i] = draw(_sdp_line)
        else:
            del lines[i]
    return lines


sdp_text = st.one_of(_mutated_offer(), st.lists(_sdp_line, max_size=14)).map(lambda ls: "\r\n".join(ls) + "\r\n")

_METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK", "MESSAGE", "FOO",
            "invite", ""]
_HEADER_NAMES = ["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m", "Content-Length", "l",
                 "Content-Type", "c", "Max-Forwards", "Require", "Supported", "Session-Expires", "Authorization",
                 "Record-Route", "Expires", "X-Junk", "", " Via", "Via "]


@st.composite
def sip_message(draw: st.DrawFn, call_ids: tuple[str, ...] = ("fz-a", "fz-b"), port: int = 5060) -> bytes:
    """A SIP message: most are well formed (real methods, dialogs, bodies), the rest damaged."""
    clean = draw(st.integers(0, 9)) < 6
    method = draw(st.sampled_from(_METHODS[:8] if clean else _METHODS))
    uri = "sip:echo@127.0.0.1" if clean else draw(st.sampled_from(["sip:echo@127.0.0.1", "sip:x@h;transport=tcp",
                                                                   "tel:1", "<>", ""]))
    start = f"{method} {uri} SIP/2.0"
    if not clean and draw(st.integers(0, 4)) == 0:
        start = f"SIP/2.0 {draw(_num)} {draw(_junk)}"  # a response
    branch = draw(st.sampled_from(["z9hG4bKfz1", "z9hG4bKfz2", "z9hG4bK" + secrets.token_hex(3)]
                                  + ([] if clean else ["bad", ""])))
    cseq = draw(st.integers(1, 4).map(str) if clean else _num)
    cseq_m = method if clean or draw(st.booleans()) else draw(st.sampled_from(["INVITE", "BYE", "X"]))
    headers = [
        f"Via: SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP']))} 127.0.0.1:{port};branch={branch};rport",
        f"From: <sip:fuzz@127.0.0.1>;tag=f{draw(st.integers(0, 2))}",
        f"To: <sip:echo@127.0.0.1>{draw(st.sampled_from(['', ';tag=t1', ';tag=t2'] + ([] if clean else [';tag='])))}",
        f"Call-ID: {draw(st.sampled_from(call_ids))}",
        f"CSeq: {cseq} {cseq_m}",
        "Max-Forwards: 70",
        f"Contact: <sip:fuzz@127.0.0.1:{port}>",
    ]
    extra = st.sampled_from(["Supported: timer", "Session-Expires: 90;refresher=uac", "Require: 100rel",
                             "Expires: 0", "Expires: 60", "Contact: *", "Record-Route: <sip:p.example;lr>"])
    headers += [draw(extra) for _ in range(draw(st.integers(0, 2)))]
    if not clean:
        headers += [f"{draw(st.sampled_from(_HEADER_NAMES))}: {draw(_junk)}" for _ in range(draw(st.integers(0, 3)))]
        headers = [h for h in draw(st.permutations(headers)) if draw(st.integers(0, 7))]  # sometimes drop one
    body = draw(st.sampled_from(["", offer_sdp(9, addr="127.0.0.1"), "Signal=5\r\nDuration=160\r\n"]))
    if not clean:
        body = draw(st.one_of(st.just(body), sdp_text))
    if body:
        ctype = "application/dtmf-relay" if body.startswith("Signal") else "application/sdp"
        headers.append(f"Content-Type: {ctype if clean else draw(st.sampled_from([ctype, 'text/plain', '']))}")
    clen = str(len(body.encode()))
    headers.append(f"Content-Length: {clen if clean else draw(st.one_of(st.just(clen), _num))}")
    data = (start + "\r\n" + "\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8", "surrogatepass")
    if not clean and draw(st.integers(0, 2)) == 0:  # byte-level damage
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        data = data[:pos] + draw(st.binary(max_size=12)) + data[pos + draw(st.integers(0, 8)):]
    return data


# ---------------------------------------------------------------- parsers
@budget(600)
@given(sdp_text)
def test_sdp_parser_only_refuses_with_sdp_error(text: str) -> None:
    try:
        offer = parse_offer(text)
    except SdpError:
        return
    # what it accepts is usable: an IP address, a real port, a codec we speak, an answer that builds
    check_address(offer.address)
    assert 0 < offer.port <= 65535
    assert offer.codec in ("PCMU", "PCMA", "G722", "OPUS") and 0 <= offer.payload_type <= 127
    assert "m=audio 40000 RTP/AVP" in SdpSession("127.0.0.1").build_answer(offer, 40000)


@budget(600)
@given(sip_message(), st.booleans())
def test_sip_parser_only_refuses_with_parse_errors(data: bytes, stream: bool) -> None:
    try:
        msg = parse(data, stream=stream)
        if isinstance(msg, SipRequest):
            msg.validate()
            _ = (msg.request_uri, msg.call_id, msg.cseq, msg.from_, msg.to, msg.contact)
    except (SipParseError, ValueError):
        return
    assert msg.serialize()


@budget(300)
@given(st.lists(sip_message(), min_size=1, max_size=4), st.lists(st.integers(1, 400), max_size=6))
def test_stream_framer_only_refuses_with_parse_errors(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"\r\n".join(msgs)
    framer = StreamFramer()
    pos = 0
    try:
        for c in [*cuts, len(stream)]:
            for m in framer.feed(stream[pos:pos + c]):
                assert m
            pos += c
    except SipParseError:
        return


# ---------------------------------------------------------------- transaction layer
async def test_transaction_layer_fuzz_leaves_the_live_call_and_the_transports_up(caplog) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(sip_rate=0) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            live = await Call.dial(sip, rtp, uri)
            await wait_for(lambda: len(rtp.received) > 10, 3.0, "the live call's RTP")
            sent: list[bytes] = []
            raw: list[bytes] = []

            def conn(transport: str) -> Conn:
                return Conn(transport, ("127.0.0.9", 5999), ("127.0.0.1", srv.sip_port), sent.append)

            @budget(120)
            @given(st.lists(sip_message(port=5999), min_size=1, max_size=5), st.sampled_from(["UDP", "TCP", "WS"]))
            def feed(msgs: list[bytes], transport: str) -> None:
                c = conn(transport)
                for m in msgs:
                    srv.sip.core.receive(m, c)  # never raises
                raw.extend(msgs)

            for _ in range(4):  # in rounds, so the loop runs the spawned work and the live call between them
                n = len(rtp.received)
                feed()
                await asyncio.sleep(0.3)
                await wait_for(lambda n=n: len(rtp.received) > n + 5, 3.0, "the live call's RTP between rounds")
            statuses = {int(m.split(b" ", 2)[1]) for m in sent if m.startswith(b"SIP/2.0 ")}
            assert {200, 400, 481} <= statuses, statuses  # calls set up, bad requests, unknown dialogs: past the parser
            # the same messages over the real transports
            loop = asyncio.get_running_loop()
            udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0),
                                                         remote_addr=("127.0.0.1", srv.sip_port))
            _, writer = await asyncio.open_connection("127.0.0.1", srv.sip_port)
            for m in raw[:300]:
                udp.sendto(m)
                writer.write(m)
                await asyncio.sleep(0)
            await asyncio.sleep(0.3)
            udp.close()
            writer.close()
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
                [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][:5]
            # the live call still flows and answers in-dialog requests
            n = len(rtp.received)
            await wait_for(lambda: len(rtp.received) > n + 10, 3.0, "the live call's RTP after the fuzz")
            r = await live.in_dialog("INFO", "Signal=1\r\nDuration=160\r\n", ctype="application/dtmf-relay")
            assert r.status == 200
            # both transports still answer, and a new call connects
            for transport in ("UDP", "TCP"):
                c = await SipClient(transport, ("127.0.0.1", srv.sip_port)).connect()
                try:
                    c.send(c.request("OPTIONS", uri, f"opt-{transport}", from_tag="o"))
                    assert (await c.recv_final(f"opt-{transport}", "OPTIONS")).status == 200
                finally:
                    await c.close()
            rtp2 = await RtpPeer.open(TONE)
            try:
                second = await Call.dial(sip, rtp2, uri)
                await wait_for(lambda: len(rtp2.received) > 5, 3.0, "the new call's RTP")
                assert (await second.bye()).status == 200
            finally:
                await rtp2.close()
            assert (await live.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()
