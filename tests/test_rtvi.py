"""RTVI 2.1 over a real aiortc data channel, against a real CallSession.

Two RTCPeerConnections talk over loopback: the "client" opens the ``chat``
channel as Pipecat's SmallWebRTC transport does; the "server" side wires it
to :class:`worker.rtvi.RTVIHandler` on a :class:`worker.call.CallSession`
with the echo model. A pump task plays the transport's part for audio: it
feeds the call 20 ms caller frames (silence, or a speech WAV) and reads the
playout buffer 20 ms at a time, faster than real time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from v2v.media.playout import PlayoutBuffer
from v2v.worker import rtvi as rtvi_mod
from v2v.worker.call import CallConfig, CallSession
from v2v.worker.models.base import (
    FunctionCall,
    ModelError,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    TextDelta,
    TextDone,
)
from v2v.worker.models.echo import EchoModelFactory, EchoSession
from v2v.worker.rtvi import ClientMessageError, ClientRequest, RTVIHandler
from v2v.worker.rtvi_messages import BotOutputTracker, ProtocolError, parse_frame
from v2v.worker.tools import ToolRegistry
from v2v.worker.wavcall import read_wav

FIXTURES = Path(__file__).parent / "fixtures"
IN_RATE = 48000
FRAME = IN_RATE // 50  # 20 ms
STEP_S = 0.01  # the pump runs 2x faster than real time
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------
# Test models (real ModelSession implementations)
# --------------------------------------------------------------------------

_ids = itertools.count(1)


class ToolEchoSession(EchoSession):
    """The echo model, plus, for a user text: ``call NAME {json}`` calls
    function NAME with those arguments; ``write WORDS`` answers WORDS as text
    deltas; ``fail-soft`` reports a non-fatal model error."""

    async def create_response(self, *, instructions: str | None = None) -> None:
        text = self._reply_text
        if text and text.startswith("call "):
            parts = text.split(" ", 2)
            self._reply_text = None
            n = next(_ids)
            self.calls.append(("create_response", instructions))
            self.emit(ResponseCreated(f"tool_resp_{n}"))
            self.emit(FunctionCall(f"tc_{n}", parts[1], parts[2] if len(parts) > 2 else "{}"))
            self.emit(ResponseDone(f"tool_resp_{n}"))
            return
        if text and text.startswith("fail-soft"):
            self._reply_text = None
            self.emit(ModelError("rate limited, retrying", code="rate_limit", fatal=False))
            return
        if text and text.startswith("write "):
            self._reply_text = None
            n = next(_ids)
            self.emit(ResponseCreated(f"text_resp_{n}"))
            for word in text[6:].split(" "):
                self.emit(TextDelta(f"text_item_{n}", word + " ", f"text_resp_{n}"))
            self.emit(TextDone(f"text_item_{n}", text[6:], f"text_resp_{n}"))
            self.emit(ResponseDone(f"text_resp_{n}"))
            return
        await super().create_response(instructions=instructions)


class ToolEchoFactory(EchoModelFactory):
    def open(self, config: SessionConfig) -> ToolEchoSession:
        return ToolEchoSession(config)


class BrokenSession(EchoSession):
    async def connect(self) -> None:
        raise ConnectionRefusedError("no model here")


class BrokenFactory(EchoModelFactory):
    def open(self, config: SessionConfig) -> BrokenSession:
        return BrokenSession(config)


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------


class Harness:
    def __init__(self, factory: Any = None, tools: ToolRegistry | None = None,
                 on_hangup: Any = "record", **handler_kw: Any) -> None:
        self.playout = PlayoutBuffer(24000)
        self.call = CallSession("rtvi-test", factory or EchoModelFactory(), CallConfig(),
                                self.playout, tools)
        self.call.input_rate = IN_RATE
        self.hangups: list[str] = []
        self._on_hangup = self._record_hangup if on_hangup == "record" else on_hangup
        self._handler_kw = handler_kw
        self.handler: RTVIHandler | None = None
        self.received: list[Any] = []  # dicts (JSON) or raw strings
        self._new = asyncio.Event()
        self._audio: list[np.ndarray] = []
        self._pump: asyncio.Task | None = None
        self.pc_client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc_server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel: Any = None

    async def _record_hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self._new.set()

    async def open(self, start_call: bool = True) -> Harness:
        server_ready = asyncio.Event()

        @self.pc_server.on("datachannel")
        def on_datachannel(ch: Any) -> None:
            self.handler = RTVIHandler(self.call, ch.send, self._on_hangup, **self._handler_kw)
            ch.on("message", self.handler.handle)
            server_ready.set()

        self.channel = self.pc_client.createDataChannel("chat", ordered=True)
        opened = asyncio.Event()
        self.channel.on("open", opened.set)

        @self.channel.on("message")
        def on_message(msg: Any) -> None:
            try:
                self.received.append(json.loads(msg))
            except (ValueError, TypeError):
                self.received.append(msg)
            self._new.set()

        offer = await self.pc_client.createOffer()
        await self.pc_client.setLocalDescription(offer)
        await self.pc_server.setRemoteDescription(self.pc_client.localDescription)
        answer = await self.pc_server.createAnswer()
        await self.pc_server.setLocalDescription(answer)
        await self.pc_client.setRemoteDescription(self.pc_server.localDescription)
        await asyncio.wait_for(asyncio.gather(opened.wait(), server_ready.wait()), 10)
        if start_call:
            await self.start_call()
        return self

    async def start_call(self) -> None:
        await self.call.start()
        self._pump = asyncio.ensure_future(self._run_pump())

    async def _run_pump(self) -> None:
        """The transport's part: caller frames in, playout frames out."""
        loop = asyncio.get_running_loop()
        t0, step = loop.time(), 0
        silence = np.zeros(FRAME, np.int16)
        while not self.call.ended.is_set():
            frame = self._audio.pop(0) if self._audio else silence
            await self.call.feed(frame)
            self.playout.read(480)
            step += 1
            await asyncio.sleep(max(0.0, t0 + step * STEP_S - loop.time()))

    def play(self, wav: str) -> None:
        pcm, rate = read_wav(FIXTURES / wav)
        assert rate == IN_RATE
        pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME, np.int16)])
        self._audio.extend(pcm.reshape(-1, FRAME))

    async def close(self) -> None:
        if self.handler is not None:
            await self.handler.close()
        await self.call.close("test-end")
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        await self.pc_client.close()
        await self.pc_server.close()

    # -- client side ----------------------------------------------------
    def send_raw(self, text: str | bytes) -> int:
        mark = len(self.received)
        self.channel.send(text)
        return mark

    def send(self, type_: str, data: Any = None, id_: str | None = "auto", **extra: Any) -> tuple[int, str | None]:
        if id_ == "auto":
            id_ = f"c{next(_ids)}"
        msg: dict[str, Any] = {"label": "rtvi-ai", "type": type_, **extra}
        if id_ is not None:
            msg["id"] = id_
        if data is not None:
            msg["data"] = data
        return self.send_raw(json.dumps(msg)), id_

    async def wait_for(self, pred: Callable[[Any], bool] | str, after: int = 0, timeout: float = 8.0) -> Any:
        if isinstance(pred, str):
            t = pred
            pred = lambda m: isinstance(m, dict) and m.get("type") == t  # noqa: E731 -- rebinds the parameter; a def could not
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = after
        while True:
            while i < len(self.received):
                if pred(self.received[i]):
                    return self.received[i]
                i += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out; received: {self.received[after:][-30:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_hangup(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.hangups:
            self._new.clear()
            await asyncio.wait_for(self._new.wait(), max(0.01, deadline - loop.time()))

    async def reply(self, id_: str, after: int) -> dict[str, Any]:
        return await self.wait_for(lambda m: isinstance(m, dict) and m.get("id") == id_
                                   and m.get("type") in ("server-response", "error-response", "bot-ready"),
                                   after)

    async def roundtrip(self) -> int:
        """A get-state round trip: everything the server sent before it has arrived."""
        mark, id_ = self.send("client-message", {"t": "get-state", "d": {}})
        r = await self.reply(id_, mark)
        assert r["type"] == "server-response"
        return len(self.received)

    def of_type(self, type_: str, after: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.received[after:] if isinstance(m, dict) and m.get("type") == type_]

    async def ready(self, version: str = "2.1.0") -> dict[str, Any]:
        mark, id_ = self.send("client-ready", {"version": version,
                                                "about": {"library": "test", "library_version": "0"}})
        return await self.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "bot-ready", mark)


@pytest.fixture
async def h():
    harness = await Harness().open()
    yield harness
    await harness.close()


def rtvi_ok(m: dict[str, Any]) -> None:
    assert m["label"] == "rtvi-ai" and isinstance(m["id"], str) and m["id"]


# --------------------------------------------------------------------------
# client-ready / bot-ready
# --------------------------------------------------------------------------


async def test_client_ready_gets_bot_ready_with_same_id_and_state(h: Harness) -> None:
    mark, id_ = h.send("client-ready", {"version": "2.1.0", "about": {"library": "@pipecat-ai/client-js"}})
    ready = await h.reply(id_, mark)
    assert ready["type"] == "bot-ready" and ready["label"] == "rtvi-ai"
    assert ready["data"]["version"] == "2.1.0"
    assert ready["data"]["about"]["library"] == "v2v"
    state = await h.wait_for(lambda m: m.get("type") == "server-message"
                             and m["data"].get("type") == "agent-state", mark)
    assert state["data"]["state"] == "listening"
    assert h.handler is not None and h.handler.client_about["library"] == "@pipecat-ai/client-js"
    assert not h.of_type("error-response", mark)


async def test_legacy_clients_get_their_reply_shape(h: Harness) -> None:
    ready = await h.ready("1.3.0")
    assert ready["data"]["version"] == "1.4.0" and "about" in ready["data"]
    ready = await h.ready("0.3.1")
    assert ready["data"] == {"version": "0.3.1", "config": []}


async def test_client_ready_with_bad_version_still_gets_bot_ready(h: Harness) -> None:
    for bad in ("two", 2, "2.1", None):
        mark, id_ = h.send("client-ready", {"version": bad} if bad is not None else {})
        err = await h.wait_for(lambda m, id_=id_: m.get("type") == "error-response" and m.get("id") == id_, mark)
        assert "version" in err["data"]["error"]
        ready = await h.wait_for(lambda m, id_=id_: m.get("type") == "bot-ready" and m.get("id") == id_, mark)
        assert ready["data"]["version"] == "2.1.0"
    mark, _ = h.send("client-ready", {"version": "2.1.0"}, id_=None)
    err = await h.wait_for("error", mark)
    assert "id" in err["data"]["error"]


async def test_bot_ready_waits_for_the_model() -> None:
    h = await Harness().open(start_call=False)
    try:
        mark, id_ = h.send("client-ready", {"version": "2.1.0"})
        await h.roundtrip()  # client-ready was handled before this answer
        assert not h.of_type("bot-ready", mark) and h.call.state == "initializing"
        await h.start_call()
        ready = await h.reply(id_, mark)
        assert ready["type"] == "bot-ready" and h.call.state == "listening"
    finally:
        await h.close()


# --------------------------------------------------------------------------
# send-text and the answer's messages
# --------------------------------------------------------------------------


async def test_send_text_answer_produces_the_full_message_sequence(h: Harness) -> None:
    await h.ready()
    mark, _ = h.send("send-text", {"content": "Hello there. How are you?",
                                   "options": {"run_immediately": True, "audio_response": True}})
    await h.wait_for(lambda m: m.get("type") == "bot-output" and m["data"].get("final"), mark, timeout=15)
    await h.wait_for("bot-stopped-speaking", mark)
    types = [m["type"] for m in h.received[mark:] if isinstance(m, dict)]
    for t in ("bot-llm-started", "bot-llm-stopped", "bot-transcription", "bot-output",
              "bot-started-speaking", "bot-stopped-speaking", "bot-tts-text", "server-message"):
        assert t in types, t
    assert types.index("bot-started-speaking") < types.index("bot-stopped-speaking")
    for m in h.received[mark:]:
        rtvi_ok(m)
    # bot-transcription per sentence
    assert [m["data"]["text"] for m in h.of_type("bot-transcription", mark)] == ["Hello there.", "How are you?"]
    # bot-output: each sentence a segment: new, then progress up to completed
    outs = [m["data"] for m in h.of_type("bot-output", mark)]
    segs: dict[int, list[dict[str, Any]]] = {}
    for d in outs:
        segs.setdefault(d["segment_id"], []).append(d)
        assert d["aggregated_by"] == "sentence" and d["will_be_spoken"] is True
        assert set(d["spoken_progress"]) == {"accumulated_text", "remaining_text"}
    assert len(segs) == 2
    for seq in segs.values():
        assert seq[0]["spoken_status"] == "new" and seq[0]["spoken_progress"]["accumulated_text"] == ""
        assert seq[-1]["spoken_status"] == "completed"
        assert seq[-1]["spoken_progress"]["remaining_text"] == ""
        assert seq[-1]["spoken_progress"]["accumulated_text"] == seq[0]["text"]
    heard = "".join(d["text"] for d in outs if d["spoken_status"] != "new")
    assert heard.split() == "Hello there. How are you?".split()
    assert outs[-1]["final"] is True and outs[-1]["interrupted"] is False
    assert outs[-1]["spoken_text"] == "Hello there. How are you?"
    states = [m["data"]["state"] for m in h.of_type("server-message", mark) if m["data"].get("type") == "agent-state"]
    assert "speaking" in states and states[-1] == "listening"


async def test_send_text_options(h: Harness) -> None:
    model = h.call.model
    assert isinstance(model, EchoSession)  # the harness runs the echo model
    mark, _ = h.send("send-text", {"content": "just remember this", "options": {"run_immediately": False}})
    await h.roundtrip()
    assert ("send_message", ("user", "just remember this")) in model.calls
    assert not [c for c in model.calls if c[0] == "create_response"]
    assert not h.of_type("bot-llm-started", mark)
    mark, _ = h.send("send-text", {"content": "text please", "options": {"audio_response": False}})
    await h.wait_for("bot-llm-started", mark)
    assert ("create_response", "Answer in text only.") in model.calls


@pytest.mark.parametrize("data", [
    {}, {"content": ""}, {"content": 5}, {"content": "hi", "options": "now"},
    {"content": "hi", "options": {"run_immediately": "yes"}}, {"content": "x" * 20000},
])
async def test_send_text_invalid(h: Harness, data: dict[str, Any]) -> None:
    mark, id_ = h.send("send-text", data)
    err = await h.reply(id_, mark)
    assert err["type"] == "error-response" and "send-text" in err["data"]["error"]
    await h.roundtrip()


# --------------------------------------------------------------------------
# client-message
# --------------------------------------------------------------------------


async def test_get_state_and_update_instructions(h: Harness) -> None:
    mark, id_ = h.send("client-message", {"t": "get-state", "d": {}})
    r = await h.reply(id_, mark)
    assert r == {"label": "rtvi-ai", "type": "server-response", "id": id_,
                 "data": {"t": "get-state", "d": {"state": "listening"}}}
    mark, id_ = h.send("client-message", {"t": "update-instructions", "d": {"instructions": "Be brief."}})
    r = await h.reply(id_, mark)
    assert r["type"] == "server-response" and r["data"] == {"t": "update-instructions", "d": {"ok": True}}
    assert h.call.model.config.instructions == "Be brief."
    for bad in ({}, {"instructions": ""}, {"instructions": 3}, None):
        mark, id_ = h.send("client-message", {"t": "update-instructions", "d": bad})
        r = await h.reply(id_, mark)
        assert r["type"] == "error-response" and "instructions" in r["data"]["error"]


async def test_unknown_and_invalid_client_messages(h: Harness) -> None:
    mark, id_ = h.send("client-message", {"t": "no-such-thing", "d": {}})
    r = await h.reply(id_, mark)
    assert r["type"] == "error-response" and "no-such-thing" in r["data"]["error"]
    for data in ({}, {"t": ""}, {"t": 7}, {"d": {}}):
        mark, id_ = h.send("client-message", data)
        r = await h.reply(id_, mark)
        assert r["type"] == "error-response"
    mark, _ = h.send("client-message", {"t": "get-state"}, id_=None)
    assert "id" in (await h.wait_for("error", mark))["data"]["error"]


async def test_application_client_message_handlers(h: Harness) -> None:
    seen: list[ClientRequest] = []

    async def lookup(req: ClientRequest) -> Any:
        seen.append(req)
        if not isinstance(req.d, dict) or "order" not in req.d:
            raise ClientMessageError("d.order is required")
        return {"order": req.d["order"], "status": "shipped"}

    def sync_echo(req: ClientRequest) -> Any:
        return req.d

    async def broken(req: ClientRequest) -> Any:
        raise KeyError("secret detail")

    rtvi_mod.register_client_message_handler("lookup-order", lookup)
    try:
        assert h.handler is not None
        h.handler.register_client_message_handler("echo", sync_echo)
        h.handler.register_client_message_handler("broken", broken)
        mark, id_ = h.send("client-message", {"t": "lookup-order", "d": {"order": 42}})
        r = await h.reply(id_, mark)
        assert r["type"] == "server-response" and r["data"]["d"] == {"order": 42, "status": "shipped"}
        assert seen[0].call is h.call and seen[0].id == id_ and seen[0].rtvi is h.handler
        mark, id_ = h.send("client-message", {"t": "lookup-order", "d": {}})
        r = await h.reply(id_, mark)
        assert r["type"] == "error-response" and r["data"]["error"] == "d.order is required"
        mark, id_ = h.send("client-message", {"t": "echo", "d": [1, "two"]})
        assert (await h.reply(id_, mark))["data"] == {"t": "echo", "d": [1, "two"]}
        mark, id_ = h.send("client-message", {"t": "broken", "d": None})
        r = await h.reply(id_, mark)
        assert r["type"] == "error-response" and "secret" not in r["data"]["error"]
        await h.roundtrip()
    finally:
        rtvi_mod.unregister_client_message_handler("lookup-order")


# --------------------------------------------------------------------------
# function calls
# --------------------------------------------------------------------------


def _tools() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register("get_location", "Where the user is (asked to the client app).",
                 {"type": "object", "properties": {"precision": {"type": "string"}}}, client_side=True)

    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    reg.register("add", "Add two numbers.", {"type": "object"}, add)
    return reg


async def test_client_side_function_call_round_trip() -> None:
    h = await Harness(ToolEchoFactory(), _tools()).open()
    try:
        await h.ready()
        mark, _ = h.send("send-text", {"content": 'call get_location {"precision": "city"}'})
        started = await h.wait_for("llm-function-call-started", mark)
        assert started["data"] == {"function_name": "get_location"}
        prog = await h.wait_for("llm-function-call-in-progress", mark)
        d = prog["data"]
        assert d["function_name"] == "get_location" and d["arguments"] == {"precision": "city"}
        mark2, id_ = h.send("llm-function-call-result", {
            "function_name": "get_location", "tool_call_id": d["tool_call_id"],
            "arguments": d["arguments"], "result": {"city": "Lyon"}})
        stopped = await h.wait_for("llm-function-call-stopped", mark2)
        assert stopped["data"] == {"tool_call_id": d["tool_call_id"], "function_name": "get_location",
                                   "cancelled": False, "result": {"city": "Lyon"}}
        model = h.call.model
        assert isinstance(model, EchoSession)  # the harness runs the echo model
        assert ("function_output", (d["tool_call_id"], json.dumps({"city": "Lyon"}))) in model.calls
        assert not h.of_type("error-response", mark2)
        # the same result again: nothing waits for it any more
        mark3, id_ = h.send("llm-function-call-result", {
            "function_name": "get_location", "tool_call_id": d["tool_call_id"], "result": "again"})
        r = await h.reply(id_, mark3)
        assert r["type"] == "error-response" and "waiting" in r["data"]["error"]
    finally:
        await h.close()


async def test_function_call_result_invalid() -> None:
    h = await Harness(ToolEchoFactory(), _tools()).open()
    try:
        mark, _ = h.send("send-text", {"content": "call get_location {}"})
        d = (await h.wait_for("llm-function-call-in-progress", mark))["data"]
        for data, needle in (
            ({"tool_call_id": d["tool_call_id"]}, "result"),
            ({"tool_call_id": 5, "result": 1}, "tool_call_id"),
            ({"tool_call_id": d["tool_call_id"], "result": 1, "arguments": []}, "arguments"),
            ({"tool_call_id": d["tool_call_id"], "function_name": "add", "result": 1}, "match"),
            ({"tool_call_id": "nope", "function_name": "get_location", "result": 1}, "waiting"),
        ):
            mark, id_ = h.send("llm-function-call-result", data)
            r = await h.reply(id_, mark)
            assert r["type"] == "error-response" and needle in r["data"]["error"], (data, r)
        # still waiting for the real one, which is accepted
        mark, id_ = h.send("llm-function-call-result", {"tool_call_id": d["tool_call_id"], "result": "ok"})
        assert (await h.wait_for("llm-function-call-stopped", mark))["data"]["result"] == "ok"
    finally:
        await h.close()


async def test_server_side_function_call_messages() -> None:
    h = await Harness(ToolEchoFactory(), _tools()).open()
    try:
        mark, _ = h.send("send-text", {"content": 'call add {"a": 2, "b": 3}'})
        prog = await h.wait_for("llm-function-call-in-progress", mark)
        assert prog["data"]["arguments"] == {"a": 2, "b": 3}
        stopped = await h.wait_for("llm-function-call-stopped", mark)
        assert stopped["data"]["result"] == {"sum": 5} and stopped["data"]["cancelled"] is False
        assert not h.of_type("llm-function-call", mark)
    finally:
        await h.close()


async def test_llm_text_and_non_fatal_errors() -> None:
    h = await Harness(ToolEchoFactory()).open()
    try:
        mark, _ = h.send("send-text", {"content": "write Bonjour tout le monde"})
        await h.wait_for("bot-llm-stopped", mark)
        texts = [m["data"]["text"] for m in h.of_type("bot-llm-text", mark)]
        assert "".join(texts).split() == ["Bonjour", "tout", "le", "monde"]
        mark, _ = h.send("send-text", {"content": "fail-soft"})
        err = await h.wait_for("error", mark)
        assert err["data"] == {"error": "rate limited, retrying", "fatal": False}
        await h.roundtrip()
        assert not h.call.ended.is_set()
    finally:
        await h.close()


async def test_legacy_client_gets_llm_function_call_and_1x_bot_output() -> None:
    h = await Harness(ToolEchoFactory(), _tools()).open()
    try:
        await h.ready("1.0.0")  # RTVI 1.0/1.1 clients only run client functions on llm-function-call
        mark, _ = h.send("send-text", {"content": "call get_location {}"})
        legacy = await h.wait_for("llm-function-call", mark)
        assert set(legacy["data"]) == {"function_name", "tool_call_id", "args"}
        h.send("llm-function-call-result", {"tool_call_id": legacy["data"]["tool_call_id"], "result": "x"})
        await h.wait_for("llm-function-call-stopped", mark)
        await h.ready("1.2.0")  # from 1.2 on, llm-function-call-in-progress only
        mark, _ = h.send("send-text", {"content": "call get_location {}"})
        prog = await h.wait_for("llm-function-call-in-progress", mark)
        h.send("llm-function-call-result", {"tool_call_id": prog["data"]["tool_call_id"], "result": "y"})
        await h.wait_for("llm-function-call-stopped", mark)
        assert not h.of_type("llm-function-call", mark)
        mark, _ = h.send("send-text", {"content": "One two. Three."})
        await h.wait_for("bot-stopped-speaking", mark, timeout=15)
        await h.roundtrip()
        outs = [m["data"] for m in h.of_type("bot-output", mark)]
        assert [o["text"] for o in outs] == ["One two.", "Three."]
        assert all(o["spoken"] is True and "spoken_status" not in o for o in outs)
    finally:
        await h.close()


# --------------------------------------------------------------------------
# append-to-context, dtmf, disconnect-bot, signalling, ping
# --------------------------------------------------------------------------


async def test_append_to_context(h: Harness) -> None:
    model = h.call.model
    assert isinstance(model, EchoSession)  # the harness runs the echo model
    h.send("append-to-context", {"role": "assistant", "content": "I said hi."})
    h.send("append-to-context", {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                              {"type": "text", "text": "again"}]})
    mark, _ = h.send("append-to-context", {"role": "user", "content": "go", "run_immediately": True})
    await h.wait_for("bot-llm-started", mark)
    sent = [c[1] for c in model.calls if c[0] == "send_message"]
    assert sent == [("assistant", "I said hi."), ("user", "Hi again"), ("user", "go")]
    for data in ({"role": "robot", "content": "x"}, {"role": "user", "content": ""},
                 {"role": "user", "content": [{"image": 1}]}, {"role": "user", "run_immediately": 1, "content": "x"}):
        mark, id_ = h.send("append-to-context", data)
        assert (await h.reply(id_, mark))["type"] == "error-response"


async def test_dtmf(h: Harness) -> None:
    model = h.call.model
    assert isinstance(model, EchoSession)  # the harness runs the echo model
    mark, _ = h.send("dtmf", {"buttons": ["1", "#"]})
    h.send("dtmf", {"button": "5"})
    await h.roundtrip()
    digits = [m["data"]["digit"] for m in h.of_type("server-message", mark) if m["data"].get("type") == "dtmf"]
    assert digits == ["1", "#", "5"]
    assert sum(1 for c in model.calls if c[0] == "send_message" and "telephone key" in c[1][1]) == 3
    for data in ({}, {"buttons": []}, {"buttons": ["x"]}, {"buttons": "12"}, {"button": 1}):
        mark, id_ = h.send("dtmf", data)
        r = await h.reply(id_, mark)
        assert r["type"] == "error-response" and "dtmf" in r["data"]["error"]


async def test_disconnect_bot_calls_on_hangup(h: Harness) -> None:
    h.send("disconnect-bot", {})
    await h.wait_hangup()
    assert h.hangups == ["disconnect-bot"]
    h.send("disconnect-bot", {})
    await h.roundtrip()
    assert h.hangups == ["disconnect-bot"]  # once


async def test_disconnect_bot_without_transport_hook_ends_the_call() -> None:
    h = await Harness(on_hangup=None).open()
    try:
        await h.ready()
        mark, _ = h.send("disconnect-bot", {})
        left = await h.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "signalling", mark)
        assert left == {"type": "signalling", "message": {"type": "peerLeft"}}
        assert h.call.ended.is_set() and h.call.end_reason == "disconnect-bot"
    finally:
        await h.close()


