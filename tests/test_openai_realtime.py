"""The ``openai`` session against the protocol-faithful fake Realtime server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import numpy as np
import pytest

from tests.conftest import fixture_path, load_wav
from tests.fake_realtime import FakeRealtimeServer, FakeToolCall, tone, validate_client_event
from tests.scripted import reply_signal
from tests.serve_util import serve_and_call
from v2v.worker import events as cev
from v2v.worker.call import CallConfig
from v2v.worker.models.base import (
    AudioDelta,
    Connected,
    Disconnected,
    FunctionCall,
    InputCommitted,
    InputTranscript,
    ModelError,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    ToolSpec,
)
from v2v.worker.models.openai_realtime import OpenAIRealtimeFactory, realtime_url, scrub
from v2v.worker.wavcall import run_wav_call

KEY = "sk-test-fake-key-0123456789"
Turn = Literal["local", "server"]
CHUNK = 2400  # 100 ms at 24 kHz

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """Collects a session's events; tests wait on conditions, never on sleeps."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.events: list[Any] = []
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for ev in self.session.events():
            async with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    async def wait(self, pred: Callable[[list[Any]], bool], timeout: float = 5.0) -> list[Any]:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: pred(self.events)), timeout)
        return self.events

    async def wait_type(self, cls: type, count: int = 1, timeout: float = 5.0,
                        where: Callable[[Any], bool] = lambda e: True) -> list[Any]:
        await self.wait(lambda evs: len(self.of(cls, where)) >= count, timeout)
        return self.of(cls, where)

    def of(self, cls: type, where: Callable[[Any], bool] = lambda e: True) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls) and where(e)]

    async def close(self) -> None:
        await self.session.close()
        await asyncio.wait_for(self._task, 5)


@pytest.fixture
async def fake():
    async with FakeRealtimeServer(api_key=KEY) as server:
        yield server


async def open_session(fake: FakeRealtimeServer, turn: Turn = "local", key: str = KEY,
                       tools: list[ToolSpec] | None = None, **kw: Any) -> Recorder:
    factory = OpenAIRealtimeFactory(KEY if key is None else key, base_url=fake.base_url,
                                    model="gpt-realtime", voice="marin",
                                    instructions="Be brief.", tools=tools,
                                    backoff_base=0.02, reconnect_attempts=4, **kw)
    session = factory.open(SessionConfig(turn_detection=turn))
    rec = Recorder(session)
    await session.connect()
    return rec


def speech(ms: int) -> np.ndarray:
    return tone(ms, freq=220.0, amplitude=6000)


async def push(session: Any, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), CHUNK):
        await session.push_audio(pcm[i:i + CHUNK])


def audio_of(rec: Recorder, item_id: str | None = None) -> int:
    return sum(len(e.pcm) for e in rec.of(AudioDelta) if item_id in (None, e.item_id))


# --------------------------------------------------------------------------


def test_realtime_url() -> None:
    assert realtime_url("https://api.openai.com/v1", "gpt-realtime") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert realtime_url("http://127.0.0.1:9/v1/", "m x") == "ws://127.0.0.1:9/v1/realtime?model=m%20x"
    with pytest.raises(ValueError):
        realtime_url("ftp://x", "m")


def test_fake_validator_is_strict() -> None:
    ok, why = validate_client_event(json.dumps({"type": "input_audio_buffer.commit"}))
    assert ok and why is None
    for bad in (
        {"type": "input_audio_buffer.append"},  # missing audio
        {"type": "response.cancel", "responseid": "x"},  # unknown field
        {"type": "session.update", "session": {"type": "realtime", "turn_detection": None}},
        {"type": "conversation.item.truncate", "item_id": "a", "content_index": 0,
         "audio_end_ms": "12"},  # strict: no string for an int
        {"type": "response.audio.delta"},  # a server event
    ):
        ev, why = validate_client_event(json.dumps(bad))
        assert ev is None and why, bad


