"""The ``openai`` model session: the OpenAI Realtime API (GA protocol) over an aiohttp WebSocket.

The socket URL is derived from ``OPENAI_BASE_URL`` (``http``->``ws``,
``https``->``wss``, + ``/realtime?model=...``) so a local server, a proxy or a
compatible provider can stand in. Client events are built in the GA shape
(``session.update`` with ``session.type="realtime"``, PCM 24 kHz both ways);
server events -- GA names and the beta aliases compatible providers still send
-- become the typed events of :mod:`worker.models.base`.

Faults: a dropped socket or a retryable handshake failure (5xx, 408, 429,
network) reconnects with backoff, re-sends ``session.update`` and restores the
conversation so far from a local mirror of its items (user transcripts, the
assistant's transcripts -- cut when truncated --, function calls and outputs).
The caller sees ``ModelError(fatal=False)``, ``Disconnected(fatal=False)`` and
then ``Connected``. An authentication failure (401/403) is fatal: no retry,
``ModelError(fatal=True)`` then ``Disconnected(fatal=True)``.

The API key only goes into the ``Authorization`` header; it is scrubbed from
every log record of this module and every error text the session produces.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import numpy as np

from .base import (
    AudioDelta,
    AudioDone,
    Connected,
    Disconnected,
    FunctionCall,
    InputCommitted,
    InputTranscript,
    ModelCapabilities,
    ModelError,
    ModelFactory,
    ModelSession,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    ToolSpec,
)

log = logging.getLogger(__name__)

RATE = 24000
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

# Beta event names that compatible providers still send -> their GA name.
BETA_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}


# --------------------------------------------------------------------------
# Secret scrubbing
# --------------------------------------------------------------------------

_SECRETS: set[str] = set()


def scrub(text: str) -> str:
    """Return ``text`` with every registered API key masked."""
    for s in _SECRETS:
        if s:
            text = text.replace(s, "***")
    return text


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            msg = record.getMessage()
            clean = scrub(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


log.addFilter(_ScrubFilter())


def realtime_url(base_url: str, model: str) -> str:
    """``https://host/v1`` -> ``wss://host/v1/realtime?model=...``."""
    parts = urlsplit(base_url.strip() or DEFAULT_BASE_URL)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"OPENAI_BASE_URL must be an http(s) URL, got {scrub(base_url)!r}")
    path = parts.path.rstrip("/") + "/realtime"
    return urlunsplit((scheme, parts.netloc, path, f"model={quote(model, safe='')}", ""))