async def test_signalling_envelopes(h: Harness) -> None:
    mark = h.send_raw(json.dumps({"type": "signalling",
                                  "message": {"type": "trackStatus", "receiver_index": 0, "enabled": False}}))
    await h.roundtrip()
    assert h.handler is not None and h.handler.mic_enabled is False and h.handler.track_status == {0: False}
    assert not h.of_type("error", mark)
    for bad in ({"type": "trackStatus", "receiver_index": "0", "enabled": True},
                {"type": "trackStatus", "receiver_index": 1}, {"type": "dance"}, "x"):
        mark = h.send_raw(json.dumps({"type": "signalling", "message": bad}))
        assert (await h.wait_for("error", mark))["data"]["fatal"] is False


async def test_ping_watchdog() -> None:
    h = await Harness(ping_timeout=0.4).open()
    try:
        loop = asyncio.get_running_loop()
        t_end = loop.time() + 1.2
        while loop.time() < t_end:  # a client pinging every 100 ms stays
            h.send_raw(f"ping: {int(loop.time() * 1000)}")
            t_last = loop.time()
            await asyncio.sleep(0.1)
        await h.roundtrip()
        assert h.hangups == [] and not h.of_type("error")
        await h.wait_hangup()  # then it stops pinging
        assert h.hangups == ["ping-timeout"] and loop.time() - t_last >= 0.35
    finally:
        await h.close()
    assert rtvi_mod.PING_TIMEOUT_S == 3.0


