"""``--max-conns-per-source``: concurrent HTTP and SIP-over-TCP connections per source address.

Real sockets against a real ``v2v serve`` process (HTTP) and the in-process SIP
servers (TCP): connections past the limit are refused at once (HTTP 429 and
close; SIP TCP closed), counted in /metrics, logged once; the server keeps
answering others, and a freed place admits the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

import pytest
from aiohttp import ClientSession

from tests.signaling_util import metric_value
from tests.sip.harness import running_server as sip_server
from tests.test_drain import serve_process

pytestmark = pytest.mark.timeout(90)

LIMIT = 5
OPTIONS = (b"OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK%d\r\n"
           b"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: c%d\r\nCSeq: 1 OPTIONS\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


async def poll(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Re-check ``probe`` every 20 ms until it holds; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await probe():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def options_answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bytes:
    writer.write(OPTIONS % (n, n))
    return await asyncio.wait_for(reader.readline(), 5)


@contextlib.asynccontextmanager
async def idle_connections(host: str, port: int, n: int, source: str = "127.0.0.1") -> AsyncIterator[
        list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``n`` open TCP connections from ``source`` that send nothing (slow clients)."""
    conns = []
    try:
        for _ in range(n):
            conns.append(await asyncio.open_connection(host, port, local_addr=(source, 0)))
        yield conns
    finally:
        for _, w in conns:
            w.close()


async def refused_at_once(host: str, port: int, source: str = "127.0.0.1") -> bytes:
    """Connect, send nothing; what the server sends before closing (b"" if only closed). Fails if it stays open."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        return await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed it
    finally:
        writer.close()


async def test_http_connections_past_the_limit_get_429_and_others_are_served() -> None:
    async with serve_process("--max-conns-per-source", str(LIMIT)) as (proc, url), ClientSession() as http:
        assert proc.stdout is not None
        host, port = urlparse(url).hostname or "", urlparse(url).port or 0
        async with idle_connections(host, port, LIMIT):
            for _ in range(3):
                answer = await refused_at_once(host, port)
                assert answer.startswith(b"HTTP/1.1 429 "), answer
                assert b"Connection: close" in answer
            # another source address is served meanwhile
            reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
        # the slow connections are gone: once the server has seen them close, this source is admitted again
        metrics: list[str] = []
        refused_polls = 0

        async def metrics_served() -> bool:
            nonlocal refused_polls
            async with http.get(url + "metrics") as r:
                if r.status == 200:
                    metrics.append(await r.text())
                else:
                    assert r.status == 429
                    refused_polls += 1  # a poll before the server saw the slow connections close
                return r.status == 200

        await poll(metrics_served, 10, "/metrics to this source again")
        assert metric_value(metrics[-1], "v2v_connection_refusals_total", {"listener": "http"}) == 3 + refused_polls
        while True:  # the three refusals of one source are one WARNING line
            line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
            assert "refused a connection" not in line or "127.0.0.1" in line
            if "refused a connection" in line:
                break
        assert "--max-conns-per-source" in line
        proc.terminate()
        rest = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    assert "refused a connection" not in rest, rest

async def test_sip_tcp_connections_past_the_limit_are_closed_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with sip_server(max_conns_per_source=LIMIT) as srv:
        port = srv.sip_port
        async with idle_connections("127.0.0.1", port, LIMIT) as conns:
            assert await refused_at_once("127.0.0.1", port) == b""
            assert await refused_at_once("127.0.0.1", port) == b""
            # an admitted connection still works: OPTIONS answered over it
            status = await options_answered(*conns[0], 1)
            assert status.startswith(b"SIP/2.0 200"), status
            # another source is admitted
            other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            assert (await options_answered(*other, 2)).startswith(b"SIP/2.0 200")
            other[1].close()
        assert srv.metric("v2v_connection_refusals_total", listener="sip_tcp") == 2

        async def all_closed() -> bool:
            return not srv.sip.tcp_limit.open

        await poll(all_closed, 5, "the server to see the idle connections close")
        again = await asyncio.open_connection("127.0.0.1", port)
        assert (await options_answered(*again, 3)).startswith(b"SIP/2.0 200")
        again[1].close()
    logged = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(logged) == 1 and "sip_tcp" in logged[0], logged


def test_zero_turns_the_limit_off() -> None:
    from v2v.signaling.conn_limit import SourceLimit
    limit = SourceLimit(0, "http")
    assert all(limit.acquire("192.0.2.1") for _ in range(1000)) and limit.refused == 0
    capped = SourceLimit(2, "http")
    assert capped.acquire("a") and capped.acquire("a") and not capped.acquire("a") and capped.acquire("b")
    capped.release("a")
    assert capped.acquire("a") and capped.refused == 1
