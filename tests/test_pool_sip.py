"""SIP through a signaling node of the pool: the dialog on the node, the RTP on the worker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests import pool_util
from tests.pool_util import RedisServer, running_node, running_worker
from tests.signaling_util import wait_until
from tests.sip.harness import rtp_range
from tests.sip.uac import Call, RtpPeer, SipClient
from v2v.signaling.dispatch import CallEnded, CallEvent
from v2v.signaling.pool.registry import RedisRegistry
from v2v.signaling.sip.message import SipRequest, make_response, parse
from v2v.signaling.sip.server import SIP_APP_KEY

pytestmark = pytest.mark.timeout(90)
redis_server = pool_util.redis_server  # the fixture

TONE = (8000 * np.sin(2 * np.pi * 440 * np.arange(48000 * 3) / 48000)).astype(np.int16)


def answer_port(call: Call) -> int:
    assert call.answer is not None
    return int(call.answer.body.decode().split("m=audio ", 1)[1].split()[0])


async def test_sip_udp_call_has_its_rtp_on_the_worker(redis_server: RedisServer) -> None:
    rtp_ports = rtp_range()
    lo, hi = (int(x) for x in rtp_ports.split("-"))
    async with (
        running_worker(redis_server.url, name="wa", rtp_ports=rtp_ports) as wa,
        running_node(RedisRegistry(redis_server.url), sip=True, sip_port=0) as node,
    ):
        events: list[CallEvent] = []
        node.dispatcher.add_listener(events.append)
        sip_port = node.runner.app[SIP_APP_KEY].port
        sip = await SipClient("UDP", ("127.0.0.1", sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{sip_port}")
            assert lo <= answer_port(call) <= hi  # the worker's RTP port in the answer
            assert wa.host.active_calls("sip_udp") == 1 and node.dispatcher.active_calls("sip_udp") == 1
            await wait_until(lambda: len(rtp.received) > 10, 3, "RTP from the worker")
            # DTMF by INFO on the node reaches the call on the worker
            r = await call.in_dialog("INFO", "Signal=7\r\nDuration=160\r\n", ctype="application/dtmf-relay")
            assert r.status == 200
            await wait_until(lambda: wa.host.metrics.dtmf_digits._value.get() == 1, 2, "the digit on the worker")
            # BYE on the node reaches the worker
            assert (await call.bye()).status == 200
            await wait_until(lambda: wa.host.active_calls() == 0, 2, "the worker's call to end")
            await wait_until(lambda: node.dispatcher.active_calls() == 0, 2, "the node's count")
            # a call the worker ends: the node sends the caller a BYE
            call2 = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{sip_port}")
            while not sip.inbox.empty():
                sip.inbox.get_nowait()
            await wa.host.hangup(next(iter(wa.service.calls)), "hangup")
            msg = parse(await asyncio.wait_for(sip.inbox.get(), 3.0))
            assert isinstance(msg, SipRequest) and msg.method == "BYE" and msg.call_id == call2.call_id
            sip.send(bytes(make_response(msg, 200)))
            assert any(isinstance(e, CallEnded) and e.transport == "sip_udp" for e in events)
        finally:
            await rtp.close()
            await sip.close()
