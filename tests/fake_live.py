"""A protocol-faithful fake of OpenAI's GPT-Live primary WebSocket for tests.

An aiohttp WebSocket server on an ephemeral loopback port at
``http://127.0.0.1:<port>/v1`` (``OPENAI_BASE_URL``), serving
``/v1/live/sessions``. It

* validates every client event strictly against the members of
  ``openai.types.live.ClientEvent`` (strict JSON, a discriminated union, no
  unknown fields anywhere) and the rules the types document: ``session.start``
  first and once, nothing else before it, no query on the URL, ``delegation_id``
  present (nullable) on every ``*.append`` and naming a client delegation that
  exists and is still open;
* builds every server event with the package's server event models, so they
  are valid too (``sent`` records them);
* behaves like a full-duplex model: energy VAD on the caller's audio, input
  transcript deltas, and after the caller's turn a reply (a tone and transcript
  deltas, faster than real time, or live at ``speed=1``); caller speech
  longer than ``backchannel_ms`` during a reply stops it (the model yields),
  a shorter burst ("mm-hm") neither stops it nor makes a turn; a ``client`` delegation after the next turn(s), answered by
  ``session.commentary.append``; errors, dropped connections, a 401 for a
  wrong key, ``session.closed`` on ``session.close``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args

import numpy as np
import pydantic
from aiohttp import WSMsgType, web
from openai.types.live import ClientEvent
from openai.types.live.commentary_appended_event import CommentaryAppendedEvent
from openai.types.live.delegation_created_event import DelegationCreatedEvent
from openai.types.live.error_event import ErrorEvent
from openai.types.live.input_transcript_delta_event import InputTranscriptDeltaEvent
from openai.types.live.instructions_appended_event import InstructionsAppendedEvent
from openai.types.live.output_audio_delta_event import OutputAudioDeltaEvent
from openai.types.live.output_transcript_delta_event import OutputTranscriptDeltaEvent
from openai.types.live.session_closed_event import SessionClosedEvent
from openai.types.live.session_started_event import SessionStartedEvent
from openai.types.live.thinking_appended_event import ThinkingAppendedEvent

from tests.fake_realtime import _extras, tone

RATE = 24000

_MEMBERS = get_args(get_args(ClientEvent)[0])
CLIENT_EVENT_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    Annotated[Union[_MEMBERS], pydantic.Field(discriminator="type")]  # noqa: UP007 -- _MEMBERS is a runtime tuple of types; `|` cannot spread it
)
_APPENDS = ("session.instructions.append", "session.thinking.append", "session.commentary.append")


def validate_client_event(raw: str) -> tuple[dict[str, Any] | None, str | None]:
    """(event, None) when ``raw`` is a valid GPT-Live client event, else (None, why)."""
    try:
        model = CLIENT_EVENT_ADAPTER.validate_json(raw, strict=True)
    except pydantic.ValidationError as e:
        return None, str(e).replace("\n", " | ")[:600]
    extras = _extras(model, model.type)
    if extras:
        return None, f"unknown field(s) {', '.join(extras)}"
    ev = json.loads(raw)
    if ev["type"] in _APPENDS and "delegation_id" not in ev:
        return None, "delegation_id is required (null for general context)"
    return ev, None


class _Dropped(Exception):
    pass


class FakeLiveConnection:
    """One primary WebSocket: its session, timeline and VAD state."""

    def __init__(self, server: FakeLiveServer, index: int, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.index = index
        self.ws = ws
        self.session: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.in_samples = 0
        self.reply: asyncio.Task[None] | None = None
        self.stopped_replies = 0
        self.open_delegations: set[str] = set()
        self.closed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._carry = np.zeros(0, np.int16)
        self._speaking = False
        self._silence_ms = 0
        self._turn_ms = 0
        self._voiced_ms = 0
        self._frames = 0  # 10 ms VAD frames of caller audio seen
        self._turns = 0

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.server._ids):06d}{self.index:02d}fake"

    def now_ms(self) -> int:
        """The session timeline: the caller's audio received so far."""
        return self.in_samples * 1000 // RATE

    async def send(self, cls: type[pydantic.BaseModel], **fields: Any) -> None:
        if "event_id" in cls.model_fields:
            fields = {"event_id": self._id("event"), **fields}
        ev = cls(**fields).model_dump(mode="json", exclude_unset=True)
        async with self._lock:
            if self.ws.closed:
                raise _Dropped()
            await self.ws.send_str(json.dumps(ev))
        self.sent.append(ev)
        await self.server._notify()

    async def error(self, message: str, code: str, client_event: dict[str, Any] | None,
                    violation: bool = True) -> None:
        if violation:
            self.server.violations.append(f"conn {self.index}: {(client_event or {}).get('type', '?')}: {message}")
        err: dict[str, Any] = {"message": message, "type": "invalid_request_error", "code": code}
        if client_event and client_event.get("event_id"):
            err["client_event_id"] = client_event["event_id"]
        await self.send(ErrorEvent, type="error", error=err)

    def resource(self) -> dict[str, Any]:
        s = dict(self.session or {})
        return {"id": f"sess_fake{self.index}", "expires_at": int(time.time()) + 3600, "status": "active", **s}

    # -- main loop --------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.server.violations.append(f"conn {self.index}: binary frame")
        except (_Dropped, ConnectionError):
            pass
        finally:
            if self.reply is not None:
                self.reply.cancel()
            self.closed.set()
            await self.server._notify()

    async def handle(self, raw: str) -> None:
        ev, why = validate_client_event(raw)
        if ev is None:
            await self.error(f"Invalid client event: {why}", "invalid_event", None)
            return
        self.events.append(ev)
        self.server.events.append(ev)
        await self.server._notify()
        if ev["type"] == "session.start":
            if self.session is not None:
                await self.error("session.start was already sent", "session_already_started", ev)
                return
            await self.on_start(ev)
            return
        if self.session is None:
            await self.error(f"{ev['type']} before session.start", "session_not_started", ev)
            return
        handler = getattr(self, "on_" + ev["type"].replace(".", "_"), None)
        if handler is None:
            await self.error(f"{ev['type']} is not supported by the fake", "unsupported", ev, violation=False)
            return
        await handler(ev)

    async def on_start(self, ev: dict[str, Any]) -> None:
        s = ev["session"]
        fmt = (s.get("audio") or {}).get("format")
        if fmt is not None and fmt != {"type": "audio/pcm", "rate": RATE}:
            await self.error(f"the fake expects audio/pcm at 24 kHz, got {fmt}", "invalid_value", ev)
            return
        if len(s.get("input") or []) > 128:
            await self.error("at most 128 input messages", "invalid_value", ev)
            return
        self.session = s
        self.server.starts.append(s)
        await self.send(SessionStartedEvent, type="session.started", session=self.resource())

    # -- input --------------------------------------------------------------------------
    async def on_session_input_audio_append(self, ev: dict[str, Any]) -> None:
        data = base64.b64decode(ev["audio"], validate=True)
        if len(data) % 2:
            await self.error("odd number of bytes for pcm16 audio", "invalid_value", ev)
            return
        pcm = np.frombuffer(data, "<i2").astype(np.int16)
        self.in_samples += len(pcm)
        await self._vad(pcm)

    async def _vad(self, pcm: np.ndarray) -> None:
        frame = RATE // 100
        data = np.concatenate([self._carry, pcm])
        n = len(data) // frame
        self._carry = data[n * frame:]
        if n == 0:
            return
        rms = np.sqrt((data[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
        for level in rms:
            self._frames += 1
            if level >= self.server.vad_threshold:
                self._silence_ms = 0
                if not self._speaking:
                    self._speaking = True
                    self._turn_ms = self._frames * 10 - 10
                self._voiced_ms = self._frames * 10 - self._turn_ms
                if self._voiced_ms >= self.server.backchannel_ms:
                    self._yield()
            elif self._speaking:
                self._silence_ms += 10
                if self._silence_ms >= self.server.vad_silence_ms:
                    self._speaking = False
                    self._silence_ms = 0
                    if self._voiced_ms < self.server.backchannel_ms:
                        self.server.backchannels += 1  # "mm-hm": not a turn, the model talks on
                    else:
                        await self._turn_ended()

    def _yield(self) -> None:
        """Full duplex: the caller really talks (longer than a backchannel): the model stops."""
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
            self.stopped_replies += 1
            self.server.stopped_replies += 1
            self.server.stop_times.append(time.monotonic())

    async def _turn_ended(self) -> None:
        self._turns += 1
        self.server.turns += 1
        text = self.server.transcript_for(self._turns)
        start, end = min(self._turn_ms, self.now_ms()), self.now_ms()
        half = len(text) // 2
        for i, delta in enumerate((text[:half], text[half:])):
            await self.send(InputTranscriptDeltaEvent, type="session.input_transcript.delta", delta=delta,
                            start_ms=start + i * (end - start) // 2, end_ms=start + (i + 1) * (end - start) // 2)
        if self.server.end_reason:
            await self.send(SessionClosedEvent, type="session.closed", reason=self.server.end_reason,
                            session=self.resource(), usage={"seconds": self.now_ms() / 1000})
            await self.ws.close()
            return
        if self.server.errors:
            code, message = self.server.errors.pop(0)
            await self.send(ErrorEvent, type="error",
                            error={"message": message, "type": "server_error", "code": code})
            return
        if self.server.delegations:
            self.server.delegations -= 1
            did = self._id("deleg")
            self.open_delegations.add(did)
            await self.send(DelegationCreatedEvent, type="session.delegation.created", offset_ms=end,
                            delegation={"id": did, "target": "client", "type": "delegation"})
            return
        self._start_reply(self.server.reply_text(self._turns))

    def _start_reply(self, text: str) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
        self.server.reply_count += 1
        self.reply = asyncio.get_running_loop().create_task(self._speak(text, self.server.reply_count))

    async def _speak(self, text: str, n: int) -> None:
        """Stream reply ``n``: audio deltas with transcript deltas, faster than real time."""
        srv = self.server
        pcm = srv.reply_audio(n) if srv.reply_audio is not None else tone(srv.reply_ms)
        step = srv.delta_ms * RATE // 1000
        words = text.split(" ")
        chunks = max(1, -(-len(pcm) // step))
        per = -(-len(words) // chunks)
        t_ms = self.now_ms()
        try:
            for i in range(chunks):
                if self.index in srv.drop_connections and i == srv.drop_after_deltas:
                    srv.drop_connections.discard(self.index)
                    srv.drops += 1
                    await self.ws.close()
                    return
                part = " ".join(words[i * per:(i + 1) * per])
                if part:
                    await self.send(OutputTranscriptDeltaEvent, type="session.output_transcript.delta",
                                    delta=(part + " ") if (i + 1) * per < len(words) else part,
                                    start_ms=t_ms, end_ms=t_ms + srv.delta_ms)
                chunk = pcm[i * step:(i + 1) * step]
                await self.send(OutputAudioDeltaEvent, type="session.output_audio.delta",
                                delta=base64.b64encode(chunk.astype("<i2").tobytes()).decode("ascii"))
                srv.audio_sent += len(chunk)
                t_ms += srv.delta_ms
                if srv.speed > 0:
                    await asyncio.sleep(srv.delta_ms / 1000 / srv.speed)
            srv.replies.append(text)
        except (_Dropped, ConnectionError):
            pass

    # -- context ----------------------------------------------------------------------------
    async def _appended(self, ev: dict[str, Any], cls: type[pydantic.BaseModel], etype: str) -> bool:
        did = ev.get("delegation_id")
        if did is not None and did not in self.open_delegations:
            await self.error(f"unknown delegation_id {did!r}", "invalid_value", ev)
            return False
        t = self.now_ms()
        fields: dict[str, Any] = {"type": etype, "start_ms": t, "end_ms": t}
        if ev.get("event_id"):
            fields["client_event_id"] = ev["event_id"]
        await self.send(cls, **fields)
        return True

    async def on_session_instructions_append(self, ev: dict[str, Any]) -> None:
        if await self._appended(ev, InstructionsAppendedEvent, "session.instructions.appended"):
            self.server.instructions.append(ev["content"])

    async def on_session_thinking_append(self, ev: dict[str, Any]) -> None:
        await self._appended(ev, ThinkingAppendedEvent, "session.thinking.appended")

    async def on_session_commentary_append(self, ev: dict[str, Any]) -> None:
        if not await self._appended(ev, CommentaryAppendedEvent, "session.commentary.appended"):
            return
        did = ev.get("delegation_id")
        if did is not None:
            self.open_delegations.discard(did)
            self.server.commentaries.append((did, ev["content"]))
        self._start_reply(f"Here is what I found: {ev['content']}")

    async def on_session_close(self, ev: dict[str, Any]) -> None:
        await self.send(SessionClosedEvent, type="session.closed", reason="close_requested",
                        session=self.resource(), usage={"seconds": self.now_ms() / 1000})
        await self.ws.close()


class FakeLiveServer:
    """The fake GPT-Live API. ``async with FakeLiveServer() as fake: fake.base_url``."""

    def __init__(self, api_key: str = "sk-test-live-key-0123456789", *, reply_ms: int = 1000,
                 delta_ms: int = 100, speed: float = 20.0, vad_threshold: float = 800.0,
                 vad_silence_ms: int = 500, backchannel_ms: int = 250) -> None:
        self.api_key = api_key
        self.reply_ms = reply_ms
        self.delta_ms = delta_ms
        self.speed = speed
        self.vad_threshold = vad_threshold
        self.vad_silence_ms = vad_silence_ms
        self.backchannel_ms = backchannel_ms  # shorter caller bursts are backchannels: no yield, no turn
        # controls
        self.handshake_statuses: list[int] = []
        self.delegations = 0  # the next N turns delegate to the client instead of answering
        self.errors: list[tuple[str, str]] = []  # (code, message) sent instead of the next replies
        self.drop_connections: set[int] = set()  # connection indexes dropped mid-reply
        self.drop_after_deltas = 3
        self.end_reason = ""  # e.g. "expired": the next turn ends the session with session.closed
        self.reply_audio: Callable[[int], np.ndarray] | None = None  # reply n -> pcm (default: a tone)
        self.reply_text: Callable[[int], str] = lambda n: f"This is reply number {n} from the fake live model."
        self.transcript_for: Callable[[int], str] = lambda n: f"caller turn {n}"
        # records
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections: list[FakeLiveConnection] = []
        self.handshakes: list[int] = []
        self.auth_headers: list[str] = []
        self.starts: list[dict[str, Any]] = []
        self.instructions: list[str] = []
        self.commentaries: list[tuple[str, str]] = []
        self.replies: list[str] = []
        self.turns = 0
        self.reply_count = 0
        self.stopped_replies = 0
        self.stop_times: list[float] = []  # monotonic times the model yielded
        self.backchannels = 0
        self.audio_sent = 0
        self.drops = 0
        self._ids = itertools.count(1)
        self._cond: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeLiveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        self._cond = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/v1/live/sessions", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for c in self.connections:
            if not c.ws.closed:
                await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _notify(self) -> None:
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        assert self._cond is not None
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(pred), timeout)

    def client_events(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == etype]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.auth_headers.append(auth)
        if request.query_string:
            self.violations.append(f"query on the URL: {request.query_string}")
        if self.handshake_statuses:
            status = self.handshake_statuses.pop(0)
            self.handshakes.append(status)
            await self._notify()
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=status)
        if auth != f"Bearer {self.api_key}":
            self.handshakes.append(401)
            await self._notify()
            return web.json_response({"error": {
                "message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}.",
                "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        self.handshakes.append(101)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = FakeLiveConnection(self, len(self.connections), ws)
        self.connections.append(conn)
        await conn.run()
        return ws