async def test_no_ping_no_watchdog() -> None:
    h = await Harness(ping_timeout=0.2).open()
    try:
        await h.ready()
        await asyncio.sleep(0.5)  # longer than the timeout: a client that never pings is not judged
        await h.roundtrip()
        assert h.hangups == []
    finally:
        await h.close()


# --------------------------------------------------------------------------
# robustness
# --------------------------------------------------------------------------


async def test_bad_frames_get_errors_and_the_call_goes_on(h: Harness) -> None:
    await h.ready()
    cases: list[tuple[Any, str, str | None]] = [
        ("hello", "error", None),
        ("[1, 2]", "error", None),
        ("{\"label\": \"rtvi-ai\"", "error", None),
        ("[" * 50000 + "]" * 50000, "error", None),
        (json.dumps({"type": "client-ready", "id": "n1"}), "error-response", "n1"),
        (json.dumps({"label": "other", "type": "x"}), "error", None),
        (json.dumps({"label": "rtvi-ai", "type": "teleport", "id": "t1"}), "error-response", "t1"),
        (json.dumps({"label": "rtvi-ai", "id": "t2"}), "error-response", "t2"),
        (json.dumps({"label": "rtvi-ai", "type": "send-text", "id": "t3", "data": [1]}), "error-response", "t3"),
        (json.dumps({"label": "rtvi-ai", "type": "send-text", "id": 12, "data": {}}), "error", None),
        (json.dumps({"label": "rtvi-ai", "type": "send-text", "id": "t4",
                     "data": {"content": "x" * 70000}}), "error", None),
        ("ping: abc", "error", None),
        (b"\xff\xfe\x00", "error", None),
    ]
    for frame, kind, id_ in cases:
        mark = h.send_raw(frame)
        got = await h.wait_for(lambda m: isinstance(m, dict) and m.get("type") in ("error", "error-response"), mark)
        assert got["type"] == kind, (frame if len(frame) < 100 else frame[:100], got)
        if id_ is not None:
            assert got["id"] == id_
        assert got["data"]["error"] and got["data"].get("fatal", False) is False
    await h.roundtrip()
    mark, _ = h.send("send-text", {"content": "still here"})
    await h.wait_for("bot-llm-started", mark)
    assert not h.call.ended.is_set()


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=100),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=20).map(json.dumps),
    st.fixed_dictionaries({"label": st.just("rtvi-ai"), "type": st.sampled_from(
        ["client-ready", "send-text", "client-message", "llm-function-call-result", "append-to-context",
         "disconnect-bot", "dtmf", "x"]), "id": st.text(max_size=5) | st.integers(),
        "data": st.dictionaries(st.sampled_from(["version", "content", "options", "t", "d", "tool_call_id",
                                                 "result", "role", "buttons", "button", "about"]),
                                st.none() | st.integers() | st.text(max_size=5) | st.lists(st.text(max_size=2)),
                                max_size=4)}).map(json.dumps),
))
def test_parse_frame_never_raises(frame: Any) -> None:
    res = parse_frame(frame)
    if isinstance(res, ProtocolError):
        assert res.message


