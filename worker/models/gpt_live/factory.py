"""The ``gpt-live`` model factory: validates the endpoint once, opens one session per call."""

from __future__ import annotations

from ..base import ModelCapabilities, SessionConfig, ToolSpec
from ..openai_realtime.endpoint import DEFAULT_BASE_URL, live_url
from ..openai_realtime.ws_model import WsModelFactory
from .session import RATE, GptLiveSession

DEFAULT_LIVE_MODEL = "gpt-live-1"


class GptLiveFactory(WsModelFactory):
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
        self._take_key(api_key, "OPENAI_API_KEY")
        self.base_url = base_url or DEFAULT_BASE_URL
        model = live_model or DEFAULT_LIVE_MODEL
        self.segment_gap_s = segment_gap_s
        self._configure(
            live_url(self.base_url), model, voice, instructions, tools,  # the URL validates early
            ModelCapabilities(input_rate=RATE, output_rate=RATE, server_vad=True, truncation=False,
                              full_duplex=True),
            reconnect_attempts=reconnect_attempts, backoff_base=backoff_base, backoff_max=backoff_max,
            connect_timeout=connect_timeout, heartbeat=heartbeat,
        )

    def open(self, config: SessionConfig) -> GptLiveSession:
        return GptLiveSession(self.settings, self.capabilities, self.merged(config), self._api_key,
                              segment_gap_s=self.segment_gap_s)
