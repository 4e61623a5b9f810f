"""Malformed SIP over UDP, TCP and WebSocket while a call is in progress.

Each corpus message gets 400 or is dropped (see tests/sip/malformed.py), the
server keeps answering, and the call in progress keeps its audio both ways.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from tests.sip.harness import running_server, wait_for
from tests.sip.malformed import Case, corpus, render
from tests.sip.uac import Call, RtpPeer, SipClient
from v2v.signaling.sip.message import StreamFramer

TONE = (6000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)


def options(transport: str, port: int, n: int) -> bytes:
    return (f"OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bKok{n}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: probe-{n}\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@dataclass
class Resp:
    """A response read leniently: a 400 echoes the bad headers it answers."""

    status: int
    call_id: str
    to_tag: str

    @classmethod
    def of(cls, data: bytes) -> Resp:
        text = data.decode("utf-8", "replace")
        m = re.match(r"SIP/2\.0 (\d{3}) ", text)
        assert m, f"not a response: {text[:200]!r}"
        cid = re.search(r"(?im)^(?:call-id|i)\s*:\s*(\S+)", text)
        tag = re.search(r"(?im)^(?:to|t)\s*:.*;tag=([^;\s]+)", text)
        return cls(int(m.group(1)), cid.group(1) if cid else "", tag.group(1) if tag else "")


def outcome(responses: list[Resp], n: int) -> str:
    mine = [r for r in responses if r.call_id == f"bad-{n}" and r.status >= 200]
    assert len(mine) <= 1, [r.status for r in mine]
    return str(mine[0].status) if mine else "drop"


def answered(responses: list[Resp], n: int, case: Case) -> bool:
    """The probe's 200 ends a drop/400 case; a call attempt also needs its own final response."""
    probe = any(r.call_id == f"probe-{n}" and r.status == 200 for r in responses)
    final = any(r.call_id == f"bad-{n}" and r.status >= 200 for r in responses)
    return probe and (final or case.expect in ("400", "drop"))


def expected(case: Case, stream: bool) -> str:
    return case.stream_expect if stream and case.stream_expect else case.expect


async def blast_datagram(port: int) -> dict[str, str]:
    """UDP: each case, then an OPTIONS probe from the same socket; the probe's 200 closes the window."""
    sip = await SipClient("UDP", ("127.0.0.1", port)).connect()
    got: dict[str, str] = {}
    try:
        for n, case in enumerate(corpus()):
            sip.send(render(case, "UDP", sip.local_port, n))
            sip.send(options("UDP", sip.local_port, n))
            responses: list[Resp] = []
            while True:
                r = Resp.of(await asyncio.wait_for(sip.inbox.get(), 3.0))
                responses.append(r)
                if answered(responses, n, case):
                    break
            got[case.name] = outcome(responses, n)
            if got[case.name] == "488":  # ACK the INVITE's final response (else it is retransmitted)
                (final,) = [r for r in responses if r.call_id == f"bad-{n}" and r.status >= 200]
                sip.send((f"ACK sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip.local_port};"
                          f"branch=z9hG4bKbad{n};rport\r\nFrom: <sip:fuzz@127.0.0.1>;tag=f{n}\r\n"
                          f"To: <sip:echo@127.0.0.1>;tag={final.to_tag}\r\nCall-ID: bad-{n}\r\nCSeq: 1 ACK\r\n"
                          f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
    finally:
        await sip.close()
    return got


async def blast_tcp(port: int) -> dict[str, str]:
    """TCP: each case on a fresh connection, then EOF; everything the server says comes before its close."""
    got: dict[str, str] = {}
    for n, case in enumerate(corpus()):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lport = writer.get_extra_info("sockname")[1]
        writer.write(render(case, "TCP", lport, n))
        if case.expect in ("400", "drop"):
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5.0)  # until the server closes
            responses = [Resp.of(m) for m in StreamFramer().feed(data)]
        else:  # a call attempt: read until its final response
            framer, responses = StreamFramer(), []
            while not any(r.call_id == f"bad-{n}" and r.status >= 200 for r in responses):
                chunk = await asyncio.wait_for(reader.read(65536), 5.0)
                assert chunk, "connection closed before the final response"
                responses += [Resp.of(m) for m in framer.feed(chunk)]
        writer.close()
        got[case.name] = outcome(responses, n)
    return got


async def blast_ws(http_port: int) -> dict[str, str]:
    got: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://127.0.0.1:{http_port}/sip", protocols=("sip",)) as ws:
            assert ws.protocol == "sip"
            for n, case in enumerate(corpus()):
                data = render(case, "WS", 5060, n)
                try:
                    await ws.send_str(data.decode("utf-8"))
                except UnicodeDecodeError:
                    await ws.send_bytes(data)
                await ws.send_str(options("WS", 5060, n).decode())
                responses: list[Resp] = []
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 3.0)
                    responses.append(Resp.of(msg.data.encode() if isinstance(msg.data, str) else msg.data))
                    if answered(responses, n, case):
                        break
                got[case.name] = outcome(responses, n)
            assert not ws.closed
    return got


async def test_malformed_corpus_all_transports_with_call_in_progress() -> None:
    async with running_server() as srv:
        sig = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sig, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_for(lambda: len(rtp.received) >= 10, 2.0, "the server's RTP")
            t0 = time.monotonic()
            in0 = rtp.sent
            udp = await blast_datagram(srv.sip_port)
            tcp = await blast_tcp(srv.sip_port)
            ws = await blast_ws(srv.http_port)
            # measure the call's audio over at least one second around the storm
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
            elapsed = time.monotonic() - t0
            want = {c.name: c.expect for c in corpus()}
            assert udp == want
            assert ws == want
            assert tcp == {c.name: expected(c, stream=True) for c in corpus()}
            # the call in progress kept its audio both ways during the storm
            assert srv.active("sip_udp") == 1
            assert rtp.count_since(t0) >= 0.8 * elapsed / 0.02, (rtp.count_since(t0), elapsed)
            (d,) = srv.sip.core.dialogs.values()
            assert srv.rtp_of(d.media).stats.packets_in >= in0 + 0.8 * elapsed / 0.02 - 5
            resp = await call.bye()
            assert resp.status == 200
            await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
            assert srv.sip.core.stats["bad"] > 0
        finally:
            await rtp.close()
            await sig.close()
