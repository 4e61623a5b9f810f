"""The ``gemini`` model: Google's Gemini Live (``BidiGenerateContent``) over an aiohttp WebSocket.

* :mod:`.link` -- the socket (``GEMINI_BASE_URL`` names the host): ``setup``
  first, JSON in text or binary frames, close codes as errors, reconnects;
* :mod:`.session` -- the session: 16 kHz caller audio, 24 kHz model audio,
  transcripts, function calls, ``interrupted``; no truncation;
* :mod:`.factory` -- its factory.
"""

from .factory import DEFAULT_GEMINI_BASE_URL, DEFAULT_GEMINI_MODEL, GeminiLiveFactory, gemini_url
from .session import GeminiLiveSession

__all__ = ["DEFAULT_GEMINI_BASE_URL", "DEFAULT_GEMINI_MODEL", "GeminiLiveFactory", "GeminiLiveSession",
           "gemini_url"]