async def test_fake_records_invalid_events(fake: FakeRealtimeServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(fake.base_url.replace("http", "ws") + "/realtime?model=m",
                                   headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send_str(json.dumps({"type": "session.update",
                                          "session": {"type": "realtime", "voice": "x"}}))
            await ws.send_str(json.dumps({"type": "response.cancel"}))
            await fake.wait_for(lambda: len(fake.violations) == 2)
    assert "unknown field" in fake.violations[0]
    assert "response_cancel_not_active" in fake.violations[1]
    fake.violations.clear()


async def test_connect_and_session_update_shape(fake: FakeRealtimeServer) -> None:
    tools = [ToolSpec("get_time", "Tell the time", {"type": "object", "properties": {}})]
    for turn in ("server", "local"):
        rec = await open_session(fake, turn=turn, tools=tools)
        await rec.wait_type(Connected)
        upd = fake.client_events("session.update", conn=len(fake.connections) - 1)[0]["session"]
        assert upd["type"] == "realtime"
        assert upd["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert upd["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert upd["audio"]["output"]["voice"] == "marin"
        assert upd["instructions"] == "Be brief."
        assert upd["tools"] == [{"type": "function", "name": "get_time",
                                 "description": "Tell the time",
                                 "parameters": {"type": "object", "properties": {}}}]
        assert upd["audio"]["input"]["transcription"]["model"]
        td = upd["audio"]["input"]["turn_detection"]
        if turn == "server":
            assert td == {"type": "server_vad", "create_response": True,
                          "interrupt_response": False}
        else:
            assert "turn_detection" in upd["audio"]["input"] and td is None
            assert fake.connections[-1].turn_detection is None
        await rec.close()
    assert fake.auth_headers == [f"Bearer {KEY}"] * 2
    assert fake.violations == []


async def test_local_turn_audio_round_trip(fake: FakeRealtimeServer) -> None:
    fake.reply_ms = 1300
    rec = await open_session(fake)
    s = rec.session
    await rec.wait_type(Connected)
    pcm = speech(700)
    await push(s, pcm)
    await s.commit_input()
    await s.create_response()
    done = (await rec.wait_type(ResponseDone))[0]
    assert done.status == "completed" and not done.text_only and done.usage
    assert np.array_equal(fake.committed_audio[0], pcm)
    appends = fake.client_events("input_audio_buffer.append")
    assert len(appends) == 7
    assert base64.b64decode(appends[0]["audio"]) == pcm[:CHUNK].astype("<i2").tobytes()
    assert audio_of(rec) == 1300 * 24
    assert np.array_equal(np.concatenate([e.pcm for e in rec.of(AudioDelta)]), tone(1300))
    created = rec.of(ResponseCreated)[0]
    assert created.response_id == done.response_id
    finals = rec.of(InputTranscript, lambda e: e.final)
    assert finals[0].text == "user turn 1 of 700 ms"
    assert rec.of(InputTranscript, lambda e: not e.final)
    assert rec.of(InputCommitted)[0].item_id == finals[0].item_id
    assert rec.of(OutputTranscriptDone)[0].text == "This is reply number 1 from the fake model."
    await rec.close()
    assert fake.violations == []


async def test_server_vad_turn(fake: FakeRealtimeServer) -> None:
    rec = await open_session(fake, turn="server")
    s = rec.session
    await rec.wait_type(Connected)
    await push(s, np.concatenate([np.zeros(CHUNK * 3, np.int16), speech(800),
                                  np.zeros(CHUNK * 7, np.int16)]))
    await rec.wait_type(ResponseDone)
    started, stopped = rec.of(SpeechStarted)[0], rec.of(SpeechStopped)[0]
    assert 0 <= started.audio_start_ms <= 300
    assert 1100 <= stopped.audio_end_ms <= 1700
    assert rec.of(InputCommitted)[0].item_id == started.item_id == stopped.item_id
    assert audio_of(rec) == fake.reply_ms * 24
    assert not fake.client_events("input_audio_buffer.commit")
    assert not fake.client_events("response.create")
    await rec.close()
    assert fake.violations == []


async def test_cancel_then_truncate_and_no_cancel_when_done(fake: FakeRealtimeServer) -> None:
    fake.reply_ms, fake.speed = 4000, 2.0  # 2 s of streaming: still in progress
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "tell me a story")
    await s.create_response()
    await rec.wait_type(AudioDelta, count=2)
    item_id = rec.of(AudioDelta)[0].item_id
    await s.cancel_response()
    await s.truncate_item(item_id, 0, 150)
    done = (await rec.wait_type(ResponseDone))[0]
    assert done.status == "cancelled"
    await fake.wait_for(lambda: fake.truncations == [(item_id, 150)])
    cancels = fake.client_events("response.cancel")
    assert cancels == [{"type": "response.cancel", "response_id": done.response_id}]
    kinds = [e["type"] for e in fake.events]
    assert kinds.index("response.cancel") < kinds.index("conversation.item.truncate")
    assert audio_of(rec, item_id) < 4000 * 24

    # A fast, complete answer: nothing to cancel, only the truncate is sent.
    fake.reply_ms, fake.speed = 1000, 0
    await s.send_message("user", "and now briefly")
    await s.create_response()
    done2 = (await rec.wait_type(ResponseDone, count=2))[1]
    item2 = [e for e in rec.of(AudioDelta) if e.response_id == done2.response_id][0].item_id
    await s.cancel_response()
    await s.truncate_item(item2, 0, 420)
    await fake.wait_for(lambda: len(fake.truncations) == 2)
    assert fake.truncations[1] == (item2, 420)
    assert len(fake.client_events("response.cancel")) == 1
    # Beyond what the model sent: clamped, never an API error.
    await s.truncate_item(item2, 0, 5000)
    await fake.wait_for(lambda: len(fake.truncations) == 3)
    assert fake.truncations[2] == (item2, 1000)
    await rec.close()
    assert fake.violations == []


async def test_cancel_race_is_ignored(fake: FakeRealtimeServer, caplog) -> None:
    """A genuine race (response.done in flight) gets response_cancel_not_active: ignored."""
    caplog.set_level(logging.INFO, logger="v2v.worker.models.openai_realtime")
    fake.reply_ms, fake.speed = 300, 0
    fake.race_window = 10.0  # the test, not the clock, decides this cancel is a race
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "hi")
    await s.create_response()
    await rec.wait_type(ResponseCreated)
    # Pretend we have not seen response.done yet when we cancel.
    await fake.wait_for(lambda: len(fake.responses) == 1)
    rid = rec.of(ResponseCreated)[0].response_id
    await s._send({"type": "response.cancel", "response_id": rid})
    await fake.wait_for(lambda: fake.cancel_races == 1)
    await rec.wait_type(ResponseDone)
    await s.send_message("user", "still here?")
    await s.create_response()
    await rec.wait_type(ResponseDone, count=2)
    assert not rec.of(ModelError)
    assert "cancel raced" in caplog.text
    await rec.close()
    assert fake.violations == []


async def test_delete_item(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "hello")
    await s.create_response()
    await rec.wait_type(ResponseDone)
    item_id = rec.of(AudioDelta)[0].item_id
    await s.delete_item(item_id)
    await fake.wait_for(lambda: fake.deletions == [item_id])
    await s.delete_item("never-seen")  # unknown: not sent
    assert item_id not in fake.connections[0].items
    await rec.close()
    assert len(fake.client_events("conversation.item.delete")) == 1
    assert fake.violations == []


async def test_function_call_round_trip(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    fake.tool_calls = [FakeToolCall("get_time", '{"zone": "UTC"}')]
    tools = [ToolSpec("get_time", "Tell the time")]
    rec = await open_session(fake, tools=tools)
    s = rec.session
    await s.send_message("user", "what time is it")
    await s.create_response()
    call = (await rec.wait_type(FunctionCall))[0]
    assert (call.name, json.loads(call.arguments)) == ("get_time", {"zone": "UTC"})
    assert call.call_id == fake.function_calls[0][0]
    first = (await rec.wait_type(ResponseDone))[0]
    assert not first.text_only and not rec.of(AudioDelta)
    assert len(rec.of(FunctionCall)) == 1  # not duplicated by output_item.done / response.done
    await s.function_output(call.call_id, '{"time": "12:00"}')
    await s.create_response()
    await rec.wait_type(ResponseDone, count=2)
    out = fake.client_events("conversation.item.create")[-1]["item"]
    assert out["type"] == "function_call_output" and out["call_id"] == call.call_id
    assert audio_of(rec) == fake.reply_ms * 24
    await rec.close()
    assert fake.violations == []


async def test_text_only_response_is_flagged(fake: FakeRealtimeServer) -> None:
    """A response without audio is reported text_only (the call asks again for audio)."""
    fake.speed = 0
    fake.text_only_responses = 1
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "hello")
    await s.create_response()
    done = (await rec.wait_type(ResponseDone))[0]
    assert done.text_only and done.status == "completed"
    await rec.close()
    assert fake.violations == []


async def test_beta_event_names_map_to_the_same_events(fake: FakeRealtimeServer) -> None:
    fake.speed, fake.beta_event_names = 0, True
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "hello")
    await s.create_response()
    await rec.wait_type(ResponseDone)
    sent = {e["type"] for e in fake.connections[0].sent}
    assert "response.audio.delta" in sent and "response.output_audio.delta" not in sent
    assert audio_of(rec) == fake.reply_ms * 24
    assert rec.of(OutputTranscriptDone)[0].text
    await rec.close()
    assert fake.violations == []


