"""The ``openai`` model: the OpenAI Realtime API (GA protocol) over an aiohttp WebSocket.

One module per job:

* :mod:`.endpoint` -- the socket URL (from ``OPENAI_BASE_URL``), the settings,
  and the scrubbing of the API key from logs and error texts;
* :mod:`.conversation` -- the local copy of the conversation (items, the audio
  each carried, responses in flight), used to restore it after a reconnect;
* :mod:`.link` -- the socket: connect, read, reconnect with backoff, restore;
* :mod:`.events` -- server events (GA names and the beta aliases compatible
  providers still send) -> the typed events of :mod:`v2v.worker.models.base`;
* :mod:`.session` / :mod:`.factory` -- the session composing them, its factory.

Faults: a dropped socket or a retryable handshake failure (5xx, 408, 429,
network) reconnects and restores the conversation; the caller sees
``ModelError(fatal=False)``, ``Disconnected(fatal=False)`` and then
``Connected``. An authentication failure (401/403) is fatal: no retry,
``ModelError(fatal=True)`` then ``Disconnected(fatal=True)``.
"""

from .endpoint import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    RATE,
    RealtimeSettings,
    realtime_url,
    scrub,
)
from .events import BETA_ALIASES
from .factory import OpenAIRealtimeFactory
from .session import OpenAIRealtimeSession

__all__ = [
    "BETA_ALIASES",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_TRANSCRIPTION_MODEL",
    "RATE",
    "OpenAIRealtimeFactory",
    "OpenAIRealtimeSession",
    "RealtimeSettings",
    "realtime_url",
    "scrub",
]
