"""Who may start SIP calls and register: source allowlist, digest, per-source rate limits.

:class:`Admission` decides for each new INVITE (no To tag) and each REGISTER:

- a source address inside ``--sip-allow`` (a trunk) is admitted without digest;
- otherwise, with ``--sip-user`` set, digest authentication decides (401);
- otherwise, with ``--sip-allow`` set, the request is refused: 403;
- with neither, UDP/TCP and WebSocket callers are admitted (a server bound
  beyond loopback warns at start, see :func:`exposure_warning`).

Over WebSocket the allowlist does not apply (the HTTP upgrade carries its own
credentials); digest does. Before any of that, a token bucket per source
address and method (new INVITEs, REGISTERs; over WebSocket per connection, as
behind a TLS proxy every client has the proxy's address) refuses a flood with
503 and Retry-After; in-dialog requests (ACK, BYE, re-INVITE, INFO, ...) are never
limited, so calls in progress keep going. Every refusal is counted by reason
(``v2v_sip_refusals_total``) and logged once per source and reason a minute.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("v2v.sip")

MAX_SOURCES = 10_000  # rate-limit buckets and log marks kept; the least recently seen go first
LOG_EVERY_S = 60.0
REASONS = ("not-allowed", "rate-limit", "auth-required", "auth-failed")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: list[str]) -> list[Network]:
    """``["10.0.0.0/8", "192.0.2.7"]`` -> networks; a bad entry raises ValueError naming it."""
    nets: list[Network] = []
    for it in items:
        try:
            nets.append(ipaddress.ip_network(it.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--sip-allow: {it!r} is not an address or CIDR network") from None
    return nets


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def exposure_warning(host: str, has_users: bool, has_allow: bool) -> str | None:
    """The start-up warning for SIP bound beyond loopback with no admission control, or None."""
    if has_users or has_allow or is_loopback(host):
        return None
    return (f"SIP on {host or '*'} admits every caller: anyone who reaches it can start calls on the model; "
            "set --sip-allow CIDR,... (trunks) and/or --sip-user name:password (digest)")


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets keyed by (source, kind): ``rate`` per second, ``burst`` deep; bounded memory."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def allow(self, source: str, kind: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        key = (source, kind)
        b = self._buckets.pop(key, None)
        if b is None:
            b = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        self._buckets[key] = b
        while len(self._buckets) > MAX_SOURCES:
            self._buckets.popitem(last=False)
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def retry_after(self) -> int:
        return max(1, int(1.0 / self.rate + 0.999)) if self.rate > 0 else 1


class Admission:
    """The policy of one SIP server; ``on_refusal(reason)`` counts each refusal (metrics)."""

    def __init__(self, allow: list[Network] | None = None, *, rate: float = 10.0, burst: float | None = None,
                 on_refusal: Callable[[str], None] | None = None) -> None:
        self.allow = list(allow or [])
        self.limiter = RateLimiter(rate, burst if burst is not None else 3 * rate)
        self.on_refusal = on_refusal
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._logged: OrderedDict[tuple[str, str], float] = OrderedDict()

    def allowed_source(self, host: str) -> bool:
        """Is this source inside ``--sip-allow``?"""
        ip = _ip(host)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.allow)

    def rate_ok(self, host: str, method: str) -> bool:
        return self.limiter.allow(host, method)

    def refused(self, host: str, reason: str, what: str) -> None:
        """Count a refusal; log it unless this source had one of this reason within a minute."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.on_refusal is not None:
            self.on_refusal(reason)
        now = time.monotonic()
        key = (host, reason)
        last = self._logged.pop(key, None)
        if last is not None and now - last < LOG_EVERY_S:
            self._logged[key] = last
            return
        self._logged[key] = now
        while len(self._logged) > MAX_SOURCES:
            self._logged.popitem(last=False)
        log.warning("sip: refused %s from %s (%s); further refusals of this source for this reason are "
                    "counted, not logged, for %.0f s", what, host, reason, LOG_EVERY_S)


__all__ = ["Admission", "RateLimiter", "exposure_warning", "is_loopback", "parse_networks", "REASONS"]
