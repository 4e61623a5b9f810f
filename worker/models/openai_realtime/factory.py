"""The ``openai`` model factory: validates the endpoint once, opens one session per call."""

from __future__ import annotations

from typing import Literal

from ..base import ModelCapabilities, SessionConfig, ToolSpec
from .endpoint import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    RATE,
    realtime_url,
)
from .session import OpenAIRealtimeSession
from .ws_model import WsModelFactory


class OpenAIRealtimeFactory(WsModelFactory):
    """Opens :class:`OpenAIRealtimeSession` objects.

    Values in the :class:`SessionConfig` handed to :meth:`open` win over the
    factory's defaults when set (non-empty). ``turn_detection`` is always the
    config's (the worker's own mode); the factory's only sets
    ``capabilities.server_vad`` (False for ``"local"``).
    """

    name = "openai"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        voice: str = "",
        instructions: str = "",
        tools: list[ToolSpec] | None = None,
        *,
        turn_detection: Literal["server", "local"] | None = None,
        transcription_model: str = DEFAULT_TRANSCRIPTION_MODEL,
        reconnect_attempts: int = 6,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
    ) -> None:
        self._take_key(api_key, "OPENAI_API_KEY")
        self.base_url = base_url or DEFAULT_BASE_URL
        model = model or DEFAULT_MODEL
        self.turn_detection = turn_detection
        self._configure(
            realtime_url(self.base_url, model), model, voice, instructions, tools,  # the URL validates early
            ModelCapabilities(input_rate=RATE, output_rate=RATE, server_vad=turn_detection != "local",
                              truncation=True),
            transcription_model=transcription_model, reconnect_attempts=reconnect_attempts,
            backoff_base=backoff_base, backoff_max=backoff_max, connect_timeout=connect_timeout, heartbeat=heartbeat,
        )

    def open(self, config: SessionConfig) -> OpenAIRealtimeSession:
        return OpenAIRealtimeSession(self.settings, self.capabilities, self.merged(config), self._api_key)
