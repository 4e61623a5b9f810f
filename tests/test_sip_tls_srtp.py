"""A trunk leg over SIP/TLS with SDES-SRTP: baresip (its srtp module) against v2v, and the refusals around it.

The test CA and the server certificate (127.0.0.1) are made with the openssl CLI in the test's artifacts
directory; baresip trusts the CA through ``sip_cafile``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from tests.sip.harness import FIXTURES, HERE, Server, artifacts, record_call_events, run_proc, running_server, wait_for
from tests.sip.uac import SipClient, offer_sdp
from tests.test_sip_baresip import Baresip, normalized_xcorr_peak
from v2v.media.g711 import ulaw_encode
from v2v.signaling.config import ServerConfig
from v2v.signaling.sip import tls as tls_module
from v2v.signaling.sip.message import SipResponse
from v2v.signaling.sip.srtp import SrtpPlan, SrtpProtector, parse_crypto
from v2v.worker import events as ev
from v2v.worker.wavcall import read_wav, write_wav

ROOT = HERE.parent.parent


_CERTS: dict[str, tuple[Path, Path, Path]] = {}


async def make_certs() -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it (ECDSA P-256, made once per session with
    the openssl CLI): (ca.pem, server.pem, server.key)."""
    if "certs" in _CERTS:
        return _CERTS["certs"]
    d = artifacts("tls-certs")
    ca_key, ca, key, csr, cert, ext = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem",
                                                        "ext.cnf"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=v2v test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ]
    for args in steps:
        rc, _out, err = await run_proc("openssl", *map(str, args), cwd=d)
        assert rc == 0, err
    _CERTS["certs"] = (ca, cert, key)
    return ca, cert, key


def tls_baresip(work: Path, mic: Path, ca: Path, mediaenc: str | None) -> Baresip:
    """baresip over TLS (trusting ``ca``), with ``mediaenc`` (srtp-mand: SDES-SRTP or nothing) or plain RTP."""
    bs = Baresip(work, mic)
    cfg = work / "config"
    cfg.write_text(cfg.read_text() + f"sip_cafile\t\t{ca}\nmodule\t\t\tsrtp.so\n")
    acc = work / "accounts"
    acc.write_text(acc.read_text().replace("<sip:tester@127.0.0.1>", "<sip:tester@127.0.0.1;transport=tls>")
                   .rstrip("\n") + (f";mediaenc={mediaenc}\n" if mediaenc else "\n"))
    return bs


def speech_mic(work: Path, tail_s: float = 7.0) -> tuple[np.ndarray, int, Path]:
    speech, rate = read_wav(FIXTURES / "speech_8k.wav")
    assert rate == 8000
    lead = 4000
    mic = np.concatenate([np.zeros(lead, np.int16), speech.astype(np.int16), np.zeros(int(tail_s * 8000), np.int16)])
    write_wav(work / "mic.wav", mic, 8000)
    return speech.astype(np.int16), lead, work / "mic.wav"


def heard_echo(bs: Baresip, speech: np.ndarray, events: list[object]) -> np.ndarray:
    """What baresip played (decoded), checked to be the caller's own speech, played once the caller's turn ended.

    The order is taken from the server's call events, not from baresip's recording: its decoder dump starts
    at the first packet it decodes, so its timeline is shifted from the microphone file's by a varying amount.
    """
    (dec,) = list(bs.rec.glob("dump-*-dec.wav"))
    heard, hrate = read_wav(dec)
    assert hrate == 8000
    score, _lag = normalized_xcorr_peak(speech, heard)
    assert score > 0.6, f"echo does not match what was sent (score {score:.2f})"
    kinds = [type(e) for e in events]
    assert ev.UserStoppedSpeaking in kinds and ev.BotStartedSpeaking in kinds, kinds
    assert kinds.index(ev.UserStoppedSpeaking) < kinds.index(ev.BotStartedSpeaking), kinds
    assert ev.BotInterrupted not in kinds
    return heard


