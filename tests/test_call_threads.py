"""Ended WebRTC calls leave no threads behind, and calls in progress start none of their own.

aiortc's Opus encoder re-frames through PyAV's ``AudioResampler`` and PyAV's
``CodecContext.encode`` through another: each is an FFmpeg filter graph with a
thread per CPU (2 x CPUs per call). signaling/aiortc_tuning.py encodes through
a single-threaded graph instead; this churns real calls and counts the
process's native threads (``/proc/self/task``), FFmpeg's included.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.signaling_util import running_server, wait_until
from v2v.signaling import aiortc_tuning
from v2v.signaling.client import Caller

pytestmark = pytest.mark.timeout(120)

CALLS = 20
AT_ONCE = 10
POOL = 4  # threads that may appear once and stay (asyncio's executor for a name lookup and the like)


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_churned_calls_leave_no_threads() -> None:
    assert aiortc_tuning.installed()  # as `v2v serve` runs (conftest installs it)
    async with running_server() as server:
        warm = Caller(server.url)  # one call first: whatever starts once per process has started
        await warm.connect()
        await warm.hangup()
        await warm.close()
        await wait_until(lambda: server.manager.active_calls() == 0, 5, "the first call ending")
        baseline = native_threads()
        peak = baseline
        for _ in range(CALLS // AT_ONCE):
            callers = [Caller(server.url) for _ in range(AT_ONCE)]
            await asyncio.gather(*(c.connect() for c in callers))
            calls = [server.host.webrtc.get(c.pc_id) for c in callers]
            await wait_until(lambda calls=calls: all(wc.packets_in > 5 for wc in calls), 10, "audio flowing in every call")
            peak = max(peak, native_threads())
            assert await asyncio.gather(*(c.hangup() for c in callers)) == [200] * AT_ONCE
            await asyncio.gather(*(c.close() for c in callers))
        await wait_until(lambda: server.manager.active_calls() == 0
                         and server.host.webrtc.open_peer_connections == 0, 10, "every call ended")
        # 20 peer connections (10 callers, 10 calls) encoding and decoding: no thread of their own
        assert peak <= baseline + POOL, (baseline, peak)
        assert native_threads() <= baseline + POOL, (baseline, native_threads())
