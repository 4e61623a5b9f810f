"""Graceful restart of a plain ``v2v serve`` (a real process): SIGTERM drains, a second SIGTERM ends at once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import ClientSession

from tests.conftest import load_wav
from tests.signaling_util import wait_until
from v2v.signaling.client import Caller

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def serve_process(*flags: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "v2v.signaling.cli", "serve", "--model", "echo", "--port", "0", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    assert proc.stdout is not None
    url = ""
    try:
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "v2v serve exited before serving"
            found = re.search(r"serving on (http://\S+)", line)
            url = found.group(1) if found else ""
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def status(http: ClientSession, url: str) -> int:
    async with http.get(url) as r:
        return r.status


async def test_sigterm_drains_then_exits_when_the_last_call_ends() -> None:
    async with serve_process("--drain-timeout", "30") as (proc, url), ClientSession() as http:
        caller = Caller(url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            proc.send_signal(signal.SIGTERM)
            await wait_until_async(lambda: status(http, url + "readyz"), 503, 5)
            late = Caller(url)
            with pytest.raises(Exception, match="503"):
                await late.connect()
            await late.close()
            # the call in progress goes on: its audio still comes back
            pcm, _ = load_wav("hello_48k.wav")
            caller.play(pcm)
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
            assert proc.returncode is None
            t0 = time.monotonic()
            assert await caller.hangup() == 200
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert time.monotonic() - t0 < 5
        finally:
            await caller.close()


async def wait_until_async(probe: Callable[[], Awaitable[int]], want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != want:
        assert time.monotonic() < deadline, f"still {got}, want {want}"
        await asyncio.sleep(0.05)


async def test_drain_timeout_ends_the_call_and_tells_the_caller_why() -> None:
    async with serve_process("--drain-timeout", "1") as (proc, url):
        caller = Caller(url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            assert 0.9 <= time.monotonic() - t0 < 12  # 1 s of drain, then the same exit as SIGINT (~3 s here)
            await wait_until(lambda: any(m.get("type") == "server-message" for m in caller.messages), 3,
                             "the call-ended message")
            ended = [m["data"] for m in caller.messages if m.get("type") == "server-message"
                     and m.get("data", {}).get("type") == "call-ended"]
            assert ended == [{"type": "call-ended", "reason": "drain-timeout"}]
        finally:
            await caller.close()


async def test_a_second_sigterm_ends_at_once() -> None:
    async with serve_process("--drain-timeout", "60") as (proc, url):
        caller = Caller(url)
        try:
            await caller.connect()
            await asyncio.wait_for(caller.bot_ready.wait(), 5)
            proc.send_signal(signal.SIGTERM)
            async with ClientSession() as http:
                await wait_until_async(lambda: status(http, url + "readyz"), 503, 5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            assert time.monotonic() - t0 < 8
        finally:
            await caller.close()


async def test_a_server_beyond_loopback_without_tokens_warns() -> None:
    async with serve_process("--host", "0.0.0.0") as (proc, _url):
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "without --auth-secret" in line
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
