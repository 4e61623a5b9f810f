"""The ``gpt-live`` model against the protocol-faithful fake GPT-Live server (tests/fake_live.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from tests.conftest import fixture_path, load_wav
from tests.fake_live import FakeLiveServer, validate_client_event
from tests.fake_realtime import tone
from tests.scripted import reply_signal
from tests.serve_util import serve_and_call
from tests.test_openai_realtime import CHUNK, IN_RATE, Recorder, compose, push, speech
from v2v.worker import events as cev
from v2v.worker.call import CallConfig
from v2v.worker.models.base import (
    AudioDelta,
    AudioDone,
    Connected,
    Disconnected,
    FunctionCall,
    InputTranscript,
    ModelError,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    ToolSpec,
)
from v2v.worker.models.gpt_live import GptLiveFactory, pick_tool
from v2v.worker.models.openai_realtime.endpoint import live_url
from v2v.worker.wavcall import run_wav_call

KEY = "sk-test-live-key-0123456789"
TOOLS = [ToolSpec("get_time", "Tell the current time of day."),
         ToolSpec("tell_story", "Tell a long story.")]

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake():
    async with FakeLiveServer(api_key=KEY) as server:
        yield server


def factory(fake: FakeLiveServer, key: str = KEY, **kw: Any) -> GptLiveFactory:
    return GptLiveFactory(key, base_url=fake.base_url, voice="marin", instructions="Be brief.",
                          backoff_base=0.02, reconnect_attempts=4, **kw)


async def open_session(fake: FakeLiveServer, tools: list[ToolSpec] | None = None) -> Recorder:
    s = factory(fake, tools=tools).open(SessionConfig(turn_detection="server"))
    rec = Recorder(s)
    await s.connect()
    return rec


async def a_turn(rec: Recorder, ms: int = 500) -> None:
    """The caller speaks ``ms`` then is silent long enough for the model's VAD to end the turn."""
    await push(rec.session, speech(ms))
    await push(rec.session, np.zeros(CHUNK * 7, np.int16))


def test_live_url_and_strict_validator() -> None:
    assert live_url("https://api.openai.com/v1") == "wss://api.openai.com/v1/live/sessions"
    assert live_url("http://127.0.0.1:9/v1/") == "ws://127.0.0.1:9/v1/live/sessions"
    ok = json.dumps({"type": "session.commentary.append", "content": "x", "delegation_id": None})
    assert validate_client_event(ok)[1] is None
    missing = json.dumps({"type": "session.commentary.append", "content": "x"})
    assert "delegation_id" in (validate_client_event(missing)[1] or "")
    extra = json.dumps({"type": "session.close", "bogus": 1})
    assert "unknown field" in (validate_client_event(extra)[1] or "")
    assert validate_client_event(json.dumps({"type": "response.cancel"}))[0] is None


async def test_start_shape_and_a_whole_turn(fake: FakeLiveServer) -> None:
    fake.speed = 0
    rec = await open_session(fake, tools=TOOLS)
    await rec.wait_type(Connected)
    first = fake.events[0]
    assert first["type"] == "session.start"
    s = first["session"]
    assert s["model"] == "gpt-live-1" and s["delegation"] == {"type": "client"}
    assert s["audio"] == {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}}
    assert s["instructions"].startswith("Be brief.") and "- get_time: Tell the current time" in s["instructions"]
    assert "input" not in s
    await a_turn(rec)
    done = (await rec.wait_type(ResponseDone))[0]
    created = rec.of(ResponseCreated)[0]
    assert done.response_id == created.response_id and done.status == "completed"
    item_ids = {e.item_id for e in rec.of(AudioDelta)}
    assert len(item_ids) == 1
    pcm = np.concatenate([e.pcm for e in rec.of(AudioDelta)])
    assert np.array_equal(pcm, tone(1000))
    assert rec.of(AudioDone)[0].item_id in item_ids
    assert rec.of(OutputTranscriptDone)[0].text == "This is reply number 1 from the fake live model."
    finals = rec.of(InputTranscript, lambda e: e.final)
    assert [e.text for e in finals] == ["caller turn 1"]
    # the caller's transcript is final before the answer starts
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds.index("ResponseCreated") > max(i for i, e in enumerate(rec.events)
                                                  if isinstance(e, InputTranscript) and e.final)
    await rec.close()
    assert fake.client_events("session.close")
    assert fake.connections[0].closed.is_set()
    assert fake.violations == []