def the_media(srv: Server) -> Any:
    """The RtpCall that the one live dialog holds."""
    (dialog,) = srv.sip.core.dialogs.values()
    return srv.hosted(dialog.media)


async def bad_handshakes(port: int, ca: Path) -> None:
    """Two TLS failures against the listener: plain SIP instead of a ClientHello, and a client that does
    not trust the server's certificate (it aborts the handshake)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered in clear
    writer.close()
    distrust = ssl.create_default_context()  # the system CAs: ours is not one of them
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", port, ssl=distrust, server_hostname="127.0.0.1")
    # and a client that does trust it gets answers on the same listener: Contact sip:...;transport=tls, or
    # sips: when it asked for a sips: URI (RFC 3261 12.1.1)
    good = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=good, server_hostname="127.0.0.1")
    for n, scheme, contact in ((1, b"sip", b";transport=tls>"), (2, b"sips", b"<sips:v2v@127.0.0.1:%d>" % port)):
        writer.write(b"OPTIONS %s:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls%d\r\n"
                     b"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: tls-opt\r\n"
                     b"CSeq: %d OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % (scheme, n, n))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"SIP/2.0 200") and contact in head and b"SIP/2.0/TLS" in head, head
    writer.close()


def tampered_packet(srv: Server) -> tuple[bytes, int]:
    """An SRTP packet made with baresip's own key (from our SDP answer's view of its offer), one bit flipped;
    and the server's RTP port it goes to."""
    media = the_media(srv)
    plan = media.srtp.plan
    assert plan is not None and plan.remote_key is not None
    forged = SrtpPlan(plan.tag, plan.suite, local_key=plan.remote_key).protector()
    pkt = RtpPacket(payload_type=0, sequence_number=40000, timestamp=1, ssrc=0x5EC2E7, payload=b"\xff" * 160)
    sealed = bytearray(forged.protect(pkt.serialize()) or b"")
    sealed[30] ^= 0x04
    return bytes(sealed), media.rtp.local_port


async def send_udp(data: bytes, port: int) -> None:
    loop = asyncio.get_running_loop()
    tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
    tr.sendto(data)
    tr.close()