async def test_handler_survives_a_throwing_send() -> None:
    calls: list[str] = []

    def send(text: str) -> None:
        calls.append(text)
        raise RuntimeError("channel closed")

    playout = PlayoutBuffer(24000)
    call = CallSession("x", EchoModelFactory(), CallConfig(), playout)
    handler = RTVIHandler(call, send)
    listening = asyncio.Event()
    call.add_listener(lambda e: listening.set() if call.state == "listening" else None)
    await call.start()
    await asyncio.wait_for(listening.wait(), 5)
    handler.handle(json.dumps({"label": "rtvi-ai", "type": "client-ready", "id": "a", "data": {"version": "2.1.0"}}))
    handler.handle("garbage")
    assert any('"bot-ready"' in c for c in calls)
    await handler.close()
    await call.close()


# --------------------------------------------------------------------------
# speech: speaking events, transcripts, metrics, interruption, errors
# --------------------------------------------------------------------------


async def test_speech_turn_events(h: Harness) -> None:
    await h.ready()
    mark = len(h.received)
    h.play("hello_48k.wav")
    await h.wait_for("bot-stopped-speaking", mark, timeout=20)
    types = [m["type"] for m in h.received[mark:] if isinstance(m, dict)]
    order = ["user-started-speaking", "user-stopped-speaking", "bot-started-speaking", "bot-stopped-speaking"]
    assert [t for t in types if t in order] == order
    tr = h.of_type("user-transcription", mark)[0]["data"]
    assert tr["final"] is True and tr["user_id"] == "rtvi-test" and ISO_RE.match(tr["timestamp"])
    metrics = h.of_type("metrics", mark)[0]["data"]
    assert metrics["ttfb"][0]["processor"] == "v2v" and 0 < metrics["ttfb"][0]["value"] < 5