async def test_delegation_becomes_a_tool_call(fake: FakeLiveServer) -> None:
    fake.speed = 0
    fake.delegations = 1
    fake.transcript_for = lambda n: "what time is it"
    rec = await open_session(fake, tools=TOOLS)
    await a_turn(rec)
    call = (await rec.wait_type(FunctionCall))[0]
    assert call.name == "get_time" and call.arguments == "{}"
    assert call.call_id.startswith("deleg_")
    await rec.session.function_output(call.call_id, json.dumps({"time": "10:42"}))
    await rec.wait_type(ResponseDone)
    assert fake.commentaries == [(call.call_id, 'Result of get_time: {"time": "10:42"}')]
    spoken = rec.of(OutputTranscriptDone)[0].text
    assert spoken.startswith("Here is what I found: Result of get_time")
    # a second output for the same delegation is not sent (it is closed)
    await rec.session.function_output(call.call_id, "again")
    await rec.close()
    assert len(fake.client_events("session.commentary.append")) == 1
    assert fake.violations == []


def test_pick_tool() -> None:
    assert pick_tool(TOOLS, "please tell me a story").name == "tell_story"  # type: ignore[union-attr]  # not None here
    assert pick_tool(TOOLS, "what is the time").name == "get_time"  # type: ignore[union-attr]  # not None here
    assert pick_tool([], "anything") is None


async def test_server_error_is_reported_and_the_session_goes_on(fake: FakeLiveServer) -> None:
    fake.speed = 0
    fake.errors = [("rate_limit_exceeded", "slow down")]
    rec = await open_session(fake)
    await a_turn(rec)
    err = (await rec.wait_type(ModelError))[0]
    assert err.code == "rate_limit_exceeded" and err.message == "slow down" and not err.fatal
    await a_turn(rec)
    await rec.wait_type(ResponseDone)
    assert rec.of(ResponseDone)[0].status == "completed"
    await rec.close()
    assert fake.violations == []


