"""SIP protocol behaviour against a real server, with the scripted UAC of tests/sip/uac.py."""

from __future__ import annotations

import asyncio
import struct
import time

import aiohttp
import numpy as np

from tests.conftest import load_wav, manifest
from tests.sip.harness import record_call_events, running_server, wait_for
from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp
from v2v.media.g711 import ulaw_encode
from v2v.signaling.sip.digest import compute_response, parse_auth_header
from v2v.signaling.sip.message import SipRequest, SipResponse, make_response, parse
from v2v.worker import events as ev

TONE = (6000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)


async def test_options_on_every_transport_and_rport() -> None:
    async with running_server() as srv:
        for transport in ("UDP", "TCP"):
            sip = await SipClient(transport, ("127.0.0.1", srv.sip_port)).connect()
            try:
                sip.send(sip.request("OPTIONS", "sip:echo@127.0.0.1", f"opt-{transport}", from_tag="o"))
                r = await sip.recv()
                assert isinstance(r, SipResponse) and r.status == 200
                assert "INVITE" in r.headers.get("Allow", "") and "UPDATE" in r.headers.get("Allow", "")
                via = r.vias[0]
                assert via.params.get("rport") == str(sip.local_port)  # RFC 3581
                assert via.params.get("received") == "127.0.0.1"
            finally:
                await sip.close()
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.http_port}/sip", protocols=("sip",)) as ws:
                assert ws.protocol == "sip"
                await ws.send_str(
                    "OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bKws1\r\n"
                    "From: <sip:x@y>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: ws-opt\r\nCSeq: 3 OPTIONS\r\n"
                    "Content-Length: 0\r\n\r\n")
                r = parse((await asyncio.wait_for(ws.receive(), 3)).data.encode())
                assert isinstance(r, SipResponse) and r.status == 200
                assert r.headers.get("Via") == "SIP/2.0/WSS abc.invalid;branch=z9hG4bKws1"
            # GET /sip without an upgrade is a clear 400, not a 500
            async with http.get(f"http://127.0.0.1:{srv.http_port}/sip") as resp:
                assert resp.status == 400 and "error" in await resp.json()


