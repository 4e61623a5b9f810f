"""Offers without a usable ICE candidate: v2v still answers with its own, and PATCHed candidates connect.

Browsers hide host addresses behind mDNS ``xxxxxxxx-....local`` names, which
do not resolve in containers; trickle-ICE clients offer no candidate at all.
Both used to get an answer with zero candidates when the offer said
end-of-candidates. Real server, real aiortc peers over loopback.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from tests.conftest import load_wav
from tests.signaling_util import running_server, wait_until
from v2v.signaling.client import RATE, Caller, WavSource
from v2v.signaling.ice import split_offer

pytestmark = pytest.mark.timeout(90)


def mdns_name() -> str:
    return f"{uuid.uuid4()}.local"


def rewrite_candidates(sdp: str, mode: str) -> str:
    """``mode`` "mdns": every candidate's address becomes an unresolvable .local name; "none": no candidate.

    Either way the offer ends with ``a=end-of-candidates`` (as Firefox's do), the case that lost the answer's.
    """
    out: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=end-of-candidates"):
            continue
        if line.startswith("a=candidate:"):
            if mode == "none":
                continue
            parts = line.split()
            parts[4] = mdns_name()
            line = " ".join(parts)
        out.append(line)
        if line.startswith("a=mid:"):
            out.append("a=end-of-candidates")
    return "\r\n".join(out) + "\r\n"


def candidate_lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


class HiddenCaller(Caller):
    """An aiortc caller whose offer holds only .local candidates (or none); its real ones go by PATCH.

    With ``ignore_answer_candidates`` it also drops the answer's candidates, so it cannot
    start the checks itself: only the server, using the PATCHed candidates, can.
    """

    def __init__(self, url: str, mode: str, *, ignore_answer_candidates: bool = False) -> None:
        super().__init__(url, trickle=True)
        self.mode = mode
        self.ignore_answer_candidates = ignore_answer_candidates
        self.offer_sdp = ""
        self.answer_sdp = ""

    def _split_candidates(self, sdp: str) -> tuple[str, list[dict[str, Any]]]:
        _, cands = super()._split_candidates(sdp)
        self.offer_sdp = rewrite_candidates(sdp, self.mode)
        return self.offer_sdp, cands

    def _new_pc(self) -> RTCPeerConnection:
        pc = super()._new_pc()
        stock = pc.setRemoteDescription

        async def set_remote(desc: RTCSessionDescription) -> None:
            self.answer_sdp = desc.sdp
            if self.ignore_answer_candidates:
                desc = RTCSessionDescription(sdp=split_offer(desc.sdp)[0], type=desc.type)
            await stock(desc)

        pc.setRemoteDescription = set_remote  # type: ignore[method-assign]  (records the answer as received)
        return pc


async def post_offer(url: str, sdp: str) -> dict[str, Any]:
    async with ClientSession() as http, http.post(url, json={"sdp": sdp, "type": "offer"}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(WavSource(), direction="sendrecv")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        assert candidate_lines(pc.localDescription.sdp)
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.parametrize("mode", ["mdns", "none"])
async def test_answer_always_holds_host_candidates(mode: str) -> None:
    sdp = rewrite_candidates(await offer_sdp(), mode)
    assert "a=end-of-candidates" in sdp
    assert all(".local " in c for c in candidate_lines(sdp)) and (mode == "none") == (not candidate_lines(sdp))
    async with running_server() as server:
        answer = await post_offer(server.offer_url, sdp)
        hosts = [c for c in candidate_lines(answer["sdp"]) if " typ host" in c]
        assert hosts, answer["sdp"]
        async with ClientSession() as http, http.delete(server.offer_url + "/" + answer["pc_id"]) as r:
            assert r.status == 200


async def assert_call_with_audio(caller: HiddenCaller, server: Any) -> None:
    await caller.connect(timeout=15)
    assert candidate_lines(caller.answer_sdp), caller.answer_sdp
    await asyncio.wait_for(caller.bot_ready.wait(), 5)
    assert server.manager.active_calls("webrtc") == 1
    pcm, rate = load_wav("hello_48k.wav")
    assert rate == RATE
    caller.play(pcm)
    await asyncio.wait_for(caller.received.first_loud.wait(), 10)  # the echo model said it back
    assert np.max(np.abs(caller.received.pcm())) > 1000


@pytest.mark.parametrize("mode", ["mdns", "none"])
async def test_caller_that_trickles_by_patch_connects_and_hears_audio(mode: str) -> None:
    async with running_server() as server:
        caller = HiddenCaller(server.url, mode)
        try:
            await assert_call_with_audio(caller, server)
            offered = candidate_lines(caller.offer_sdp)
            assert (not offered) if mode == "none" else (offered and all(".local " in c for c in offered))
            assert "a=end-of-candidates" in caller.offer_sdp
        finally:
            await caller.hangup()
            await caller.close()


async def test_patched_candidates_alone_connect() -> None:
    """The caller ignores the answer's candidates: the server must check the PATCHed ones itself."""
    async with running_server() as server:
        caller = HiddenCaller(server.url, "mdns", ignore_answer_candidates=True)
        try:
            await assert_call_with_audio(caller, server)
        finally:
            await caller.hangup()
            await caller.close()


async def test_malformed_candidate_in_offer_is_400() -> None:
    sdp = await offer_sdp()
    bad = sdp.replace("a=mid:0\r\n", "a=mid:0\r\na=candidate:garbage\r\n", 1)
    assert bad != sdp
    async with running_server() as server, ClientSession() as http:
        async with http.post(server.offer_url, json={"sdp": bad, "type": "offer"}) as r:
            assert r.status == 400
            assert "candidate" in (await r.json())["error"]
        assert server.manager.active_calls() == 0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_ice_failure_is_a_warning_saying_what_the_offer_held() -> None:
    records = Records()
    logger = logging.getLogger("v2v")
    logger.addHandler(records)
    try:
        async with running_server(ice_timeout=1.5) as server:
            sdp = rewrite_candidates(await offer_sdp(), "mdns")
            answer = await post_offer(server.offer_url, sdp)
            call = server.manager.get(answer["pc_id"])
            assert call is not None
            await wait_until(lambda: call.ended.is_set(), 10, "the call to end without ICE")
            assert call.end_reason in ("ice-timeout", "ice-failed")
    finally:
        logger.removeHandler(records)
    warnings = [r for r in records.records if r.getMessage() == "ice-failed"]
    assert len(warnings) == 1, [r.getMessage() for r in records.records]
    w = warnings[0]
    assert w.levelno == logging.WARNING
    held = w.__dict__["candidates"]
    assert f"offer: {len(candidate_lines(sdp))} candidates" in held, held
    assert "mDNS .local" in held and "end-of-candidates" in held and "unresolved" in held, held
    assert w.__dict__["reason"] == call.end_reason
