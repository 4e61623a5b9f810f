"""SIP digest authentication, server side (RFC 3261 22.4, RFC 2617, RFC 7616 MD5).

:class:`DigestAuth` issues `WWW-Authenticate` challenges with HMAC-signed,
time-limited nonces (no per-nonce state) and checks `Authorization` headers
against a ``{user: password}`` table. qop=auth and the legacy no-qop form are
both accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from .message import parse_params


def md5(s: str) -> str:
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def _same(a: str, b: str) -> bool:
    """Constant-time string equality that any input can reach (compare_digest
    raises TypeError on non-ASCII ``str``)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """`Digest a="b", c=d` -> ("digest", {"a": "b", "c": "d"})."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] == " ":
            i += 1
        if i < n and rest[i] == '"':
            j = i + 1
            buf = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(rest[j])
                j += 1
            params[key] = "".join(buf)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            params[key] = rest[i:j].strip()
            i = j + 1
    return scheme.lower(), params


def compute_response(user: str, realm: str, password: str, method: str, uri: str, nonce: str,
                     qop: str | None = None, nc: str = "", cnonce: str = "") -> str:
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")


class DigestAuth:
    def __init__(self, users: dict[str, str], realm: str = "v2v", nonce_ttl: float = 300.0) -> None:
        self.users = dict(users)
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self._key = os.urandom(16)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def _sign(self, ts: str) -> str:
        return hmac.new(self._key, ts.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24]

    def make_nonce(self) -> str:
        ts = f"{int(time.time()):x}"
        return f"{ts}.{self._sign(ts)}"

    def nonce_ok(self, nonce: str) -> bool:
        ts, _, sig = nonce.partition(".")
        if not ts or not _same(sig, self._sign(ts)):
            return False
        try:
            age = time.time() - int(ts, 16)
        except ValueError:
            return False
        return -5 <= age <= self.nonce_ttl

    def challenge(self, stale: bool = False) -> str:
        s = ", stale=true" if stale else ""
        return f'Digest realm="{self.realm}", nonce="{self.make_nonce()}", algorithm=MD5, qop="auth"{s}'

    def check(self, method: str, header: str | None) -> tuple[bool, bool, str | None]:
        """-> (ok, stale, user). ``stale``: right password, expired nonce."""
        if not header:
            return False, False, None
        scheme, p = parse_auth_header(header)
        if scheme != "digest":
            return False, False, None
        user, nonce, uri, resp = p.get("username"), p.get("nonce"), p.get("uri"), p.get("response")
        if not (user and nonce and uri and resp) or p.get("realm") != self.realm:
            return False, False, user
        if p.get("algorithm", "MD5").upper() != "MD5":
            return False, False, user
        password = self.users.get(user)
        if password is None:
            return False, False, user
        qop = p.get("qop")
        if qop and qop != "auth":
            return False, False, user
        want = compute_response(user, self.realm, password, method, uri, nonce, qop,
                                p.get("nc", ""), p.get("cnonce", ""))
        if not _same(want, resp.lower()):
            return False, False, user
        if not self.nonce_ok(nonce):
            return False, True, user
        return True, False, user


__all__ = ["DigestAuth", "compute_response", "parse_auth_header", "parse_params"]