async def test_reconnect_after_drop_restores_the_conversation(fake: FakeLiveServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake.speed = 0
    rec = await open_session(fake)
    await a_turn(rec)
    await rec.wait_type(ResponseDone)
    fake.drop_connections, fake.drop_after_deltas = {0}, 3
    await a_turn(rec)
    await rec.wait_type(Connected, count=2)
    assert rec.of(ResponseDone)[1].status == "failed"
    err = rec.of(ModelError)[0]
    assert err.code == "connection_lost" and not err.fatal and not rec.of(Disconnected)[0].fatal
    assert fake.drops == 1 and len(fake.connections) == 2
    history = fake.starts[1]["input"]
    texts = [(m["role"], m["content"][0]["text"]) for m in history]
    assert texts == [("user", "caller turn 1"),
                     ("assistant", "This is reply number 1 from the fake live model."),
                     ("user", "caller turn 2"),
                     ("assistant", "This is reply")]  # what had streamed before the drop
    await a_turn(rec)
    await rec.wait_type(ResponseDone, count=3)
    assert rec.of(ResponseDone)[2].status == "completed"
    await rec.close()
    assert KEY not in caplog.text
    assert fake.violations == []


async def test_auth_failure_is_fatal_and_the_key_never_leaks(fake: FakeLiveServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-live-key-ABCDEFG"
    f = factory(fake, key=wrong)
    assert wrong not in repr(f)
    s = f.open(SessionConfig())
    rec = Recorder(s)
    await s.connect()
    err = (await rec.wait_type(ModelError))[0]
    assert err.fatal and err.code == "auth_failed" and (await rec.wait_type(Disconnected))[0].fatal
    assert fake.handshakes == [401]
    for text in (caplog.text, err.message, repr(rec.events)):
        assert wrong not in text
    await rec.close()
    assert fake.violations == []


async def test_handshake_5xx_is_retried(fake: FakeLiveServer) -> None:
    fake.handshake_statuses = [503]
    rec = await open_session(fake)
    await rec.wait_type(Connected)
    assert fake.handshakes == [503, 101]
    await rec.close()
    assert fake.violations == []


# -- through the worker (WAV transport) ---------------------------------------------


async def test_wav_call_turn(fake: FakeLiveServer) -> None:
    fake.reply_ms = 800
    clip = load_wav("what_time_is_it.wav")[0]
    result = await run_wav_call(factory(fake), compose((0.0, clip), total_s=3.2), IN_RATE,
                                config=CallConfig(turn_detection="server"), realtime=True, tail_s=1.5,
                                stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    assert result.of_type(cev.BotStartedSpeaking) and result.of_type(cev.BotStoppedSpeaking)
    assert np.array_equal(result.output[result.output != 0], tone(800))
    spoken = [t.event for t in result.of_type(cev.BotOutput) if t.event.final]
    assert spoken[0].spoken == "This is reply number 1 from the fake live model."
    assert [t.event.text for t in result.of_type(cev.UserTranscript) if t.event.final] == ["caller turn 1"]
    assert fake.connections[0].closed.is_set()
    assert fake.violations == []


async def test_wav_call_barge_in(fake: FakeLiveServer) -> None:
    """The caller talks over a long answer: the model yields, the worker cuts playout and
    reports the part that was heard; no truncation is sent (GPT-Live has none)."""
    fake.reply_audio = lambda n: reply_signal(6.0 if n == 1 else 0.5, seed=n)
    fake.speed = 1.6
    turn_a = load_wav("speech_en_us_m3_hear_me.wav")[0]
    barge = load_wav("long_speech.wav")[0][: IN_RATE * 2]
    audio = compose((0.0, turn_a), (2.9, barge), total_s=6.5)
    result = await run_wav_call(factory(fake), audio, IN_RATE, config=CallConfig(turn_detection="server"),
                                realtime=True, tail_s=2.0, stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    interrupted = result.of_type(cev.BotInterrupted)[0].event
    assert not interrupted.deleted and 500 < interrupted.played_ms < 6000
    assert fake.stopped_replies == 1
    out = [t.event for t in result.of_type(cev.BotOutput) if t.event.final and t.event.interrupted]
    assert out and "This is reply number 1 from the fake live model.".startswith(out[0].spoken)
    assert out[0].unspoken
    assert len(result.of_type(cev.BotStartedSpeaking)) == 2  # the interruption was answered
    assert fake.violations == []


# -- full duplex: the model owns turn-taking, its voice plays live -------------------------------

FRAME = 480  # one 20 ms frame of playout at 24 kHz


class _StopClock:
    """on_step hook: the first step at whose start ``stopped()`` held (the model had stopped)."""

    def __init__(self, stopped: Any) -> None:
        self.stopped = stopped
        self.step: int | None = None

    def __call__(self, step: int, call: Any) -> None:
        if self.step is None and self.stopped():
            self.step = step


def _live(fake: FakeLiveServer) -> None:
    """The fake streams like a full-duplex model: 20 ms deltas, in real time."""
    fake.speed, fake.delta_ms = 1.0, 20


def test_gpt_live_is_full_duplex(fake: FakeLiveServer) -> None:
    caps = factory(fake).capabilities
    assert caps.full_duplex and caps.server_vad and not caps.truncation


@pytest.mark.timeout(40)
async def test_full_duplex_model_stop_is_heard_within_one_frame(fake: FakeLiveServer) -> None:
    """The caller talks over a live answer; the model yields: the caller hears its voice stop within one
    20 ms frame of the model's stop. v2v's own confirmation is set out of reach, so what is measured is
    the model's stop played live (no queue behind it), not v2v cutting the playout."""
    _live(fake)
    answer = tone(4000)
    fake.reply_audio = lambda n: answer if n == 1 else np.zeros(FRAME * 5, np.int16)
    turn = load_wav("what_time_is_it.wav")[0]
    talk = load_wav("long_speech.wav")[0][: int(IN_RATE * 1.2)]
    audio = compose((0.0, turn), (3.2, talk), total_s=5.0)
    stop = _StopClock(lambda: fake.stopped_replies > 0)
    result = await run_wav_call(factory(fake), audio, IN_RATE, on_step=stop, tail_s=1.5, realtime=True,
                                config=CallConfig(turn_detection="server", min_interruption_ms=3000))
    assert [t.event for t in result.of_type(cev.CallError)] == []
    assert fake.stopped_replies == 1 and stop.step is not None
    played = result.output[result.output != 0]
    assert 0 < len(played) < len(answer) and np.array_equal(played, answer[: len(played)])
    after = result.output[stop.step * FRAME:]
    assert np.count_nonzero(after) <= FRAME, f"{np.count_nonzero(after)} samples heard after the model stopped"
    assert not result.of_type(cev.BotInterrupted)  # v2v did not cut it: the model stopped
    assert fake.violations == []


@pytest.mark.timeout(40)
async def test_full_duplex_backchannel_does_not_cut_the_assistant(fake: FakeLiveServer) -> None:
    """A 150 ms "mm-hm" from the caller while the assistant talks: the assistant's voice is neither
    paused nor cut, nothing is sent that would stop the model, it plays to its end, and the end is heard
    within one frame of the model's last sample (no backlog was built up)."""
    _live(fake)
    answer = tone(3000)
    fake.reply_audio = lambda n: answer
    turn = load_wav("what_time_is_it.wav")[0]
    mm_hm = load_wav("long_speech.wav")[0][790 * 16: 940 * 16]  # 150 ms, voiced throughout
    audio = compose((0.0, turn), (3.0, mm_hm), total_s=3.4)
    done = _StopClock(lambda: fake.audio_sent >= len(answer))
    result = await run_wav_call(factory(fake), audio, IN_RATE, on_step=done, tail_s=3.5, realtime=True,
                                config=CallConfig(turn_detection="server"), stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    started = result.of_type(cev.BotStartedSpeaking)[0].step
    heard = [t for t in result.of_type(cev.UserStartedSpeaking) if t.step > started]
    assert heard, "the worker's VAD did not hear the backchannel"
    assert fake.backchannels == 1 and fake.stopped_replies == 0 and fake.turns == 1
    assert {e["type"] for e in fake.events} <= {"session.start", "session.input_audio.append", "session.close"}
    assert np.array_equal(result.output[result.output != 0], answer)  # all of it, in order
    assert not result.of_type(cev.BotInterrupted) and not result.of_type(cev.FalseInterruption)
    assert done.step is not None
    after = result.output[done.step * FRAME:]
    assert np.count_nonzero(after) <= FRAME, f"{np.count_nonzero(after)} samples heard after the model's end"
    assert fake.violations == []


# -- through real WebRTC: `v2v serve --model gpt-live` against the fake ---------------------------


@pytest.mark.timeout(60)
async def test_v2v_serve_model_gpt_live_over_webrtc(fake: FakeLiveServer) -> None:
    fake.reply_ms = 1200
    summary, logs = await serve_and_call(
        "gpt-live", {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}, fixture_path("hello_48k.wav"),
        lambda: fake.wait_for(lambda: bool(fake.connections) and fake.connections[0].closed.is_set(), 5),
    )
    assert summary["hangup_status"] in (200, 204), summary
    assert summary["first_reply_audio_s"] is not None, summary
    assert 0.9 <= summary["reply_duration_s"] <= 1.8, summary
    assert "caller turn 1" in summary["transcripts"], summary
    assert any(t and "reply number 1" in t for t in summary["transcripts"]), summary
    assert fake.starts[0]["model"] == "gpt-live-1"
    assert fake.client_events("session.input_audio.append")
    assert fake.auth_headers == [f"Bearer {KEY}"]
    assert KEY not in logs and KEY not in json.dumps(summary)
    assert fake.violations == []


@pytest.mark.timeout(60)
async def test_sip_call_against_the_fake(fake: FakeLiveServer, monkeypatch) -> None:
    """A real SIP/UDP call (PCMU at 8 kHz) held by --model gpt-live against the fake."""
    from tests.sip.harness import record_call_events, wait_for
    from tests.sip.harness import running_server as sip_server
    from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    speech, rate = load_wav("speech_8k.wav")
    audio = np.concatenate([speech, np.zeros(6 * rate, np.int16)])
    async with sip_server(model="gpt-live") as srv:
        events = record_call_events(srv)
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(audio)
        try:
            call = Call(sip, rtp, f"sip:assistant@127.0.0.1:{srv.sip_port}")
            assert (await call.invite(offer_sdp(rtp.port, "0 101"))).status == 200
            await wait_for(lambda: any(isinstance(e, cev.BotOutput) and e.final for e in events), 20, "the answer")
            await wait_for(lambda: np.abs(rtp.received_audio()).max(initial=0) > 2000, 5, "the answer's audio")
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()
        await fake.wait_for(lambda: fake.connections[0].closed.is_set(), 5)
    assert [e.text for e in events if isinstance(e, cev.UserTranscript) and e.final] == ["caller turn 1"]
    assert fake.replies == ["This is reply number 1 from the fake live model."]
    assert fake.client_events("session.close") and fake.violations == []


async def test_session_closed_by_the_server_is_fatal(fake: FakeLiveServer) -> None:
    fake.end_reason = "expired"
    rec = await open_session(fake)
    await a_turn(rec)
    err = (await rec.wait_type(ModelError))[0]
    assert err.fatal and err.code == "session_expired" and "expired" in err.message
    assert (await rec.wait_type(Disconnected))[0].fatal
    await rec.close()
    assert len(fake.connections) == 1  # no reconnection
    assert fake.violations == []
