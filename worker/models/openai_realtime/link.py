"""The socket to the Realtime API: connect, read, reconnect with backoff and restore.

A dropped socket or a retryable handshake failure (5xx, 408, 429, network)
reconnects with backoff, re-sends ``session.update`` and restores the
conversation so far from the local mirror; the caller sees
``ModelError(fatal=False)``, ``Disconnected(fatal=False)`` and then
``Connected``. An authentication failure (401/403) or another refusal is
fatal: no retry, ``ModelError(fatal=True)`` then ``Disconnected(fatal=True)``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp

from ..base import AudioDone, Connected, Disconnected, ModelError, ModelEvent, ResponseDone
from .conversation import JSON, Conversation
from .endpoint import RealtimeSettings, log, scrub


class _Fatal(Exception):
    """A connection failure that must not be retried."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Retryable(Exception):
    pass


class RealtimeLink:
    """One session's socket, kept up across drops.

    (Subclasses for other APIs set the names used in error texts.)

    ``on_event`` gets every server event (a dict) once the handshake is under
    way; ``emit`` the connection events; ``session_body`` builds the
    ``session.update`` body sent on every (re)connection.
    """

    api_name = "the realtime API"
    key_name = "OPENAI_API_KEY"
    url_name = "OPENAI_BASE_URL"

    def __init__(
        self,
        settings: RealtimeSettings,
        api_key: str,
        conversation: Conversation,
        *,
        on_event: Callable[[JSON], None],
        emit: Callable[[ModelEvent], None],
        session_body: Callable[[], JSON],
    ) -> None:
        self._s = settings
        self._key = api_key
        self._conv = conversation
        self._on_event = on_event
        self._emit = emit
        self._session_body = session_body
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready = False  # socket open, session configured, conversation restored
        self.closing = False
        self.fatal = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pending_response: JSON | None = None  # response.create sent once the connection is back
        self.connections = 0  # successful connections so far

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Connect (retrying transient failures), then read in a task; emits Connected or a fatal error."""
        self._http = aiohttp.ClientSession()
        try:
            ok = await self._connect_with_retry()
        except BaseException as exc:
            if not self.closing:
                await self._close_socket()
                http, self._http = self._http, None
                if http is not None:
                    await http.close()
            if self.closing and not isinstance(exc, asyncio.CancelledError):
                return  # closed while connecting: nothing to report
            raise
        if ok and not self.closing:
            self._task = asyncio.create_task(self._run(), name="openai-realtime-reader")

    async def close(self) -> None:
        self.closing = True
        self._stop.set()
        self.ready = False
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close_socket()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except Exception:  # a socket that will not close cleanly is dropped all the same
                pass

    def _fail(self, message: str, code: str) -> None:
        """End the session for good (no retry)."""
        self.fatal = True
        self.ready = False
        message = scrub(message)
        log.error("openai realtime: %s", message)
        self._emit(ModelError(message=message, code=code, fatal=True))
        self._emit(Disconnected(reason=message, fatal=True))

    # -- connecting ---------------------------------------------------------------
    async def _connect_with_retry(self) -> bool:
        attempts = max(1, self._s.reconnect_attempts)
        delay = self._s.backoff_base
        last = ""
        for attempt in range(attempts):
            if self.closing:
                return False
            try:
                await self._open_socket()
                return True
            except _Fatal as e:
                await self._close_socket()
                self._fail(str(e), e.code)
                return False
            except (TimeoutError, _Retryable, aiohttp.ClientError, OSError) as e:
                await self._close_socket()
                last = scrub(str(e) or type(e).__name__)
                log.warning("openai realtime: connection attempt %d/%d failed: %s", attempt + 1, attempts, last)
            if attempt + 1 < attempts:
                try:  # back off; close() ends the wait at once
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return False
                except TimeoutError:
                    pass
                delay = min(delay * 2, self._s.backoff_max)
        self._fail(f"could not connect to {self.api_name} after {attempts} attempts: {last}", "connect_failed")
        return False

    def _headers(self) -> dict[str, str]:
        """The handshake's headers: the key goes only here."""
        # GA protocol: no "OpenAI-Beta: realtime=v1" header (that would select the beta one).
        return {"Authorization": f"Bearer {self._key}"}

    async def _handshake(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        try:
            return await self._http.ws_connect(
                self._s.url,
                headers=self._headers(),
                heartbeat=self._s.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                max_msg_size=64 * 1024 * 1024,
            )
        except aiohttp.WSServerHandshakeError as e:
            status = e.status
            if status in (401, 403):
                raise _Fatal(
                    f"authentication failed ({status}): {self.api_name} rejected {self.key_name}",
                    "auth_failed",
                ) from None
            if 400 <= status < 500 and status not in (408, 429):
                raise _Fatal(
                    f"{self.api_name} refused the connection ({status} {e.message}); "
                    f"check {self.url_name} and the model name {self._s.model!r}",
                    "connect_refused",
                ) from None
            raise _Retryable(f"handshake failed ({status} {e.message})") from None

    async def _open_socket(self) -> None:
        ws = self._ws = await self._handshake()
        timeout = self._s.connect_timeout
        # The server speaks first: session.created.
        await self._expect(ws, "session.created", timeout)
        await self.send_now({"type": "session.update", "session": self._session_body()})
        await self._expect(ws, "session.updated", timeout)
        # Restore the conversation so far (after a reconnect).
        restored = 0
        for item, body in self._conv.restorable():
            await self.send_now({"type": "conversation.item.create", "item": body})
            item.live = True
            restored += 1
        self.connections += 1
        self.ready = True
        if restored:
            log.info("openai realtime: restored %d conversation items", restored)
        self._emit(Connected())
        pending, self.pending_response = self.pending_response, None
        if pending is not None:
            await self.send_now(pending)

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, etype: str, timeout: float) -> None:
        """Read until an event of type ``etype``; errors are fatal, drops retryable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _Retryable(f"no {etype} from {self.api_name} within {timeout:g} s")
            msg = await ws.receive(timeout=left)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise _Retryable(f"socket closed while waiting for {etype}")
            try:
                ev = json.loads(msg.data)
            except ValueError:
                raise _Retryable(f"non-JSON message while waiting for {etype}") from None
            if not isinstance(ev, dict):
                raise _Retryable(f"a non-object JSON message while waiting for {etype}")
            t = ev.get("type")
            if t == etype:
                return
            if t == "error":
                err = ev.get("error") or {}
                raise _Fatal(
                    f"{self.api_name} rejected the session: {err.get('message', '')}",
                    str(err.get("code") or "session_rejected"),
                )
            self._deliver(ev)

    # -- reading ------------------------------------------------------------------
    def _deliver(self, ev: JSON) -> None:
        try:
            self._on_event(ev)
        except Exception as e:  # a malformed event must not kill the call
            log.warning("openai realtime: bad %s event ignored: %s", ev.get("type"), scrub(repr(e)))

    async def _run(self) -> None:
        """Read events; on a drop, reconnect and restore. Whatever goes wrong
        ends the session with a fatal ModelError + Disconnected, never silently."""
        try:
            while not self.closing:
                reason = await self._read_loop()
                if self.closing:
                    return
                self._on_drop(reason)
                await self._close_socket()
                if not await self._connect_with_retry():
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.closing:
                return
            log.exception("openai realtime: the reader failed")
            await self._close_socket()
            self._fail(f"the model connection failed: {type(e).__name__}: {e}", "internal_error")

    async def _read_loop(self) -> str:
        ws = self._ws
        if ws is None:
            return "no socket"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        ev = json.loads(msg.data)
                    except ValueError:
                        log.warning("openai realtime: non-JSON message ignored")
                        continue
                    if isinstance(ev, dict):
                        self._deliver(ev)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return scrub(f"socket error: {ws.exception()}")
        except (aiohttp.ClientError, OSError) as e:
            return scrub(f"socket error: {e}")
        return f"socket closed by the server (code {ws.close_code})"

    def _on_drop(self, reason: str) -> None:
        self.ready = False
        log.warning("openai realtime: connection lost (%s); reconnecting", reason)
        # End what was in flight so the worker's state machine moves on.
        resp = self._conv.connection_lost()
        if resp is not None:
            for item_id in sorted(resp.open_audio_items):
                self._emit(AudioDone(item_id=item_id, response_id=resp.id))
            self._emit(ResponseDone(response_id=resp.id, status="failed"))
        self._emit(ModelError(message=f"model connection lost ({reason}); reconnecting",
                              code="connection_lost", fatal=False))
        self._emit(Disconnected(reason=reason, fatal=False))

    # -- sending ------------------------------------------------------------------
    async def send_now(self, ev: JSON) -> None:
        """Send whatever the state (the handshake uses it); raises when the socket is down."""
        ws = self._ws
        if ws is None or ws.closed:
            raise _Retryable("socket closed")
        await ws.send_str(json.dumps(ev))

    async def send(self, ev: JSON) -> bool:
        """Send when connected; False when the socket is down (the reader reconnects)."""
        if not self.ready:
            return False
        try:
            await self.send_now(ev)
            return True
        except (_Retryable, aiohttp.ClientError, ConnectionError, RuntimeError) as e:
            log.info("openai realtime: send of %s failed: %s", ev.get("type"), scrub(str(e)))
            return False
