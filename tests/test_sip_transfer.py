"""Call transfer (issue 12): the model's transfer_call tool and POST /api/calls/{id}/transfer.

SIP callers get a blind transfer by REFER (sipp peers that accept with 202 + NOTIFY sipfrag 200, or
decline with 603; a pool call whose dialog is on the signaling node and whose model is on a worker);
WebRTC callers get "unavailable".
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientSession

from tests import pool_util
from tests.pool_util import RedisServer, running_node, running_worker
from tests.scripted import Script, ScriptedFactory
from tests.signaling_util import running_server as running_http_server
from tests.signaling_util import wait_until
from tests.sip.harness import rtp_range, run_proc, running_server
from tests.sip.uac import Call, RtpPeer, SipClient
from tests.test_sip_sipp import sipp_args, sipp_workdir, successful_calls
from v2v.signaling.client import Caller
from v2v.signaling.pool.registry import RedisRegistry
from v2v.signaling.sip.message import SipRequest, make_response, parse
from v2v.signaling.sip.server import SIP_APP_KEY
from v2v.signaling.sip.transfer import sipfrag_status

pytestmark = pytest.mark.timeout(120)
redis_server = pool_util.redis_server  # the fixture

TARGET = "sip:agent@127.0.0.1"
TOOL_ARGS = json.dumps({"target": TARGET, "reason": "the caller asked for a human"})
TONE = (8000 * np.sin(2 * np.pi * 440 * np.arange(48000 * 3) / 48000)).astype(np.int16)


def scripted(tool_args: str = TOOL_ARGS) -> ScriptedFactory:
    """A model whose first response (the greeting) calls transfer_call."""
    return ScriptedFactory(Script(reply_seconds=0.5, tool_call=("transfer_call", tool_args)))


def tool_result(factory: ScriptedFactory) -> dict:
    outputs = factory.of("function_output")
    assert len(outputs) == 1, factory.names()
    return json.loads(outputs[0][1])


async def test_sipp_accepts_refer_call_ends_transferred(tmp_path: Path) -> None:
    factory = scripted()
    async with running_server(greeting="hello", transfer_targets=["sip:agent@*"]) as srv:
        srv.manager._factories["echo"] = factory
        rc, out, err = await run_proc(*sipp_args("uac_refer_accept.xml", "echo", srv.sip_port, media_port=46100),
                                      cwd=sipp_workdir(tmp_path, "uac_refer_accept.xml"), timeout=60)
        assert rc == 0, out[-3000:] + err[-2000:]
        assert successful_calls(out) == 1
        await wait_for_idle(srv)
        spec = next(t for t in factory.session.config.tools if t.name == "transfer_call")
        assert "target" in spec.parameters["properties"]
        result = tool_result(factory)
        assert result["transferred"] is True and result["target"] == TARGET, result
        assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="transferred") == 1
        assert srv.metric("v2v_transfers_total", result="accepted") == 1


async def test_sipp_declines_refer_call_goes_on(tmp_path: Path) -> None:
    factory = scripted()
    async with running_server(greeting="hello", transfer_targets=[TARGET]) as srv:
        srv.manager._factories["echo"] = factory
        rc, out, err = await run_proc(*sipp_args("uac_refer_decline.xml", "echo", srv.sip_port, media_port=46200),
                                      cwd=sipp_workdir(tmp_path, "uac_refer_decline.xml"), timeout=60)
        assert rc == 0, out[-3000:] + err[-2000:]
        assert successful_calls(out) == 1
        await wait_for_idle(srv)
        result = tool_result(factory)
        assert result["transferred"] is False and result["sip_status"] == 603, result
        assert "603" in result["error"], result
        # the call went on after the refusal: the caller hung up (BYE), the model asked for a new response
        assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="hangup") == 1
        assert srv.metric("v2v_calls_total", transport="sip_udp", outcome="transferred") == 0
        assert srv.metric("v2v_transfers_total", result="failed") == 1
        assert factory.names().count("create_response") >= 2


async def test_disallowed_target_is_refused_without_refer(tmp_path: Path) -> None:
    factory = scripted(json.dumps({"target": "sip:+4490012345@premium.example"}))
    async with running_server(greeting="hello", transfer_targets=[TARGET]) as srv:
        srv.manager._factories["echo"] = factory
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            await wait_until(lambda: factory.of("function_output"), 5, "the tool's result")
            result = tool_result(factory)
            assert result["transferred"] is False and "not an allowed" in result["error"], result
            assert sip.inbox.empty(), "a REFER went out for a target outside --transfer-targets"
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()


async def wait_for_idle(srv) -> None:
    await wait_until(lambda: srv.active() == 0 and not srv.sip.core.dialogs, 3, "the call to end")


async def test_webrtc_caller_gets_unavailable() -> None:
    factory = scripted()
    async with running_http_server(greeting="hello", transfer_targets=[TARGET]) as server:
        server.manager._factories["echo"] = factory
        caller = Caller(server.url)
        try:
            await caller.connect()
            caller.play(TONE)
            await wait_until(lambda: factory.of("function_output"), 8, "the tool's result")
            result = tool_result(factory)
            assert result["transferred"] is False and "unavailable" in result["error"], result
            # the HTTP action says the same (409), and the call goes on
            async with ClientSession() as http:
                url = f"{server.url}api/calls/{caller.pc_id}/transfer"
                async with http.post(url, json={"target": TARGET}) as r:
                    assert r.status == 409 and "unavailable" in (await r.json())["error"]
                async with http.post(url, json={"target": "sip:other@example.com"}) as r:
                    assert r.status == 403
                async with http.post(f"{server.url}api/calls/nope/transfer", json={"target": TARGET}) as r:
                    assert r.status == 404
            assert server.manager.active_calls("webrtc") == 1
        finally:
            await caller.close()


async def test_pool_http_transfer_refer_from_the_node(redis_server: RedisServer) -> None:
    """The dialog on the signaling node, the call on a worker: POST on the node -> worker -> event -> REFER."""
    async with (
        running_worker(redis_server.url, name="wt", rtp_ports=rtp_range(), transfer_targets=[TARGET]) as wa,
        running_node(RedisRegistry(redis_server.url), sip=True, sip_port=0) as node,
    ):
        sip_port = node.runner.app[SIP_APP_KEY].port
        sip = await SipClient("UDP", ("127.0.0.1", sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{sip_port}")
            (call_id,) = wa.service.calls
            async with ClientSession() as http:
                post = asyncio.create_task(http.post(f"{node.url}api/calls/{call_id}/transfer",
                                                     json={"target": TARGET, "reason": "test"}))
                refer = parse(await asyncio.wait_for(sip.inbox.get(), 5.0))
                assert isinstance(refer, SipRequest) and refer.method == "REFER", refer
                assert refer.header("Refer-To") == f"<{TARGET}>" and refer.headers.get("Referred-By")
                sip.send(bytes(make_response(refer, 202)))
                sip.send(notify(call, refer, "SIP/2.0 180 Ringing", "active"))
                sip.send(notify(call, refer, "SIP/2.0 200 OK", "terminated"))
                got = [parse(await asyncio.wait_for(sip.inbox.get(), 5.0)) for _ in range(3)]
                bye = next(m for m in got if isinstance(m, SipRequest))
                assert bye.method == "BYE"
                assert sorted(m.status for m in got if not isinstance(m, SipRequest)) == [200, 200]
                sip.send(bytes(make_response(bye, 200)))
                resp = await post
                assert resp.status == 200 and (await resp.json())["status"] == "transferred"
            await wait_until(lambda: wa.host.active_calls() == 0, 3, "the worker's call to end")
            await wait_until(lambda: node.dispatcher.active_calls() == 0, 3, "the node's count")
            assert node.dispatcher.metrics.calls_total.labels(transport="sip_udp", outcome="transferred")._value.get() == 1
        finally:
            await rtp.close()
            await sip.close()


def notify(call: Call, refer: SipRequest, frag: str, state: str) -> bytes:
    """The transferee's NOTIFY in the REFER's dialog (to the REFER's Contact, v2v's tag as To tag)."""
    contact = refer.contact
    return call.sip.request("NOTIFY", contact.uri if contact else call.uri, call.call_id, from_tag=call.from_tag,
                            to_tag=refer.from_.tag, body=frag + "\r\n", ctype="message/sipfrag",
                            extra=f"Event: refer\r\nSubscription-State: {state}")


def test_units() -> None:
    assert sipfrag_status(b"SIP/2.0 200 OK\r\n") == (200, "OK")
    assert sipfrag_status(b"SIP/2.0 603 Declined\r\nContent-Length: 0\r\n") == (603, "Declined")
    assert sipfrag_status(b"garbage") is None


async def test_tcp_caller_failure_sipfrag_keeps_the_call() -> None:
    """SIP over TCP, the HTTP action: the target answers 486 in the sipfrag -> 409, the call goes on;
    a second try that succeeds ends it as transferred (no retransmission over TCP)."""
    async with running_server(transfer_targets=["sip:*@127.0.0.1"]) as srv:
        sip = await SipClient("TCP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(TONE)
        try:
            call = await Call.dial(sip, rtp, f"sip:echo@127.0.0.1:{srv.sip_port}")
            (call_id,) = srv.manager.calls
            url = f"http://127.0.0.1:{srv.http_port}/api/calls/{call_id}/transfer"
            async with ClientSession() as http:
                for frag, status in (("SIP/2.0 486 Busy Here", 409), ("SIP/2.0 200 OK", 200)):
                    post = asyncio.create_task(http.post(url, json={"target": TARGET}))
                    refer = parse(await asyncio.wait_for(sip.inbox.get(), 5.0))
                    assert isinstance(refer, SipRequest) and refer.method == "REFER", refer
                    sip.send(bytes(make_response(refer, 202)))
                    sip.send(notify(call, refer, frag, "terminated;reason=noresource"))
                    ok = parse(await asyncio.wait_for(sip.inbox.get(), 5.0))
                    assert not isinstance(ok, SipRequest) and ok.status == 200
                    resp = await post
                    body = await resp.json()
                    assert resp.status == status, body
                    if status == 409:
                        assert body["sip_status"] == 486 and "486" in body["error"], body
                        assert srv.active("sip_tcp") == 1  # the call goes on
                bye = parse(await asyncio.wait_for(sip.inbox.get(), 5.0))
                assert isinstance(bye, SipRequest) and bye.method == "BYE"
                sip.send(bytes(make_response(bye, 200)))
            await wait_for_idle(srv)
            assert srv.metric("v2v_calls_total", transport="sip_tcp", outcome="transferred") == 1
            assert srv.metric("v2v_transfers_total", result="failed") == 1
            assert srv.metric("v2v_transfers_total", result="accepted") == 1
        finally:
            await rtp.close()
            await sip.close()
