"""IPv6, dual-stack and mixed address families on SIP/UDP + RTP, with real peers over ::1 and 127.0.0.1.

- baresip calls v2v over ::1 (SIP and RTP on IPv6) and hears its echo;
- ``--host ::`` takes calls over 127.0.0.1 and ::1, each answered in its own family;
- a ``c=IN IP6`` offer to an IPv4-only server is refused with a 488 that says why (status
  line, Warning 301), before anything is answered -- and handled when dual-stack;
- the RTP sender survives what the loop's transports raise (uvloop: ValueError);
- each refusal path: one WARNING line with reason, source and codecs, and its counter.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import uvloop
from aiohttp import ClientSession

from tests.sip.harness import FIXTURES, free_udp_port, running_server, wait_for
from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp
from tests.test_drain import serve_process
from tests.test_sip_baresip import Baresip, normalized_xcorr_peak
from v2v.signaling.sip import dialog as sip_dialog
from v2v.signaling.sip.addr import DatagramSender, MediaAddresses, send_address
from v2v.signaling.sip.message import SipResponse
from v2v.signaling.sip.rtp_session import RtpSession
from v2v.worker.wavcall import read_wav, write_wav

TONE = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype(np.int16)


def test_ipv6_loopback_is_available() -> None:
    """The tests below need ::1; this sandbox has it (a failure here explains theirs)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))


async def rtp_peer(host: str) -> RtpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(lambda: RtpPeer(TONE), local_addr=(host, 0))
    return peer


class AnyFamilyCall(Call):
    """tests/sip/uac.py's Call, reading an answer's c= of either family."""

    def _remote_rtp(self, resp: SipResponse) -> tuple[str, int]:
        body = resp.body.decode()
        port = int(body.split("m=audio ", 1)[1].split()[0])
        c = next(line for line in body.splitlines() if line.startswith("c=IN "))
        return c.split()[2], port


def offer(port: int, addr: str, codecs: str = "0 8 101") -> str:
    sdp = offer_sdp(port, codecs=codecs, addr=addr)
    return sdp.replace(f"c=IN IP4 {addr}", f"c=IN IP6 {addr}") if ":" in addr else sdp


async def call_and_hear(srv_host: str, sip_port: int, local: str, media: str | None = None) -> tuple[str, int]:
    """A call from ``local`` (SIP and RTP) to the server; returns the answer's c= address and the RTP heard."""
    sip = await SipClient("UDP", (srv_host, sip_port), local_host=local).connect()
    rtp = await rtp_peer(media or local)
    try:
        call = AnyFamilyCall(sip, rtp, f"sip:echo@{'[' + srv_host + ']' if ':' in srv_host else srv_host}")
        r = await call.invite(offer(rtp.port, media or local))
        assert r.status == 200, f"{r.status} {r.reason}"
        addr, _ = call._remote_rtp(r)
        await wait_for(lambda: len(rtp.received) > 25, 5.0, f"RTP back over {addr}")
        assert (await call.bye()).status == 200
        return addr, len(rtp.received)
    finally:
        await rtp.close()
        await sip.close()


async def options_over_tcp(port: int) -> None:
    """OPTIONS over TCP from 127.0.0.1 and from ::1: both answered 200, Contact bracketed for IPv6."""
    for host in ("127.0.0.1", "::1"):
        sip = await SipClient("TCP", (host, port), local_host=host).connect()
        try:
            sip.send(sip.request("OPTIONS", f"sip:{'[::1]' if ':' in host else host}", "opt-" + host, from_tag="o"))
            r = await sip.recv()
            assert r.status == 200
            if host == "::1":
                assert "@[::1]:" in (r.headers.get("Contact") or ""), r.headers.get("Contact")
        finally:
            await sip.close()