async def test_register_open_and_with_digest() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            sip.send(sip.request("REGISTER", "sip:127.0.0.1", "reg-1", from_tag="r", extra="Expires: 120"))
            r = await sip.recv()
            assert r.status == 200 and r.headers.get("Expires") == "120"
            assert f"127.0.0.1:{sip.local_port}" in r.headers.get("Contact") and "expires=120" in r.headers.get("Contact")
        finally:
            await sip.close()
    async with running_server(sip_users=["alice:wonder"]) as srv:
        sip = await SipClient("TCP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            sip.send(sip.request("REGISTER", "sip:127.0.0.1", "reg-2", from_tag="r", cseq=1))
            r = await sip.recv()
            assert r.status == 401
            _, ch = parse_auth_header(r.headers.get("WWW-Authenticate"))
            for pw, status in (("wrong", 401), ("wonder", 200)):
                resp = compute_response("alice", ch["realm"], pw, "REGISTER", "sip:127.0.0.1", ch["nonce"], "auth",
                                        "00000001", "c0ffee")
                auth = (f'Authorization: Digest username="alice", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
                        f'uri="sip:127.0.0.1", response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')
                sip.send(sip.request("REGISTER", "sip:127.0.0.1", "reg-2", from_tag="r", cseq=2 if status == 401 else 3,
                                     extra=auth))
                assert (await sip.recv()).status == status
            # with users configured, INVITE needs credentials too
            rtp = await RtpPeer.open(TONE)
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            r = await call.invite(offer_sdp(rtp.port))
            assert r.status == 401
            await rtp.close()
            assert srv.active() == 0
        finally:
            await sip.close()


async def test_register_with_non_ascii_digest_fields_is_refused_not_500(caplog) -> None:
    async with running_server(sip_users=["alice:wonder"]) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            sip.send(sip.request("REGISTER", "sip:127.0.0.1", "reg-u", from_tag="r", cseq=1))
            r = await sip.recv()
            assert r.status == 401
            _, ch = parse_auth_header(r.headers.get("WWW-Authenticate"))
            good_nonce = ch["nonce"]
            forged_nonce = good_nonce.split(".")[0] + ".\u00e9\u00e9"
            cases = [
                (good_nonce, "\u00e9"),  # a non-ASCII response
                # the right password over a nonce whose signature is non-ASCII
                (forged_nonce, compute_response("alice", ch["realm"], "wonder", "REGISTER", "sip:127.0.0.1",
                                                forged_nonce, "auth", "00000001", "c0ffee")),
            ]
            for cseq, (nonce, resp) in enumerate(cases, start=2):
                auth = (f'Authorization: Digest username="alice", realm="{ch["realm"]}", nonce="{nonce}", '
                        f'uri="sip:127.0.0.1", response="{resp}", algorithm=MD5, qop=auth, nc=00000001, '
                        f'cnonce="c0ffee"')
                sip.send(sip.request("REGISTER", "sip:127.0.0.1", "reg-u", from_tag="r", cseq=cseq, extra=auth))
                r = await sip.recv()
                assert r.status in (400, 401), r.status
            assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
            assert not srv.sip.core.registrations
        finally:
            await sip.close()


async def test_registrations_expire_and_are_capped() -> None:
    async with running_server() as srv:
        core = srv.sip.core
        now = [1_000_000.0]
        core.clock = lambda: now[0]
        core.max_registrations = 3
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()

        async def register(user: str, expires: int) -> None:
            sip.send(sip.request("REGISTER", f"sip:{user}@127.0.0.1", f"reg-{user}-{expires}", from_tag="r",
                                 extra=f"Expires: {expires}"))
            assert (await sip.recv()).status == 200

        try:
            await register("short", 5)
            await register("long", 600)
            assert set(core.registrations) == {"sip:short@127.0.0.1", "sip:long@127.0.0.1"}
            now[0] += 10  # "short" has expired: the next REGISTER purges it
            await register("other", 600)
            assert set(core.registrations) == {"sip:long@127.0.0.1", "sip:other@127.0.0.1"}
            for i in range(5):
                await register(f"u{i}", 600)
                assert len(core.registrations) <= 3
            # the oldest went first
            assert list(core.registrations) == ["sip:u2@127.0.0.1", "sip:u3@127.0.0.1", "sip:u4@127.0.0.1"]
            # a refresh makes an entry the newest
            await register("u2", 600)
            await register("u5", 600)
            assert list(core.registrations) == ["sip:u4@127.0.0.1", "sip:u2@127.0.0.1", "sip:u5@127.0.0.1"]
        finally:
            await sip.close()


async def test_call_over_tcp_ring_delay_pcma_info_dtmf_and_bye() -> None:
    async with running_server(sip_ring_ms=400) as srv:
        events = record_call_events(srv)
        sip = await SipClient("TCP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:assistant@127.0.0.1:{srv.sip_port}")
            t0 = time.monotonic()
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(rtp.port, codecs="8 0 101")))
            statuses, times = [], []
            while not statuses or statuses[-1] < 200:
                r = await sip.recv()
                statuses.append(r.status)
                times.append(time.monotonic() - t0)
            assert statuses == [100, 180, 200]
            assert times[2] - times[1] >= 0.38, times  # --sip-ring-ms after the 180
            assert r.to.tag and "a=rtpmap:8 PCMA/8000" in r.body.decode() and "m=audio" in r.body.decode()
            assert r.headers.get("Contact", "").endswith(";transport=tcp>")
            call.to_tag, call.cseq = r.to.tag, 2
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1))
            rtp.start(call._remote_rtp(r))
            await wait_for(lambda: len(rtp.received) > 20, 2.0, "RTP from the server")
            assert {pt for _, pt, _ in rtp.received} == {8}  # the caller's first preference
            # the assistant profile -> the server's default model (echo in this test server)
            assert srv.manager.calls and next(iter(srv.manager.calls.values())).profile is None
            r = await call.in_dialog("INFO", "Signal=7\r\nDuration=160\r\n", ctype="application/dtmf-relay")
            assert r.status == 200
            r = await call.in_dialog("INFO", "Signal=x\r\n", ctype="application/dtmf-relay")
            assert r.status == 400
            await wait_for(lambda: any(isinstance(e, ev.DtmfReceived) for e in events), 2.0, "DTMF at the worker")
            assert [e.digit for e in events if isinstance(e, ev.DtmfReceived)] == ["7"]
            # UPDATE without a body: a session refresh (JsSIP's session timers)
            r = await call.in_dialog("UPDATE", extra="Session-Expires: 90;refresher=uac\r\nSupported: timer")
            assert r.status == 200 and r.headers.get("Session-Expires") == "90;refresher=uac"
            assert (await call.bye()).status == 200
            await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
            assert srv.metric("v2v_calls_total", transport="sip_tcp", outcome="hangup") == 1
            # an unknown dialog
            assert (await call.bye()).status == 481
        finally:
            await rtp.close()
            await sip.close()


