"""The ``openai`` model factory: validates the endpoint once, opens one session per call."""

from __future__ import annotations

from typing import Literal

from ..base import ModelCapabilities, ModelFactory, SessionConfig, ToolSpec
from .endpoint import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    RATE,
    RealtimeSettings,
    realtime_url,
    register_secret,
)
from .session import OpenAIRealtimeSession


class OpenAIRealtimeFactory(ModelFactory):
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
        if not api_key:
            raise ValueError("the openai model needs an API key (set OPENAI_API_KEY)")
        self._api_key = api_key
        register_secret(api_key)
        self.base_url = base_url or DEFAULT_BASE_URL
        self.model = model or DEFAULT_MODEL
        self.url = realtime_url(self.base_url, self.model)  # validates early
        self.voice = voice
        self.instructions = instructions
        self.tools = list(tools or [])
        self.turn_detection = turn_detection
        self.settings = RealtimeSettings(
            url=self.url,
            model=self.model,
            transcription_model=transcription_model,
            reconnect_attempts=reconnect_attempts,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            connect_timeout=connect_timeout,
            heartbeat=heartbeat,
        )
        self.capabilities = ModelCapabilities(
            input_rate=RATE,
            output_rate=RATE,
            server_vad=turn_detection != "local",
            truncation=True,
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIRealtimeFactory(url={self.url!r}, model={self.model!r})"

    def open(self, config: SessionConfig) -> OpenAIRealtimeSession:
        merged = SessionConfig(
            instructions=config.instructions or self.instructions,
            voice=config.voice or self.voice,
            tools=list(config.tools or self.tools),
            turn_detection=config.turn_detection,
            input_transcription=config.input_transcription,
        )
        return OpenAIRealtimeSession(self.settings, self.capabilities, merged, self._api_key)
