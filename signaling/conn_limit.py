"""Concurrent connections per source address (``--max-conns-per-source``), for HTTP and SIP over TCP.

An external probe held 300 slow connections from one address: the server kept
answering until the process ran out of file descriptors (1100 connections
under ``ulimit -n 1024`` took ``/healthz`` down). :class:`SourceLimit` counts
the open connections of each source IP; past the limit a new one is refused at
once, before any byte of it is read: HTTP gets ``429 Too Many Requests``
(``Connection: close``) and is closed, SIP over TCP is closed. Each refusal is
counted in ``v2v_connection_refusals_total{listener}`` and logged at WARNING
once per source and listener a minute.

:class:`CappedTCPSite` is aiohttp's ``TCPSite`` whose connections pass the
limit first (aiohttp has no per-connection hook: its protocol factory is
wrapped; the request handler sees an admitted connection exactly as before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import Counter

from .metrics import ServerMetrics
from .sip.addr import tcp_socket

log = logging.getLogger("v2v.net")

LOG_EVERY_S = 60.0
MAX_LOGGED = 4096  # sources remembered for the once-a-minute log line
LISTENERS = ("http", "sip_tcp")
HTTP_REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: 46\r\n\r\n{\"error\": \"too many connections from source\"}\n")
_COUNTER_ATTR = "_v2v_connection_refusals"


def refusal_counter(metrics: ServerMetrics) -> Counter:
    """``v2v_connection_refusals_total{listener}`` in ``metrics``' registry (made once per registry)."""
    counter = getattr(metrics, _COUNTER_ATTR, None)
    if counter is None:
        counter = Counter("v2v_connection_refusals_total",
                          "Connections refused because their source address had --max-conns-per-source open",
                          ["listener"], registry=metrics.registry)
        for name in LISTENERS:
            counter.labels(listener=name)
        setattr(metrics, _COUNTER_ATTR, counter)
    return cast(Counter, counter)


class SourceLimit:
    """Open connections per source IP of one listener; ``limit`` 0: no limit."""

    def __init__(self, limit: int, listener: str, metrics: ServerMetrics | None = None) -> None:
        self.limit = limit
        self.listener = listener
        self.open: dict[str, int] = {}
        self.refused = 0
        self._counter = refusal_counter(metrics) if metrics is not None else None
        self._logged: OrderedDict[str, float] = OrderedDict()

    def count_in(self, metrics: ServerMetrics) -> None:
        """Count this listener's refusals in ``metrics`` from now on."""
        self._counter = refusal_counter(metrics)

    def acquire(self, source: str) -> bool:
        """Admit one more connection from ``source`` (then :meth:`release` it), or count a refusal."""
        n = self.open.get(source, 0)
        if self.limit and n >= self.limit:
            self._refuse(source)
            return False
        self.open[source] = n + 1
        return True

    def release(self, source: str) -> None:
        n = self.open.get(source, 0) - 1
        if n > 0:
            self.open[source] = n
        else:
            self.open.pop(source, None)

    def _refuse(self, source: str) -> None:
        self.refused += 1
        if self._counter is not None:
            self._counter.labels(listener=self.listener).inc()
        now = time.monotonic()
        last = self._logged.pop(source, None)
        if last is not None and now - last < LOG_EVERY_S:
            self._logged[source] = last
            return
        self._logged[source] = now
        while len(self._logged) > MAX_LOGGED:
            self._logged.popitem(last=False)
        log.warning("%s: refused a connection from %s: it has %d open (--max-conns-per-source); further "
                    "refusals of this source are counted, not logged, for %.0f s",
                    self.listener, source, self.limit, LOG_EVERY_S)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""


class _Admitted(asyncio.Protocol):
    """Stands before one connection's real protocol: admits it by source, or refuses it."""

    def __init__(self, inner: asyncio.Protocol, limit: SourceLimit, refusal: bytes) -> None:
        self.inner = inner
        self.limit = limit
        self.refusal = refusal
        self.source: str | None = None  # set once admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        source = peer_ip(transport)
        if not self.limit.acquire(source):
            tr = cast(asyncio.Transport, transport)  # a stream server's transport
            if self.refusal:
                tr.write(self.refusal)
            tr.close()
            return
        self.source = source
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.source is None:
            return
        self.limit.release(self.source)
        self.source = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.source is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.source is not None else None

    def pause_writing(self) -> None:
        if self.source is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.source is not None:
            self.inner.resume_writing()


def admitting(factory: Callable[[], Any], limit: SourceLimit, refusal: bytes = b"") -> Callable[[], asyncio.Protocol]:
    """A protocol factory whose connections pass ``limit`` before ``factory``'s protocol sees them."""
    if not limit.limit:
        return cast(Callable[[], asyncio.Protocol], factory)
    return lambda: _Admitted(factory(), limit, refusal)


class CappedTCPSite(web.TCPSite):
    """``web.TCPSite`` admitting at most ``limit.limit`` concurrent connections per source address."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int | None, limit: SourceLimit) -> None:
        super().__init__(runner, host, port)
        self.limit = limit

    async def start(self) -> None:
        """As ``TCPSite.start``, with the runner's protocol factory behind the per-source limit."""
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        factory = admitting(server, self.limit, HTTP_REFUSAL)
        if self._host == "::":  # dual-stack like SIP (create_server would make '::' IPv6-only): sip/addr.py
            sock = tcp_socket("::")
            try:
                sock.bind(("::", self._port or 0))
            except OSError:
                sock.close()
                raise
            self._server = await loop.create_server(factory, sock=sock, ssl=self._ssl_context, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, ssl=self._ssl_context,
                backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
