"""The GPT-Live socket: the Realtime link's connect/read/reconnect machinery with GPT-Live's start-up.

GPT-Live's primary WebSocket (``/live/sessions``, no query) waits for the
client: ``session.start`` (model, audio format, instructions, delegation, the
text history to restore) goes first and ``session.started`` answers it. There
is no conversation to restore item by item: the history rides in
``session.start``'s ``input``. Everything else (handshake statuses, backoff,
fatal versus retryable failures, key scrubbing) is :class:`RealtimeLink`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from ..base import Connected, ModelEvent
from ..openai_realtime.conversation import JSON, Conversation
from ..openai_realtime.endpoint import RealtimeSettings, log
from ..openai_realtime.link import RealtimeLink


class LiveLink(RealtimeLink):
    """One GPT-Live session's socket, kept up across drops.

    ``start_body`` builds the ``session`` of ``session.start`` on every
    (re)connection; ``on_drop`` is told (with the reason) when the socket was
    lost and a reconnection is about to start.
    """

    api_name = "the GPT-Live API"

    def __init__(
        self,
        settings: RealtimeSettings,
        api_key: str,
        *,
        on_event: Callable[[JSON], None],
        emit: Callable[[ModelEvent], None],
        start_body: Callable[[], JSON],
        on_drop: Callable[[str], None],
    ) -> None:
        super().__init__(settings, api_key, Conversation(), on_event=on_event, emit=emit,
                         session_body=start_body)
        self._drop_cb = on_drop

    async def _open_socket(self) -> None:
        ws = self._ws = await self._handshake()
        await self.send_now({"type": "session.start", "session": self._session_body()})
        await self._expect(ws, "session.started", self._s.connect_timeout)
        self.connections += 1
        self.ready = True
        self._emit(Connected())

    def _on_drop(self, reason: str) -> None:
        self.ready = False
        log.warning("gpt-live: connection lost (%s); reconnecting", reason)
        self._drop_cb(reason)

    def end(self, message: str, code: str) -> None:
        """The server ended the session for good: report it once and do not reconnect."""
        if self.fatal or self.closing:
            return
        self._fail(message, code)
        self.closing = True
        self._stop.set()