async def test_hold_unhold_latching_rfc4733_in_and_retransmitted_invite() -> None:
    async with running_server() as srv:
        events = record_call_events(srv)
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            # the SDP names a wrong port: the server must latch onto where RTP really comes from
            invite = sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(9, codecs="0 101"), branch="z9hG4bKretrans")
            sip.send(invite)
            r = await sip.recv_final(call.call_id, "INVITE")
            sip.send(invite)  # a retransmission gets the same final response, not a second call
            r2 = await sip.recv_final(call.call_id, "INVITE")
            assert r2.status == 200 and r2.to.tag == r.to.tag and srv.active() == 1
            call.to_tag, call.cseq, call.answer = r.to.tag, 2, r
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1))
            rtp.start(call._remote_rtp(r))
            await wait_for(lambda: len(rtp.received) > 10, 2.0, "RTP after latching")
            (d,) = srv.sip.core.dialogs.values()
            assert srv.rtp_of(d.media).latched and srv.rtp_of(d.media).remote == ("127.0.0.1", rtp.port)
            # RFC 4733 digit "9" from the caller's RTP
            rtp.send_dtmf(9)
            await wait_for(lambda: any(isinstance(e, ev.DtmfReceived) for e in events), 2.0, "RFC 4733 DTMF")
            await wait_for(lambda: not rtp.events, 1.0, "the whole event sent")
            assert srv.rtp_of(d.media).stats.dtmf_in == 1
            assert [e.digit for e in events if isinstance(e, ev.DtmfReceived)] == ["9"]
            # hold: sendonly -> recvonly, and the server stops sending
            r = await call.invite(offer_sdp(rtp.port, direction="sendonly"))
            assert r.status == 200 and "a=recvonly" in r.body.decode()
            n0 = len(rtp.received)
            await asyncio.sleep(0.3)  # let in-flight packets land, then count for a while
            n1 = len(rtp.received)
            await asyncio.sleep(0.4)
            assert len(rtp.received) == n1 and n1 - n0 <= 3
            # unhold
            r = await call.invite(offer_sdp(rtp.port))
            assert r.status == 200 and "a=sendrecv" in r.body.decode()
            await wait_for(lambda: len(rtp.received) > n1 + 10, 2.0, "RTP after unhold")
            assert srv.active() == 1
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


