"""Access control of the HTTP side (shared/DESIGN.md section 7): tokens, origins, call keys.

- **Tokens**: with ``--auth-secret S`` every ``/api/*`` request and the ``/sip``
  WebSocket carry a JWT signed with S (HS256; ``exp`` required; ``sub`` names the
  caller; an optional ``profile`` pins the call's agent profile), as
  ``Authorization: Bearer T`` or ``?token=T``. :func:`mint_token` makes one
  (``v2v token``), :func:`verify_token` checks one and raises :class:`AuthError`.
- **Origins**: a browser request whose ``Origin`` is neither this server
  (compared with its ``Host``) nor listed in ``--cors-origin`` is refused
  before it can start, change or end a call; only listed origins get
  ``Access-Control-Allow-*`` headers (:class:`OriginPolicy`).
- **Call ids**: a WebRTC call's ``pc_id`` (:func:`new_pc_id`, 128 random bits) is
  its creator's credential: only the creator gets it (in the answer), PATCH,
  DELETE and re-offers name the call by it (Pipecat's client sends nothing
  else), and with tokens they must also come with the creator's subject. Logs
  never show one in full: :func:`redact` keeps its first 8 hex digits.

Nothing here logs a token or a full ``pc_id``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

__all__ = [
    "AuthError",
    "OriginPolicy",
    "TokenClaims",
    "mint_token",
    "new_pc_id",
    "redact",
    "request_token",
    "verify_token",
]

ALGORITHM = "HS256"
LEEWAY_S = 5  # clock skew tolerated on exp/nbf/iat
MAX_TOKEN = 4096  # characters; a longer "token" is refused unread
MIN_SECRET = 32  # bytes: an HS256 key shorter than the hash is weak (RFC 7518 section 3.2)


class AuthError(Exception):
    """A request without a valid token (HTTP 401); ``message`` is safe to return (no token in it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token grants: who (``sub``) and, when pinned, which profile."""

    subject: str = ""
    profile: str | None = None


def mint_token(secret: str, ttl: float = 600.0, *, subject: str = "", profile: str | None = None,
               now: float | None = None) -> str:
    """A token for ``--auth-secret secret`` valid for ``ttl`` seconds."""
    if len(secret.encode()) < MIN_SECRET:
        raise ValueError(f"the secret must be at least {MIN_SECRET} bytes (e.g. `openssl rand -hex 32`)")
    if ttl <= 0:
        raise ValueError("ttl must be > 0")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"iat": issued, "exp": issued + int(max(1, round(ttl)))}
    if subject:
        claims["sub"] = subject
    if profile:
        claims["profile"] = profile
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None) -> TokenClaims:
    """The claims of a valid token; :class:`AuthError` (missing, malformed, bad signature, expired)."""
    if not token:
        raise AuthError("missing access token (Authorization: Bearer <token> or ?token=)")
    if len(token) > MAX_TOKEN:
        raise AuthError("malformed access token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                            options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("access token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("access token signature is invalid") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("access token has no exp claim") from None
    except jwt.InvalidTokenError:  # DecodeError, bad header or algorithm, bad claims, immature
        raise AuthError("malformed access token") from None
    sub, profile = claims.get("sub", ""), claims.get("profile")
    if not isinstance(sub, str) or (profile is not None and not isinstance(profile, str)):
        raise AuthError("malformed access token (sub and profile must be strings)")
    return TokenClaims(sub, profile or None)


def request_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token of a request: ``Authorization: Bearer T`` first, else ``?token=T``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return value.strip()
    return query_token or None


# -- origins -------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class OriginPolicy:
    """``--cors-origin``: the browser origins besides this server's own that may call the API."""

    allowed: tuple[str, ...] = ()

    @classmethod
    def parse(cls, origins: list[str]) -> OriginPolicy:
        return cls(tuple(o.strip().rstrip("/").lower() for o in origins if o.strip()))

    @property
    def any(self) -> bool:
        return "*" in self.allowed

    def same_origin(self, origin: str, host: str | None) -> bool:
        """Is ``origin`` this server, as the request's ``Host`` names it? The origin's scheme sets the
        default port of both (a TLS proxy in front that keeps ``Host`` passes)."""
        if not host:
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        mine = _host_port(host, parts.scheme)
        theirs = _host_port(parts.netloc, parts.scheme)
        return mine is not None and mine == theirs

    def listed(self, origin: str) -> bool:
        return self.any or origin.rstrip("/").lower() in self.allowed

    def admits(self, origin: str | None, host: str | None) -> bool:
        """May a request with this ``Origin`` (None: not a browser's cross-origin request) go on?"""
        if origin is None:
            return True
        return self.same_origin(origin, host) or self.listed(origin)

    def allow_header(self, origin: str | None) -> str | None:
        """``Access-Control-Allow-Origin`` for a listed origin, else None (no CORS headers)."""
        if origin is None or not self.listed(origin):
            return None
        return "*" if self.any else origin


# -- call ids -------------------------------------------------------------------------

_PC_ID = re.compile(r"\b(pc-[0-9a-f]{8})[0-9a-f]{24}\b")


def new_pc_id() -> str:
    """A new WebRTC call's id: ``pc-`` and 128 random bits in hex (unguessable: its creator's credential)."""
    return f"pc-{secrets.token_hex(16)}"


def redact(text: str) -> str:
    """``text`` with every full ``pc_id`` cut to its first 8 hex digits (``pc-1a2b3c4d...``)."""
    return _PC_ID.sub(r"\1...", text)
