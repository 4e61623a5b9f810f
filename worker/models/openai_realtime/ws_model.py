"""What the three WebSocket models (``openai``, ``gpt-live``, ``gemini``) share.

:class:`WsModelFactory` -- the API key check and its registration as a secret,
the :class:`RealtimeSettings`, a ``repr`` that never shows the key, and the
merging of a call's :class:`SessionConfig` over the factory's defaults.
:class:`WsModelSession` -- a session's set-up on its link (a
:class:`RealtimeLink` or a subclass), ``connect``/``close``, and the events of
a dropped connection.

It lives in this package because the other two models build on its endpoint
and link; importing it first works (no import cycle through a parent package).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..base import (
    Disconnected,
    ModelCapabilities,
    ModelError,
    ModelFactory,
    ModelSession,
    SessionConfig,
    ToolSpec,
)
from .endpoint import RealtimeSettings, register_secret
from .link import RealtimeLink

L = TypeVar("L", bound=RealtimeLink)


class WsModelFactory(ModelFactory):
    """The common part of the WebSocket model factories (subclasses keep their own ``__init__``
    signature: ``signaling.calls`` fills it in by parameter name)."""

    url: str
    model: str
    voice: str
    instructions: str
    tools: list[ToolSpec]
    settings: RealtimeSettings
    _api_key: str

    def _take_key(self, api_key: str, env_var: str) -> None:
        """Refuses an empty key (``ValueError`` naming ``env_var``); registers the key as a secret."""
        if not api_key:
            raise ValueError(f"the {self.name} model needs an API key (set {env_var})")
        self._api_key = api_key
        register_secret(api_key)

    def _configure(self, url: str, model: str, voice: str, instructions: str, tools: list[ToolSpec] | None,
                   capabilities: ModelCapabilities, **link: Any) -> None:
        """Sets the defaults, the settings (``link``: the :class:`RealtimeSettings` options) and capabilities."""
        self.url = url
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.tools = list(tools or [])
        self.settings = RealtimeSettings(url=url, model=model, **link)
        self.capabilities = capabilities

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r})"

    def merged(self, config: SessionConfig) -> SessionConfig:
        """``config`` with its empty instructions, voice and tools filled in from the factory's."""
        return SessionConfig(
            instructions=config.instructions or self.instructions,
            voice=config.voice or self.voice,
            tools=list(config.tools or self.tools),
            turn_detection=config.turn_detection,
            input_transcription=config.input_transcription,
        )


class WsModelSession(ModelSession, Generic[L]):
    """The common part of the WebSocket model sessions; a subclass sets ``self.link``."""

    link: L

    def __init__(self, settings: RealtimeSettings, capabilities: ModelCapabilities, config: SessionConfig,
                 api_key: str) -> None:
        super().__init__(config)
        register_secret(api_key)
        self.capabilities = capabilities
        self._settings = settings
        self._closing = False

    async def connect(self) -> None:
        """Connect (retrying transient failures); emits Connected, or a fatal error."""
        await self.link.start()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._before_close()
        await self.link.close()
        await super().close()

    async def _before_close(self) -> None:
        """What a model does before its link closes (nothing by default)."""

    def _lost(self, reason: str) -> None:
        """Tells the worker the connection dropped and is being re-established."""
        self.emit(ModelError(message=f"model connection lost ({reason}); reconnecting",
                             code="connection_lost", fatal=False))
        self.emit(Disconnected(reason=reason, fatal=False))