async def test_rfc4733_dtmf_delivery_is_tracked_and_cancelled_at_call_end() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_for(lambda: len(rtp.received) > 5, 2.0, "RTP")
            (d,) = srv.sip.core.dialogs.values()
            media = srv.hosted(d.media)
            started, cancelled = asyncio.Event(), asyncio.Event()

            async def slow_dtmf(digit: str) -> None:  # the worker is busy with the digit
                started.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

            media.call.session.dtmf = slow_dtmf
            rtp.send_dtmf(4)
            await asyncio.wait_for(started.wait(), 2.0)
            assert len(media._tasks) == 1  # a reference is kept while it runs
            assert (await call.bye()).status == 200
            await asyncio.wait_for(d.media.ended.wait(), 5.0)
            await asyncio.wait_for(cancelled.wait(), 2.0)
            await wait_for(lambda: not media._tasks, 2.0, "the DTMF task to go")
        finally:
            await rtp.close()
            await sip.close()


class SuppressingPeer(RtpPeer):
    """A phone doing silence suppression: speech packets while it has speech,
    then one comfort-noise packet (PT 13) and nothing; the RTP timestamp keeps
    running at 8 kHz all along, so the next talkspurt comes with a jump."""

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__(audio)
        self.frames: list[np.ndarray] = []
        self.cn_sent = 0
        self.audio_sent = 0

    def say(self, pcm: np.ndarray) -> None:
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 160, np.int16)])
        self.frames += list(pcm.reshape(-1, 160))

    def _packet(self, pt: int, payload: bytes) -> None:
        hdr = struct.pack("!BBHII", 0x80, pt, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc)
        self.seq += 1
        assert self.transport is not None and self.remote is not None
        self.transport.sendto(hdr + payload, self.remote)
        self.sent += 1

    async def _send_loop(self) -> None:
        t0, n, silent = time.monotonic(), 0, False
        while True:
            n += 1
            if self.frames:
                self._packet(0, ulaw_encode(self.frames.pop(0)))
                self.audio_sent += 1
                silent = False
            elif not silent:
                self._packet(13, bytes([40]))  # CN, -40 dBov: silence starts
                self.cn_sent += 1
                silent = True
            self.ts += 160  # the sampling clock runs whether or not anything is sent
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))


async def test_silence_suppression_ends_the_turn_like_silence() -> None:
    speech, _ = load_wav("speech_8k.wav")
    (s0, s1), = manifest()["speech_8k.wav"]["speech"]
    phrase = speech[s0:s1]
    async with running_server() as srv:
        events = record_call_events(srv)
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await SuppressingPeer.open(np.zeros(0, np.int16))

        def count(cls: type) -> int:
            return sum(isinstance(e, cls) for e in events)

        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_for(lambda: rtp.cn_sent >= 1 and srv.active() == 1, 2.0, "the call up, the phone silent")
            for turn in (1, 2):
                rtp.say(phrase)
                # the phrase, one CN packet, then nothing: the turn still ends and the echo answers
                await wait_for(lambda t=turn: count(ev.BotStartedSpeaking) >= t, 8.0, f"the reply to turn {turn}")
                assert count(ev.UserStoppedSpeaking) >= turn
                assert rtp.audio_sent == turn * len(range(0, len(phrase), 160)) and rtp.cn_sent == turn + 1
                await wait_for(lambda t=turn: count(ev.BotStoppedSpeaking) >= t, 8.0, f"the end of reply {turn}")
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


async def test_rtp_inactivity_ends_call_with_bye() -> None:
    async with running_server(media_timeout=0.6) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_for(lambda: len(rtp.received) > 5, 2.0, "RTP")
            t_stop = time.monotonic()
            await rtp.close()  # the caller's RTP stops
            bye = await asyncio.wait_for(sip.inbox.get(), 3.0)
            msg = parse(bye)
            assert getattr(msg, "method", None) == "BYE" and msg.call_id == call.call_id
            assert 0.5 < time.monotonic() - t_stop < 2.0
            assert msg.to.tag == call.from_tag and msg.from_.tag == call.to_tag
            sip.send(bytes(make_response(msg, 200)))
            await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="media-timeout") == 1
        finally:
            await sip.close()