async def test_baresip_tls_srtp_call_hears_its_echo(caplog: pytest.LogCaptureFixture) -> None:
    """TLS signaling, SDES-SRTP media both ways (require), echo heard; during the call a tampered SRTP packet
    is dropped and counted, and two failed TLS handshakes are counted and logged once, the call unharmed."""
    work = artifacts("baresip-tls-srtp")
    ca, cert, key = await make_certs()
    speech, lead, mic = speech_mic(work)
    caplog.set_level(logging.INFO, logger="v2v")
    async with running_server(sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key),
                              sip_srtp="require") as srv:
        assert srv.sip.tls is not None
        tls_port = srv.sip.tls.port
        events = record_call_events(srv)
        bs = tls_baresip(work, mic, ca, "srtp-mand")
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{tls_port};transport=tls")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            await wait_for(lambda: srv.active("sip_tls") == 1, 1.0, "the TLS call to be active")
            (dialog,) = srv.sip.core.dialogs.values()
            assert dialog.conn.transport == "TLS"
            media = the_media(srv)
            assert media.srtp.suite == "AES_CM_128_HMAC_SHA1_80" and "RTP/SAVP" in media.answer_sdp
            await wait_for(lambda: media.srtp.current.stats.unprotected > 25, 3.0, "SRTP from baresip")
            data, port = tampered_packet(srv)
            await send_udp(data, port)
            await wait_for(lambda: srv.metric("v2v_srtp_dropped_packets_total", reason="auth") == 1, 2.0,
                           "the tampered packet counted")
            await bad_handshakes(tls_port, ca)
            await wait_for(lambda: srv.metric("v2v_sip_tls_handshake_failures_total") == 2, 2.0,
                           "two failed handshakes counted")
            closed = await bs.wait_event("CALL_CLOSED", 20)  # the microphone file ends: baresip says BYE
            await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
            stats = media.srtp.current.stats
            assert srv.metric("v2v_calls_total", transport="sip_tls", outcome="hangup") == 1
        finally:
            await bs.stop()
    assert closed["param"] in ("end of file", "Connection reset by peer", "")
    # baresip's own SRTP all passes: the one auth failure is the tampered packet ("plain": baresip sends its
    # RTCP APP "PING" in clear, and it is dropped as such)
    assert {k: v for k, v in stats.dropped.items() if k != "plain"} == {"auth": 1, "replay": 0, "no-key": 0,
                                                                       "error": 0}, stats
    assert stats.protected > 400 and stats.unprotected > 400, stats
    assert media.rtp.stats.foreign_packets == 0
    heard = heard_echo(bs, speech, events)
    assert len(heard) > lead + len(speech) + 5 * 8000  # our SRTP stream ran for the whole call
    assert [getattr(r, "suite", None) for r in caplog.records if r.getMessage() == "sip-srtp"] == [
        "AES_CM_128_HMAC_SHA1_80"]  # the call's log says it was SRTP
    failures = [r for r in caplog.records if "handshake from 127.0.0.1" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING  # once a minute per source


async def test_plain_offer_under_require_gets_488_with_reason() -> None:
    """--sip-srtp require: a plain RTP/AVP offer is refused before any call exists, by baresip over TLS and by
    a scripted UAC over UDP (whose 488 reason phrase says why)."""
    work = artifacts("baresip-tls-plain")
    ca, cert, key = await make_certs()
    _speech, _lead, mic = speech_mic(work, tail_s=1.0)
    async with running_server(sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key),
                              sip_srtp="require") as srv:
        assert srv.sip.tls is not None
        bs = tls_baresip(work, mic, ca, None)
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{srv.sip.tls.port};transport=tls")
            closed = await bs.wait_event("CALL_CLOSED", 5)
        finally:
            await bs.stop()
        assert closed["param"].startswith("488"), closed
        assert not any(e.get("type") == "CALL_ESTABLISHED" for e in bs.events)
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            sip.send(sip.request("INVITE", "sip:echo@127.0.0.1", "plain-1", from_tag="p",
                                 body=offer_sdp(40000)))
            resp = await sip.recv_final("plain-1", "INVITE")
        finally:
            await sip.close()
        assert resp.status == 488 and "SRTP required" in resp.reason, resp.reason
        assert srv.active() == 0 and srv.manager.metrics.active() == 0
        assert srv.metric("v2v_sip_refusals_total", reason="srtp-policy") == 2


async def test_srtp_offer_under_off_gets_488() -> None:
    """--sip-srtp off: an RTP/SAVP offer is refused with a reason naming the flag (no call made)."""
    async with running_server(sip_srtp="off") as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            body = offer_sdp(40000).replace("RTP/AVP", "RTP/SAVP").replace(
                "a=ptime:20", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "QUJD" * 10 + "\r\na=ptime:20")
            sip.send(sip.request("INVITE", "sip:echo@127.0.0.1", "savp-off", from_tag="s", body=body))
            resp = await sip.recv_final("savp-off", "INVITE")
        finally:
            await sip.close()
        assert resp.status == 488 and "--sip-srtp off" in resp.reason, resp.reason


@pytest.mark.parametrize(("cert", "key", "message"), [
    ("missing.pem", "server.key", "--sip-tls-cert .*missing.pem: cannot read it"),
    ("server.pem", "missing.key", "--sip-tls-key .*missing.key: cannot read it"),
    ("server.key", "server.pem", "cannot use them"),
    ("", "server.key", "needs --sip-tls-cert"),
])
async def test_unusable_certificate_is_a_clear_start_error(cert: str, key: str, message: str) -> None:
    ca, _cert, _key = await make_certs()
    d = ca.parent
    cfg = ServerConfig(sip_tls_port=5061, sip_tls_cert=str(d / cert) if cert else "", sip_tls_key=str(d / key))
    with pytest.raises(ValueError, match=message):
        cfg.validate()


