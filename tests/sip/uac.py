"""A tiny scripted SIP UAC + RTP peer for tests (UDP or TCP signaling, plain RTP).

Just enough to hold a call open while other things are thrown at the server:
INVITE/ACK/BYE, re-INVITE, INFO, raw sends, and an RTP peer that streams
PCMU at 20 ms pace and counts what comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
import time
from typing import cast

import numpy as np

from v2v.media.g711 import ulaw_decode, ulaw_encode
from v2v.signaling.sip.message import SipResponse, StreamFramer, parse

_cseq = itertools.count(1)


class RtpPeer(asyncio.DatagramProtocol):
    def __init__(self, audio: np.ndarray, payload_type: int = 0) -> None:
        self.audio = audio
        self.pt = payload_type
        self.received: list[tuple[float, int, bytes]] = []  # (time, pt, payload)
        self.sent = 0
        self.remote: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task | None = None
        self.seq = 1000
        self.ts = 0
        self.ssrc = 0x1234ABCD
        self.events: list[tuple[int, int, bytes]] = []  # queued raw (pt, marker, payload)

    @classmethod
    async def open(cls, audio: np.ndarray) -> RtpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(lambda: cls(audio), local_addr=("127.0.0.1", 0))
        return peer

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) >= 12:
            self.received.append((time.monotonic(), data[1] & 0x7F, data[12:]))

    def start(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self._task = asyncio.create_task(self._send_loop())

    def send_dtmf(self, event: int, pt: int = 101) -> None:
        for i in range(1, 4):
            self.events.append((pt, int(i == 1), struct.pack("!BBH", event, 10, i * 160)))
        for _ in range(3):
            self.events.append((pt, 0, struct.pack("!BBH", event, 0x80 | 10, 480)))

    async def _send_loop(self) -> None:
        pos = 0
        t0 = time.monotonic()
        n = 0
        event_ts = 0
        while True:
            n += 1
            ts = self.ts
            if self.events:
                pt, marker, payload = self.events.pop(0)
                if marker:  # RFC 4733: every packet of one event carries its start timestamp
                    event_ts = self.ts
                ts = event_ts
            else:
                frame = self.audio[pos:pos + 160]
                if len(frame) < 160:
                    pos = 0
                    frame = self.audio[:160]
                pos += 160
                pt, marker, payload = self.pt, 0, ulaw_encode(frame)
            hdr = struct.pack("!BBHII", 0x80, (marker << 7) | pt, self.seq & 0xFFFF, ts & 0xFFFFFFFF, self.ssrc)
            self.seq += 1
            self.ts += 160
            assert self.transport is not None and self.remote is not None
            self.transport.sendto(hdr + payload, self.remote)
            self.sent += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))

    def received_audio(self) -> np.ndarray:
        return np.concatenate([ulaw_decode(p) for _, pt, p in self.received if pt == 0] or [np.zeros(0, np.int16)])

    def count_since(self, t: float) -> int:
        return sum(1 for rt, _, _ in self.received if rt >= t)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


class _UdpSig(asyncio.DatagramProtocol):
    def __init__(self, q: asyncio.Queue) -> None:
        self.q = q

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.q.put_nowait(data)


class SipClient:
    """Signaling over UDP or TCP to one server; messages arrive in ``inbox``."""

    def __init__(self, transport: str, server: tuple[str, int], local_host: str = "127.0.0.1") -> None:
        self.transport = transport
        self.server = server
        self.local_host = local_host
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.local_port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self.closed = asyncio.Event()

    async def connect(self) -> SipClient:
        loop = asyncio.get_running_loop()
        if self.transport == "UDP":
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpSig(self.inbox), local_addr=(self.local_host, 0),
                                                               remote_addr=self.server)
            self.local_port = self._udp.get_extra_info("sockname")[1]
        else:
            reader, self._writer = await asyncio.open_connection(*self.server, local_addr=(self.local_host, 0))
            self.local_port = self._writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read_tcp(reader))
        return self

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for m in framer.feed(data):
                    self.inbox.put_nowait(m)
        finally:
            self.closed.set()

    def send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def recv(self, timeout: float = 5.0) -> SipResponse:
        data = await asyncio.wait_for(self.inbox.get(), timeout)
        msg = parse(data)
        assert isinstance(msg, SipResponse), f"expected a response, got {msg!r}"
        return msg

    async def recv_final(self, call_id: str, method: str, timeout: float = 5.0) -> SipResponse:
        """Skip provisional responses and messages of other transactions."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, SipResponse) and msg.call_id == call_id and msg.cseq[1] == method and msg.status >= 200:
                return msg

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)

    # ---- message builders
    def request(self, method: str, uri: str, call_id: str, *, from_tag: str, to_tag: str | None = None,
                cseq: int | None = None, body: str = "", ctype: str = "application/sdp",
                extra: str = "", branch: str | None = None) -> bytes:
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.local_port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:tester@127.0.0.1>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq if cseq is not None else next(_cseq)} {method}",
            f"Contact: <sip:tester@127.0.0.1:{self.local_port};transport={self.transport.lower()}>",
        ]
        if body:
            lines.append(f"Content-Type: {ctype}")
        if extra:
            lines += extra.strip("\r\n").split("\r\n")
        b = body.encode()
        lines.append(f"Content-Length: {len(b)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + b


def offer_sdp(rtp_port: int, codecs: str = "0 8 101", direction: str = "sendrecv", addr: str = "127.0.0.1") -> str:
    return (
        "v=0\r\n"
        f"o=tester 1 {int(time.time())} IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        f"c=IN IP4 {addr}\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {codecs}\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        f"a={direction}\r\n"
    )


class Call:
    """One scripted call: ``await Call.dial(...)`` returns once ACKed with RTP flowing."""

    def __init__(self, sip: SipClient, rtp: RtpPeer, uri: str) -> None:
        self.sip = sip
        self.rtp = rtp
        self.uri = uri
        self.call_id = secrets.token_hex(8) + "@tester"
        self.from_tag = secrets.token_hex(4)
        self.to_tag: str | None = None
        self.cseq = 1
        self.answer: SipResponse | None = None

    @classmethod
    async def dial(cls, sip: SipClient, rtp: RtpPeer, uri: str, *, extra: str = "",
                   codecs: str = "0 8 101") -> Call:
        c = cls(sip, rtp, uri)
        resp = await c.invite(offer_sdp(rtp.port, codecs), extra=extra)
        assert resp.status == 200, f"{resp.status} {resp.reason}"
        return c

    def _remote_rtp(self, resp: SipResponse) -> tuple[str, int]:
        body = resp.body.decode()
        port = int(body.split("m=audio ", 1)[1].split()[0])
        addr = body.split("c=IN IP4 ", 1)[1].split()[0]
        return addr, port

    async def invite(self, sdp: str, extra: str = "") -> SipResponse:
        self.sip.send(self.sip.request("INVITE", self.uri, self.call_id, from_tag=self.from_tag, to_tag=self.to_tag,
                                       cseq=self.cseq, body=sdp, extra=extra))
        resp = await self.sip.recv_final(self.call_id, "INVITE", 10.0)
        if resp.status == 200:
            first = self.to_tag is None
            self.to_tag = resp.to.tag
            self.answer = resp
            self.sip.send(self.sip.request("ACK", self.uri, self.call_id, from_tag=self.from_tag, to_tag=self.to_tag,
                                           cseq=self.cseq))
            if first:
                self.rtp.start(self._remote_rtp(resp))
        self.cseq += 1
        return resp

    async def in_dialog(self, method: str, body: str = "", ctype: str = "application/sdp", extra: str = "") -> SipResponse:
        self.sip.send(self.sip.request(method, self.uri, self.call_id, from_tag=self.from_tag, to_tag=self.to_tag,
                                       cseq=self.cseq, body=body, ctype=ctype, extra=extra))
        self.cseq += 1
        return await self.sip.recv_final(self.call_id, method)

    async def bye(self) -> SipResponse:
        return await self.in_dialog("BYE")