async def test_cancel_during_ring_and_unsupported_offer() -> None:
    async with running_server(sip_ring_ms=3000) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            branch = "z9hG4bKcancelme"
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(rtp.port), branch=branch))
            while (await sip.recv()).status != 180:
                pass
            assert srv.active() == 1
            sip.send(sip.request("CANCEL", call.uri, call.call_id, from_tag=call.from_tag, cseq=1, branch=branch))
            got = {}
            while len(got) < 2:
                r = await sip.recv()
                got[r.cseq[1]] = r.status
            assert got == {"CANCEL": 200, "INVITE": 487}
            await wait_for(lambda: srv.active() == 0, 1.0, "the cancelled call to be released")
            # no G.711 in the offer -> 488
            call2 = Call(sip, rtp, call.uri)
            r = await call2.invite(offer_sdp(rtp.port, codecs="18"))
            assert r.status == 488
            # a required extension we do not do -> 420 naming it
            r = await Call(sip, rtp, call.uri).invite(offer_sdp(rtp.port), extra="Require: 100rel")
            assert r.status == 420 and r.headers.get("Unsupported") == "100rel"
        finally:
            await rtp.close()
            await sip.close()


async def test_delayed_offer_answer_in_ack() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1))  # no SDP
            r = await sip.recv_final(call.call_id, "INVITE")
            assert r.status == 200
            offer = r.body.decode()
            # our offer lists --sip-codecs (default opus, g722, pcmu, pcma) and telephone-event at both clocks
            assert "m=audio" in offer and " RTP/AVP 111 9 0 8 101 110" in offer and "telephone-event/8000" in offer
            call.to_tag = r.to.tag
            # answer PCMA in the ACK
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1,
                                 body=offer_sdp(rtp.port, codecs="8 101")))
            rtp.pt = 8
            rtp.start(call._remote_rtp(r))
            await wait_for(lambda: len(rtp.received) > 20, 2.0, "RTP after the answer in ACK")
            assert {pt for _, pt, _ in rtp.received} == {8}
            (d,) = srv.sip.core.dialogs.values()
            assert srv.rtp_of(d.media).codec.name == "PCMA" and not d.media.awaiting_answer
            call.cseq = 2
            assert (await call.bye()).status == 200
            await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
        finally:
            await rtp.close()
            await sip.close()


async def test_udp_2xx_retransmitted_until_ack() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            sip.send(sip.request("INVITE", call.uri, call.call_id, from_tag=call.from_tag, cseq=1,
                                 body=offer_sdp(rtp.port)))
            first = await sip.recv_final(call.call_id, "INVITE")
            t0 = time.monotonic()
            again = await sip.recv_final(call.call_id, "INVITE", 2.0)  # timer: T1 = 500 ms
            third = await sip.recv_final(call.call_id, "INVITE", 2.0)  # then 2*T1
            t1 = time.monotonic()
            assert again.serialize() == first.serialize() == third.serialize()
            assert 1.2 < t1 - t0 + 0.5 < 2.2, t1 - t0  # 0.5 s + 1.0 s after the first
            call.to_tag = first.to.tag
            sip.send(sip.request("ACK", call.uri, call.call_id, from_tag=call.from_tag, to_tag=call.to_tag, cseq=1))
            (d,) = srv.sip.core.dialogs.values()
            await asyncio.wait_for(d.acked.wait(), 1.0)
            call.cseq = 2
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


async def test_server_shutdown_sends_bye() -> None:
    async with running_server() as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_for(lambda: len(rtp.received) > 5, 2.0, "RTP")

            async def answer_bye() -> SipRequest:
                while True:
                    msg = parse(await sip.inbox.get())
                    if isinstance(msg, SipRequest) and msg.method == "BYE":
                        sip.send(bytes(make_response(msg, 200)))
                        return msg

            waiter = asyncio.create_task(answer_bye())
            await srv.app.shutdown()  # what the server does on SIGINT/SIGTERM before cleanup
            bye = await asyncio.wait_for(waiter, 5.0)
            assert bye.call_id == call.call_id
            assert srv.active() == 0
            assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="shutdown") == 1
        finally:
            await rtp.close()
            await sip.close()