async def test_interruption_reports_spoken_and_unspoken() -> None:
    h = await Harness().open()
    try:
        await h.ready()
        words = " ".join(f"word{i}." for i in range(30))
        mark, _ = h.send("send-text", {"content": words})
        # wait until a few words were heard, then talk over the answer
        await h.wait_for(lambda m: m.get("type") == "bot-output" and m["data"]["spoken_status"] != "new"
                         and m["data"]["segment_id"] > 0
                         and len(m["data"]["spoken_progress"]["accumulated_text"]) > 0
                         and int(re.sub(r"\D", "", m["data"]["text"]) or 0) >= 3, mark, timeout=15)
        h.play("hello_48k.wav")
        intr = await h.wait_for("bot-interrupted", mark, timeout=15)
        assert intr["data"]["played_ms"] > 0 and intr["data"]["deleted"] is False
        final = await h.wait_for(lambda m: m.get("type") == "bot-output" and m["data"].get("final"), mark)
        d = final["data"]
        assert d["interrupted"] is True and d["spoken_text"] and d["unspoken"]
        assert (d["spoken_text"] + " " + d["unspoken"]).split() == words.split()
        closed = [m["data"] for m in h.of_type("bot-output", mark) if m["data"].get("interrupted")]
        assert closed and all(c["spoken_status"] == "completed" for c in closed)
        assert any(c["spoken_progress"]["remaining_text"] for c in closed)
        barge = await h.wait_for(lambda m: m.get("type") == "metrics" and "barge_in" in m["data"], mark)
        assert barge["data"]["barge_in"][0]["value"] > 0
        await h.wait_for(lambda m: m.get("type") == "server-message" and m["data"].get("state") == "listening",
                         h.received.index(intr))
    finally:
        await h.close()


