"""Address families for SIP and RTP: IPv4, IPv6 and dual-stack.

Small helpers shared by the SIP transports, the core and the RTP media:

- :func:`plain_ip` turns a dual-stack socket's view of an IPv4 peer
  (``::ffff:192.0.2.1``) back into plain IPv4, so that logs, Via ``received``,
  allowlists and latching see one spelling;
- :func:`bracket` writes an IPv6 literal the way URIs and Via want it;
- :func:`udp_socket` / :func:`tcp_socket` make sockets for a bind address,
  dual-stack for ``::`` (IPv4 peers reach an IPv6 socket as mapped addresses;
  asyncio's ``create_server`` would make it IPv6-only);
- :func:`send_address` says where a datagram socket can send a given address,
  or None when its family cannot reach it (uvloop raises ValueError there,
  asyncio closes the transport on a TypeError);
- :func:`route_source` asks the kernel which local address reaches a peer
  (a UDP ``connect``: no packet is sent), the address to advertise when bound
  to a wildcard;
- :class:`MediaAddresses` picks, for one SDP offer, the RTP bind address of
  the offer's family and the address our answer gives -- or says why there is
  none (a 488 with that reason, before anything is answered).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

log = logging.getLogger("v2v.sip.rtp")

WILDCARDS = ("0.0.0.0", "::", "")


def plain_ip(host: str) -> str:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d``; brackets dropped; anything else unchanged."""
    host = host.strip("[]")
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host


def ip_family(host: str | None) -> int | None:
    """4 or 6 for an IP literal (brackets and IPv4-mapped handled), None for a name or nothing."""
    if not host:
        return None
    try:
        return ipaddress.ip_address(plain_ip(host).split("%")[0]).version
    except ValueError:
        return None


def bracket(host: str) -> str:
    """An IPv6 literal in brackets (URIs, Via sent-by); names and IPv4 unchanged."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in WILDCARDS


def dual_stack_supported() -> bool:
    """Can an IPv6 socket bound to ``::`` also take IPv4 (IPV6_V6ONLY off)?"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            return s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    except OSError:
        return False


def _socket(host: str, kind: socket.SocketKind) -> socket.socket:
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    if family == socket.AF_INET6:
        try:  # '::' takes IPv4 too; a specific IPv6 address is IPv6 whatever the option says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        except OSError:
            pass  # the OS decides (some force IPv6-only): the IPv4 side then has its own socket
    return sock


def udp_socket(host: str) -> socket.socket:
    """An unbound UDP socket of ``host``'s family, dual-stack for ``::`` where the OS allows."""
    return _socket(host, socket.SOCK_DGRAM)