async def test_baresip_calls_echo_over_ipv6(tmp_path: Path) -> None:
    """baresip -6 on ::1: SIP and RTP over IPv6, the caller's speech comes back as its echo."""
    work = tmp_path  # not tests/artifacts: other runs in this tree must not share (and wipe) it
    speech, rate = read_wav(FIXTURES / "speech_8k.wav")
    lead, tail = 4000, 7 * 8000
    mic = np.concatenate([np.zeros(lead, np.int16), speech.astype(np.int16), np.zeros(tail, np.int16)])
    write_wav(work / "mic.wav", mic, 8000)
    async with running_server(host="::1") as srv:
        bs = Baresip(work, work / "mic.wav")
        cfg = work / "config"
        cfg.write_text(cfg.read_text().replace("sip_listen\t\t127.0.0.1:0", "sip_listen\t\t[::1]:0")
                       + "net_interface\t\t::1\n")
        await bs.start()
        try:
            await bs.command("dial", f"sip:echo@[::1]:{srv.sip_port}")
            await bs.wait_event("CALL_ESTABLISHED", 5)
            await wait_for(lambda: srv.active("sip_udp") == 1, 1.0, "the call to be active")
            (dialog,) = srv.sip.core.dialogs.values()
            assert ":" in dialog.conn.remote[0], dialog.conn.remote  # SIP came over IPv6
            rtp = srv.rtp_of(dialog.media)
            assert rtp.sock.family == socket.AF_INET6 and ":" in rtp.remote[0]
            assert "c=IN IP6 ::1" in srv.hosted(dialog.media).answer_sdp
            await bs.wait_event("CALL_CLOSED", 20)
            await wait_for(lambda: srv.active() == 0, 1.0, "active calls back to 0")
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 1
        finally:
            await bs.stop()
    (dec,) = list(bs.rec.glob("dump-*-dec.wav"))
    heard, _ = read_wav(dec)
    score, _lag = normalized_xcorr_peak(speech.astype(np.int16), heard)
    assert score > 0.6, f"echo over IPv6 does not match what was sent (score {score:.2f})"


async def test_dual_stack_host_takes_ipv4_and_ipv6_callers() -> None:
    """--host '::': one port, callers over 127.0.0.1 and ::1, each answered (SDP c=) in its own family."""
    async with running_server(host="::") as srv:
        sock = srv.sip.net.udp.get_extra_info("socket")
        assert sock.family == socket.AF_INET6
        addr4, n4 = await call_and_hear("127.0.0.1", srv.sip_port, "127.0.0.1")
        addr6, n6 = await call_and_hear("::1", srv.sip_port, "::1")
        assert addr4 == "127.0.0.1" and addr6 == "::1", (addr4, addr6)
        # mixed: IPv4 signaling, IPv6 media -- the dual-stack server answers with IPv6 media
        addr_mixed, _ = await call_and_hear("127.0.0.1", srv.sip_port, "127.0.0.1", media="::1")
        assert addr_mixed == "::1"
        await options_over_tcp(srv.sip_port)  # TCP over both families too
        await wait_for(lambda: srv.active() == 0, 1.0, "calls released")
        assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 3


