"""``--media-address``: the local addresses WebRTC's ICE candidates and SIP's RTP use.

A real ``v2v serve`` process for WebRTC (the ICE restriction is process-wide,
set at start-up), the in-process SIP harness for RTP; real aiortc and RTP peers
over loopback.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.conftest import load_wav
from tests.sip.harness import running_server as sip_server
from tests.sip.harness import wait_for
from tests.sip.uac import Call, RtpPeer, SipClient
from tests.test_drain import serve_process
from tests.test_ice_candidates import candidate_lines, offer_sdp
from v2v.signaling.client import RATE, Caller
from v2v.signaling.config import ServerConfig

pytestmark = pytest.mark.timeout(90)


def candidate_hosts(sdp: str) -> list[str]:
    return [line.split()[4] for line in candidate_lines(sdp)]


def udp_sockets_of(pid: int) -> list[str]:
    """Local addresses (hex, as /proc/net/udp writes them) of the process's IPv4/IPv6 UDP sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    out.append(cols[1].split(":")[0])
    return out


class RecordingCaller(Caller):
    """A caller that keeps the answer it received."""

    answer_sdp = ""

    def _new_pc(self) -> RTCPeerConnection:
        pc = super()._new_pc()
        stock = pc.setRemoteDescription

        async def set_remote(desc: RTCSessionDescription) -> None:
            self.answer_sdp = desc.sdp
            await stock(desc)

        pc.setRemoteDescription = set_remote  # type: ignore[method-assign]  (records the answer as received)
        return pc


async def post_offer(http: ClientSession, url: str, sdp: str) -> dict[str, Any]:
    async with http.post(url + "api/offer", json={"sdp": sdp, "type": "offer"}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


async def test_webrtc_answer_holds_only_the_media_address_and_a_caller_hears_the_echo() -> None:
    async with serve_process("--media-address", "127.0.0.1") as (proc, url), ClientSession() as http:
        answer = await post_offer(http, url, await offer_sdp())
        hosts = candidate_hosts(answer["sdp"])
        assert hosts and set(hosts) == {"127.0.0.1"}, answer["sdp"]
        bound = udp_sockets_of(proc.pid)
        assert bound and set(bound) == {"0100007F"}, bound  # the media sockets too: 127.0.0.1 only
        async with http.delete(url + "api/offer/" + answer["pc_id"]) as r:
            assert r.status == 200

        caller = RecordingCaller(url)
        try:
            await caller.connect(timeout=15)
            assert set(candidate_hosts(caller.answer_sdp)) == {"127.0.0.1"}, caller.answer_sdp
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            pcm, rate = load_wav("hello_48k.wav")
            assert rate == RATE
            caller.play(pcm)
            await asyncio.wait_for(caller.received.first_loud.wait(), 10)  # the echo model said it back
            assert np.max(np.abs(caller.received.pcm())) > 1000
        finally:
            await caller.close()


async def test_without_media_address_every_interface_is_advertised() -> None:
    async with serve_process() as (_, url), ClientSession() as http:
        answer = await post_offer(http, url, await offer_sdp())
        hosts = candidate_hosts(answer["sdp"])
        assert hosts and "127.0.0.1" not in hosts, answer["sdp"]  # aioice's stock choice: the machine's interfaces
        async with http.delete(url + "api/offer/" + answer["pc_id"]) as r:
            assert r.status == 200


async def test_sip_rtp_binds_and_advertises_the_media_address() -> None:
    speech, _ = load_wav("speech_8k.wav")
    async with sip_server(media_address=["127.0.0.2"]) as srv:
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(speech)
        try:
            dialled = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            assert dialled.answer is not None
            body = dialled.answer.body.decode()
            assert "c=IN IP4 127.0.0.2" in body and "127.0.0.1" not in body.split("m=audio", 1)[1], body
            await wait_for(lambda: srv.active("sip_udp") == 1, 5, "the call")
            await wait_for(lambda: np.abs(rtp.received_audio()).max(initial=0) > 1000, 10, "the echo over 127.0.0.2")
            assert (await dialled.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


def test_media_address_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="--media-address"):
        ServerConfig(media_address=["eth0"]).validate()
    ServerConfig(media_address=["127.0.0.1", "::1"]).validate()
