"""SIP over UDP and TCP (RFC 3261 section 18) feeding a :class:`SipCore`.

UDP: one datagram is one message; answers go back to the source address
(symmetric response routing, rport). TCP: messages are framed by
Content-Length (CRLF keep-alives skipped); a stream that cannot be framed gets
a 400 when possible and is closed; a closed connection ends its calls.

IPv6: ``--host ::`` binds dual-stack sockets (IPv4 callers arrive as mapped
addresses and are seen as plain IPv4); where the OS keeps ``::`` IPv6-only,
the same port is bound on ``0.0.0.0`` as well.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import cast

from ..conn_limit import SourceLimit, admitting
from .addr import dual_stack_supported, plain_ip, tcp_socket, udp_socket
from .core import Conn, SipCore
from .message import MAX_MESSAGE, SipParseError, StreamFramer

PORT_TRIES = 8  # port 0: UDP numbers tried when the same TCP port is taken

log = logging.getLogger("v2v.sip.net")


class SipUdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: SipCore) -> None:
        self.core = core
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram endpoint's transport (uvloop's does not subclass asyncio.DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) > MAX_MESSAGE or self.transport is None:
            return
        remote = (plain_ip(addr[0]), addr[1])  # a dual-stack socket's ::ffff:a.b.c.d is IPv4
        tr = self.transport

        def send(b: bytes, _r: tuple = (addr[0], addr[1])) -> None:
            tr.sendto(b, _r)

        self.core.receive(data, Conn("UDP", remote, self.local, send, lambda: not tr.is_closing()))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class SipTcpProtocol(asyncio.Protocol):
    TRANSPORT = "TCP"  # the Conn's transport (tls.py's subclass: TLS)

    def __init__(self, core: SipCore, conns: set[SipTcpProtocol]) -> None:
        self.core = core
        self.conns = conns
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.conn: Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = self.transport = cast(asyncio.Transport, transport)  # a stream server's transport
        peer = tr.get_extra_info("peername")
        local = tr.get_extra_info("sockname")
        self.conn = Conn(self.TRANSPORT, (plain_ip(peer[0]), peer[1]), (plain_ip(local[0]), local[1]), tr.write,
                         lambda: not tr.is_closing())
        self.conns.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.conn is not None
        try:
            messages = self.framer.feed(data)
        except SipParseError as e:
            log.info("sip tcp: closing %s:%s, unframeable stream (%s)", *self.conn.remote, e)
            # answer what we can, then drop the connection
            self.core.receive(bytes(self.framer._buf[:8192]) + b"\r\n\r\n", self.conn)
            self.transport.close()
            return
        for m in messages:
            self.core.receive(m, self.conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        conn = self.conn
        if conn is not None:
            self.core.connection_lost(lambda c: c is conn)


class SipNetServers:
    """The UDP endpoint and TCP server on one port."""

    def __init__(self, core: SipCore, limit: SourceLimit | None = None) -> None:
        self.core = core
        self.limit = limit or SourceLimit(0, "sip_tcp")  # TCP connections per source address
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.base_events.Server | None = None
        self.extra: list[asyncio.BaseTransport | asyncio.base_events.Server] = []  # IPv4 beside an IPv6-only '::'
        self._tcp_conns: set[SipTcpProtocol] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP and TCP at one port number. Port 0: the OS picks a free UDP port and TCP takes
        the same number; when that number is taken for TCP, another is picked (a few tries)."""
        for attempt in range(PORT_TRIES):
            try:
                await self._start_once(host, port)
                return
            except OSError as e:
                if port != 0 or e.errno != errno.EADDRINUSE or attempt == PORT_TRIES - 1:
                    raise
                self.udp, self.tcp, self.extra = None, None, []

    async def _start_once(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        host = host.strip("[]")
        if host == "::":  # dual-stack: our own sockets (create_server would set IPV6_V6ONLY)
            usock = udp_socket(host)
            usock.bind((host, port))
            self.udp, _ = await loop.create_datagram_endpoint(lambda: SipUdpProtocol(self.core), sock=usock)
        else:
            self.udp, _ = await loop.create_datagram_endpoint(lambda: SipUdpProtocol(self.core),
                                                              local_addr=(host, port))
        self.port = self.udp.get_extra_info("sockname")[1]  # port 0 -> the one picked for UDP
        factory = admitting(lambda: SipTcpProtocol(self.core, self._tcp_conns), self.limit)
        try:
            if host == "::":
                tsock = tcp_socket(host)
                try:
                    tsock.bind((host, self.port))
                except OSError:
                    tsock.close()
                    raise
                self.tcp = await loop.create_server(factory, sock=tsock)
                if not dual_stack_supported():  # the OS keeps '::' IPv6-only: IPv4 on its own sockets
                    tr, _ = await loop.create_datagram_endpoint(lambda: SipUdpProtocol(self.core),
                                                                local_addr=("0.0.0.0", self.port))
                    self.extra.append(tr)
                    self.extra.append(await loop.create_server(factory, "0.0.0.0", self.port, reuse_address=True))
            else:
                self.tcp = await loop.create_server(factory, host, self.port, reuse_address=True)
        except OSError:
            await self.close()
            raise
        self.core.ports.setdefault("UDP", self.port)
        self.core.ports.setdefault("TCP", self.port)

    async def close(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
            for c in list(self._tcp_conns):
                if c.transport is not None:
                    c.transport.close()
            await self.tcp.wait_closed()
        if self.udp is not None:
            self.udp.close()
        for x in self.extra:
            x.close()