async def test_model_failure_is_a_fatal_error_then_peer_left() -> None:
    h = await Harness(BrokenFactory()).open(start_call=False)
    try:
        mark, id_ = h.send("client-ready", {"version": "2.1.0"})
        await h.roundtrip()
        await h.call.start()
        err = await h.wait_for("error", mark)
        assert err["data"]["fatal"] is True and "model" in err["data"]["error"]
        left = await h.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "signalling", mark)
        assert left["message"]["type"] == "peerLeft"
        assert not h.of_type("bot-ready", mark)
    finally:
        await h.close()


# --------------------------------------------------------------------------
# bot-output shaping (pure)
# --------------------------------------------------------------------------


def test_bot_output_tracker_matches_sentences_and_heard_text() -> None:
    t = BotOutputTracker()
    out = t.produced("i1", "Hello there.")
    assert out[0]["spoken_status"] == "new" and out[0]["spoken_progress"]["remaining_text"] == "Hello there."
    out = t.heard("i1", "Hel")
    assert out[0]["spoken_status"] == "in-progress" and out[0]["text"] == "Hel"
    out = t.heard("i1", "lo there. How")  # crosses into a sentence not produced yet
    assert out[0]["spoken_status"] == "completed" and out[0]["spoken_progress"]["accumulated_text"] == "Hello there."
    out = t.produced("i1", "How are you?")
    assert [o["spoken_status"] for o in out] == ["new", "in-progress"]
    assert out[1]["spoken_progress"] == {"accumulated_text": "How", "remaining_text": "are you?"}
    out = t.heard("i1", "", final=True, interrupted=True, spoken="Hello there. How", unspoken="are you?")
    assert out[-1]["interrupted"] is True and out[-1]["final"] is True
    assert out[-1]["spoken_progress"] == {"accumulated_text": "How", "remaining_text": "are you?"}
    assert out[-1]["spoken_text"] == "Hello there. How" and out[-1]["unspoken"] == "are you?"
    # heard text with no produced sentence still ends as a segment
    out = t.heard("i2", "Beep beep", final=True)
    assert [o["spoken_status"] for o in out] == ["new", "completed"] and out[-1]["final"] is True
    # an answer without any text (the echo model's audio) shows nothing
    assert t.heard("i3", "", final=True) == []
    assert t.heard("i4", "", final=True, interrupted=True) == []


