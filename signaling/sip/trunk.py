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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .addr import bracket, is_dual_stack, send_address
from .dialog import T1, T2, Conn, new_branch
from .digest_client import Challenge, ClientCredentials, authorization, pick_challenge
from .message import Headers, SipParseError, SipRequest, SipResponse, SipUri, split_hostport

__all__ = ["AuthCache", "Trunk", "TrunkLink", "USER_AGENT", "challenge_of", "with_credentials"]

USER_AGENT = "v2v"
TIMER_B = 64 * T1  # an INVITE (or, as Timer F, any request) unanswered this long has failed


@dataclass(frozen=True)
class Trunk:
    """Where outbound calls go: the trunk (outbound proxy) and our account on it."""

    host: str  # a name or an IP address (IPv6 without brackets)
    port: int
    user: str = ""
    password: str = ""
    caller_id: str = ""  # a user part (+15551230000) or a whole sip: URI

    @classmethod
    def parse(cls, spec: str, user: str = "", password: str = "", caller_id: str = "") -> Trunk:
        """``sip:trunk.example.com:5060``, ``trunk.example.com``, ``192.0.2.1:5080``; ValueError if not."""
        text = spec.strip()
        try:
            if text.lower().startswith(("sip:", "sips:")):
                uri = SipUri.parse(text)
                if uri.scheme == "sips" or (uri.params.get("transport") or "udp").lower() != "udp":
                    raise ValueError("only UDP trunks are supported (no sips:, no ;transport=tcp/tls)")
                host, port = uri.host, uri.port
            else:
                host, port = split_hostport(text)
        except SipParseError as e:
            raise ValueError(f"--sip-trunk {spec!r}: {e}") from None
        host = host.strip("[]")
        if not host or any(c in host for c in " ;@/<>"):
            raise ValueError(f"--sip-trunk {spec!r}: want sip:host[:port] or host[:port]")
        return cls(host, port or 5060, user, password, caller_id)

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
        return f"<sip:{self.hostport};lr>"


class TrunkLink:
    """Our UDP path to the trunk: address, Via, Conn, response routing, non-INVITE transactions."""

    def __init__(self, trunk: Trunk, hooks: dict[str, Callable[[SipResponse], None]],
                 udp: Callable[[], asyncio.DatagramTransport | None], public_host: str,
                 sip_port: Callable[[], int], local_host: Callable[[Conn], str] | None = None) -> None:
        self.trunk = trunk
        self.hooks = hooks  # SipCore.client_hooks: branch -> handler
        self._udp = udp
        self.public_host = public_host
        self.host = public_host  # our address toward the trunk (Via, Contact), set by resolve()
        self._port = sip_port
        self._local_host = local_host  # SipCore.local_host: the public address, or ours of the trunk's family

    def _socket(self) -> tuple[asyncio.DatagramTransport, int, bool]:
        """The SIP UDP transport, its address family, and whether it is dual-stack."""
        udp = self._udp()
        if udp is None:
            raise OSError("SIP over UDP is not running (--sip-port)")
        sock = udp.get_extra_info("socket")
        family = int(sock.family) if sock is not None else socket.AF_INET
        return udp, family, bool(sock is not None and family == socket.AF_INET6 and is_dual_stack(sock))

    async def resolve(self) -> tuple[str, int]:
        """The trunk's address that the SIP socket reaches (its own family first); OSError when none."""
        _udp, family, dual = self._socket()
        infos = await asyncio.get_running_loop().getaddrinfo(self.trunk.host, self.trunk.port, type=socket.SOCK_DGRAM)
        found = [(str(i[4][0]), int(i[4][1])) for i in sorted(infos, key=lambda i: i[0] != family)]
        usable = [a for a in found if send_address(family, dual, a) is not None]
        if not usable:
            raise OSError(f"{self.trunk.host} has no address the SIP socket (--host) can reach")
        addr = usable[0]
        if self._local_host is not None:
            self.host = self._local_host(self.conn(addr))
        return addr

    def conn(self, addr: tuple[str, int]) -> Conn:
        """A :class:`Conn` sending to ``addr`` from the SIP UDP socket (dialogs keep it for BYE)."""
        udp, family, dual = self._socket()
        local = udp.get_extra_info("sockname")[:2]
        dest = send_address(family, dual, addr) or addr  # IPv4 on a dual-stack socket: ::ffff:a.b.c.d

        def send(data: bytes) -> None:
            udp.sendto(data, dest)

        return Conn("UDP", addr, (local[0], local[1]), send, lambda: not udp.is_closing())

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {bracket(self.host)}:{self._port()};branch={branch};rport"

    def contact(self, user: str = "v2v") -> str:
        return f"<sip:{user}@{bracket(self.host)}:{self._port()};transport=udp>"

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
        conn = self.conn(addr)
        data = req.serialize()
        try:
            interval, deadline = T1, time.monotonic() + TIMER_B
            conn.try_send(data)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    resp = await asyncio.wait_for(q.get(), min(interval, left))
                except TimeoutError:
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
