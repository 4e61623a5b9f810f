"""The trunk outbound calls and registrations go through, and our client transactions to it.

:class:`Trunk` is parsed from ``--sip-trunk`` (``sip:host[:port]``, ``host[:port]``,
``[v6]:port``; UDP only) with its account (``--sip-trunk-user``/``--sip-trunk-password``)
and caller ID. :class:`TrunkLink` sends our requests from the SIP UDP socket of
``--sip-port`` (so the trunk's responses, and its requests inside our dialogs,
reach the :class:`~.core.SipCore` like any other) and routes each response to
its client transaction by the top Via branch (``SipCore.client_hooks``).
:meth:`TrunkLink.request` is a whole non-INVITE client transaction (RFC 3261
17.1.2: Timer E retransmissions, Timer F) with one digest retry on 401/407.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .addr import bracket, ip_family, is_dual_stack, send_address
from .dialog import T1, T2, Conn, new_branch
from .digest_client import Challenge, ClientCredentials, authorization, pick_challenge
from .message import Headers, SipParseError, SipRequest, SipResponse, SipUri, StreamFramer, split_hostport

__all__ = ["AuthCache", "Trunk", "TrunkLink", "USER_AGENT", "challenge_of", "with_credentials"]

log = logging.getLogger("v2v.sip.dial")

USER_AGENT = "v2v"
TIMER_B = 64 * T1  # an INVITE (or, as Timer F, any request) unanswered this long has failed
TRANSPORTS = ("udp", "tcp", "tls")
CONNECT_TIMEOUT_S = 5.0  # TCP connect + TLS handshake to the trunk


@dataclass(frozen=True)
class Trunk:
    """Where outbound calls go: the trunk (outbound proxy) and our account on it."""

    host: str  # a name or an IP address (IPv6 without brackets)
    port: int
    user: str = ""
    password: str = ""
    caller_id: str = ""  # a user part (+15551230000) or a whole sip: URI
    transport: str = "udp"  # udp | tcp | tls

    @classmethod
    def parse(cls, spec: str, user: str = "", password: str = "", caller_id: str = "") -> Trunk:
        """``sip:trunk.example.com:5060``, ``trunk.example.com``, ``192.0.2.1:5080``,
        ``sip:host;transport=tcp``, ``sips:host`` or ``;transport=tls`` (port 5061); ValueError if not."""
        text = spec.strip()
        transport = "udp"
        try:
            if text.lower().startswith(("sip:", "sips:")):
                uri = SipUri.parse(text)
                transport = (uri.params.get("transport") or ("tls" if uri.scheme == "sips" else "udp")).lower()
                if transport not in TRANSPORTS or (uri.scheme == "sips" and transport != "tls"):
                    raise ValueError(f"transport {transport!r}: udp, tcp or tls (sips:)")
                host, port = uri.host, uri.port
            else:
                host, port = split_hostport(text)
        except SipParseError as e:
            raise ValueError(f"--sip-trunk {spec!r}: {e}") from None
        host = host.strip("[]")
        if not host or any(c in host for c in " ;@/<>"):
            raise ValueError(f"--sip-trunk {spec!r}: want sip:host[:port] or host[:port]")
        return cls(host, port or (5061 if transport == "tls" else 5060), user, password, caller_id, transport)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def credentials(self) -> ClientCredentials | None:
        return ClientCredentials(self.user, self.password) if self.user else None

    def target_uri(self, to: str) -> str:
        """The request-URI of a call to ``to``: a sip: URI as given, a number or tel: URI at the trunk."""
        to = to.strip()
        if any(ord(c) < 33 or c in '<>"' for c in to):
            raise ValueError("'to' must not hold spaces, control characters, <, > or quotes")
        if to.lower().startswith("tel:"):
            to = to[4:].split(";", 1)[0]
        if to.lower().startswith("sip:"):
            uri = SipUri.parse(to)  # SipParseError is a ValueError
            if not uri.user or not uri.host:
                raise ValueError("'to' must name a user: sip:user@host")
            return to
        if not to or any(c in to for c in " \t<>;@:\"\r\n"):
            raise ValueError("'to' must be a sip: URI, a tel: URI or a phone number")
        return f"sip:{to}@{self.hostport}"

    def from_uri(self) -> str:
        """Our From/To address: the caller ID (a URI or a user at the trunk), else the account."""
        if self.caller_id.lower().startswith("sip:"):
            return self.caller_id
        return f"sip:{self.caller_id or self.user or 'v2v'}@{self.hostport}"

    def route_for(self, request_uri: str) -> str | None:
        """A Route to the trunk (loose routing) when the request-URI names another host."""
        uri = SipUri.parse(request_uri)
        if uri.host.strip("[]").lower() == self.host.lower() and (uri.port or 5060) == self.port:
            return None
        tp = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"<sip:{self.hostport}{tp};lr>"


class TrunkLink:
    """Our path to the trunk: address, connection, Via/Contact, response routing, non-INVITE transactions.

    UDP goes from the ``--sip-port`` socket; TCP and TLS over one connection we open
    (the trunk's certificate checked against the system's CAs, ``SSL_CERT_FILE`` adds
    one), read here into the core like any other; it closing ends its calls.
    """

    def __init__(self, trunk: Trunk, core: Any, udp: Callable[[], asyncio.DatagramTransport | None],
                 public_host: str, sip_port: Callable[[], int]) -> None:
        self.trunk = trunk
        self.core = core  # SipCore: client_hooks, local_host, ports, receive, connection_lost
        self.hooks: dict[str, Callable[[SipResponse], None]] = core.client_hooks  # branch -> handler
        self._udp = udp
        self.public_host = public_host
        self.host = public_host  # our address toward the trunk (Via, Contact), set on connecting
        self._port = sip_port
        self._stream: Conn | None = None  # the TCP/TLS connection, while open
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def reliable(self) -> bool:
        return self.trunk.transport != "udp"

    def _socket(self) -> tuple[asyncio.DatagramTransport, int, bool]:
        """The SIP UDP transport, its address family, and whether it is dual-stack."""
        udp = self._udp()
        if udp is None:
            raise OSError("SIP over UDP is not running (--sip-port)")
        sock = udp.get_extra_info("socket")
        family = int(sock.family) if sock is not None else socket.AF_INET
        return udp, family, bool(sock is not None and family == socket.AF_INET6 and is_dual_stack(sock))

    async def resolve(self) -> tuple[str, int]:
        """The trunk's address (UDP: one the SIP socket reaches, its own family first); OSError when none."""
        kind = socket.SOCK_STREAM if self.reliable else socket.SOCK_DGRAM
        infos = await asyncio.get_running_loop().getaddrinfo(self.trunk.host, self.trunk.port, type=kind)
        found = [(str(i[4][0]), int(i[4][1])) for i in infos]
        if not self.reliable:
            _udp, family, dual = self._socket()
            found = [a for a in sorted(found, key=lambda a: ip_family(a[0]) != (6 if family == socket.AF_INET6 else 4))
                     if send_address(family, dual, a) is not None]
        if not found:
            raise OSError(f"{self.trunk.host} has no address the SIP socket (--host) can reach")
        return found[0]

    async def connect(self, addr: tuple[str, int]) -> Conn:
        """The :class:`Conn` requests to the trunk go by: the UDP socket, or the TCP/TLS connection."""
        if not self.reliable:
            conn = self.conn(addr)
        elif self._stream is not None and self._stream.is_open():
            return self._stream
        else:
            self._connecting = self._connecting or asyncio.Lock()
            async with self._connecting:
                if self._stream is None or not self._stream.is_open():
                    self._stream = await self._open(addr)
            conn = self._stream
        self.host = self.core.local_host(conn)
        return conn

    async def _open(self, addr: tuple[str, int]) -> Conn:
        tls = self.trunk.transport == "tls"
        ctx = ssl.create_default_context() if tls else None
        if ctx is not None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                addr[0], addr[1], ssl=ctx, server_hostname=self.trunk.host if tls else None), CONNECT_TIMEOUT_S)
        except (TimeoutError, ssl.SSLError) as e:
            raise OSError(f"cannot connect to {self.trunk.hostport} over {self.trunk.transport}: {e}") from None
        local = writer.get_extra_info("sockname")
        conn = Conn("TLS" if tls else "TCP", addr, (str(local[0]), int(local[1])), writer.write,
                    lambda: not writer.is_closing())
        self._reader = asyncio.get_running_loop().create_task(self._read(reader, writer, conn), name="sip-trunk-read")
        return conn

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn) -> None:
        """Feed what the trunk sends on our connection to the core; its end ends the calls on it."""
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for msg in framer.feed(data):
                    self.core.receive(msg, conn)
        except (OSError, SipParseError) as e:
            log.info("sip: trunk connection to %s lost: %s", self.trunk.hostport, e)
        finally:
            if self._stream is conn:
                self._stream = None
            writer.close()
            self.core.connection_lost(lambda c: c is conn)

    async def close(self) -> None:
        """Close the TCP/TLS connection (after the calls on it had their BYE)."""
        if self._stream is not None:
            self._stream = None
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    def conn(self, addr: tuple[str, int]) -> Conn:
        """A :class:`Conn` sending to ``addr`` from the SIP UDP socket (dialogs keep it for BYE)."""
        udp, family, dual = self._socket()
        local = udp.get_extra_info("sockname")[:2]
        dest = send_address(family, dual, addr) or addr  # IPv4 on a dual-stack socket: ::ffff:a.b.c.d

        def send(data: bytes) -> None:
            udp.sendto(data, dest)

        return Conn("UDP", addr, (local[0], local[1]), send, lambda: not udp.is_closing())

    def _local_port(self) -> int:
        name = self.trunk.transport.upper()
        if not self.reliable:
            return self._port()
        stream = self._stream
        return int(self.core.ports.get(name) or (stream.local[1] if stream is not None else 0))

    def via(self, branch: str) -> str:
        return f"SIP/2.0/{self.trunk.transport.upper()} {bracket(self.host)}:{self._local_port()};branch={branch};rport"

    def contact(self, user: str = "v2v") -> str:
        return f"<sip:{user}@{bracket(self.host)}:{self._local_port()};transport={self.trunk.transport}>"

    def open_tx(self, branch: str) -> asyncio.Queue[SipResponse]:
        """Start receiving the responses whose top Via carries ``branch``."""
        q: asyncio.Queue[SipResponse] = asyncio.Queue()
        self.hooks[branch] = q.put_nowait
        return q

    def close_tx(self, branch: str) -> None:
        self.hooks.pop(branch, None)

    def request(self, method: str, uri: str, from_: str, to: str, call_id: str, cseq: int,
                extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> SipRequest:
        """A new request with a fresh branch (Route to the trunk when the URI names another host)."""
        h = Headers()
        h.add("Via", self.via(new_branch()))
        h.add("Max-Forwards", "70")
        h.add("From", from_)
        h.add("To", to)
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        route = self.trunk.route_for(uri)
        if route:
            h.add("Route", route)
        for k, v in extra or []:
            h.add(k, v)
        h.add("User-Agent", USER_AGENT)
        return SipRequest(h, body, method=method, uri=uri)

    async def transact(self, req: SipRequest, addr: tuple[str, int]) -> SipResponse | None:
        """One non-INVITE client transaction over UDP: the final response, or None (Timer F)."""
        branch = req.vias[0].branch or ""
        q = self.open_tx(branch)
        conn = await self.connect(addr)
        data = req.serialize()
        try:
            interval, deadline = T1, time.monotonic() + TIMER_B
            conn.try_send(data)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    resp = await asyncio.wait_for(q.get(), min(interval, left))
                except TimeoutError:
                    if not conn.reliable:
                        conn.try_send(data)  # Timer E
                    interval = min(interval * 2, T2)
                    continue
                if resp.status >= 200 and resp.cseq == req.cseq:
                    return resp
                if resp.status < 200:
                    interval = T2  # a provisional: keep retransmitting, at T2
            return None
        finally:
            self.close_tx(branch)

    async def request_authed(self, make: Callable[[int], SipRequest], addr: tuple[str, int], cseq: int,
                             cache: AuthCache | None = None) -> tuple[SipResponse | None, int]:
        """``make(cseq)`` sent; a 401/407 answered once with our credentials (CSeq + 1).

        With a ``cache`` the last challenge is answered up front (nc counting up), as a
        registrar's refreshes expect, and a new one replaces it. -> (final response or None,
        the CSeq used last).
        """
        creds = self.trunk.credentials
        req = make(cseq)
        if cache is not None and creds is not None and cache.challenge is not None:
            cache.nc += 1
            req.headers.add(cache.header, authorization(cache.challenge, creds, req.method, req.uri, nc=cache.nc))
        resp = await self.transact(req, addr)
        found = challenge_of(resp) if resp is not None and creds is not None else None
        if found is not None and creds is not None:
            name, ch = found
            if cache is not None:
                cache.header, cache.challenge, cache.nc = name, ch, 1
            cseq += 1
            req = make(cseq)
            req.headers.add(name, authorization(ch, creds, req.method, req.uri, nc=1))
            resp = await self.transact(req, addr)
        return resp, cseq


@dataclass
class AuthCache:
    """The last digest challenge of a server we send to again and again (a registrar)."""

    header: str = "Authorization"  # or Proxy-Authorization (a 407's)
    challenge: Challenge | None = None
    nc: int = 0  # the nonce count used last with it


def challenge_of(resp: SipResponse) -> tuple[str, Challenge] | None:
    """A 401/407's strongest answerable challenge and the header that answers it, else None."""
    if resp.status not in (401, 407):
        return None
    ask, answer = ("Proxy-Authenticate", "Proxy-Authorization") if resp.status == 407 else \
        ("WWW-Authenticate", "Authorization")
    ch = pick_challenge(resp.headers.get_all(ask))
    return (answer, ch) if ch is not None else None


def with_credentials(resp: SipResponse, creds: ClientCredentials, method: str, uri: str) -> tuple[str, str] | None:
    """The (Proxy-)Authorization header answering a 401/407, or None when it offers nothing we can answer."""
    found = challenge_of(resp)
    if found is None:
        return None
    return found[0], authorization(found[1], creds, method, uri)
