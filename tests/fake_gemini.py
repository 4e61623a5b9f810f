"""A protocol-faithful fake of Google's Gemini Live (``BidiGenerateContent``) WebSocket for tests.

An aiohttp server on an ephemeral loopback port; ``base_url`` is what
``GEMINI_BASE_URL`` names. It

* validates every client message against ``google.genai.types.LiveClientMessage``
  (the SDK's models forbid unknown fields), and the rules of the wire format:
  exactly one message kind per frame, camelCase keys (outside free-form JSON:
  schemas, arguments, responses), ``setup`` first and once, a ``models/``
  model name, caller audio as ``audio/pcm;rate=16000``, tool responses only
  for calls it made; a violation closes nothing but is recorded (``violations``);
* builds every server message through ``LiveServerMessage`` (dumped by alias,
  so they are valid and camelCase) and sends them in binary frames, as the
  real server does;
* behaves like the model: energy VAD on the caller's audio, input
  transcription, a reply (a tone at 24 kHz in ``modelTurn`` parts with
  ``outputTranscription``, then ``generationComplete``/``turnComplete``),
  ``interrupted`` (and the rest discarded) when the caller talks over it,
  function calls, session resumption handles, a 1007 close for a wrong key,
  dropped connections (1011) mid-reply.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from google.genai import types

from tests.fake_realtime import tone

IN_RATE = 16000
OUT_RATE = 24000
BIDI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
_FREE_FORM = ("parametersJsonSchema", "args", "response", "parameters")


def _snake_keys(obj: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "_" in k:
                out.append(f"{path}.{k}")
            if k not in _FREE_FORM:
                out += _snake_keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _snake_keys(v, f"{path}[{i}]")
    return out


def validate_client_message(raw: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(message, None) when ``raw`` is a valid Live client message, else (None, why)."""
    try:
        types.LiveClientMessage.model_validate_json(raw)
    except ValueError as e:
        return None, str(e).replace("\n", " | ")[:600]
    msg = json.loads(raw)
    if not isinstance(msg, dict) or len(msg) != 1:
        return None, f"exactly one message kind per frame, got {list(msg) if isinstance(msg, dict) else msg!r}"
    snake = _snake_keys(msg)
    if snake:
        return None, f"snake_case key(s) {', '.join(snake)}"
    return msg, None


def server_message(**fields: Any) -> str:
    """A server message built through the SDK's model (camelCase keys in, by alias out)."""
    return json.dumps(types.LiveServerMessage.model_validate_json(json.dumps(fields)).model_dump(
        mode="json", by_alias=True, exclude_none=True))


class _Closed(Exception):
    pass


