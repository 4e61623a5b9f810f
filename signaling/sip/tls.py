"""SIP over TLS (RFC 3261 section 26, RFC 5630): the ``--sip-tls-port`` listener.

Each accepted TCP connection (admitted by the same per-source limit as SIP
over TCP) is upgraded with :meth:`asyncio.loop.start_tls` rather than
``create_server(ssl=...)``: asyncio reports a failed handshake of such a
server nowhere (an ``ssl.SSLError`` is an ``OSError``, logged only in debug
mode), and a trunk failing to connect must be visible. A handshake that fails
or does not finish within :data:`HANDSHAKE_TIMEOUT_S` is counted
(``v2v_sip_tls_handshake_failures_total``), logged once per source address a
minute, and closes only its own connection. An established connection is SIP
over a stream exactly as TCP (:class:`~.udp_tcp.SipTcpProtocol`, transport
``TLS``): Via ``SIP/2.0/TLS``, Contact ``<sip:...;transport=tls>``, and
in-dialog requests (our BYE) go back over the caller's connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from ..conn_limit import SourceLimit, peer_ip
from .addr import dual_stack_supported, tcp_socket
from .core import SipCore
from .udp_tcp import SipTcpProtocol

__all__ = ["HANDSHAKE_TIMEOUT_S", "SipTlsServer", "check_tls_files", "server_context", "start_listener"]

log = logging.getLogger("v2v.sip.tls")

HANDSHAKE_TIMEOUT_S = 10.0
LOG_EVERY_S = 60.0
MAX_LOGGED = 1024


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key``; ValueError saying which file is wrong and why."""
    check_tls_files(cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ValueError(f"--sip-tls-cert {cert} / --sip-tls-key {key}: cannot use them ({e.reason or e}); "
                         "the certificate must be PEM and the key its own (unencrypted PEM)") from None
    return ctx


def check_tls_files(cert: str | None, key: str | None) -> None:
    """Both files given and readable, else ValueError naming the flag."""
    for flag, path in (("--sip-tls-cert", cert), ("--sip-tls-key", key)):
        if not path:
            raise ValueError(f"--sip-tls-port needs {flag} (a PEM file)")
        try:
            with open(path, "rb") as f:
                if not f.read(1):
                    raise ValueError(f"{flag} {path}: the file is empty")
        except OSError as e:
            raise ValueError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


class _TlsAccept(SipTcpProtocol):
    """A SIP stream whose TCP connection is upgraded to TLS before any SIP is read."""

    TRANSPORT = "TLS"

    def __init__(self, server: SipTlsServer) -> None:
        super().__init__(server.core, server.conns)
        self.server = server
        self._early: list[bytes] = []
        self.tcp: asyncio.Transport | None = None
        self.source: str | None = None  # admitted by the per-source limit, released once

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tcp is None:  # the plain TCP connection: admit it, then start the handshake
            self.tcp = cast(asyncio.Transport, transport)
            source = peer_ip(transport)
            if not self.server.limit.acquire(source):
                transport.close()
                return
            self.source = source
            self.server.spawn_handshake(self)
            return
        super().connection_made(transport)  # the TLS transport, after the handshake
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:  # SIP that came with the handshake's last flight, before start_tls returned
            self._early.append(data)
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        super().connection_lost(exc)

    def release(self) -> None:
        """Give back this connection's place in the per-source limit (once)."""
        if self.source is not None:
            self.server.limit.release(self.source)
            self.source = None


class SipTlsServer:
    """The TLS listener of one signaling node, next to :class:`~.udp_tcp.SipNetServers`."""

    def __init__(self, core: SipCore, ctx: ssl.SSLContext, limit: SourceLimit | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.core = core
        self.ctx = ctx
        self.limit = limit or SourceLimit(0, "sip_tcp")
        self.on_failure = on_failure
        self.conns: set[SipTcpProtocol] = set()
        self.server: asyncio.base_events.Server | None = None
        self.extra: asyncio.base_events.Server | None = None  # IPv4 beside an IPv6-only '::'
        self.port = 0
        self.failures = 0
        self._handshakes: set[asyncio.Task[None]] = set()
        self._logged: OrderedDict[str, float] = OrderedDict()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; ``::`` is dual-stack as SIP over TCP is (udp_tcp.py)."""
        loop = asyncio.get_running_loop()
        host = host.strip("[]")
        # not conn_limit.admitting(): start_tls moves the connection to a new protocol, whose end the
        # wrapper would never see; _TlsAccept takes and gives back its place itself
        if host == "::":  # our own socket: create_server would set IPV6_V6ONLY
            sock = tcp_socket(host)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            self.server = await loop.create_server(lambda: _TlsAccept(self), sock=sock)
        else:
            self.server = await loop.create_server(lambda: _TlsAccept(self), host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        if host == "::" and not dual_stack_supported():  # the OS keeps '::' IPv6-only: IPv4 on its own
            self.extra = await loop.create_server(lambda: _TlsAccept(self), "0.0.0.0", self.port, reuse_address=True)
        self.core.ports.setdefault("TLS", self.port)

    def spawn_handshake(self, proto: _TlsAccept) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(proto), name="sip-tls-handshake")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, proto: _TlsAccept) -> None:
        assert proto.tcp is not None
        tcp = proto.tcp
        peer = tcp.get_extra_info("peername") or ("?", 0)
        try:
            tls = await asyncio.get_running_loop().start_tls(
                tcp, proto, self.ctx, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except (OSError, ssl.SSLError, EOFError, TimeoutError, ConnectionError, ValueError, RuntimeError) as e:
            self._failed(peer[0], e)
            tcp.close()
            proto.release()
            return
        if tls is None:  # the connection went away during the handshake
            self._failed(peer[0], ConnectionError("closed during the handshake"))
            proto.release()
            return
        proto.connection_made(tls)

    def _failed(self, source: str, exc: BaseException) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        now = time.monotonic()
        last = self._logged.get(source)
        if last is not None and now - last < LOG_EVERY_S:
            return
        self._logged[source] = now
        self._logged.move_to_end(source)
        while len(self._logged) > MAX_LOGGED:
            self._logged.popitem(last=False)
        what = "timed out" if isinstance(exc, TimeoutError) else f"failed ({type(exc).__name__}: {exc})"
        log.warning("sip tls: handshake from %s %s; counted in v2v_sip_tls_handshake_failures_total, "
                    "logged once a minute per source", source, str(what)[:200])

    async def close(self) -> None:
        for t in list(self._handshakes):
            t.cancel()
        servers = [s for s in (self.server, self.extra) if s is not None]
        for s in servers:
            s.close()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
        for s in servers:
            await s.wait_closed()


async def start_listener(core: SipCore, host: str, port: int, cert: str, key: str, limit: SourceLimit | None = None,
                         on_failure: Callable[[], None] | None = None) -> SipTlsServer:
    """Load the certificate (ValueError when unusable) and listen for SIP over TLS on ``host:port``."""
    server = SipTlsServer(core, server_context(cert, key), limit, on_failure)
    await server.start(host, port)
    log.info("SIP over TLS on %s:%d (certificate %s)", host, server.port, cert)
    return server
