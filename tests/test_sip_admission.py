"""SIP admission on a real server: digest on INVITE, --sip-allow by source address,
per-source INVITE/REGISTER rate limits that leave calls in progress alone, refusals
counted in /metrics by reason and logged once, the start-up warning when exposed."""

from __future__ import annotations

import asyncio
import logging
import secrets

import aiohttp
import numpy as np
import pytest

from tests.sip.harness import running_server, wait_for
from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp
from v2v.signaling.config import ServerConfig
from v2v.signaling.sip import ua_base as sip_core  # TX_LINGER lives in the UAS base
from v2v.signaling.sip.admission import Admission, RateLimiter, exposure_warning, parse_networks
from v2v.signaling.sip.digest import compute_response, parse_auth_header
from v2v.signaling.sip.message import SipResponse, parse

TONE = (6000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)


def _digest(ch: dict[str, str], user: str, pw: str, method: str, uri: str) -> str:
    resp = compute_response(user, ch["realm"], pw, method, uri, ch["nonce"], "auth", "00000001", "c0ffee")
    return (f'Authorization: Digest username="{user}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')


async def test_invite_needs_digest_when_users_are_set() -> None:
    async with running_server(sip_users=["alice:wonder"]) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = Call(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            r = await call.invite(offer_sdp(rtp.port))
            assert r.status == 401 and srv.active() == 0
            _, ch = parse_auth_header(r.headers.get("WWW-Authenticate"))
            r = await call.invite(offer_sdp(rtp.port), extra=_digest(ch, "alice", "nope", "INVITE", call.uri))
            assert r.status == 401 and srv.active() == 0
            r = await call.invite(offer_sdp(rtp.port), extra=_digest(ch, "alice", "wonder", "INVITE", call.uri))
            assert r.status == 200 and srv.active() == 1
            await wait_for(lambda: len(rtp.received) > 5, 3.0, "the call's RTP")
            assert (await call.bye()).status == 200
            assert srv.metric("v2v_sip_refusals_total", reason="auth-required") == 1
            assert srv.metric("v2v_sip_refusals_total", reason="auth-failed") == 1
        finally:
            await rtp.close()
            await sip.close()


async def test_allowlist_admits_trunks_by_source_and_others_need_digest_or_get_403(caplog) -> None:
    caplog.set_level(logging.WARNING, "v2v.sip")
    async with running_server(sip_allow=["127.0.0.2/32"]) as srv:
        trunk = await SipClient("UDP", ("127.0.0.1", srv.sip_port), local_host="127.0.0.2").connect()
        stranger = await SipClient("TCP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            for _ in range(3):
                r = await Call(stranger, rtp, uri).invite(offer_sdp(rtp.port))
                assert r.status == 403 and "not allowed" in r.reason
            stranger.send(stranger.request("REGISTER", "sip:127.0.0.1", "reg-x", from_tag="r"))
            assert (await stranger.recv()).status == 403
            stranger.send(stranger.request("OPTIONS", uri, "opt-x", from_tag="o"))
            assert (await stranger.recv()).status == 200  # OPTIONS stays open (keep-alives, monitoring)
            assert srv.active() == 0
            call = await Call.dial(trunk, rtp, uri)
            assert srv.active() == 1
            assert (await call.bye()).status == 200
            assert srv.metric("v2v_sip_refusals_total", reason="not-allowed") == 4
            # logged once for that source and reason, counted every time
            lines = [r for r in caplog.records if "refused" in r.getMessage() and "not-allowed" in r.getMessage()]
            assert len(lines) == 1
        finally:
            await rtp.close()
            await trunk.close()
            await stranger.close()
    # allowlist and users together: the trunk needs no digest, anyone else does
    async with running_server(sip_allow=["127.0.0.2"], sip_users=["bob:pw"]) as srv:
        trunk = await SipClient("UDP", ("127.0.0.1", srv.sip_port), local_host="127.0.0.2").connect()
        other = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            assert (await Call(other, rtp, uri).invite(offer_sdp(rtp.port))).status == 401
            call = await Call.dial(trunk, rtp, uri)
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await trunk.close()
            await other.close()


async def test_invite_flood_is_rate_limited_and_a_call_in_progress_keeps_going() -> None:
    async with running_server(sip_rate=2.0) as srv:  # 2/s, bursts of 6
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        flood = await SipClient("UDP", ("127.0.0.1", srv.sip_port), local_host="127.0.0.3").connect()
        rtp = await RtpPeer.open(TONE)
        loop = asyncio.get_running_loop()
        sink_t, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.3", 0))
        try:
            uri = f"sip:echo@127.0.0.1:{srv.sip_port}"
            call = await Call.dial(sip, rtp, uri)
            await wait_for(lambda: len(rtp.received) > 5, 3.0, "the call's RTP")
            n0 = len(rtp.received)
            # 40 INVITEs at once from another source whose SDP points at a sink that never sends RTP
            ids = [f"flood-{i}-{secrets.token_hex(3)}" for i in range(40)]
            for cid in ids:
                flood.send(flood.request("INVITE", uri, cid, from_tag="f", cseq=1, body=offer_sdp(sink.port,
                                                                                                  addr="127.0.0.3")))
            by_call: dict[str, int] = {}
            retry_after = set()
            while len(by_call) < len(ids):  # one final each (a 200 is retransmitted: counted once)
                r = await flood.recv(5.0)
                if r.status < 200:
                    continue
                by_call[r.call_id] = r.status
                if r.status == 503:
                    retry_after.add(r.headers.get("Retry-After"))
                    assert "rate limit" in r.reason
            finals: dict[int, int] = {}
            for status in by_call.values():
                finals[status] = finals.get(status, 0) + 1
            assert finals.get(200, 0) <= 7 and finals.get(503, 0) >= 33, finals
            assert retry_after == {"1"}
            assert srv.metric("v2v_sip_refusals_total", reason="rate-limit") == finals[503]
            # the call in progress is not limited: in-dialog requests and its media go on
            r = await call.in_dialog("INFO", "Signal=5\r\nDuration=160\r\n", ctype="application/dtmf-relay")
            assert r.status == 200
            await wait_for(lambda: len(rtp.received) > n0 + 25, 3.0, "RTP during the flood")
            # the admitted flood calls never send RTP: they end on the no-RTP-yet timeout (5 s), and the
            # sink got at most a keep-alive a second per call, never the assistant's stream
            await wait_for(lambda: srv.active() == 1, 8.0, "the flood's calls to end")
            per_call = sink.count / max(1, finals.get(200, 0))
            assert per_call <= 7, sink.count
            assert sink.nonsilent == 0
            assert (await call.bye()).status == 200
        finally:
            sink_t.close()
            await rtp.close()
            await sip.close()
            await flood.close()


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0
        self.nonsilent = 0

    @property
    def port(self) -> int:
        return self._port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.count += 1
        if any(b not in (0xFF, 0x7F) for b in data[12:]):  # PCMU silence
            self.nonsilent += 1


async def test_register_is_rate_limited_per_source() -> None:
    async with running_server(sip_rate=1.0) as srv:  # bursts of 3
        a = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        b = await SipClient("UDP", ("127.0.0.1", srv.sip_port), local_host="127.0.0.4").connect()
        try:
            statuses = []
            for i in range(6):
                a.send(a.request("REGISTER", "sip:127.0.0.1", f"reg-{i}", from_tag="r", extra="Expires: 60"))
                statuses.append((await a.recv()).status)
            assert statuses == [200, 200, 200, 503, 503, 503]
            # another source has its own budget
            b.send(b.request("REGISTER", "sip:127.0.0.1", "reg-b", from_tag="r"))
            assert (await b.recv()).status == 200
        finally:
            await a.close()
            await b.close()


async def test_exposed_without_admission_warns_at_start(caplog) -> None:
    caplog.set_level(logging.WARNING, "v2v.sip")
    async with running_server(host="0.0.0.0"):
        pass
    assert any("admits every caller" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with running_server(host="0.0.0.0", sip_allow=["10.0.0.0/8"]):
        pass
    async with running_server():  # loopback
        pass
    assert not any("admits every caller" in r.getMessage() for r in caplog.records)


def test_policy_units() -> None:
    assert exposure_warning("::1", False, False) is None and exposure_warning("0.0.0.0", False, False)
    assert exposure_warning("192.0.2.1", True, False) is None
    adm = Admission(parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]))
    assert adm.allowed_source("10.1.2.3") and adm.allowed_source("::ffff:10.1.2.3")
    assert adm.allowed_source("2001:db8::5") and adm.allowed_source("192.0.2.7")
    assert not adm.allowed_source("192.0.2.8") and not adm.allowed_source("not-an-ip")
    with pytest.raises(ValueError, match="--sip-allow"):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="sip-allow"):
        ServerConfig(sip_allow=["example.com"]).validate()
    now = [0.0]
    rl = RateLimiter(2.0, 4.0, clock=lambda: now[0])
    assert [rl.allow("a", "INVITE") for _ in range(5)] == [True] * 4 + [False]
    assert rl.allow("a", "REGISTER") and rl.allow("b", "INVITE")
    now[0] += 0.5  # one token back
    assert rl.allow("a", "INVITE") and not rl.allow("a", "INVITE")
    assert RateLimiter(0, 0).allow("a", "INVITE")  # 0: no limit


