"""Offers that never connect end cleanly: no asyncio "Task exception was never retrieved" traceback.

The probe of issue 16 saw aiortc tracebacks (``'NoneType' object has no
attribute 'transport'``) at the ICE timeout of offers whose callers never
connected. Here: a real ``v2v serve`` process gets offers whose callers are
gone (closed right after the offer), hide behind mDNS names, give no
candidate, or name an address nothing answers from; every call ends at
``--connect-timeout``; then the server is stopped (SIGINT, which collects what
is left: an un-retrieved task exception is reported at the latest then) and
its whole output must hold no traceback and no asyncio task report. In-process
too, with a forced garbage collection and the ``asyncio`` logger captured.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import pytest
from aiohttp import ClientSession

from tests.signaling_util import running_server, wait_until
from tests.test_drain import serve_process
from tests.test_ice_candidates import offer_sdp, rewrite_candidates

pytestmark = pytest.mark.timeout(90)

BAD = ("Traceback", "never retrieved", "Task was destroyed", "Exception in callback", "NoneType")


def unreachable(sdp: str) -> str:
    """Every candidate moved to a documentation address (RFC 5737): checks go out, nothing answers."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            parts[4] = "198.51.100.7"
            line = " ".join(parts)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def never_connecting_offers() -> list[str]:
    plain = await offer_sdp()  # its peer connection is already closed: a caller that vanished
    return [plain, rewrite_candidates(await offer_sdp(), "mdns"), rewrite_candidates(await offer_sdp(), "none"),
            unreachable(await offer_sdp())]


async def test_a_server_process_ends_unconnected_offers_without_tracebacks() -> None:
    offers = await never_connecting_offers()
    async with serve_process("--connect-timeout", "1") as (proc, url), ClientSession() as http:
        assert proc.stdout is not None
        for sdp in offers:
            async with http.post(url + "api/offer", json={"sdp": sdp, "type": "offer"}) as r:
                assert r.status == 200, await r.text()
        lines: list[str] = []
        while sum("call-ended" in line for line in lines) < len(offers):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "the server exited"
            lines.append(line)
        assert sum("reason=ice-timeout" in line and "call-ended" in line for line in lines) == len(offers), lines
        async with http.get(url + "healthz") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        output = "".join(lines) + rest.decode()
        assert not [b for b in BAD if b in output], output


async def test_in_process_teardown_leaves_no_unretrieved_task_exception(caplog: pytest.LogCaptureFixture) -> None:
    offers = await never_connecting_offers()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        async with running_server(connect_timeout=1.0) as server, ClientSession() as http:
            for sdp in offers:
                async with http.post(server.offer_url, json={"sdp": sdp, "type": "offer"}) as r:
                    assert r.status == 200, await r.text()
            await wait_until(lambda: server.manager.active_calls() == 0, 10, "every unconnected call ended")
            await wait_until(lambda: server.host.webrtc.open_peer_connections == 0, 10, "peer connections closed")
            gc.collect()  # an un-retrieved task exception is reported when its task is collected
            await asyncio.sleep(0)
        gc.collect()
    reports = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    assert reports == [], reports
