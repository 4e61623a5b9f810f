"""The ``gpt-live`` model factory: validates the endpoint once, opens one session per call."""

from __future__ import annotations

from ..base import ModelCapabilities, ModelFactory, SessionConfig, ToolSpec
from ..openai_realtime.endpoint import DEFAULT_BASE_URL, RealtimeSettings, live_url, register_secret
from .session import RATE, GptLiveSession

DEFAULT_LIVE_MODEL = "gpt-live-1"


class GptLiveFactory(ModelFactory):
    """Opens :class:`GptLiveSession` objects on ``OPENAI_BASE_URL``'s ``/live/sessions``.

    Full duplex (``full_duplex``): the model owns turn-taking (``server_vad``),
    and there is no item truncation (``truncation=False``).
    """

    name = "gpt-live"

    def __init__(
        self,
        api_key: str = "",
        base_url: str | None = None,
        live_model: str = DEFAULT_LIVE_MODEL,
        voice: str = "",
        instructions: str = "",
        tools: list[ToolSpec] | None = None,
        *,
        reconnect_attempts: int = 6,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
        segment_gap_s: float = 0.4,
    ) -> None:
        if not api_key:
            raise ValueError("the gpt-live model needs an API key (set OPENAI_API_KEY)")
        self._api_key = api_key
        register_secret(api_key)
        self.base_url = base_url or DEFAULT_BASE_URL
        self.model = live_model or DEFAULT_LIVE_MODEL
        self.url = live_url(self.base_url)  # validates early
        self.voice = voice
        self.instructions = instructions
        self.tools = list(tools or [])
        self.segment_gap_s = segment_gap_s
        self.settings = RealtimeSettings(
            url=self.url, model=self.model, reconnect_attempts=reconnect_attempts, backoff_base=backoff_base,
            backoff_max=backoff_max, connect_timeout=connect_timeout, heartbeat=heartbeat,
        )
        self.capabilities = ModelCapabilities(input_rate=RATE, output_rate=RATE, server_vad=True, truncation=False,
                                              full_duplex=True)

    def __repr__(self) -> str:  # never show the key
        return f"GptLiveFactory(url={self.url!r}, model={self.model!r})"

    def open(self, config: SessionConfig) -> GptLiveSession:
        merged = SessionConfig(
            instructions=config.instructions or self.instructions,
            voice=config.voice or self.voice,
            tools=list(config.tools or self.tools),
            turn_detection=config.turn_detection,
            input_transcription=config.input_transcription,
        )
        return GptLiveSession(self.settings, self.capabilities, merged, self._api_key,
                              segment_gap_s=self.segment_gap_s)
