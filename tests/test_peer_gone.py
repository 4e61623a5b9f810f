"""A vanished WebRTC caller ends within 5 s; a silent or muted one that is still there does not.

The callers are real aiortc peers (signaling/client.py) in processes of their
own, so that SIGKILL leaves no DTLS close, no DELETE and no further packet of
any kind, as when a browser or app is killed or its network is cut.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.signaling_util import metric_value, running_server, wait_until

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent

# a caller process: connects, prints its pc_id, then stays (sending silence, or with "rtcp-only" no RTP at all)
CALLER = """
import asyncio, sys
from v2v.signaling.client import Caller

async def main():
    caller = Caller(sys.argv[1])
    await caller.connect()
    if sys.argv[2] == "rtcp-only":
        caller.source.stop_sending()  # muted without sending silence: only its RTCP reports go on
    print(caller.pc_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_caller(url: str, mode: str) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CALLER, url, mode, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip(), "the caller process did not connect"
    return proc, line.decode().strip()


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def active_calls_metric(url: str) -> float:
    async with ClientSession() as http:
        async with http.get(url + "metrics") as r:
            assert r.status == 200
            return metric_value(await r.text(), "v2v_active_calls")


async def test_a_killed_caller_ends_within_5s() -> None:
    async with running_server() as server:
        proc, pc_id = await start_caller(server.url, "silence")
        try:
            call = server.manager.get(pc_id)
            assert call is not None
            await wait_until(lambda: server.host.webrtc.get(pc_id).packets_in > 10, 5, "inbound media")
            assert await active_calls_metric(server.url) == 1
            t_kill = time.monotonic()
            await kill(proc)
            await wait_until(lambda: server.manager.active_calls() == 0, 5.0 - (time.monotonic() - t_kill),
                             "the killed caller's call ending")
            took = time.monotonic() - t_kill
            assert await active_calls_metric(server.url) == 0
            assert call.end_reason == "peer-gone"
            assert took < 5.0, took
            await wait_until(lambda: call.ended.is_set(), 5, "call released")
            await wait_until(lambda: server.host.webrtc.open_peer_connections == 0, 5, "pc closed")
        finally:
            await kill(proc)


async def test_silent_and_muted_callers_that_are_there_stay_up() -> None:
    async with running_server() as server:
        silent, silent_id = await start_caller(server.url, "silence")
        muted, muted_id = await start_caller(server.url, "rtcp-only")
        try:
            calls = [server.manager.get(silent_id), server.manager.get(muted_id)]
            assert all(c is not None for c in calls)
            muted_packets: int | None = None
            t0 = time.monotonic()
            # nothing to wait for: the point is that nothing happens for 8 s (twice --peer-gone-timeout)
            while time.monotonic() - t0 < 8.0:
                assert not any(c.ending for c in calls), [c.end_reason for c in calls]
                if muted_packets is None and time.monotonic() - t0 > 1.0:  # after what was in flight as it stopped
                    muted_packets = server.host.webrtc.get(muted_id).packets_in
                await asyncio.sleep(0.1)
            assert server.manager.active_calls() == 2
            assert await active_calls_metric(server.url) == 2
            # the muted one sent no audio for 7 s, yet it was there: its RTCP kept the call
            assert server.host.webrtc.get(muted_id).packets_in == muted_packets
            # once it is killed, it goes like any vanished caller
            await kill(muted)
            await wait_until(lambda: calls[1].ending, 5.0, "the killed muted caller's call ending")
            assert calls[1].end_reason == "peer-gone" and not calls[0].ending
        finally:
            await kill(silent)
            await kill(muted)