def tcp_socket(host: str) -> socket.socket:
    """An unbound TCP socket of ``host``'s family (SO_REUSEADDR), dual-stack for ``::`` where the OS allows."""
    sock = _socket(host, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def is_dual_stack(sock: socket.socket) -> bool:
    """An IPv6 socket bound to ``::`` with IPV6_V6ONLY off: it reaches IPv4 peers too."""
    if sock.family != socket.AF_INET6:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0 and sock.getsockname()[0] == "::"
    except OSError:
        return False


def send_address(family: int, dual: bool, dest: tuple[str, int]) -> tuple[str, int] | None:
    """The address tuple to hand ``sendto`` on a socket of ``family``, or None when it cannot reach ``dest``.

    IPv4 on a dual-stack IPv6 socket goes as ``::ffff:a.b.c.d``; anything else
    of the other family, a host name or a port out of range is None.
    """
    host, port = dest
    if not 0 < port <= 65535:
        return None
    v = ip_family(host)
    if v is None:
        return None
    host = plain_ip(host)
    if family == socket.AF_INET:
        return (host, port) if v == 4 else None
    if v == 6:
        return (host, port)
    return (f"::ffff:{host}", port) if dual else None


# what a datagram transport's sendto raises: asyncio OSError (most are passed to error_received instead),
# uvloop ValueError (family mismatch, a name), TypeError (a malformed address), OverflowError (port range),
# RuntimeError (a closed handle)
SEND_ERRORS = (OSError, ValueError, TypeError, OverflowError, RuntimeError)


class DatagramSender:
    """``sendto`` on one datagram socket toward addresses taken from SDP, never raising.

    The destination is checked against the socket's family first (IPv4 on a
    dual-stack socket goes mapped): asyncio's transport closes itself on a
    TypeError/OverflowError, uvloop's raises ValueError for a family mismatch.
    Whatever the transport still raises is caught. The first failure toward an
    address is logged at WARNING (``what`` names the socket), later ones at DEBUG.
    """

    def __init__(self, sock: socket.socket, what: str) -> None:
        self.family = sock.family
        self.dual = is_dual_stack(sock)
        self.what = what
        self.failures = 0
        self.last_error = ""
        self._warned: tuple[str, int] | None = None

    def send(self, transport: asyncio.DatagramTransport, data: bytes, dest: tuple[str, int]) -> bool:
        to = send_address(self.family, self.dual, dest)
        if to is None:
            fam = "IPv6" if self.family == socket.AF_INET6 else "IPv4"
            return self._failed(dest, f"not an address this {fam} socket can reach")
        if transport.is_closing():
            return False
        try:
            transport.sendto(data, to)
        except SEND_ERRORS as e:
            return self._failed(dest, f"{type(e).__name__}: {e}")
        return True

    def _failed(self, dest: tuple[str, int], why: str) -> bool:
        self.failures += 1
        self.last_error = why
        if self._warned != dest:
            self._warned = dest
            log.warning("%s: cannot send to %s:%s (%s); the call goes on", self.what, dest[0], dest[1], why)
        else:
            log.debug("%s: send to %s:%s failed: %s", self.what, dest[0], dest[1], why)
        return False


def route_source(remote: str) -> str | None:
    """The local address the kernel would use toward ``remote`` (no packet is sent), or None."""
    v = ip_family(remote)
    if v is None:
        return None
    ip = plain_ip(remote)
    if ipaddress.ip_address(ip.split("%")[0]).is_unspecified:
        return None
    try:
        with socket.socket(socket.AF_INET6 if v == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            return str(s.getsockname()[0]).split("%")[0]
    except OSError:
        return None


def guess_local(version: int) -> str | None:
    """A global address of this host in family ``version`` (the route toward a documentation address)."""
    return route_source("2001:db8::1" if version == 6 else "192.0.2.1")


def sdp_address_for(current: str, remote: str) -> str:
    """Our SDP address after a re-offer from ``remote``: kept if of its family, else one of the new family.

    Only a dual-stack socket reaches both families (the RTP session checks that first).
    """
    v = ip_family(remote)
    if v is None or ip_family(current) in (None, v) or ipaddress.ip_address(plain_ip(remote).split("%")[0]).is_unspecified:
        return current  # same family, a host name (ours, configured), or hold
    return route_source(remote) or guess_local(v) or current


class AddressMismatch(ValueError):
    """No media address of the offer's family (answered 488, with this text as the reason)."""


@dataclass
class MediaAddresses:
    """Where RTP binds and what SDP says, per address family of the offer.

    ``binds``: ``--media-address`` (else ``--host``), in order of preference;
    ``advertise``: ``--advertise``/``--sip-public-address``, used for an offer
    of its family (a host name: always).
    """

    binds: list[str]
    advertise: str | None = None
    dual_stack: bool = field(default_factory=dual_stack_supported)

    def _bind_for(self, v: int) -> str | None:
        for b in self.binds:
            b = b.strip("[]")
            if (6 if ":" in b else 4) == v:
                return b
            if b == "::" and v == 4:  # the IPv6 wildcard takes IPv4 too, or the IPv4 wildcard beside it
                return b if self.dual_stack else "0.0.0.0"
        return None

    def choose(self, remote: str | None) -> tuple[str, str]:
        """(bind address, SDP address) for media toward ``remote`` (an offer's c=, or the caller's address).

        Raises :class:`AddressMismatch` when no media address has the offer's family.
        """
        v = ip_family(remote)
        if v is None:  # nothing to go by: our first address; its family decides what we offer
            bind = self.binds[0].strip("[]") if self.binds else "0.0.0.0"
            v = 6 if ":" in bind else 4
        else:
            found = self._bind_for(v)
            if found is None:
                have = ", ".join(self.binds) or "none"
                raise AddressMismatch(f"no IPv{v} media address for c=IN IP{v} {plain_ip(remote or '')} "
                                      f"(media on {have}; see --media-address)")
            bind = found
        if self.advertise and ip_family(self.advertise) in (None, v):
            return bind, self.advertise
        if not is_wildcard(bind):
            return bind, bind
        sdp = route_source(remote) if remote else None
        return bind, sdp or guess_local(v) or ("::1" if v == 6 else "127.0.0.1")


__all__ = [
    "SEND_ERRORS", "AddressMismatch", "DatagramSender", "MediaAddresses", "bracket", "dual_stack_supported", "guess_local", "ip_family",
    "is_dual_stack", "is_wildcard", "plain_ip", "route_source", "sdp_address_for", "send_address", "tcp_socket", "udp_socket",
]