async def test_reconnect_after_drop_restores_context(fake: FakeRealtimeServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake.speed = 0
    rec = await open_session(fake)
    s = rec.session
    # Turn 1: spoken, answered in full.
    await push(s, speech(500))
    await s.commit_input()
    await s.create_response()
    await rec.wait_type(ResponseDone)
    # Turn 2: the socket drops in the middle of the answer.
    fake.drop_connections = {0}
    fake.drop_after_deltas = 3
    await s.send_message("user", "tell me more")
    await s.create_response()
    await rec.wait_type(Connected, count=2)
    kinds = [type(e).__name__ for e in rec.events]
    i_err = kinds.index("ModelError")
    assert kinds[i_err + 1] == "Disconnected" and kinds.index("Connected", i_err) > i_err
    assert not rec.of(ModelError)[0].fatal and not rec.of(Disconnected)[0].fatal
    failed = rec.of(ResponseDone)[1]
    assert failed.status == "failed"
    assert len(fake.connections) == 2 and fake.drops == 1
    # The new connection got the session and the conversation so far.
    assert fake.client_events("session.update", conn=1)
    restored = [e["item"] for e in fake.client_events("conversation.item.create", conn=1)]
    texts = [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in restored]
    assert texts == [
        ("user", "input_text", "user turn 1 of 500 ms"),
        ("assistant", "output_text", "This is reply number 1 from the fake model."),
        ("user", "input_text", "tell me more"),
        ("assistant", "output_text", "This is"),  # what had streamed before the drop
    ]
    assert len({i["id"] for i in restored}) == 4
    # And the call goes on.
    await s.send_message("user", "again")
    await s.create_response()
    await rec.wait_type(ResponseDone, count=3)
    assert rec.of(ResponseDone)[2].status == "completed"
    await rec.close()
    assert KEY not in caplog.text
    assert fake.violations == []


async def test_truncate_of_a_restored_item_rewrites_its_text(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    fake.drop_connections, fake.drop_after_deltas = {0}, 5
    rec = await open_session(fake)
    s = rec.session
    await s.send_message("user", "go")
    await s.create_response()
    await rec.wait_type(Connected, count=2)
    item_id = rec.of(AudioDelta)[0].item_id
    await s.truncate_item(item_id, 0, 200)  # of the 500 ms received
    await fake.wait_for(lambda: fake.deletions == [item_id] and
                        fake.client_events("conversation.item.create", conn=1)[-1]["item"]["id"]
                        == item_id)
    last = fake.client_events("conversation.item.create", conn=1)[-1]
    assert last["item"]["content"][0]["text"] == "This is"
    assert not fake.client_events("conversation.item.truncate")
    await rec.close()
    assert fake.violations == []


async def test_handshake_5xx_is_retried(fake: FakeRealtimeServer) -> None:
    fake.handshake_statuses = [503, 502]
    rec = await open_session(fake)
    await rec.wait_type(Connected)
    assert fake.handshakes == [503, 502, 101]
    assert not rec.of(ModelError)
    await rec.close()
    assert fake.violations == []


async def test_auth_failure_is_fatal_and_key_never_leaks(fake: FakeRealtimeServer,
                                                         caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-secret-key-ABCDEFG"
    factory = OpenAIRealtimeFactory(wrong, base_url=fake.base_url, backoff_base=0.01)
    assert wrong not in repr(factory)
    s = factory.open(SessionConfig())
    rec = Recorder(s)
    await s.connect()
    err = (await rec.wait_type(ModelError))[0]
    disc = (await rec.wait_type(Disconnected))[0]
    assert err.fatal and disc.fatal and err.code == "auth_failed"
    assert "authentication failed (401)" in err.message
    assert fake.handshakes == [401]  # no retry
    assert "authentication failed" in caplog.text
    for text in (caplog.text, err.message, disc.reason, repr(rec.events)):
        assert wrong not in text
    assert not rec.of(Connected)
    # Primitives after a fatal error are harmless no-ops.
    await s.push_audio(np.zeros(CHUNK, np.int16))
    await s.create_response()
    await rec.close()
    assert scrub(f"bad {wrong}!") == "bad ***!"
    assert fake.violations == []


# --------------------------------------------------------------------------
# Call level: the worker's CallSession over the WAV transport, against the fake
# --------------------------------------------------------------------------


IN_RATE = 16000


def compose(*parts: tuple[float, np.ndarray], total_s: float) -> np.ndarray:
    out = np.zeros(int(total_s * IN_RATE), dtype=np.int16)
    for start, clip in parts:
        i = int(start * IN_RATE)
        out[i:i + len(clip)] = clip[: len(out) - i]
    return out


def call_factory(fake: FakeRealtimeServer, turn: Turn) -> OpenAIRealtimeFactory:
    return OpenAIRealtimeFactory(KEY, base_url=fake.base_url, voice="marin",
                                 instructions="Be brief.", turn_detection=turn,
                                 backoff_base=0.02)


@pytest.mark.parametrize("turn", ["local", "server"])
async def test_wav_call_turn(fake: FakeRealtimeServer, turn: Turn) -> None:
    fake.reply_ms = 800
    clip = load_wav("what_time_is_it.wav")[0]
    result = await run_wav_call(call_factory(fake, turn), compose((0.0, clip), total_s=3.2),
                                IN_RATE, config=CallConfig(turn_detection=turn),
                                realtime=True, tail_s=1.5, stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    assert result.of_type(cev.BotStartedSpeaking) and result.of_type(cev.BotStoppedSpeaking)
    # the whole reply reached the transport, sample for sample (the tone has no zero sample;
    # a late delta may leave a gap of silence, never a lost or repeated sample)
    assert np.array_equal(result.output[result.output != 0], tone(800))
    finals = [t.event.text for t in result.of_type(cev.UserTranscript) if t.event.final]
    assert finals and finals[0].startswith("user turn 1")
    spoken = [t.event for t in result.of_type(cev.BotOutput) if t.event.final]
    assert spoken[0].spoken == "This is reply number 1 from the fake model."
    upd = fake.client_events("session.update")[0]["session"]["audio"]["input"]["turn_detection"]
    if turn == "server":
        assert upd["type"] == "server_vad" and upd["interrupt_response"] is False
        assert not fake.client_events("input_audio_buffer.commit")
        assert not fake.client_events("response.create")
        assert any(e["type"] == "input_audio_buffer.speech_started" for e in fake.connections[0].sent)
    else:
        assert upd is None
        assert len(fake.client_events("input_audio_buffer.commit")) == 1
        assert len(fake.client_events("response.create")) == 1
    assert len(fake.responses) == 1
    assert fake.connections[0].closed.is_set()  # the call closed its socket
    assert fake.violations == []


def _first_item_heard(result, item_id: str) -> int:
    """Reply samples of the first item that reached the transport (before the next reply)."""
    starts = [t.step for t in result.of_type(cev.BotStartedSpeaking) if t.event.item_id != item_id]
    end = starts[0] * 480 if starts else len(result.output)
    return int(np.count_nonzero(result.output[:end]))


@pytest.mark.parametrize("turn,streaming", [("local", "slow"), ("server", "fast")])
async def test_wav_call_barge_in(fake: FakeRealtimeServer, turn: Turn, streaming: str) -> None:
    """Talking over the reply: cancel (only while it is in progress), then truncate at the
    exact played milliseconds; the interruption is answered."""
    fake.reply_audio = lambda n: reply_signal(6.0 if n == 1 else 0.5, seed=n)
    fake.speed = 1.6 if streaming == "slow" else 0
    turn_a = load_wav("speech_en_us_m3_hear_me.wav")[0]
    barge = load_wav("long_speech.wav")[0][: IN_RATE * 2]  # onset at 0.7 s
    audio = compose((0.0, turn_a), (2.9, barge), total_s=6.5)
    result = await run_wav_call(call_factory(fake, turn), audio, IN_RATE,
                                config=CallConfig(turn_detection=turn),
                                realtime=True, tail_s=2.0, stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    interrupted = result.of_type(cev.BotInterrupted)[0].event
    assert not interrupted.deleted
    item_id = interrupted.item_id
    assert fake.truncations == [(item_id, interrupted.played_ms)]
    heard = _first_item_heard(result, item_id)
    heard_ms = heard * 1000 // 24000
    # never above what was heard; at most the pause fade (5 ms) below it
    assert 0 <= heard_ms - interrupted.played_ms <= 6, (heard_ms, interrupted.played_ms)
    assert 500 < interrupted.played_ms < 6000
    kinds = [e["type"] for e in fake.events]
    if streaming == "slow":  # still streaming when the caller barged in: cancel first
        assert kinds.count("response.cancel") == 1
        assert kinds.index("response.cancel") < kinds.index("conversation.item.truncate")
        assert fake.responses[0]["status"] == "cancelled"
    else:  # the reply was complete (response.done) long before: truncate alone
        assert "response.cancel" not in kinds
        assert fake.responses[0]["status"] == "completed"
    # the caller's interruption became a turn and was answered
    assert len(fake.responses) == 2 and fake.responses[1]["status"] == "completed"
    assert len(result.of_type(cev.BotStartedSpeaking)) == 2
    assert fake.violations == []


# --------------------------------------------------------------------------
# Through real WebRTC: `v2v serve --model openai` against the fake
# --------------------------------------------------------------------------




@pytest.mark.timeout(60)
async def test_v2v_serve_model_openai_over_webrtc(fake: FakeRealtimeServer) -> None:
    fake.reply_ms = 1200
    summary, logs = await serve_and_call(
        "openai", {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}, fixture_path("hello_48k.wav"),
        lambda: fake.wait_for(lambda: bool(fake.connections) and fake.connections[0].closed.is_set(), 5),
    )
    assert summary["hangup_status"] in (200, 204), summary
    assert summary["first_reply_audio_s"] is not None, summary
    assert 0.9 <= summary["reply_duration_s"] <= 1.8, summary
    assert any(t and t.startswith("user turn 1") for t in summary["transcripts"]), summary
    assert any(t and "reply number 1" in t for t in summary["transcripts"]), summary
    upd = fake.client_events("session.update")[0]["session"]
    assert upd["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # the default
    assert fake.client_events("input_audio_buffer.append")
    assert len(fake.responses) == 1 and fake.responses[0]["status"] == "completed"
    assert fake.auth_headers == [f"Bearer {KEY}"]
    assert KEY not in logs and KEY not in json.dumps(summary)
    assert fake.violations == []


async def test_reconnect_gives_up_after_the_attempts_fatal(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    fake.drop_connections, fake.drop_after_deltas = {0}, 2
    rec = await open_session(fake)
    s = rec.session
    await rec.wait_type(Connected)
    fake.handshake_statuses = [503] * 10
    await s.send_message("user", "hello")
    await s.create_response()
    fatal = (await rec.wait_type(ModelError, where=lambda e: e.fatal))[0]
    assert fatal.code == "connect_failed" and "503" in fatal.message
    assert rec.of(Disconnected)[-1].fatal
    assert fake.handshakes == [101] + [503] * 4  # reconnect_attempts=4
    await rec.close()
    assert fake.violations == []


async def test_garbage_frame_while_connecting_is_retried(fake: FakeRealtimeServer) -> None:
    fake.garbage_frames = ["not json {"]
    rec = await open_session(fake)
    await rec.wait_type(Connected)
    assert fake.handshakes == [101, 101] and not rec.of(ModelError)
    await rec.close()


async def test_garbage_frames_on_reconnect_retry_then_fail_properly(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    fake.drop_connections, fake.drop_after_deltas = {0, 2}, 2
    rec = await open_session(fake)
    s = rec.session
    await rec.wait_type(Connected)
    # a JSON array on the first reconnect: retried, the session carries on
    fake.garbage_frames = ["[1, 2]"]
    await s.send_message("user", "hello")
    await s.create_response()
    await rec.wait_type(Connected, count=2)
    assert len(fake.connections) == 3 and not rec.of(ModelError, where=lambda e: e.fatal)
    # garbage on every attempt: the session fails for good, and says so
    fake.garbage_frames = ["nope"] * 4 + ["[]"] * 4
    await s.send_message("user", "again")
    await s.create_response()
    fatal = (await rec.wait_type(ModelError, where=lambda e: e.fatal))[0]
    assert fatal.code == "connect_failed"
    assert rec.of(Disconnected)[-1].fatal
    await rec.close()


async def test_reader_failure_fails_the_session(fake: FakeRealtimeServer) -> None:
    fake.speed = 0
    fake.drop_connections, fake.drop_after_deltas = {0}, 2
    rec = await open_session(fake)
    s = rec.session
    await rec.wait_type(Connected)

    async def broken() -> None:
        raise RuntimeError("a bug")

    s.link._open_socket = broken  # the reconnect hits an unexpected error
    await s.send_message("user", "hello")
    await s.create_response()
    fatal = (await rec.wait_type(ModelError, where=lambda e: e.fatal))[0]
    assert fatal.code == "internal_error" and "a bug" in fatal.message
    assert rec.of(Disconnected)[-1].fatal
    await rec.close()


async def test_update_session_and_close_while_connecting(fake: FakeRealtimeServer) -> None:
    rec = await open_session(fake)
    s = rec.session
    await s.update_session(instructions="Speak French.", tools=[ToolSpec("t", "a tool")])
    await fake.wait_for(lambda: len(fake.client_events("session.update")) == 2)
    upd = fake.client_events("session.update")[1]["session"]
    assert upd == {"type": "realtime", "instructions": "Speak French.", "tool_choice": "auto",
                   "tools": [{"type": "function", "name": "t", "description": "a tool",
                              "parameters": {"type": "object", "properties": {}}}]}
    assert fake.connections[0].session["instructions"] == "Speak French."
    await rec.close()
    # closing while the handshake is failing and backing off: quiet, nothing leaks
    fake.handshake_statuses = [503] * 10
    factory = OpenAIRealtimeFactory(KEY, base_url=fake.base_url, backoff_base=0.2)
    s2 = factory.open(SessionConfig())
    task = asyncio.create_task(s2.connect())
    await fake.wait_for(lambda: len(fake.handshakes) >= 2)
    await s2.close()
    await asyncio.wait_for(task, 2)
    assert s2.link._http is None and s2.link._ws is None
    assert fake.violations == []


async def test_wav_call_survives_a_dropped_model_socket(fake: FakeRealtimeServer) -> None:
    """The socket drops mid-reply: the caller is told (not fatal), the conversation is
    restored on a new connection and the next turn is answered."""
    fake.drop_connections, fake.drop_after_deltas = {0}, 3
    turn_a = load_wav("speech_en_us_m3_hear_me.wav")[0]
    turn_b = load_wav("what_time_is_it.wav")[0]
    audio = compose((0.0, turn_a), (3.0, turn_b), total_s=5.6)
    result = await run_wav_call(call_factory(fake, "local"), audio, IN_RATE,
                                config=CallConfig(turn_detection="local"),
                                realtime=True, tail_s=1.5, stop_when_idle=True)
    errors = [t.event for t in result.of_type(cev.CallError)]
    assert len(errors) == 1 and not errors[0].fatal and "reconnecting" in errors[0].message
    assert not result.of_type(cev.CallEnded) or result.call.end_reason == "input-ended"
    assert len(fake.connections) == 2 and fake.drops == 1
    restored = fake.client_events("conversation.item.create", conn=1)
    assert [e["item"]["role"] for e in restored] == ["user", "assistant"]
    assert restored[0]["item"]["content"][0]["text"].startswith("user turn 1")
    # turn B went to the new connection and was answered in full
    assert len(fake.client_events("input_audio_buffer.commit", conn=1)) == 1
    assert fake.responses[-1]["status"] == "completed"
    assert len(result.of_type(cev.BotStartedSpeaking)) == 2
    assert fake.violations == []
