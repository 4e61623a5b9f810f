"""The ``gemini`` model against the protocol-faithful fake Gemini Live server (tests/fake_gemini.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from tests.conftest import fixture_path, load_wav
from tests.fake_gemini import FakeGeminiServer, validate_client_message
from tests.fake_realtime import tone
from tests.scripted import reply_signal
from tests.serve_util import serve_and_call
from tests.test_openai_realtime import IN_RATE, Recorder, compose
from v2v.worker import events as cev
from v2v.worker.call import CallConfig
from v2v.worker.models.base import (
    AudioDelta,
    Connected,
    Disconnected,
    FunctionCall,
    InputTranscript,
    ModelError,
    OutputTranscriptDone,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    ToolSpec,
)
from v2v.worker.models.gemini_live import GeminiLiveFactory, gemini_url
from v2v.worker.wavcall import run_wav_call

KEY = "gemini-test-key-0123456789"
CHUNK16 = 1600  # 100 ms at 16 kHz
TOOLS = [ToolSpec("get_time", "Tell the current time.",
                  {"type": "object", "properties": {"time_zone": {"type": "string"}}})]

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake():
    async with FakeGeminiServer(api_key=KEY) as server:
        yield server


def factory(fake: FakeGeminiServer, key: str = KEY, **kw: Any) -> GeminiLiveFactory:
    return GeminiLiveFactory(key, gemini_base_url=fake.base_url, voice="Puck", instructions="Be brief.",
                             backoff_base=0.02, reconnect_attempts=4, **kw)


async def open_session(fake: FakeGeminiServer, tools: list[ToolSpec] | None = None) -> Recorder:
    s = factory(fake, tools=tools).open(SessionConfig(turn_detection="server"))
    rec = Recorder(s)
    await s.connect()
    return rec


def speech16(ms: int) -> np.ndarray:
    n = ms * IN_RATE // 1000
    return np.round(6000 * np.sin(2 * np.pi * 220 * np.arange(n) / IN_RATE)).astype(np.int16)


async def push16(session: Any, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), CHUNK16):
        await session.push_audio(pcm[i:i + CHUNK16])


async def a_turn(rec: Recorder, ms: int = 500) -> None:
    await push16(rec.session, speech16(ms))
    await push16(rec.session, np.zeros(CHUNK16 * 7, np.int16))


def test_url_and_strict_validator() -> None:
    assert gemini_url("https://generativelanguage.googleapis.com") == (
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    ok = json.dumps({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "x"}]}], "turnComplete": True}})
    assert validate_client_message(ok)[1] is None
    assert "Extra inputs" in (validate_client_message(json.dumps({"realtimeInput": {"bogus": 1}}))[1] or "")
    snake = json.dumps({"clientContent": {"turn_complete": True}})
    assert "snake_case" in (validate_client_message(snake)[1] or "")
    two = json.dumps({"clientContent": {}, "toolResponse": {}})
    assert "exactly one" in (validate_client_message(two)[1] or "")


async def test_setup_shape_and_a_whole_turn(fake: FakeGeminiServer) -> None:
    fake.speed = 0
    rec = await open_session(fake, tools=TOOLS)
    await rec.wait_type(Connected)
    setup = fake.messages[0]["setup"]
    assert setup["model"] == "models/gemini-live-2.5-flash-native-audio"
    assert setup["generationConfig"] == {"responseModalities": ["AUDIO"], "speechConfig": {
        "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}}}
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    decl = setup["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_time" and decl["parametersJsonSchema"]["properties"]["time_zone"]
    assert "inputAudioTranscription" in setup and "outputAudioTranscription" in setup
    assert fake.key_headers == [KEY]
    await a_turn(rec)
    done = (await rec.wait_type(ResponseDone))[0]
    assert done.status == "completed"
    pcm = np.concatenate([e.pcm for e in rec.of(AudioDelta)])
    assert np.array_equal(pcm, tone(1000))  # 24 kHz out, sample for sample
    assert fake.audio_in == 1200 * 16  # 16 kHz in
    assert rec.of(OutputTranscriptDone)[0].text == "This is Gemini reply number 1."
    assert [e.text for e in rec.of(InputTranscript, lambda e: e.final)] == ["caller turn 1"]
    await rec.close()
    assert fake.connections[0].closed.is_set()
    assert fake.violations == []


async def test_tool_call_round_trip(fake: FakeGeminiServer) -> None:
    fake.speed = 0
    fake.tool_calls = [("get_time", {"time_zone": "UTC"})]
    rec = await open_session(fake, tools=TOOLS)
    await a_turn(rec)
    call = (await rec.wait_type(FunctionCall))[0]
    assert call.name == "get_time" and json.loads(call.arguments) == {"time_zone": "UTC"}
    await rec.session.function_output(call.call_id, json.dumps({"time": "10:42"}))
    await rec.wait_type(ResponseDone)
    assert fake.tool_responses == [{"id": call.call_id, "name": "get_time", "response": {"time": "10:42"}}]
    assert rec.of(OutputTranscriptDone)[0].text.startswith("The tool said")
    await rec.close()
    assert fake.violations == []


async def test_interrupted_ends_the_turn_as_cancelled(fake: FakeGeminiServer) -> None:
    fake.speed = 1.0
    fake.reply_ms = 4000
    rec = await open_session(fake)
    await a_turn(rec)
    await rec.wait_type(AudioDelta, count=3)
    await push16(rec.session, speech16(300))
    await rec.wait_type(SpeechStarted)
    done = (await rec.wait_type(ResponseDone))[0]
    assert done.status == "cancelled" and fake.interruptions == 1
    await rec.close()
    assert fake.violations == []


async def test_reconnect_resumes_with_the_handle(fake: FakeGeminiServer) -> None:
    fake.speed = 0
    rec = await open_session(fake)
    await a_turn(rec)
    await rec.wait_type(ResponseDone)
    await fake.wait_for(lambda: bool(fake.handles))
    handle = next(iter(fake.handles))
    fake.drop_connections, fake.drop_after_deltas = {0}, 3
    await a_turn(rec)
    await rec.wait_type(Connected, count=2)
    assert rec.of(ResponseDone)[1].status == "failed"
    assert rec.of(ModelError)[0].code == "connection_lost" and not rec.of(Disconnected)[0].fatal
    assert fake.setups[1]["sessionResumption"] == {"handle": handle} and fake.resumed == [handle]
    assert fake.client_turns == []  # resumed on the server: nothing re-sent
    await a_turn(rec)
    await rec.wait_type(ResponseDone, count=3)
    await rec.close()
    assert fake.violations == []


async def test_reconnect_without_a_handle_resends_the_conversation(fake: FakeGeminiServer) -> None:
    fake.speed = 0
    fake.drop_connections, fake.drop_after_deltas = {0}, 3
    rec = await open_session(fake)
    await a_turn(rec)
    await rec.wait_type(Connected, count=2)
    assert "handle" not in fake.setups[1]["sessionResumption"]
    await fake.wait_for(lambda: len(fake.client_turns) == 2)
    assert fake.client_turns == [{"role": "user", "parts": [{"text": "caller turn 1"}]},
                                 {"role": "model", "parts": [{"text": "This is Gemini"}]}]
    await rec.close()
    assert fake.violations == []


async def test_bad_key_is_fatal_and_never_leaks(fake: FakeGeminiServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "gemini-wrong-key-ABCDEFG"
    f = factory(fake, key=wrong)
    assert wrong not in repr(f)
    s = f.open(SessionConfig())
    rec = Recorder(s)
    await s.connect()
    err = (await rec.wait_type(ModelError))[0]
    assert err.fatal and err.code == "auth_failed" and "1007" in err.message
    assert (await rec.wait_type(Disconnected))[0].fatal
    assert fake.handshakes == [101]  # no retry
    for text in (caplog.text, err.message, repr(rec.events)):
        assert wrong not in text
    await rec.close()
    assert fake.violations == []


# -- through the worker ---------------------------------------------------------------------------


async def test_wav_call_turn(fake: FakeGeminiServer) -> None:
    fake.reply_ms = 800
    clip = load_wav("what_time_is_it.wav")[0]
    result = await run_wav_call(factory(fake), compose((0.0, clip), total_s=3.2), IN_RATE,
                                config=CallConfig(turn_detection="server"), realtime=True, tail_s=1.5,
                                stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    assert np.array_equal(result.output[result.output != 0], tone(800))
    spoken = [t.event for t in result.of_type(cev.BotOutput) if t.event.final]
    assert spoken[0].spoken == "This is Gemini reply number 1."
    assert [t.event.text for t in result.of_type(cev.UserTranscript) if t.event.final] == ["caller turn 1"]
    assert fake.violations == []


async def test_wav_call_barge_in(fake: FakeGeminiServer) -> None:
    """Talking over a long answer: Gemini reports ``interrupted``; the worker cuts playout and
    reports what was played; nothing is truncated on the server (it cannot)."""
    fake.reply_audio = lambda n: reply_signal(6.0 if n == 1 else 0.5, seed=n)
    fake.reply_text = lambda n: f"This is Gemini reply number {n} and it goes on and on."
    fake.speed = 1.6
    turn_a = load_wav("speech_en_us_m3_hear_me.wav")[0]
    barge = load_wav("long_speech.wav")[0][: IN_RATE * 2]
    audio = compose((0.0, turn_a), (2.9, barge), total_s=6.5)
    result = await run_wav_call(factory(fake), audio, IN_RATE, config=CallConfig(turn_detection="server"),
                                realtime=True, tail_s=2.0, stop_when_idle=True)
    assert [t.event for t in result.of_type(cev.CallError)] == []
    interrupted = result.of_type(cev.BotInterrupted)[0].event
    assert not interrupted.deleted and 500 < interrupted.played_ms < 6000
    assert fake.interruptions == 1
    out = [t.event for t in result.of_type(cev.BotOutput) if t.event.final and t.event.interrupted]
    assert out and "This is Gemini reply number 1 and it goes on and on.".startswith(out[0].spoken)
    assert len(result.of_type(cev.BotStartedSpeaking)) == 2
    assert fake.violations == []


@pytest.mark.timeout(60)
async def test_v2v_serve_model_gemini_over_webrtc(fake: FakeGeminiServer) -> None:
    fake.reply_ms = 1200
    summary, logs = await serve_and_call(
        "gemini", {"GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": fake.base_url}, fixture_path("hello_48k.wav"),
        lambda: fake.wait_for(lambda: bool(fake.connections) and fake.connections[0].closed.is_set(), 5),
    )
    assert summary["hangup_status"] in (200, 204), summary
    assert summary["first_reply_audio_s"] is not None, summary
    assert 0.9 <= summary["reply_duration_s"] <= 1.8, summary
    assert "caller turn 1" in summary["transcripts"], summary
    assert any(t and "Gemini reply number 1" in t for t in summary["transcripts"]), summary
    assert fake.key_headers == [KEY]
    assert KEY not in logs and KEY not in json.dumps(summary)
    assert fake.violations == []


@pytest.mark.timeout(60)
async def test_sip_call_against_the_fake(fake: FakeGeminiServer, monkeypatch) -> None:
    """A real SIP/UDP call (PCMU at 8 kHz) held by --model gemini: the caller's turn reaches the model
    at 16 kHz, its 24 kHz answer comes back down the line."""
    from tests.sip.harness import record_call_events, wait_for
    from tests.sip.harness import running_server as sip_server
    from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_BASE_URL", fake.base_url)
    speech, rate = load_wav("speech_8k.wav")
    audio = np.concatenate([speech, np.zeros(6 * rate, np.int16)])
    async with sip_server(model="gemini") as srv:
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
    assert fake.replies == ["This is Gemini reply number 1."]
    assert fake.audio_in > 0 and fake.violations == []