async def test_cli_refuses_a_missing_certificate_at_start() -> None:
    rc, _out, err = await run_proc(sys.executable, "-m", "v2v.signaling.cli", "serve", "--port", "0",
                                   "--sip-tls-port", "0", "--sip-tls-cert", "/nonexistent/cert.pem",
                                   "--sip-tls-key", "/nonexistent/key.pem", cwd=ROOT, timeout=30,
                                   env={"PYTHONPATH": str(ROOT)})
    assert rc == 2 and "--sip-tls-cert /nonexistent/cert.pem: cannot read it" in err, err
    assert "Traceback" not in err


async def test_our_bye_reaches_a_tls_caller_over_its_connection() -> None:
    """--sip-srtp allow (the default) answers baresip's SRTP offer with SRTP; when the server ends the call its
    BYE (Via SIP/2.0/TLS) goes over the caller's TLS connection and baresip closes the call."""
    work = artifacts("baresip-tls-bye")
    ca, cert, key = await make_certs()
    _speech, _lead, mic = speech_mic(work, tail_s=20.0)
    async with running_server(sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key)) as srv:
        assert srv.sip.tls is not None
        responses: list[SipResponse] = []  # what the server's SIP core receives as responses (observed only)
        on_response = srv.sip.core._on_response
        srv.sip.core._on_response = lambda r: (responses.append(r), on_response(r))[1]  # type: ignore[method-assign]  # observe, then handle
        bs = tls_baresip(work, mic, ca, "srtp-mand")
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@127.0.0.1:{srv.sip.tls.port};transport=tls")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            media = the_media(srv)
            assert media.srtp.suite and "RTP/SAVP" in media.answer_sdp
            await wait_for(lambda: media.srtp.current.stats.unprotected > 10, 3.0, "SRTP from baresip")
            await srv.manager.hangup(media.call.call_id, "hangup")
            closed = await bs.wait_event("CALL_CLOSED", 3)
            await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
        finally:
            await bs.stop()
    # baresip answered our BYE (over the TLS connection: the only way back) and reports it as a reset by peer
    bye_answers = [r for r in responses if r.cseq[1] == "BYE"]
    assert [r.status for r in bye_answers] == [200], bye_answers
    assert bye_answers[0].vias[0].transport == "TLS"
    assert closed["param"] == "Connection reset by peer", closed


async def test_tls_listener_on_dual_stack_host_takes_ipv4_and_ipv6() -> None:
    """--host :: : one TLS port answers OPTIONS from 127.0.0.1 and from ::1 (as SIP over TCP does)."""
    ca, cert, key = await make_certs()
    async with running_server(host="::", sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key)) as srv:
        assert srv.sip.tls is not None
        port = srv.sip.tls.port
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # the certificate names 127.0.0.1, not ::1
        for host in ("127.0.0.1", "::1"):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            writer.write(b"OPTIONS sip:echo@v2v SIP/2.0\r\nVia: SIP/2.0/TLS x.invalid;branch=z9hG4bKds\r\n"
                         b"From: <sip:t@x.invalid>;tag=1\r\nTo: <sip:echo@v2v>\r\nCall-ID: ds\r\n"
                         b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"SIP/2.0 200") and b";transport=tls>" in head, (host, head)
            writer.close()