class _Fatal(Exception):
    """A connection failure that must not be retried."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Retryable(Exception):
    pass


# --------------------------------------------------------------------------
# Local mirror of the conversation (to restore it after a reconnect)
# --------------------------------------------------------------------------


@dataclass
class _Item:
    id: str
    kind: Literal["message", "function_call", "function_call_output"]
    role: str = ""
    text: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str = ""
    audio_samples: int = 0  # assistant audio received for this item
    truncated: bool = False
    live: bool = True  # exists on the current connection
    audio_live: bool = False  # has audio on the current connection (truncatable)
    response_id: str = ""

    def to_create(self) -> dict[str, Any] | None:
        """The GA ``conversation.item.create`` item restoring this one as text."""
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.arguments or "{}",
            }
        if self.kind == "function_call_output":
            return {
                "id": self.id,
                "type": "function_call_output",
                "call_id": self.call_id,
                "output": self.output,
            }
        if not self.text.strip():
            return None
        ctype = "output_text" if self.role == "assistant" else "input_text"
        return {
            "id": self.id,
            "type": "message",
            "role": self.role,
            "content": [{"type": ctype, "text": self.text}],
        }


@dataclass
class _Response:
    id: str
    audio_samples: int = 0
    text_seen: bool = False
    audio_items: set[str] = field(default_factory=set)
    open_audio_items: set[str] = field(default_factory=set)


def _new_id() -> str:
    return "v2v_" + secrets.token_hex(10)


def _cut_text(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text``, cut back to a word boundary."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    n = int(len(text) * fraction)
    cut = text[:n]
    if n < len(text) and not text[n].isspace() and " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip()


# --------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------


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
        max_text_only_retries: int = 2,
        reconnect_attempts: int = 6,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 20.0,
    ) -> None:
        if not api_key:
            raise ValueError("the openai model needs an API key (set OPENAI_API_KEY)")
        self._api_key = api_key
        _SECRETS.add(api_key)
        self.base_url = base_url or DEFAULT_BASE_URL
        self.model = model or DEFAULT_MODEL
        self.url = realtime_url(self.base_url, self.model)  # validates early
        self.voice = voice
        self.instructions = instructions
        self.tools = list(tools or [])
        self.turn_detection = turn_detection
        self.transcription_model = transcription_model
        self.max_text_only_retries = max_text_only_retries
        self.reconnect_attempts = reconnect_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
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
        return OpenAIRealtimeSession(self, merged, self._api_key)


# --------------------------------------------------------------------------
# Session
# --------------------------------------------------------------------------


class OpenAIRealtimeSession(ModelSession):
    """One call's OpenAI Realtime connection (see the module docstring)."""

    def __init__(self, factory: OpenAIRealtimeFactory, config: SessionConfig, api_key: str) -> None:
        super().__init__(config)
        self.capabilities = factory.capabilities
        self._f = factory
        self._key = api_key
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ready = False  # socket open, session configured, conversation restored
        self._closing = False
        self._stop = asyncio.Event()
        self._fatal = False
        self._task: asyncio.Task[None] | None = None
        self._items: dict[str, _Item] = {}  # ordered mirror of the conversation
        self._call_items: dict[str, str] = {}  # call_id -> function_call item id
        self._input_partial: dict[str, str] = {}
        self._emitted_calls: set[str] = set()
        self._response: _Response | None = None  # the response in progress
        self._responses: dict[str, _Response] = {}
        self._pending_response: dict[str, Any] | None = None  # response.create during an outage
        self._text_only_retries = 0
        self.connections = 0  # successful connections so far
        self.dropped_audio_chunks = 0

    # -- helpers -------------------------------------------------------------
    def _err(self, text: str) -> str:
        return scrub(text).replace(self._key, "***") if self._key else scrub(text)

    @property
    def response_in_progress(self) -> bool:
        return self._response is not None

    def _session_body(self) -> dict[str, Any]:
        c = self.config
        audio_in: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": RATE}}
        if c.input_transcription:
            audio_in["transcription"] = {"model": self._f.transcription_model}
        if c.turn_detection == "server":
            audio_in["turn_detection"] = {
                "type": "server_vad",
                "create_response": True,
                "interrupt_response": False,
            }
        else:
            audio_in["turn_detection"] = None
        audio_out: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": RATE}}
        if c.voice:
            audio_out["voice"] = c.voice
        body: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": audio_out},
            "tools": [self._tool(t) for t in c.tools],
        }
        if c.instructions:
            body["instructions"] = c.instructions
        if c.tools:
            body["tool_choice"] = "auto"
        return body

    @staticmethod
    def _tool(t: ToolSpec) -> dict[str, Any]:
        return {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
        }

    # -- lifecycle -------------------------------------------------------------
    async def connect(self) -> None:
        """Connect (retrying transient failures); emits Connected, or a fatal error."""
        self._http = aiohttp.ClientSession()
        try:
            ok = await self._connect_with_retry()
        except BaseException as exc:
            if not self._closing:
                await self._close_socket()
                http, self._http = self._http, None
                if http is not None:
                    await http.close()
            if self._closing and not isinstance(exc, asyncio.CancelledError):
                return  # closed while connecting: nothing to report
            raise
        if ok and not self._closing:
            self._task = asyncio.create_task(self._run(), name="openai-realtime-reader")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop.set()
        self._ready = False
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
        await super().close()

    async def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except (TimeoutError, Exception):
                pass

    def _fail(self, message: str, code: str) -> None:
        """End the session for good (no retry)."""
        self._fatal = True
        self._ready = False
        message = self._err(message)
        log.error("openai realtime: %s", message)
        self.emit(ModelError(message=message, code=code, fatal=True))
        self.emit(Disconnected(reason=message, fatal=True))

    async def _connect_with_retry(self) -> bool:
        attempts = max(1, self._f.reconnect_attempts)
        delay = self._f.backoff_base
        last = ""
        for attempt in range(attempts):
            if self._closing:
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
                last = self._err(str(e) or type(e).__name__)
                log.warning(
                    "openai realtime: connection attempt %d/%d failed: %s",
                    attempt + 1, attempts, last,
                )
            if attempt + 1 < attempts:
                try:  # back off; close() ends the wait at once
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return False
                except TimeoutError:
                    pass
                delay = min(delay * 2, self._f.backoff_max)
        self._fail(f"could not connect to the realtime API after {attempts} attempts: {last}",
                   "connect_failed")
        return False

    async def _open_socket(self) -> None:
        assert self._http is not None
        # GA protocol: no "OpenAI-Beta: realtime=v1" header (that would select the beta one).
        headers = {"Authorization": f"Bearer {self._key}"}
        try:
            ws = await self._http.ws_connect(
                self._f.url,
                headers=headers,
                heartbeat=self._f.heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                max_msg_size=64 * 1024 * 1024,
            )
        except aiohttp.WSServerHandshakeError as e:
            status = e.status
            if status in (401, 403):
                raise _Fatal(
                    f"authentication failed ({status}): the realtime API rejected OPENAI_API_KEY",
                    "auth_failed",
                ) from None
            if 400 <= status < 500 and status not in (408, 429):
                raise _Fatal(
                    f"the realtime API refused the connection ({status} {e.message}); "
                    f"check OPENAI_BASE_URL and the model name {self._f.model!r}",
                    "connect_refused",
                ) from None
            raise _Retryable(f"handshake failed ({status} {e.message})") from None
        self._ws = ws
        timeout = self._f.connect_timeout
        # The server speaks first: session.created.
        await self._expect(ws, "session.created", timeout)
        await self._send_now({"type": "session.update", "session": self._session_body()})
        await self._expect(ws, "session.updated", timeout)
        # Restore the conversation so far (after a reconnect).
        restored = 0
        for item in list(self._items.values()):
            body = item.to_create()
            item.live = False
            if item.kind == "function_call" and item.call_id not in self._emitted_calls:
                body = None  # cut off mid-arguments: never called, not restored
            if body is None:
                continue
            await self._send_now({"type": "conversation.item.create", "item": body})
            item.live = True
            restored += 1
        self.connections += 1
        self._ready = True
        if restored:
            log.info("openai realtime: restored %d conversation items", restored)
        self.emit(Connected())
        pending, self._pending_response = self._pending_response, None
        if pending is not None:
            await self._send_now(pending)

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, etype: str, timeout: float) -> None:
        """Read until an event of type ``etype``; errors are fatal, drops retryable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise _Retryable(f"no {etype} from the realtime API within {timeout:g} s")
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
                    f"the realtime API rejected the session: {err.get('message', '')}",
                    str(err.get("code") or "session_rejected"),
                )
            try:
                self._dispatch(ev)
            except Exception as e:  # a malformed event must not stop the connect
                log.warning("openai realtime: bad %s event ignored: %s", t, self._err(repr(e)))

    async def _run(self) -> None:
        """Read events; on a drop, reconnect and restore. Whatever goes wrong
        ends the session with a fatal ModelError + Disconnected, never silently."""
        try:
            await self._run_loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self._closing:
                return
            log.exception("openai realtime: the reader failed")
            await self._close_socket()
            self._fail(f"the model connection failed: {type(e).__name__}: {e}", "internal_error")

    async def _run_loop(self) -> None:
        while not self._closing:
            reason = await self._read_loop()
            if self._closing:
                return
            self._on_drop(reason)
            await self._close_socket()
            if not await self._connect_with_retry():
                return

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
                        try:
                            self._dispatch(ev)
                        except Exception as e:  # a malformed event must not kill the call
                            log.warning("openai realtime: bad %s event ignored: %s",
                                        ev.get("type"), self._err(repr(e)))
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return self._err(f"socket error: {ws.exception()}")
        except (aiohttp.ClientError, OSError) as e:
            return self._err(f"socket error: {e}")
        code = ws.close_code
        return f"socket closed by the server (code {code})"

    def _on_drop(self, reason: str) -> None:
        self._ready = False
        log.warning("openai realtime: connection lost (%s); reconnecting", reason)
        # End what was in flight so the worker's state machine moves on.
        resp, self._response = self._response, None
        if resp is not None:
            for item_id in sorted(resp.open_audio_items):
                self.emit(AudioDone(item_id=item_id, response_id=resp.id))
            self.emit(ResponseDone(response_id=resp.id, status="failed"))
        self._responses.clear()
        for item in self._items.values():
            item.live = item.audio_live = False
        self.emit(ModelError(message=f"model connection lost ({reason}); reconnecting",
                             code="connection_lost", fatal=False))
        self.emit(Disconnected(reason=reason, fatal=False))

    # -- sending ---------------------------------------------------------------
    async def _send_now(self, ev: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise _Retryable("socket closed")
        await ws.send_str(json.dumps(ev))

    async def _send(self, ev: dict[str, Any]) -> bool:
        """Send when connected; False when the socket is down (the reader reconnects)."""
        if not self._ready:
            return False
        try:
            await self._send_now(ev)
            return True
        except (_Retryable, aiohttp.ClientError, ConnectionError, RuntimeError) as e:
            log.info("openai realtime: send of %s failed: %s", ev.get("type"), self._err(str(e)))
            return False

    # -- primitives ------------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray) -> None:
        data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        if not data:
            return
        ok = await self._send({"type": "input_audio_buffer.append",
                               "audio": base64.b64encode(data).decode("ascii")})
        if not ok:
            self.dropped_audio_chunks += 1

    async def commit_input(self) -> None:
        await self._send({"type": "input_audio_buffer.commit"})

    async def clear_input(self) -> None:
        await self._send({"type": "input_audio_buffer.clear"})

    async def send_message(self, role: str, text: str) -> None:
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown role {role!r}")
        item = _Item(id=_new_id(), kind="message", role=role, text=text, live=False)
        self._items[item.id] = item
        body = item.to_create()
        if body is not None:
            item.live = await self._send({"type": "conversation.item.create", "item": body})

    async def function_output(self, call_id: str, output: str) -> None:
        item = _Item(id=_new_id(), kind="function_call_output", call_id=call_id, output=output,
                     live=False)
        self._items[item.id] = item
        item.live = await self._send({"type": "conversation.item.create", "item": item.to_create()})

    async def create_response(self, *, instructions: str | None = None) -> None:
        ev: dict[str, Any] = {"type": "response.create"}
        if instructions:
            ev["response"] = {"instructions": instructions}
        if not await self._send(ev) and not self._closing and not self._fatal:
            self._pending_response = ev  # sent once the connection is back

    async def cancel_response(self) -> None:
        resp = self._response
        if resp is None:
            log.debug("openai realtime: no response in progress, cancel not sent")
            return
        await self._send({"type": "response.cancel", "response_id": resp.id})

    async def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        item = self._items.get(item_id)
        if item is None:
            log.warning("openai realtime: truncate of unknown item %s ignored", item_id)
            return
        received_ms = item.audio_samples * 1000 // RATE
        end_ms = max(0, int(audio_end_ms))
        if end_ms > received_ms:
            log.warning("openai realtime: truncate of %s at %d ms clamped to the %d ms received",
                        item_id, end_ms, received_ms)
            end_ms = received_ms
        if item.audio_samples:
            item.text = _cut_text(item.text, end_ms * RATE / 1000 / item.audio_samples)
        item.truncated = True
        if item.audio_live:
            await self._send({"type": "conversation.item.truncate", "item_id": item_id,
                              "content_index": content_index, "audio_end_ms": end_ms})
        elif self._ready:
            # Restored as text on this connection: replace it with the cut text.
            await self._replace_item(item)

    async def _replace_item(self, item: _Item) -> None:
        ids = list(self._items)
        prev = ids[ids.index(item.id) - 1] if ids.index(item.id) > 0 else "root"
        await self._send({"type": "conversation.item.delete", "item_id": item.id})
        body = item.to_create()
        if body is None:
            del self._items[item.id]
            return
        while prev != "root" and not self._items[prev].live:
            i = ids.index(prev)
            prev = ids[i - 1] if i > 0 else "root"
        ev: dict[str, Any] = {"type": "conversation.item.create", "item": body}
        ev["previous_item_id"] = prev
        item.live = await self._send(ev)

    async def delete_item(self, item_id: str) -> None:
        item = self._items.pop(item_id, None)
        if item is None or not item.live:
            log.debug("openai realtime: item %s not on this connection; delete not sent", item_id)
            return
        await self._send({"type": "conversation.item.delete", "item_id": item_id})

    async def update_session(
        self, *, instructions: str | None = None, tools: list[ToolSpec] | None = None
    ) -> None:
        await super().update_session(instructions=instructions, tools=tools)
        body: dict[str, Any] = {"type": "realtime"}
        if instructions is not None:
            body["instructions"] = instructions
        if tools is not None:
            body["tools"] = [self._tool(t) for t in tools]
            body["tool_choice"] = "auto" if tools else "none"
        await self._send({"type": "session.update", "session": body})

    async def retry_text_only(self, response_id: str) -> bool:
        """Ask again, for audio, after a response that came back as text only.

        Deletes that response's text items and sends ``response.create`` with
        audio output; returns False (and does nothing) once
        ``max_text_only_retries`` is used up.
        """
        if self._text_only_retries >= self._f.max_text_only_retries:
            log.warning("openai realtime: response %s was text only; retries exhausted",
                        response_id)
            return False
        self._text_only_retries += 1
        for item in [i for i in self._items.values()
                     if i.response_id == response_id and i.kind == "message"]:
            await self.delete_item(item.id)
        log.info("openai realtime: response %s was text only; asking again for audio "
                 "(retry %d)", response_id, self._text_only_retries)
        ev = {"type": "response.create", "response": {"output_modalities": ["audio"]}}
        if not await self._send(ev) and not self._closing:
            self._pending_response = ev
        return True

    # -- server events ---------------------------------------------------------
    def _mirror(self, raw: dict[str, Any], response_id: str = "") -> _Item | None:
        """Record a server item (from *.added/created/done) in the mirror."""
        iid = raw.get("id")
        if not iid:
            return None
        item = self._items.get(iid)
        t = raw.get("type")
        if item is None:
            if t == "message":
                item = _Item(id=iid, kind="message", role=str(raw.get("role", "")))
            elif t == "function_call":
                item = _Item(id=iid, kind="function_call")
            elif t == "function_call_output":
                item = _Item(id=iid, kind="function_call_output")
            else:
                return None
            self._items[iid] = item
        item.live = True
        if response_id:
            item.response_id = response_id
        if t == "function_call":
            item.call_id = raw.get("call_id") or item.call_id
            item.name = raw.get("name") or item.name
            item.arguments = raw.get("arguments") or item.arguments
            if item.call_id:
                self._call_items[item.call_id] = iid
        elif t == "function_call_output":
            item.call_id = raw.get("call_id") or item.call_id
            item.output = raw.get("output") or item.output
        elif t == "message" and not item.text:
            for part in raw.get("content") or []:
                text = part.get("text") or part.get("transcript")
                if text:
                    item.text += text
        return item

    def _resp(self, rid: str) -> _Response:
        r = self._responses.get(rid)
        if r is None:
            r = self._responses[rid] = _Response(id=rid)
        return r

    def _dispatch(self, ev: dict[str, Any]) -> None:
        t = ev.get("type", "")
        t = BETA_ALIASES.get(t, t)
        rid = ev.get("response_id", "") or ""
        if t == "response.output_audio.delta":
            pcm = np.frombuffer(base64.b64decode(ev.get("delta", "")), dtype="<i2").astype(np.int16)
            item_id = ev["item_id"]
            item = self._items.get(item_id) or self._mirror(
                {"id": item_id, "type": "message", "role": "assistant"}, rid)
            if item is not None:
                item.audio_samples += len(pcm)
                item.audio_live = True
            r = self._resp(rid)
            r.audio_samples += len(pcm)
            r.audio_items.add(item_id)
            r.open_audio_items.add(item_id)
            self.emit(AudioDelta(item_id=item_id, pcm=pcm, response_id=rid,
                                 content_index=int(ev.get("content_index", 0))))
        elif t == "response.output_audio_transcript.delta":
            item = self._items.get(ev["item_id"])
            if item is not None and not item.truncated:
                item.text += ev.get("delta", "")
            self.emit(OutputTranscriptDelta(item_id=ev["item_id"], text=ev.get("delta", ""),
                                            response_id=rid))
        elif t == "response.output_audio.done":
            self._resp(rid).open_audio_items.discard(ev["item_id"])
            self.emit(AudioDone(item_id=ev["item_id"], response_id=rid))
        elif t == "response.output_audio_transcript.done":
            item = self._items.get(ev["item_id"])
            if item is not None and not item.truncated:
                item.text = ev.get("transcript", item.text)
            self.emit(OutputTranscriptDone(item_id=ev["item_id"], text=ev.get("transcript", ""),
                                           response_id=rid))
        elif t == "response.output_text.delta":
            self._resp(rid).text_seen = True
            item = self._items.get(ev["item_id"])
            if item is not None:
                item.text += ev.get("delta", "")
            self.emit(TextDelta(item_id=ev["item_id"], text=ev.get("delta", ""), response_id=rid))
        elif t == "response.output_text.done":
            self._resp(rid).text_seen = True
            item = self._items.get(ev["item_id"])
            if item is not None:
                item.text = ev.get("text", item.text)
            self.emit(TextDone(item_id=ev["item_id"], text=ev.get("text", ""), response_id=rid))
        elif t == "response.function_call_arguments.done":
            self._function_call(ev.get("call_id", ""), ev.get("name", ""),
                                ev.get("arguments", ""), ev.get("item_id", ""), rid)
        elif t == "response.output_item.added":
            self._mirror(ev.get("item") or {}, rid)
        elif t == "response.output_item.done":
            raw = ev.get("item") or {}
            item = self._mirror(raw, rid)
            if item is not None and item.kind == "function_call" and raw.get("status") == "completed":
                self._function_call(item.call_id, item.name, item.arguments, item.id, rid)
        elif t in ("conversation.item.added", "conversation.item.done"):
            self._mirror(ev.get("item") or {})
        elif t == "conversation.item.deleted":
            item = self._items.get(ev.get("item_id", ""))
            if item is not None and item.live:
                # Our own replace (delete + re-create) keeps the mirror entry.
                item.live = False
        elif t == "conversation.item.truncated":
            pass
        elif t == "input_audio_buffer.speech_started":
            self.emit(SpeechStarted(audio_start_ms=int(ev.get("audio_start_ms", 0)),
                                    item_id=ev.get("item_id", "")))
        elif t == "input_audio_buffer.speech_stopped":
            self.emit(SpeechStopped(audio_end_ms=int(ev.get("audio_end_ms", 0)),
                                    item_id=ev.get("item_id", "")))
        elif t == "input_audio_buffer.committed":
            iid = ev.get("item_id", "")
            if iid and iid not in self._items:
                self._items[iid] = _Item(id=iid, kind="message", role="user")
            self.emit(InputCommitted(item_id=iid))
        elif t == "conversation.item.input_audio_transcription.delta":
            iid = ev.get("item_id", "")
            text = self._input_partial.get(iid, "") + (ev.get("delta") or "")
            self._input_partial[iid] = text
            self.emit(InputTranscript(item_id=iid, text=text, final=False))
        elif t == "conversation.item.input_audio_transcription.completed":
            iid = ev.get("item_id", "")
            self._input_partial.pop(iid, None)
            text = ev.get("transcript", "") or ""
            item = self._items.get(iid)
            if item is not None:
                item.text = text
            self.emit(InputTranscript(item_id=iid, text=text, final=True))
        elif t == "conversation.item.input_audio_transcription.failed":
            err = ev.get("error") or {}
            self._input_partial.pop(ev.get("item_id", ""), None)
            log.warning("openai realtime: input transcription failed for %s: %s",
                        ev.get("item_id"), self._err(str(err.get("message", ""))))
        elif t == "response.created":
            resp = ev.get("response") or {}
            r = self._resp(resp.get("id", ""))
            self._response = r
            self.emit(ResponseCreated(response_id=r.id))
        elif t == "response.done":
            self._response_done(ev.get("response") or {})
        elif t == "error":
            self._error(ev.get("error") or {})
        elif t in ("session.created", "session.updated"):
            log.debug("openai realtime: %s", t)
        elif t == "rate_limits.updated":
            log.debug("openai realtime: rate limits %s", ev.get("rate_limits"))
        else:
            log.debug("openai realtime: event %s ignored", t)

    def _function_call(self, call_id: str, name: str, arguments: str, item_id: str,
                       rid: str) -> None:
        if not call_id or call_id in self._emitted_calls:
            return
        self._emitted_calls.add(call_id)
        item = self._items.get(item_id)
        if item is not None:
            item.call_id, item.name, item.arguments = call_id, name, arguments
            self._call_items[call_id] = item_id
        self.emit(FunctionCall(call_id=call_id, name=name, arguments=arguments,
                               item_id=item_id, response_id=rid))

    def _response_done(self, resp: dict[str, Any]) -> None:
        rid = resp.get("id", "") or ""
        r = self._responses.pop(rid, None) or _Response(id=rid)
        if self._response is not None and self._response.id == rid:
            self._response = None
        status = resp.get("status") or "completed"
        text_in_output = False
        for raw in resp.get("output") or []:
            item = self._mirror(raw, rid)
            if raw.get("type") == "message":
                for part in raw.get("content") or []:
                    if part.get("type") in ("output_text", "text") and part.get("text"):
                        text_in_output = True
            if item is not None and raw.get("type") == "function_call" and status == "completed":
                self._function_call(item.call_id, item.name, item.arguments, item.id, rid)
        for item_id in sorted(r.open_audio_items):
            self.emit(AudioDone(item_id=item_id, response_id=rid))
        text_only = r.audio_samples == 0 and (r.text_seen or text_in_output)
        if text_only:
            log.warning("openai realtime: response %s came back as text only", rid)
        elif r.audio_samples:
            self._text_only_retries = 0
        if status == "failed":
            err = ((resp.get("status_details") or {}).get("error") or {})
            log.warning("openai realtime: response %s failed: %s", rid,
                        self._err(str(err.get("message", ""))))
        usage = resp.get("usage")
        self.emit(ResponseDone(response_id=rid, status=status, text_only=text_only,
                               usage=usage if isinstance(usage, dict) else None))

    def _error(self, err: dict[str, Any]) -> None:
        code = str(err.get("code") or "")
        message = self._err(str(err.get("message") or "error"))
        if code == "response_cancel_not_active":
            log.info("openai realtime: cancel raced the end of the response (ignored)")
            return
        log.warning("openai realtime: server error %s: %s", code or err.get("type"), message)
        self.emit(ModelError(message=message, code=code, fatal=False))
