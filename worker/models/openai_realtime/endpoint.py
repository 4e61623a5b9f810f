"""Where the Realtime API is and how to reach it: the socket URL, the settings, secret scrubbing.

The socket URL is derived from ``OPENAI_BASE_URL`` (``http``->``ws``,
``https``->``wss``, + ``/realtime?model=...``) so a local server, a proxy or a
compatible provider can stand in.

The API key only goes into the ``Authorization`` header; every key registered
with :func:`register_secret` is masked in each record of the package's logger
(:data:`log`) and in every error text the session produces (:func:`scrub`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

RATE = 24000
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

# One logger for the whole package (its records are scrubbed).
log = logging.getLogger("v2v.worker.models.openai_realtime")

_SECRETS: set[str] = set()
_filter_lock = threading.Lock()
_filter_installed = False


def scrub(text: str) -> str:
    """Return ``text`` with every registered API key masked."""
    for s in _SECRETS:
        if s:
            text = text.replace(s, "***")
    return text


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            msg = record.getMessage()
            clean = scrub(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


def register_secret(secret: str) -> None:
    """Mask ``secret`` from now on (installs the log filter on first use)."""
    global _filter_installed
    if not secret:
        return
    _SECRETS.add(secret)
    with _filter_lock:
        if not _filter_installed:
            log.addFilter(_ScrubFilter())
            _filter_installed = True


def ws_url(base_url: str, path: str, query: str = "", *, what: str = "OPENAI_BASE_URL") -> str:
    """``https://host/v1`` + ``/path`` -> ``wss://host/v1/path[?query]`` (``http`` -> ``ws``)."""
    parts = urlsplit(base_url.strip() or DEFAULT_BASE_URL)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL, got {scrub(base_url)!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def realtime_url(base_url: str, model: str) -> str:
    """``https://host/v1`` -> ``wss://host/v1/realtime?model=...``."""
    return ws_url(base_url, "/realtime", f"model={quote(model, safe='')}")


def live_url(base_url: str) -> str:
    """``https://host/v1`` -> ``wss://host/v1/live/sessions`` (GPT-Live: no query, the model goes in
    ``session.start``)."""
    return ws_url(base_url, "/live/sessions")


@dataclass(frozen=True)
class RealtimeSettings:
    """What a session needs from its factory (never the key: that is handed separately)."""

    url: str
    model: str
    transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL
    reconnect_attempts: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    connect_timeout: float = 10.0
    heartbeat: float | None = 20.0