class FakeGeminiConnection:
    def __init__(self, server: FakeGeminiServer, index: int, ws: web.WebSocketResponse, key_ok: bool) -> None:
        self.server = server
        self.index = index
        self.ws = ws
        self.key_ok = key_ok
        self.setup: dict[str, Any] | None = None
        self.messages: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self.reply: asyncio.Task[None] | None = None
        self.open_calls: dict[str, str] = {}
        self.closed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._carry = np.zeros(0, np.int16)
        self._speaking = False
        self._silence_ms = 0

    async def send(self, **fields: Any) -> None:
        data = server_message(**fields)
        async with self._lock:
            if self.ws.closed:
                raise _Closed()
            await self.ws.send_bytes(data.encode())
        self.sent.append(data)
        await self.server._notify()

    def violation(self, what: str) -> None:
        self.server.violations.append(f"conn {self.index}: {what}")

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self.handle(msg.data)
        except (_Closed, ConnectionError):
            pass
        finally:
            if self.reply is not None:
                self.reply.cancel()
            self.closed.set()
            await self.server._notify()

    async def handle(self, raw: str | bytes) -> None:
        msg, why = validate_client_message(raw)
        if msg is None:
            self.violation(f"invalid message: {why}")
            return
        self.messages.append(msg)
        self.server.messages.append(msg)
        await self.server._notify()
        kind = next(iter(msg))
        if kind == "setup":
            await self.on_setup(msg["setup"])
        elif self.setup is None:
            self.violation(f"{kind} before setup")
        else:
            await getattr(self, "on_" + kind)(msg[kind])

    async def on_setup(self, setup: dict[str, Any]) -> None:
        if self.setup is not None:
            self.violation("a second setup")
            return
        if not self.key_ok:
            await self.ws.close(code=1007, message=b"API key not valid. Please pass a valid API key.")
            return
        if not str(setup.get("model", "")).startswith("models/"):
            self.violation(f"model must be models/...: {setup.get('model')!r}")
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None:
            if handle not in self.server.handles:
                self.violation(f"unknown resumption handle {handle!r}")
            self.server.resumed.append(handle)
        self.setup = setup
        self.server.setups.append(setup)
        await self.send(setupComplete={})

    # -- input ------------------------------------------------------------------------------
    async def on_realtimeInput(self, ri: dict[str, Any]) -> None:
        audio = ri.get("audio")
        if audio is None:
            return
        if audio.get("mimeType") != f"audio/pcm;rate={IN_RATE}":
            self.violation(f"audio mimeType {audio.get('mimeType')!r}")
            return
        pcm = np.frombuffer(base64.b64decode(audio["data"]), "<i2").astype(np.int16)
        self.server.audio_in += len(pcm)
        await self._vad(pcm)

    async def _vad(self, pcm: np.ndarray) -> None:
        frame = IN_RATE // 100
        data = np.concatenate([self._carry, pcm])
        n = len(data) // frame
        self._carry = data[n * frame:]
        if n == 0:
            return
        rms = np.sqrt((data[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
        for level in rms:
            if level >= self.server.vad_threshold:
                self._silence_ms = 0
                if not self._speaking:
                    self._speaking = True
                    if self.reply is not None and not self.reply.done():
                        self.reply.cancel()  # the rest of the turn is discarded
                        self.server.interruptions += 1
                        await self.send(serverContent={"interrupted": True})
            elif self._speaking:
                self._silence_ms += 10
                if self._silence_ms >= self.server.vad_silence_ms:
                    self._speaking = False
                    self._silence_ms = 0
                    await self._turn_ended()

    async def _turn_ended(self) -> None:
        self.server.turns += 1
        n = self.server.turns
        if self.setup is not None and "inputAudioTranscription" in self.setup:
            text = self.server.transcript_for(n)
            half = len(text) // 2
            for part in (text[:half], text[half:]):
                await self.send(serverContent={"inputTranscription": {"text": part}})
        if self.server.tool_calls:
            name, args = self.server.tool_calls.pop(0)
            call_id = f"call_{next(self.server._ids)}"
            self.open_calls[call_id] = name
            await self.send(toolCall={"functionCalls": [{"id": call_id, "name": name, "args": args}]})
            return
        self._start_reply(self.server.reply_text(n))

    def _start_reply(self, text: str) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
        self.server.reply_count += 1
        self.reply = asyncio.get_running_loop().create_task(self._speak(text, self.server.reply_count))

    async def _speak(self, text: str, n: int) -> None:
        srv = self.server
        pcm = srv.reply_audio(n) if srv.reply_audio is not None else tone(srv.reply_ms)
        step = srv.delta_ms * OUT_RATE // 1000
        words = text.split(" ")
        chunks = max(1, -(-len(pcm) // step))
        per = -(-len(words) // chunks)
        try:
            for i in range(chunks):
                if self.index in srv.drop_connections and i == srv.drop_after_deltas:
                    srv.drop_connections.discard(self.index)
                    srv.drops += 1
                    await self.ws.close(code=1011, message=b"Internal error encountered.")
                    return
                chunk = pcm[i * step:(i + 1) * step]
                content: dict[str, Any] = {"modelTurn": {"parts": [{"inlineData": {
                    "mimeType": f"audio/pcm;rate={OUT_RATE}",
                    "data": base64.b64encode(chunk.astype("<i2").tobytes()).decode("ascii")}}]}}
                part = " ".join(words[i * per:(i + 1) * per])
                if part:
                    content["outputTranscription"] = {"text": (part + " ") if (i + 1) * per < len(words) else part}
                await self.send(serverContent=content)
                srv.audio_sent += len(chunk)
                if srv.speed > 0:
                    await asyncio.sleep(srv.delta_ms / 1000 / srv.speed)
            await self.send(serverContent={"generationComplete": True})
            await self.send(serverContent={"turnComplete": True})
            srv.replies.append(text)
            if self.setup is not None and "sessionResumption" in self.setup:
                handle = f"handle_{next(srv._ids)}"
                srv.handles.add(handle)
                await self.send(sessionResumptionUpdate={"newHandle": handle, "resumable": True})
        except (_Closed, ConnectionError):
            pass

    # -- content and tools -----------------------------------------------------------------------
    async def on_clientContent(self, cc: dict[str, Any]) -> None:
        self.server.client_turns.extend(cc.get("turns") or [])
        if cc.get("turnComplete"):
            self._start_reply(self.server.reply_text(0))

    async def on_toolResponse(self, tr: dict[str, Any]) -> None:
        for fr in tr.get("functionResponses") or []:
            name = self.open_calls.pop(fr.get("id", ""), None)
            if name is None or name != fr.get("name"):
                self.violation(f"toolResponse for unknown call {fr.get('id')!r}")
                continue
            self.server.tool_responses.append(fr)
            self._start_reply(f"The tool said {json.dumps(fr.get('response'))}")

    async def on_toolCallCancellation(self, _: dict[str, Any]) -> None:
        self.violation("toolCallCancellation is a server message")


class FakeGeminiServer:
    """The fake Gemini Live API. ``async with FakeGeminiServer() as fake: fake.base_url``."""

    def __init__(self, api_key: str = "gemini-test-key-0123456789", *, reply_ms: int = 1000, delta_ms: int = 100,
                 speed: float = 20.0, vad_threshold: float = 800.0, vad_silence_ms: int = 500) -> None:
        self.api_key = api_key
        self.reply_ms = reply_ms
        self.delta_ms = delta_ms
        self.speed = speed
        self.vad_threshold = vad_threshold
        self.vad_silence_ms = vad_silence_ms
        # controls
        self.handshake_statuses: list[int] = []
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []  # made after the next turns
        self.drop_connections: set[int] = set()
        self.drop_after_deltas = 3
        self.reply_audio: Callable[[int], np.ndarray] | None = None
        self.reply_text: Callable[[int], str] = lambda n: f"This is Gemini reply number {n}."
        self.transcript_for: Callable[[int], str] = lambda n: f"caller turn {n}"
        # records
        self.messages: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections: list[FakeGeminiConnection] = []
        self.handshakes: list[int] = []
        self.key_headers: list[str] = []
        self.setups: list[dict[str, Any]] = []
        self.handles: set[str] = set()
        self.resumed: list[str] = []
        self.client_turns: list[dict[str, Any]] = []
        self.tool_responses: list[dict[str, Any]] = []
        self.replies: list[str] = []
        self.turns = 0
        self.reply_count = 0
        self.interruptions = 0
        self.audio_in = 0
        self.audio_sent = 0
        self.drops = 0
        self._ids = itertools.count(1)
        self._cond: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeGeminiServer:
        self._cond = asyncio.Condition()
        app = web.Application()
        app.router.add_get(BIDI_PATH, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for c in self.connections:
            if not c.ws.closed:
                await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _notify(self) -> None:
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        assert self._cond is not None
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(pred), timeout)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m[kind] for m in self.messages if kind in m]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key", "")
        self.key_headers.append(key)
        if request.query_string:
            self.violations.append("the key (or anything) on the URL query")
        if self.handshake_statuses:
            status = self.handshake_statuses.pop(0)
            self.handshakes.append(status)
            return web.json_response({"error": {"code": status, "message": "unavailable"}}, status=status)
        self.handshakes.append(101)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = FakeGeminiConnection(self, len(self.connections), ws, key_ok=key == self.api_key)
        self.connections.append(conn)
        await conn.run()
        return ws
