"""SIP over WebSocket with a real aiortc peer as the softphone's media.

Covers what the JsSIP browser test does not: the WebSocket closing mid-call
ends the call (within 2 s), and a server-side end (the caller's media stops)
sends BYE back on the same socket.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from tests.sip.harness import running_server, wait_for
from v2v.signaling.sip.message import SipRequest, SipResponse, make_response, parse


class WsPhone:
    """A minimal SIP-over-WS UA (Via host *.invalid, like JsSIP) with aiortc media."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.call_id = secrets.token_hex(6)
        self.tag = secrets.token_hex(4)
        self.host = secrets.token_hex(5) + ".invalid"
        self.pc = RTCPeerConnection()
        self.track = AudioStreamTrack()
        self.frames_in = 0
        self.to_tag: str | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            asyncio.ensure_future(self._drain(track))

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.frames_in += 1
        except MediaStreamError:
            return  # the track ended with the call

    def _req(self, method: str, cseq: int, body: str = "") -> str:
        to = "<sip:echo@127.0.0.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        b = body.encode()
        return (f"{method} sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(5)}\r\n"
                f"Max-Forwards: 69\r\nFrom: <sip:phone@127.0.0.1>;tag={self.tag}\r\nTo: {to}\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nContact: <sip:phone@{self.host};transport=ws>\r\n"
                + ("Content-Type: application/sdp\r\n" if body else "") + f"Content-Length: {len(b)}\r\n\r\n{body}")

    async def recv(self, timeout: float = 10.0) -> SipRequest | SipResponse:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        return parse(msg.data.encode())

    async def call(self) -> None:
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send_str(self._req("INVITE", 1, self.pc.localDescription.sdp))
        while True:
            r = await self.recv()
            assert isinstance(r, SipResponse)
            if r.status >= 200:
                break
        assert r.status == 200, r.status
        self.to_tag = r.to.tag
        await self.pc.setRemoteDescription(RTCSessionDescription(r.body.decode(), "answer"))
        await self.ws.send_str(self._req("ACK", 1))

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()


async def test_ws_close_mid_call_ends_it() -> None:
    async with running_server() as srv:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"ws://127.0.0.1:{srv.http_port}/sip", protocols=("sip",))
            phone = WsPhone(ws)
            try:
                await phone.call()
                await wait_for(lambda: phone.frames_in > 25, 10.0, "audio from the server over WebRTC")
                assert srv.active("sip_ws") == 1
                t0 = time.monotonic()
                await ws.close()
                await wait_for(lambda: srv.active() == 0, 2.0, "the call to end after the socket closed")
                assert time.monotonic() - t0 < 2.0
                assert srv.metric("v2v_calls_total", transport="sip_ws", outcome="peer-closed") == 1
            finally:
                await phone.close()


async def test_server_side_end_sends_bye_on_the_same_socket() -> None:
    async with running_server() as srv:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{srv.http_port}/sip", protocols=("sip",)) as ws:
                phone = WsPhone(ws)
                try:
                    await phone.call()
                    await wait_for(lambda: srv.active("sip_ws") == 1 and phone.frames_in > 5, 10.0, "the call")
                    # the caller's peer connection goes away without a BYE: the server ends the call itself
                    await phone.close()
                    bye = await phone.recv(10.0)
                    assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.call_id == phone.call_id
                    assert bye.vias[0].host.endswith(".invalid") and bye.to.tag == phone.tag
                    await ws.send_str(bytes(make_response(bye, 200)).decode())
                    await wait_for(lambda: srv.active() == 0, 1.0, "the call to end")
                finally:
                    await phone.close()