async def test_mixed_family_offer_is_refused_with_a_488_that_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """IPv4-only server, c=IN IP6 offer: 488 before any 200, reason in the status line and a Warning 301."""
    caplog.set_level(logging.WARNING, logger="v2v.sip")
    async with running_server(host="127.0.0.1") as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await rtp_peer("::1")
        try:
            call = AnyFamilyCall(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            r = await call.invite(offer(rtp.port, "::1"))
            assert r.status == 488 and "IPv6" in r.reason, r.reason
            warning = r.headers.get("Warning") or ""
            assert warning.startswith('301 v2v "') and "no IPv6 media address" in warning, warning
            assert srv.active() == 0 and not srv.sip.core.dialogs and not rtp.received
            lines = [rec.getMessage() for rec in caplog.records if "refused INVITE" in rec.getMessage()]
            assert len(lines) == 1, lines
            assert "488 address-family" in lines[0] and "PCMU/8000" in lines[0] and "127.0.0.1" in lines[0]
            assert srv.metric("v2v_sip_refusals_total", status="488", reason="address-family") == 1
        finally:
            await rtp.close()
            await sip.close()


async def test_ipv6_only_server_refuses_an_ipv4_offer() -> None:
    async with running_server(host="::1") as srv:
        sip = await SipClient("UDP", ("::1", srv.sip_port), local_host="::1").connect()
        rtp = await rtp_peer("127.0.0.1")
        try:
            r = await AnyFamilyCall(sip, rtp, f"sip:echo@[::1]:{srv.sip_port}").invite(offer(rtp.port, "127.0.0.1"))
            assert r.status == 488 and "IPv4" in r.reason, r.reason
            assert srv.metric("v2v_sip_refusals_total", status="488", reason="address-family") == 1
        finally:
            await rtp.close()
            await sip.close()


def test_media_addresses_pick_the_offers_family() -> None:
    both = MediaAddresses(["127.0.0.1", "::1"])
    assert both.choose("::1") == ("::1", "::1") and both.choose("127.0.0.1") == ("127.0.0.1", "127.0.0.1")
    dual = MediaAddresses(["::"], dual_stack=True)
    assert dual.choose("127.0.0.1") == ("::", "127.0.0.1") and dual.choose("::1") == ("::", "::1")
    v6only = MediaAddresses(["::"], dual_stack=False)  # an OS that keeps '::' IPv6-only: IPv4 on 0.0.0.0
    assert v6only.choose("127.0.0.1") == ("0.0.0.0", "127.0.0.1") and v6only.choose("::1") == ("::", "::1")
    assert MediaAddresses(["::1"], advertise="203.0.113.5").choose("::1") == ("::1", "::1")  # advertise is IPv4
    assert MediaAddresses(["0.0.0.0"], advertise="203.0.113.5").choose("127.0.0.1") == ("0.0.0.0", "203.0.113.5")
    with pytest.raises(ValueError, match="no IPv6 media address"):
        MediaAddresses(["0.0.0.0"]).choose("::1")
    assert send_address(socket.AF_INET6, True, ("127.0.0.1", 5)) == ("::ffff:127.0.0.1", 5)
    assert send_address(socket.AF_INET6, False, ("127.0.0.1", 5)) is None
    assert send_address(socket.AF_INET, False, ("::1", 5)) is None
    assert send_address(socket.AF_INET, False, ("host.example", 5)) is None


async def _sender_survives_family_changes() -> tuple[int, int, str]:
    """A live RtpSession on an IPv4 socket whose remote turns IPv6 and back (a re-INVITE would do it)."""
    loop = asyncio.get_running_loop()
    peer_tr, peer = await loop.create_datagram_endpoint(lambda: RtpPeer(TONE), local_addr=("127.0.0.1", 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    timeouts: list[int] = []

    class Silence:
        def read(self, n: int) -> np.ndarray:
            return np.zeros(n, np.int16)

    s = RtpSession(sock, "PCMU", 0, 101, ("127.0.0.1", peer.port), Silence(), lambda pcm: None, lambda d: None,
                   lambda: timeouts.append(1), timeout=30.0)
    await s.start()
    try:
        peer.start(("127.0.0.1", s.local_port))  # proves the address: the sender latches and sends audio
        await wait_for(lambda: len(peer.received) > 5, 3.0, "RTP before the switch")
        s.update_remote(("::1", 40000), True, True)  # an IPv6 address on an IPv4 socket
        s.remote, s.latched = ("::1", 40000), True  # ... latched, so the sender really tries it
        await asyncio.sleep(0.2)
        assert s._task is not None and not s._task.done() and not timeouts, "the sender died"
        bad = s._sender.failures if s._sender else 0
        s.update_remote(("127.0.0.1", peer.port), True, True)
        n = len(peer.received)
        await wait_for(lambda: len(peer.received) > n + 5, 3.0, "RTP after the switch back")
        # a transport that raises anyway (uvloop: ValueError, asyncio: via error_received) is caught too
        assert s._transport is not None
        odd = DatagramSender(sock, "test")
        odd.family = socket.AF_INET6  # wrong on purpose: the pre-check lets an IPv6 address through
        assert odd.send(s._transport, b"x" * 12, ("::1", 9)) in (False, True)
        return bad, odd.failures, type(loop).__name__
    finally:
        await s.close()
        await peer.close()
        peer_tr.close()


async def test_rtp_sender_survives_an_address_of_the_other_family(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="v2v.sip.rtp")
    bad, _odd, _loop = await _sender_survives_family_changes()
    assert bad >= 5
    warned = [r for r in caplog.records if "cannot send to ::1:40000" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]


def test_rtp_sender_survives_uvloop_value_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The server runs uvloop (signaling/cli.py), whose sendto raises ValueError for a family mismatch."""
    caplog.set_level(logging.WARNING, logger="v2v.sip.rtp")
    bad, odd, loop = uvloop.run(_sender_survives_family_changes())
    assert loop == "Loop" and bad >= 5
    assert odd == 1  # uvloop raised ValueError into DatagramSender, which caught it
    assert any("ValueError" in r.getMessage() for r in caplog.records)


async def test_each_refusal_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="v2v.sip")
    monkeypatch.setattr(sip_dialog, "T1", 0.02)  # no ACK: the 200 is given up after 64*T1
    async with running_server(max_calls=1) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await rtp_peer("127.0.0.1")
        uri = f"sip:echo@127.0.0.1:{srv.sip_port}"

        def refusal_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "sip: refused" in r.getMessage()]

        async def expect(status: int, reason: str, send, codec: str | None = None) -> SipResponse:
            before, records = len(refusal_lines()), len(caplog.records)
            r = await send()
            assert r.status == status, f"{r.status} {r.reason}"
            await wait_for(lambda: len(refusal_lines()) > before, 2.0, f"the {status} log line")
            await asyncio.sleep(0.1)  # retransmissions of the final response: still one line
            new = refusal_lines()[before:]
            assert len(new) == 1, new
            # and the only WARNING of any logger for it (the worker's capacity check stays at INFO for SIP)
            warnings = [x.getMessage() for x in caplog.records[records:] if x.levelno >= logging.WARNING]
            assert warnings == new, warnings
            assert f"{status} {reason}" in new[0] and "127.0.0.1" in new[0], new[0]
            if codec:
                assert codec in new[0], new[0]
            assert srv.metric("v2v_sip_refusals_total", status=str(status), reason=reason) == 1
            return r

        try:
            # a phone offering no G.711 (G.729 only; GSM): 488 naming the codecs it offered
            r = await expect(488, "no-common-codec",
                             lambda: Call(sip, rtp, uri).invite(offer_sdp(rtp.port, codecs="18 3")), "G729/8000")
            assert "305" in (r.headers.get("Warning") or "")
            await expect(488, "bad-offer",
                         lambda: Call(sip, rtp, uri).invite(offer_sdp(rtp.port, addr="pbx.example")), "PCMU/8000")
            await expect(420, "unsupported-extension",
                         lambda: Call(sip, rtp, uri).invite(offer_sdp(rtp.port), extra="Require: 100rel"))
            async def xml_invite() -> SipResponse:
                c = Call(sip, rtp, uri)
                sip.send(sip.request("INVITE", uri, c.call_id, from_tag=c.from_tag, cseq=1, body="<x/>", ctype="text/xml"))
                return await sip.recv_final(c.call_id, "INVITE")

            await expect(415, "unsupported-media-type", xml_invite)
            stray = Call(sip, rtp, uri)
            stray.to_tag = "nosuchdialog"
            await expect(481, "unknown-dialog", lambda: stray.invite(offer_sdp(rtp.port)))
            # full (max 1 call): 503
            held = await Call.dial(sip, rtp, uri)
            rtp2 = await rtp_peer("127.0.0.1")
            try:
                await expect(503, "overloaded", lambda: Call(sip, rtp2, uri).invite(offer_sdp(rtp2.port)))
            finally:
                await rtp2.close()
            assert (await held.bye()).status == 200
            await wait_for(lambda: srv.active() == 0, 1.0, "the held call to end")
            # a 200 never ACKed: the call ends, counted as 408 no-ack
            before = len(refusal_lines())
            c = Call(sip, rtp, uri)
            sip.send(sip.request("INVITE", uri, c.call_id, from_tag=c.from_tag, cseq=1, body=offer_sdp(rtp.port)))
            assert (await sip.recv_final(c.call_id, "INVITE")).status == 200
            await wait_for(lambda: len(refusal_lines()) > before, 5.0, "the no-ACK line")
            assert "408 no-ack" in refusal_lines()[-1] and len(refusal_lines()) == before + 1
            assert srv.metric("v2v_sip_refusals_total", status="408", reason="no-ack") == 1
            # /metrics renders the counter with both labels
            body, _ = srv.manager.metrics.render()
            assert 'v2v_sip_refusals_total{reason="no-common-codec",status="488"} 1.0' in body.decode()
        finally:
            await rtp.close()
            await sip.close()


async def test_serve_process_on_dual_stack_host() -> None:
    """A real `v2v serve --host ::` (uvloop): HTTP and SIP over 127.0.0.1 and ::1; a refusal in /metrics and the log."""
    sip_port = free_udp_port()
    async with serve_process("--host", "::", "--sip-port", str(sip_port)) as (proc, url), ClientSession() as http:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for base in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
            async with http.get(base + "healthz") as r:
                assert r.status == 200, base
        addr4, _ = await call_and_hear("127.0.0.1", sip_port, "127.0.0.1")
        addr6, _ = await call_and_hear("::1", sip_port, "::1")
        assert (addr4, addr6) == ("127.0.0.1", "::1")
        await options_over_tcp(sip_port)
        sip = await SipClient("UDP", ("::1", sip_port), local_host="::1").connect()
        rtp = await rtp_peer("::1")
        try:
            r = await AnyFamilyCall(sip, rtp, f"sip:echo@[::1]:{sip_port}").invite(offer(rtp.port, "::1", "18"))
            assert r.status == 488 and "no common codec" in r.reason, r.reason
        finally:
            await rtp.close()
            await sip.close()
        async with http.get(f"http://[::1]:{port}/metrics") as r:
            text = await r.text()
        assert 'v2v_sip_refusals_total{reason="no-common-codec",status="488"} 1.0' in text
        assert 'v2v_calls_total{outcome="hangup",transport="sip_udp"} 2.0' in text
        assert proc.stdout is not None
        line = ""
        while "sip: refused" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        assert "488 no-common-codec" in line and "[::1]:" in line and "G729/8000" in line, line


async def test_admission_and_ringing_refusals_are_explained(caplog: pytest.LogCaptureFixture) -> None:
    """403 (not in --sip-allow) names the offer's codecs; a caller gone while ringing is a 480, counted."""
    caplog.set_level(logging.WARNING, logger="v2v.sip")
    async with running_server(sip_allow=["10.0.0.0/8"]) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await rtp_peer("127.0.0.1")
        try:
            r = await Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}").invite(offer_sdp(rtp.port))
            assert r.status == 403
            lines = [rec.getMessage() for rec in caplog.records if "refused INVITE" in rec.getMessage()]
            assert len(lines) == 1 and "not-allowed" in lines[0] and "PCMU/8000" in lines[0], lines
            assert srv.metric("v2v_sip_refusals_total", status="403", reason="not-allowed") == 1
        finally:
            await rtp.close()
            await sip.close()
    caplog.clear()
    async with running_server(sip_ring_ms=5000) as srv:
        sip = await SipClient("TCP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await rtp_peer("127.0.0.1")
        try:
            c = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            sip.send(sip.request("INVITE", c.uri, c.call_id, from_tag=c.from_tag, cseq=1, body=offer_sdp(rtp.port)))
            while (await sip.recv()).status != 180:
                pass
            await sip.close()  # the caller's connection goes while it rings
            await wait_for(lambda: srv.metric("v2v_sip_refusals_total", status="480",
                                              reason="ended-before-answer") == 1, 2.0, "the 480 counted")
            lines = [rec.getMessage() for rec in caplog.records if "refused INVITE" in rec.getMessage()]
            assert len(lines) == 1 and "480 ended-before-answer (peer-closed)" in lines[0], lines
            await wait_for(lambda: srv.active() == 0, 1.0, "the call released")
        finally:
            await rtp.close()


async def test_media_address_of_the_offers_family_is_used() -> None:
    """--media-address 127.0.0.1,::1 on an IPv4 SIP host: an IPv6 offer is answered from ::1, an IPv4 one from 127.0.0.1."""
    async with running_server(host="127.0.0.1", media_address=["127.0.0.1", "::1"]) as srv:
        assert (await call_and_hear("127.0.0.1", srv.sip_port, "127.0.0.1", media="::1"))[0] == "::1"
        assert (await call_and_hear("127.0.0.1", srv.sip_port, "127.0.0.1"))[0] == "127.0.0.1"
        assert srv.metric("v2v_sip_refusals_total") == 0


async def test_rtp_transport_closed_by_the_loop_ends_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio closes a datagram transport on a non-OSError from sendto: the call ends, said why (no silent death)."""
    caplog.set_level(logging.WARNING, logger="v2v.sip.rtp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    ended = asyncio.Event()

    class Silence:
        def read(self, n: int) -> np.ndarray:
            return np.zeros(n, np.int16)

    s = RtpSession(sock, "PCMU", 0, 101, ("127.0.0.1", 9), Silence(), lambda pcm: None, lambda d: None,
                   ended.set, timeout=30.0)
    await s.start()
    try:
        assert s._transport is not None
        s._transport.sendto(b"x", ("127.0.0.1", 70000))  # asyncio: OverflowError -> _fatal_error -> closed
        await asyncio.wait_for(ended.wait(), 2.0)
        assert s.timeout_reason == "RTP transport failed (OverflowError)"
        assert any("transport failed" in r.getMessage() for r in caplog.records)
    finally:
        await s.close()


async def test_reinvite_to_the_other_family_on_dual_stack() -> None:
    """A re-INVITE moving the media from 127.0.0.1 to ::1 is answered c=IN IP6 and the audio follows."""
    async with running_server(host="::") as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp4, rtp6 = await rtp_peer("127.0.0.1"), await rtp_peer("::1")
        try:
            call = AnyFamilyCall(sip, rtp4, f"sip:echo@127.0.0.1:{srv.sip_port}")
            r = await call.invite(offer(rtp4.port, "127.0.0.1"))
            assert r.status == 200 and "c=IN IP4 127.0.0.1" in r.body.decode()
            await wait_for(lambda: len(rtp4.received) > 10, 3.0, "RTP over IPv4")
            r = await call.invite(offer(rtp6.port, "::1"))
            assert r.status == 200 and "c=IN IP6 ::1" in r.body.decode(), r.body.decode()
            rtp6.start(("::1", call._remote_rtp(r)[1]))  # the caller's new address proves itself
            await wait_for(lambda: len(rtp6.received) > 10, 3.0, "RTP over IPv6 after the re-INVITE")
            assert (await call.bye()).status == 200
        finally:
            await rtp4.close()
            await rtp6.close()
            await sip.close()