class SrtpPeer(asyncio.DatagramProtocol):
    """A scripted caller's RTP: 20 ms PCMU packets of one tone, protected with ``plan``; what comes back is
    unprotected with it (packets that fail are counted)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.protector: SrtpProtector | None = None
        self.got: list[bytes] = []
        self.failed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        plain = self.protector.unprotect(data) if self.protector is not None else None
        if plain is None:
            self.failed += 1
        elif 192 <= plain[1] <= 223:
            pass  # SRTCP
        else:
            self.got.append(plain)

    async def stream(self, remote: tuple[str, int], packets: int) -> None:
        assert self.transport is not None and self.protector is not None
        tone = ulaw_encode((8000 * np.sin(np.arange(160) * 2 * np.pi * 440 / 8000)).astype(np.int16))
        for i in range(packets):
            pkt = RtpPacket(payload_type=0, sequence_number=i, timestamp=160 * i, ssrc=0xCA11, payload=tone)
            self.transport.sendto(self.protector.protect(pkt.serialize()) or b"", remote)
            await asyncio.sleep(0.02)


async def test_require_makes_our_offer_srtp_and_takes_the_answer_in_ack() -> None:
    """--sip-srtp require, an INVITE without SDP: the 200 offers RTP/SAVP with our key, the caller's answer in
    the ACK brings its key; then media flows encrypted both ways."""
    async with running_server(sip_srtp="require") as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        loop = asyncio.get_running_loop()
        tr, peer = await loop.create_datagram_endpoint(SrtpPeer, local_addr=("127.0.0.1", 0))
        try:
            sip.send(sip.request("INVITE", "sip:echo@127.0.0.1", "late-1", from_tag="l", cseq=1))
            ok = await sip.recv_final("late-1", "INVITE")
            offer = ok.body.decode()
            assert ok.status == 200 and "RTP/SAVP " in offer, offer
            ours = parse_crypto(next(x for x in offer.split("\r\n") if x.startswith("a=crypto:"))[2:])
            assert (ours.tag, ours.suite) == (1, "AES_CM_128_HMAC_SHA1_80") and ours.usable
            mine = SrtpPlan(1, ours.suite, remote_key=ours.key)
            peer.protector = mine.protector()
            answer = offer_sdp(tr.get_extra_info("sockname")[1], codecs="0 101").replace("RTP/AVP", "RTP/SAVP")
            answer += f"a={mine.local_attr.line()}\r\n"
            sip.send(sip.request("ACK", "sip:echo@127.0.0.1", "late-1", from_tag="l", to_tag=ok.to.tag, cseq=1,
                                 body=answer))
            port = int(offer.split("m=audio ", 1)[1].split()[0])
            await peer.stream(("127.0.0.1", port), 50)
            media = the_media(srv)
            assert media.srtp.current.stats.unprotected >= 45, media.srtp.current.stats
            await wait_for(lambda: len(peer.got) >= 10, 2.0, "SRTP from the server")
            assert peer.failed == 0 and all(RtpPacket.parse(p).payload_type == 0 for p in peer.got)
            assert media.rtp.stats.packets_in >= 45
        finally:
            tr.close()
            await sip.close()


async def test_silent_tls_client_times_out_and_frees_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that connects and never starts the handshake is closed after the handshake timeout, counted,
    and its place in --max-conns-per-source given back."""
    monkeypatch.setattr(tls_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    _ca, cert, key = await make_certs()
    async with running_server(sip_tls_port=0, sip_tls_cert=str(cert), sip_tls_key=str(key),
                              max_conns_per_source=4) as srv:
        assert srv.sip.tls is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.sip.tls.port)
        await wait_for(lambda: srv.sip.tls is not None and srv.sip.tls.limit.open.get("127.0.0.1") == 1, 1.0,
                       "the connection admitted")
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        writer.close()
        await wait_for(lambda: srv.metric("v2v_sip_tls_handshake_failures_total") == 1, 1.0, "the timeout counted")
        await wait_for(lambda: srv.sip.tls is not None and not srv.sip.tls.limit.open.get("127.0.0.1"), 1.0,
                       "its place given back")
