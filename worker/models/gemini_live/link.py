"""The Gemini Live socket: the Realtime link's reconnect machinery with Gemini's framing.

Gemini's ``BidiGenerateContent`` WebSocket takes the key in the
``x-goog-api-key`` header, waits for the client's ``setup`` and answers
``setupComplete``. Messages have no ``type`` field (one top-level key names
the message) and the server sends its JSON in binary frames as well as text
ones. Errors are not events: the server closes the socket with a code and a
reason. 1007 (invalid argument, which is also how a bad key is refused) and
1008 (policy) are fatal; any other close or drop reconnects, as the Realtime
session does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp

from ..base import Connected, ModelEvent
from ..openai_realtime.conversation import JSON, Conversation
from ..openai_realtime.endpoint import RealtimeSettings, log, scrub
from ..openai_realtime.link import RealtimeLink, _Fatal, _Retryable

FATAL_CLOSE_CODES = (1007, 1008)


def decode(msg: aiohttp.WSMessage) -> JSON | None:
    """A text or binary frame's JSON object, or None (not JSON, not an object, not data)."""
    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return None
    try:
        ev = json.loads(msg.data)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


class GeminiLink(RealtimeLink):
    """One Gemini Live session's socket, kept up across drops.

    ``setup_body`` builds the ``setup`` message on every (re)connection;
    ``after_setup`` returns the messages that restore the conversation on it;
    ``on_drop`` is told when the socket was lost and a reconnection starts.
    """

    api_name = "the Gemini Live API"
    key_name = "GEMINI_API_KEY"
    url_name = "GEMINI_BASE_URL"

    def __init__(
        self,
        settings: RealtimeSettings,
        api_key: str,
        *,
        on_event: Callable[[JSON], None],
        emit: Callable[[ModelEvent], None],
        setup_body: Callable[[], JSON],
        after_setup: Callable[[], list[JSON]],
        on_drop: Callable[[str], None],
    ) -> None:
        super().__init__(settings, api_key, Conversation(), on_event=on_event, emit=emit, session_body=setup_body)
        self._after_setup = after_setup
        self._drop_cb = on_drop

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key}

    async def _open_socket(self) -> None:
        ws = self._ws = await self._handshake()
        await self.send_now({"setup": self._session_body()})
        await self._await_setup(ws, self._s.connect_timeout)
        for message in self._after_setup():
            await self.send_now(message)
        self.connections += 1
        self.ready = True
        self._emit(Connected())

    async def _await_setup(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _Retryable(f"no setupComplete from {self.api_name} within {timeout:g} s")
            msg = await ws.receive(timeout=left)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = ws.close_code or (msg.data if isinstance(msg.data, int) else 0)
                reason = scrub(str(msg.extra or ""))
                if code in FATAL_CLOSE_CODES:
                    raise _Fatal(f"{self.api_name} rejected the session ({code}): {reason}",
                                 "auth_failed" if "key" in reason.lower() else "session_rejected")
                raise _Retryable(f"socket closed while waiting for setupComplete ({code} {reason})")
            ev = decode(msg)
            if ev is None:
                raise _Retryable("a non-JSON message while waiting for setupComplete")
            if "setupComplete" in ev:
                return
            self._deliver(ev)

    async def _read_loop(self) -> str:
        ws = self._ws
        if ws is None:
            return "no socket"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return scrub(f"socket error: {ws.exception()}")
                ev = decode(msg)
                if ev is not None:
                    self._deliver(ev)
                else:
                    log.warning("gemini live: a non-JSON message ignored")
        except (aiohttp.ClientError, OSError) as e:
            return scrub(f"socket error: {e}")
        code = ws.close_code
        reason = f"socket closed by the server (code {code})"
        if code in FATAL_CLOSE_CODES and not self.closing:
            self._fail(f"{self.api_name} ended the session ({code})", "session_rejected")
            self.closing = True
        return reason

    def _on_drop(self, reason: str) -> None:
        self.ready = False
        log.warning("gemini live: connection lost (%s); reconnecting", reason)
        self._drop_cb(reason)
