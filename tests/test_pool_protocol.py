"""The worker RPC itself: errors travel with their status, events arrive as typed messages."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession
from aiortc import RTCPeerConnection

from tests.pool_util import free_port, running_worker
from v2v.signaling.dispatch import BadRequest, CallEnded, CallEvent, OfferRequest, Overloaded, UnknownCall
from v2v.signaling.pool.protocol import RemoteWorker, WorkerUnavailable, event_from_json, event_to_json

pytestmark = pytest.mark.timeout(60)


def test_event_json_round_trip() -> None:
    ev = CallEnded("pc-1", "worker-lost", "sip_udp", "w1")
    data = event_to_json(ev)
    assert data["type"] == "CallEnded"
    assert event_from_json(data) == ev
    assert event_from_json({"type": "NoSuchEvent", "call_id": "x"}) is None


async def test_errors_keep_their_status_and_events_flow() -> None:
    async with running_worker(name="w") as worker:
        events: list[CallEvent] = []
        pcs: list[RTCPeerConnection] = []
        rw = RemoteWorker("w", f"http://{worker.address}", on_event=lambda _w, e: events.append(e))
        await rw.start()
        try:
            assert await rw.wait_connected(5)
            assert rw.info is not None and rw.info.name == "w" and rw.info.capacity == 4
            with pytest.raises(UnknownCall):
                await rw.hangup("pc-nope")
            with pytest.raises(BadRequest):
                await rw.offer(OfferRequest(sdp="not sdp"))
            async with ClientSession() as http, http.post(f"http://{worker.address}/pool/v1/offer", data=b"{") as r:
                assert r.status == 400 and (await r.json())["status"] == 400
            # a call placed through the RPC (the offer of a real aiortc peer)
            answer = await rw.offer(await make_offer(pcs))
            assert answer.pc_id in rw.calls and worker.host.active_calls() == 1
            await wait_for_load(rw, 1)
            await rw.hangup(answer.pc_id)
            await asyncio.wait_for(until(lambda: any(isinstance(e, CallEnded) for e in events)), 5)
            assert events[-1] == CallEnded(answer.pc_id, "hangup", "webrtc", "w")
            assert answer.pc_id not in rw.calls
            # draining: new calls are refused with 503 and a Retry-After
            worker.host.draining = True
            with pytest.raises(Overloaded) as err:
                await rw.offer(await make_offer(pcs))
            assert err.value.retry_after and err.value.retry_after > 0
        finally:
            await rw.close()
            for pc in pcs:
                await pc.close()


async def test_unreachable_worker() -> None:
    rw = RemoteWorker("gone", f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(WorkerUnavailable):
            await rw.hangup("pc-1")
        await rw.start()
        assert not await rw.wait_connected(0.5)
        assert rw.lost_at is not None
    finally:
        await rw.close()


async def make_offer(pcs: list[RTCPeerConnection]) -> OfferRequest:
    pc = RTCPeerConnection()
    pcs.append(pc)
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return OfferRequest(sdp=pc.localDescription.sdp)


async def until(pred: object) -> None:
    while not pred():  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def wait_for_load(rw: RemoteWorker, n: int) -> None:
    await asyncio.wait_for(until(lambda: rw.info is not None and rw.info.active_calls == n), 3)
