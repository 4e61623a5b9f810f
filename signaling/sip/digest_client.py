"""SIP digest authentication, client side (RFC 3261 22.2, RFC 7616: MD5 and SHA-256, qop=auth).

:func:`pick_challenge` chooses the strongest challenge a 401/407 offers
(SHA-256 over MD5; ``-sess`` variants too); :func:`authorization` answers it
for one request (method + request-URI) with our credentials, as the value of
``Authorization`` (401) or ``Proxy-Authorization`` (407). The server side is
:mod:`.digest`; both share :func:`~.digest.parse_auth_header`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from .digest import parse_auth_header

__all__ = ["Challenge", "ClientCredentials", "authorization", "pick_challenge"]

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")


@dataclass(frozen=True)
class ClientCredentials:
    """A trunk account: digest user name and password."""

    user: str
    password: str


@dataclass
class Challenge:
    """One parsed ``WWW-Authenticate``/``Proxy-Authenticate: Digest ...``."""

    realm: str
    nonce: str
    algorithm: str = "MD5"  # upper case: MD5, MD5-SESS, SHA-256, SHA-256-SESS
    qop: str | None = None  # "auth" when the server offers it (we never do auth-int)
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Challenge | None:
        """The challenge, or None when it is not a digest challenge we can answer."""
        scheme, p = parse_auth_header(value)
        algorithm = (p.get("algorithm") or "MD5").upper()
        if scheme != "digest" or "nonce" not in p or algorithm not in PREFERENCE:
            return None
        qops = [q.strip().lower() for q in (p.get("qop") or "").split(",") if q.strip()]
        if qops and "auth" not in qops:
            return None  # auth-int only: we do not hash bodies
        return cls(p.get("realm", ""), p["nonce"], algorithm, "auth" if qops else None, p.get("opaque"))


def pick_challenge(values: list[str]) -> Challenge | None:
    """The strongest answerable challenge among a response's authenticate headers."""
    found = [c for c in (Challenge.parse(v) for v in values) if c is not None]
    found.sort(key=lambda c: PREFERENCE.index(c.algorithm))
    return found[0] if found else None


def _h(algorithm: str, text: str) -> str:
    return HASHES[algorithm.removesuffix("-SESS")](text.encode("utf-8")).hexdigest()


def digest_response(ch: Challenge, creds: ClientCredentials, method: str, uri: str, nc: str, cnonce: str) -> str:
    """The ``response`` value (RFC 7616 3.4.1)."""
    ha1 = _h(ch.algorithm, f"{creds.user}:{ch.realm}:{creds.password}")
    if ch.algorithm.endswith("-SESS"):
        ha1 = _h(ch.algorithm, f"{ha1}:{ch.nonce}:{cnonce}")
    ha2 = _h(ch.algorithm, f"{method}:{uri}")
    if ch.qop:
        return _h(ch.algorithm, f"{ha1}:{ch.nonce}:{nc}:{cnonce}:{ch.qop}:{ha2}")
    return _h(ch.algorithm, f"{ha1}:{ch.nonce}:{ha2}")


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(ch: Challenge, creds: ClientCredentials, method: str, uri: str, nc: int = 1,
                  cnonce: str | None = None) -> str:
    """The ``Authorization``/``Proxy-Authorization`` header value answering ``ch``."""
    cnonce = cnonce or secrets.token_hex(8)
    nc_s = f"{nc:08x}"
    resp = digest_response(ch, creds, method, uri, nc_s, cnonce)
    parts = [f"username={_quoted(creds.user)}", f"realm={_quoted(ch.realm)}", f"nonce={_quoted(ch.nonce)}",
             f"uri={_quoted(uri)}", f"response={_quoted(resp)}", f"algorithm={ch.algorithm}"]
    if ch.qop:
        parts += [f"qop={ch.qop}", f"nc={nc_s}", f"cnonce={_quoted(cnonce)}"]
    if ch.opaque is not None:
        parts.append(f"opaque={_quoted(ch.opaque)}")
    return "Digest " + ", ".join(parts)