async def test_client_message_flood_is_bounded(h: Harness) -> None:
    gate = asyncio.Event()

    async def slow(req: ClientRequest) -> Any:
        await gate.wait()
        return req.d

    assert h.handler is not None
    h.handler.register_client_message_handler("slow", slow)
    mark = len(h.received)
    n = rtvi_mod.MAX_CONCURRENT_CLIENT_MESSAGES
    ids = [h.send("client-message", {"t": "slow", "d": i})[1] for i in range(n + 4)]
    busy = [await h.reply(i, mark) for i in ids[-4:]]
    assert all(r["type"] == "error-response" and "too many" in r["data"]["error"] for r in busy)
    gate.set()
    done = [await h.reply(i, mark) for i in ids[:-4]]
    assert [r["data"]["d"] for r in done] == list(range(n))
    await h.roundtrip()


async def test_suspended_ping_watchdog_rearms_on_the_next_ping() -> None:
    h = await Harness(ping_timeout=0.3).open()
    try:
        assert h.handler is not None
        h.send_raw("ping: 1")
        await h.roundtrip()
        h.handler.suspend_ping_watchdog()  # e.g. the transport is replacing the peer connection
        await asyncio.sleep(0.6)
        await h.roundtrip()
        assert h.hangups == []
        h.send_raw("ping: 2")
        await h.wait_hangup()
        assert h.hangups == ["ping-timeout"]
    finally:
        await h.close()


async def test_close_sends_peer_left_once(h: Harness) -> None:
    assert h.handler is not None
    await h.roundtrip()
    mark = len(h.received)
    await h.handler.close()
    assert h.handler._worker is not None and h.handler._worker.done() and not h.handler._tasks
    left = await h.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "signalling", mark)
    assert left["message"] == {"type": "peerLeft"}
    await h.call.close("test")  # CallEnded after close: nothing more is sent
    assert not h.handler.peer_left()
    assert [m for m in h.received[mark:] if isinstance(m, dict) and m.get("type") == "signalling"] == [left]
