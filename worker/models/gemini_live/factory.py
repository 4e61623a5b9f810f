"""The ``gemini`` model factory: validates the endpoint once, opens one session per call."""

from __future__ import annotations

from ..base import ModelCapabilities, SessionConfig, ToolSpec
from ..openai_realtime.endpoint import ws_url
from ..openai_realtime.ws_model import WsModelFactory
from .session import IN_RATE, OUT_RATE, GeminiLiveSession

DEFAULT_GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_GEMINI_MODEL = "gemini-live-2.5-flash-native-audio"
BIDI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def gemini_url(base_url: str) -> str:
    """``https://host`` -> ``wss://host/ws/...BidiGenerateContent`` (``GEMINI_BASE_URL`` names the host)."""
    return ws_url(base_url or DEFAULT_GEMINI_BASE_URL, BIDI_PATH, what="GEMINI_BASE_URL")


class GeminiLiveFactory(WsModelFactory):
    """Opens :class:`GeminiLiveSession` objects: 16 kHz in, 24 kHz out, the server's own activity
    detection (``server_vad``), no truncation."""

    name = "gemini"

    def __init__(
        self,
        gemini_api_key: str = "",
        gemini_base_url: str | None = None,
        gemini_model: str = DEFAULT_GEMINI_MODEL,
        voice: str = "",
        instructions: str = "",
        tools: list[ToolSpec] | None = None,
        *,
        reconnect_attempts: int = 6,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
    ) -> None:
        self._take_key(gemini_api_key, "GEMINI_API_KEY")
        url = gemini_url(gemini_base_url or DEFAULT_GEMINI_BASE_URL)  # validates early
        name = gemini_model or DEFAULT_GEMINI_MODEL
        self._configure(
            url, name if name.startswith("models/") else f"models/{name}", voice, instructions, tools,
            ModelCapabilities(input_rate=IN_RATE, output_rate=OUT_RATE, server_vad=True, truncation=False),
            reconnect_attempts=reconnect_attempts, backoff_base=backoff_base, backoff_max=backoff_max,
            connect_timeout=connect_timeout, heartbeat=heartbeat,
        )

    def open(self, config: SessionConfig) -> GeminiLiveSession:
        return GeminiLiveSession(self.settings, self.capabilities, self.merged(config), self._api_key)