async def test_a_floods_transactions_are_purged_on_time_without_further_traffic(monkeypatch) -> None:
    monkeypatch.setattr(sip_core, "TX_LINGER", 0.4)
    async with running_server(sip_rate=1.0) as srv:
        flood = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        try:
            for i in range(10):  # refused (503) or answered OPTIONS: each leaves a server transaction
                flood.send(flood.request("OPTIONS" if i % 2 else "REGISTER", "sip:127.0.0.1", f"p-{i}", from_tag="p"))
            for _ in range(10):
                await flood.recv()
            core = srv.sip.core
            assert core._txs
            await wait_for(lambda: not core._txs and not core._invite_txs, 2.0, "the purge, with no traffic")
        finally:
            await flood.close()


async def test_websocket_rate_limit_is_per_connection() -> None:
    """Behind a TLS proxy every /sip client has the proxy's address: the budget is each connection's."""
    async with running_server(sip_rate=1.0) as srv, aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{srv.http_port}/sip"
        origin = {"Origin": f"http://127.0.0.1:{srv.http_port}"}

        async def register(ws: aiohttp.ClientWebSocketResponse, i: int) -> int:
            await ws.send_str(
                f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKw{i}\r\n"
                f"From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: ws-reg-{i}\r\n"
                f"CSeq: 1 REGISTER\r\nContact: <sip:a@x.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n")
            msg = await asyncio.wait_for(ws.receive(), 3.0)
            r = parse(msg.data.encode())
            assert isinstance(r, SipResponse)
            return r.status

        async with http.ws_connect(url, protocols=("sip",), headers=origin) as a, \
                http.ws_connect(url, protocols=("sip",), headers=origin) as b:
            assert [await register(a, i) for i in range(5)] == [200, 200, 200, 503, 503]
            assert await register(b, 99) == 200
