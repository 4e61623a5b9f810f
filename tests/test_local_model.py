"""The offline ``local`` model: pocketsphinx in, rule-based brain + tools, espeak-ng out.

Real recognizer and synthesizer throughout (no mocks); caller audio is the
committed espeak-ng fixtures under tests/fixtures/local/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from v2v.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from v2v.media.resample import Resampler
from v2v.worker import events as ev
from v2v.worker.models import base as mb
from v2v.worker.models import local_brain as brain
from v2v.worker.models.local import LocalModelFactory, LocalSession, system_utterance, trim_quiet
from v2v.worker.models.local_stt import is_narrowband, shared_recognizer
from v2v.worker.models.local_tts import shared_tts, split_sentences
from v2v.worker.wavcall import read_wav

LOCAL = Path(__file__).parent / "fixtures" / "local"
RATE = 24000
TIMEOUT = 20.0


def fixture_24k(name: str) -> np.ndarray:
    pcm, rate = read_wav(LOCAL / f"{name}.wav")
    rs = Resampler(rate, RATE)
    return np.concatenate([rs.process(pcm), rs.flush()])


class Collector:
    """Reads a session's events into a list; tests wait on predicates over it."""

    def __init__(self, session: mb.ModelSession) -> None:
        self.events: list[mb.ModelEvent] = []
        self._cond = asyncio.Condition()
        self._listeners: list[Callable[[mb.ModelEvent], None]] = []
        self.task = asyncio.get_running_loop().create_task(self._run(session))

    async def _run(self, session: mb.ModelSession) -> None:
        async for e in session.events():
            self.events.append(e)
            for cb in list(self._listeners):
                await cb(e) if asyncio.iscoroutinefunction(cb) else cb(e)
            async with self._cond:
                self._cond.notify_all()

    def on(self, cb: Callable[[mb.ModelEvent], None]) -> None:
        self._listeners.append(cb)

    def of(self, cls: type, start: int = 0) -> list:
        return [e for e in self.events[start:] if isinstance(e, cls)]

    async def wait(self, pred: Callable[[], object], timeout: float = TIMEOUT) -> None:
        async def _wait() -> None:
            async with self._cond:
                await self._cond.wait_for(pred)

        await asyncio.wait_for(_wait(), timeout)

    async def wait_done(self, start: int = 0, count: int = 1) -> list[mb.ResponseDone]:
        await self.wait(lambda: len(self.of(mb.ResponseDone, start)) >= count)
        return self.of(mb.ResponseDone, start)


@pytest.fixture
def factory() -> LocalModelFactory:
    return LocalModelFactory()


@pytest.fixture
async def session(factory: LocalModelFactory):
    s = factory.open(mb.SessionConfig(tools=[spec for spec, _ in factory.tools()]))
    col = Collector(s)
    await s.connect()
    await col.wait(lambda: col.of(mb.Connected))
    s.collector = col  # type: ignore[attr-defined]  # the tests reach the session's collector through it
    yield s
    await s.close()
    await asyncio.wait_for(col.task, 5)


async def say(session: LocalSession, name: str) -> None:
    """Push a fixture in 100 ms chunks and end the turn, as the worker does."""
    pcm = fixture_24k(name)
    for i in range(0, len(pcm), 2400):
        await session.push_audio(pcm[i : i + 2400])
    await session.commit_input()


async def run_tool(factory: LocalModelFactory, call: mb.FunctionCall) -> str:
    funcs = {spec.name: func for spec, func in factory.tools()}
    return await funcs[call.name](**json.loads(call.arguments))


def spoken(col: Collector, start: int) -> tuple[str, list[int], int]:
    deltas = col.of(mb.OutputTranscriptDelta, start)
    audio = sum(len(e.pcm) for e in col.of(mb.AudioDelta, start))
    return "".join(d.text for d in deltas), [d.audio_offset for d in deltas], audio


# ---------------------------------------------------------------------------


async def test_what_time_is_it_calls_get_time_then_speaks_the_time(session, factory) -> None:
    col: Collector = session.collector
    await say(session, "what_time_is_it")
    transcripts = col.of(mb.InputTranscript)
    assert [(t.text, t.final) for t in transcripts] == [("what time is it", True)]
    assert col.of(mb.InputCommitted)[0].item_id == transcripts[0].item_id

    await session.create_response()
    await col.wait_done()
    calls = col.of(mb.FunctionCall)
    assert [c.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].arguments) == {}
    assert not col.of(mb.AudioDelta)

    output = await run_tool(factory, calls[0])
    time_text = json.loads(output)["text"]
    mark = len(col.events)
    await session.function_output(calls[0].call_id, output)
    await session.create_response()
    done = await col.wait_done(mark)
    assert done[0].status == "completed"
    text, offsets, audio = spoken(col, mark)
    assert text == time_text and time_text.startswith("It is ")
    assert col.of(mb.OutputTranscriptDone, mark)[0].text == time_text
    assert audio > RATE // 2
    assert offsets == sorted(offsets) and offsets[-1] < audio
    streamed = (mb.AudioDelta, mb.OutputTranscriptDelta)
    kinds = [type(e).__name__ for e in col.events[mark:] if not isinstance(e, streamed)]
    assert kinds == ["ResponseCreated", "OutputTranscriptDone", "AudioDone", "ResponseDone"]
    assert session.history[-1] == ("assistant", time_text)


@pytest.mark.parametrize(
    "name,text",
    [
        ("what_time_is_it", "what time is it"),
        ("tell_me_a_story", "tell me a story"),
        ("what_can_you_do", "what can you do"),
        ("hello_there", "hello there"),
        ("please_open_the_door", "please open the door"),
    ],
)
async def test_recognition_of_fixtures(session, name: str, text: str) -> None:
    await say(session, name)
    assert session.collector.of(mb.InputTranscript)[-1].text == text


async def test_story_is_long_with_increasing_word_offsets_and_truncation_cuts_text(session, factory) -> None:
    col: Collector = session.collector
    await say(session, "tell_me_a_story")
    await session.create_response()
    await col.wait_done()
    call = col.of(mb.FunctionCall)[0]
    assert call.name == "tell_story"
    mark = len(col.events)
    await session.function_output(call.call_id, await run_tool(factory, call))
    t0 = asyncio.get_running_loop().time()
    await session.create_response()
    await col.wait_done(mark)
    elapsed = asyncio.get_running_loop().time() - t0

    text, offsets, audio = spoken(col, mark)
    assert text == brain.STORY
    assert audio > 60 * RATE  # a minute or more of speech
    assert elapsed < audio / RATE / 10  # streamed much faster than real time
    assert len(offsets) > 200 and offsets[0] == 0
    assert all(b > a for a, b in itertools.pairwise(offsets))
    assert offsets[-1] < audio
    deltas = col.of(mb.AudioDelta, mark)
    assert len({d.item_id for d in deltas}) == 1 and len(deltas) > 100  # streamed in chunks

    item_id = deltas[0].item_id
    cut_ms = 5000
    await session.truncate_item(item_id, 0, cut_ms)
    item = next(i for i in session.items if i.id == item_id)
    words = col.of(mb.OutputTranscriptDelta, mark)
    expected = "".join(w.text for w in words if w.audio_offset < cut_ms * RATE // 1000).rstrip()
    assert item.text == expected and item.truncated_ms == cut_ms
    assert brain.STORY.startswith(item.text) and 5 < len(item.text.split()) < 25
    next_word = words[len(expected.split())]
    assert next_word.audio_offset >= cut_ms * RATE // 1000

    # bad truncations are errors and change nothing
    await session.truncate_item(item_id, 0, 10 * 60 * 1000)
    await session.truncate_item("nope", 0, 100)
    await col.wait(lambda: len(col.of(mb.ModelError)) >= 2)
    assert item.text == expected

    # "go on" resumes the story where the caller cut it
    mark = len(col.events)
    await session.send_message("user", "go on")
    await session.create_response()
    await col.wait_done(mark)
    resumed = col.of(mb.OutputTranscriptDone, mark)[0].text
    assert resumed == "As I was saying: " + brain.STORY[len(item.text):].strip()

    await session.delete_item(item_id)
    assert all(i.id != item_id for i in session.items)


async def test_cancel_stops_the_stream(session) -> None:
    col: Collector = session.collector
    full, _ = await shared_tts().synthesize(brain.STORY)
    # No tools registered: the session runs its own tool and speaks at once.
    session.config.tools = []
    await session.send_message("user", "tell me a story")
    cancelled = asyncio.Event()

    async def cancel_on_first_audio(e: mb.ModelEvent) -> None:
        if isinstance(e, mb.AudioDelta) and not cancelled.is_set():
            cancelled.set()
            await session.cancel_response()

    col.on(cancel_on_first_audio)
    await session.create_response()
    done = await col.wait_done()
    assert done[0].status == "cancelled"
    n_audio = sum(len(e.pcm) for e in col.of(mb.AudioDelta))
    assert 0 < n_audio < len(full) // 2
    assert not col.of(mb.OutputTranscriptDone) and not col.of(mb.AudioDone)
    assert isinstance(col.events[-1], mb.ResponseDone)  # nothing after it
    # the session answers again afterwards
    await session.send_message("user", "hello")
    await session.create_response()
    done = await col.wait_done(count=2)
    assert done[1].status == "completed"
    assert col.of(mb.OutputTranscriptDone)[-1].text == brain.GREETING


async def test_text_turns_greeting_fallback_and_errors(session) -> None:
    col: Collector = session.collector
    await session.send_message("system", "Greet the caller.")
    await session.create_response()
    await col.wait_done()
    assert col.of(mb.OutputTranscriptDone)[-1].text == brain.GREETING

    await session.send_message("user", "the weather is nice today")
    await session.create_response()
    await col.wait_done(count=2)
    assert col.of(mb.OutputTranscriptDone)[-1].text == "You said: the weather is nice today."

    await session.send_message("user", "[The caller pressed the telephone key 7]")
    await session.create_response()
    await col.wait_done(count=3)
    assert col.of(mb.OutputTranscriptDone)[-1].text == "You pressed 7."

    # a second create_response while one is running is refused, the first goes on
    await session.send_message("user", "tell me a story")
    session.config.tools = []
    await session.create_response()
    await session.create_response()
    await col.wait(lambda: any(e.code == "conversation_already_has_active_response" for e in col.of(mb.ModelError)))
    await session.function_output("unknown", "{}")
    await session.send_message("robot", "hi")
    await col.wait(lambda: len(col.of(mb.ModelError)) >= 3)
    done = await col.wait_done(count=4)
    assert done[3].status == "completed"


def test_brain_and_helpers() -> None:
    assert brain.decide("what time is it") == brain.ToolCall("get_time")
    assert brain.decide("tell me a story please") == brain.ToolCall("tell_story")
    assert brain.decide("what can you do") == brain.ToolCall("what_can_you_do")
    assert brain.decide("hello there") == brain.Say(brain.GREETING)
    assert brain.decide("open the door") == brain.Say("You said: open the door.")
    assert isinstance(brain.decide(""), brain.Say)
    assert brain.decide("stop talking") == brain.Say("Okay, I stopped.")
    assert brain.decide("please continue", "the rest.") == brain.Say("As I was saying: the rest.")
    assert brain.decide("please continue") == brain.Say("You said: please continue.")
    assert brain.speak_tool_output("get_time", json.dumps({"text": "It is 1:05 PM."})) == "It is 1:05 PM."
    assert "failed" in brain.speak_tool_output("get_time", json.dumps({"error": "boom"}))
    assert brain.speak_tool_output("x", "plain words") == "plain words"
    assert system_utterance('Say "Welcome to v2v!"') == "Welcome to v2v!"
    assert system_utterance("Greet the caller briefly.") == brain.GREETING
    assert system_utterance("Hi, I am your assistant.") == "Hi, I am your assistant."
    text = "One. Two three! Four"
    assert "".join(s for _, s in split_sentences(text)) == text
    quiet = np.zeros(RATE * 5, np.int16)
    quiet[RATE * 3 : RATE * 4] = 5000
    assert len(trim_quiet(quiet)) == RATE + 2 * RATE * 3 // 10


def _record_threads(threads: dict[int, str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, noting the thread (ident -> name) of each call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        threads[threading.get_ident()] = threading.current_thread().name
        return fn(*args, **kwargs)

    return call


async def test_recognition_and_synthesis_run_off_the_loop(session, monkeypatch) -> None:
    stt, tts = shared_recognizer(), shared_tts()
    stt_threads: dict[int, str] = {}
    tts_threads: dict[int, str] = {}
    monkeypatch.setattr(stt, "recognize", _record_threads(stt_threads, stt.recognize))
    monkeypatch.setattr(tts, "_synth_sentence", _record_threads(tts_threads, tts._synth_sentence))
    await say(session, "hello_there")
    await session.create_response()
    await session.collector.wait_done()
    loop_thread = threading.get_ident()
    assert stt_threads and loop_thread not in stt_threads
    assert tts_threads and loop_thread not in tts_threads
    assert threading.main_thread().ident not in stt_threads.keys() | tts_threads.keys()
    # Each on its own executor, not the loop's default one (aiohttp's DNS uses that).
    assert all(name.startswith("v2v-stt") for name in stt_threads.values())
    assert all(name.startswith("v2v-espeak") for name in tts_threads.values())


# ---------------------------------------------------------------------------
# A whole call through the worker's WAV transport: ask for the story, talk over it.


async def test_full_call_story_barge_in_then_time(factory) -> None:
    from v2v.worker.tools import ToolRegistry
    from v2v.worker.wavcall import run_wav_call

    tools = ToolRegistry()
    for spec, func in factory.tools():
        tools.register(spec.name, spec.description, spec.parameters, func)
    ask, rate = read_wav(LOCAL / "tell_me_a_story.wav")
    barge, _ = read_wav(LOCAL / "what_time_is_it.wav")
    step_n = rate // 50

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * rate), np.int16)

    def pad(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.zeros(-len(x) % step_n, np.int16)])

    audio = np.concatenate([pad(ask), silence(1.0), silence(2.0), pad(barge), silence(1.0)])
    s1 = (len(pad(ask)) + rate) // step_n  # the story has been asked for; 2 s later the caller talks over it
    s3 = (len(audio)) // step_n  # the caller's second question has ended

    story_audio = asyncio.Event()
    time_reply = asyncio.Event()
    calls: list = []

    def on_step(step: int, call) -> object:
        if not calls:
            calls.append(call)
            call.add_listener(listener)
        if step == s1:
            return asyncio.wait_for(story_audio.wait(), TIMEOUT)
        if step == s3 - 1:
            return asyncio.wait_for(time_reply.wait(), TIMEOUT)
        return None

    def listener(e: ev.CallEvent) -> None:
        if isinstance(e, ev.BotTranscript) and e.text.startswith("Once upon a time"):
            story_audio.set()
        if isinstance(e, ev.BotTranscript) and e.text.startswith("It is "):
            time_reply.set()

    result = await run_wav_call(factory, audio, rate, tools=tools, on_step=on_step, tail_s=3.0)
    finals = [t.event.text for t in result.of_type(ev.UserTranscript) if t.event.final]
    assert finals == ["tell me a story", "what time is it"]
    assert [t.event.name for t in result.of_type(ev.FunctionCallStarted)] == ["tell_story", "get_time"]
    interrupted = result.of_type(ev.BotInterrupted)
    assert len(interrupted) == 1 and not interrupted[0].event.deleted
    played_ms = interrupted[0].event.played_ms
    # what was played: from the story's first sample to the pause at the caller's speech onset
    started = [t for t in result.of_type(ev.BotStartedSpeaking) if t.event.item_id == interrupted[0].event.item_id]
    paused = result.of_type(ev.UserStartedSpeaking)[1]  # the second user turn, over the story
    expected_ms = (paused.step - started[0].step) * 20
    assert abs(played_ms - expected_ms) <= 20, (played_ms, expected_ms)
    assert 1900 <= played_ms <= 3500
    session = calls[0].model
    story_item = next(i for i in session.items if i.id == interrupted[0].event.item_id)
    assert story_item.truncated_ms == played_ms
    assert brain.STORY.startswith(story_item.text) and 3 <= len(story_item.text.split()) <= 12
    cut = [t.event for t in result.of_type(ev.BotOutput) if t.event.interrupted]
    assert cut and cut[0].spoken == story_item.text
    # the time was spoken after the interruption
    assert any(t.event.text.startswith("It is ") for t in result.of_type(ev.BotTranscript))
    assert session.history[-1][0] == "assistant" and session.history[-1][1].startswith("It is ")


async def test_two_sessions_speak_at_once_without_mixing(factory) -> None:
    sessions = [factory.open(mb.SessionConfig()) for _ in range(2)]
    cols = [Collector(s) for s in sessions]
    texts = ["tell me a story", "what can you do"]
    for s, text in zip(sessions, texts, strict=True):
        await s.connect()
        await s.send_message("user", text)
    await asyncio.gather(*(s.create_response() for s in sessions))
    for col in cols:
        await col.wait_done()
    for col, expected in zip(cols, (brain.STORY, brain.CAPABILITIES), strict=True):
        text, offsets, audio = spoken(col, 0)
        assert text == expected and col.of(mb.OutputTranscriptDone)[0].text == expected
        assert all(b > a for a, b in itertools.pairwise(offsets)) and offsets[-1] < audio
    for s, col in zip(sessions, cols, strict=True):
        await s.close()
        await asyncio.wait_for(col.task, 5)


def median_pitch_hz(pcm: np.ndarray) -> float:
    """Median autocorrelation pitch of the loud 40 ms frames (60-400 Hz)."""
    x = pcm.astype(np.float64)
    lo, hi, pitches = RATE // 400, RATE // 60, []
    for i in range(0, len(x) - 960, 480):
        f = x[i : i + 960]
        if np.sqrt((f * f).mean()) >= 1000:
            ac = np.correlate(f, f, "full")[959:]
            pitches.append(RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


async def test_voice_selection_and_unknown_voice_fallback() -> None:
    # espeak-ng output varies by a few samples from run to run: compare pitch, not samples
    tts = shared_tts()
    text = "Hello there, how are you?"
    default, words = await tts.synthesize(text)
    female, fwords = await tts.synthesize(text, voice="en-us+f3")
    assert await tts.has_voice("en") and not await tts.has_voice("alloy")
    fallback, _ = await tts.synthesize(text, voice="alloy")
    assert len(words) == len(fwords) == 5
    p_default, p_female, p_fallback = (median_pitch_hz(x) for x in (default, female, fallback))
    assert p_female > 1.5 * p_default and abs(p_fallback - p_default) < 0.1 * p_default

    factory = LocalModelFactory(voice="en-us+f3")
    s = factory.open(mb.SessionConfig())
    col = Collector(s)
    await s.connect()
    await s.send_message("system", f'Say "{text}"')
    await s.create_response()
    await col.wait_done()
    spoken_pcm = np.concatenate([e.pcm for e in col.of(mb.AudioDelta)])
    assert abs(median_pitch_hz(spoken_pcm) - p_female) < 0.1 * p_female
    assert col.of(mb.OutputTranscriptDone)[0].text == text
    await s.close()
    await asyncio.wait_for(col.task, 5)


# -- phone callers: 8 kHz G.711 ------------------------------------------------------------


WHAT_TIME = Path(__file__).parent / "fixtures" / "what_time_is_it.wav"  # tests/fixtures/make_fixtures.py


def telephone(path: Path, law: str = "ulaw") -> np.ndarray:
    """A fixture as a phone caller's audio: 8 kHz, through a real G.711 encode/decode."""
    pcm, rate = read_wav(path)
    rs = Resampler(rate, 8000)
    x8 = np.concatenate([rs.process(pcm), rs.flush()])
    return ulaw_decode(ulaw_encode(x8)) if law == "ulaw" else alaw_decode(alaw_encode(x8))


def intent(text: str) -> str:
    d = brain.decide(text)
    return d.name if isinstance(d, brain.ToolCall) else d.text


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
async def test_phone_caller_what_time_is_it_is_understood(law: str) -> None:
    rec = shared_recognizer()
    phone = await rec.transcribe(telephone(WHAT_TIME, law), 8000)
    assert phone.narrowband
    assert intent(phone.text) == "get_time", phone.text
    wide = await rec.transcribe(*read_wav(WHAT_TIME))
    assert not wide.narrowband and wide.text == "what time is it"


async def test_phone_caller_local_fixtures() -> None:
    """The local fixtures over G.711: 4 of 5 intents right in both laws (16 kHz: 5 of 5). The
    en-us "what time is it" of tests/fixtures/local is still misheard ("what bye the")."""
    rec = shared_recognizer()
    for law in ("ulaw", "alaw"):
        right = []
        for name, text in {"what_time_is_it": "what time is it", "tell_me_a_story": "tell me a story",
                           "what_can_you_do": "what can you do", "hello_there": "hello there",
                           "please_open_the_door": "please open the door"}.items():
            phone = await rec.transcribe(telephone(LOCAL / f"{name}.wav", law), 8000)
            right.append(intent(phone.text) == intent(text))
        assert sum(right) >= 4, (law, right)


async def test_phone_caller_asking_the_time_gets_the_time(session) -> None:
    """"what time is it" over G.711, handed to the model at its own rate as the worker does."""
    col: Collector = session.collector
    rs = Resampler(8000, RATE)
    pcm = np.concatenate([rs.process(telephone(WHAT_TIME)), rs.flush()])
    for i in range(0, len(pcm), 2400):
        await session.push_audio(pcm[i : i + 2400])
    await session.commit_input()
    await session.create_response()
    await col.wait_done()
    assert [c.name for c in col.of(mb.FunctionCall)] == ["get_time"]


def test_narrowband_detection() -> None:
    wide, rate = read_wav(WHAT_TIME)
    assert not is_narrowband(wide, rate)
    rs = Resampler(8000, 24000)
    assert is_narrowband(np.concatenate([rs.process(telephone(WHAT_TIME)), rs.flush()]), 24000)
    assert is_narrowband(telephone(LOCAL / "hello_there.wav"), 8000)
    assert not is_narrowband(np.zeros(1600, np.int16), 16000)


@pytest.mark.timeout(60)
async def test_sip_phone_call_asking_the_time_gets_the_time() -> None:
    """A real SIP/UDP call (PCMU at 8 kHz over RTP) to the default local model: "what time is it"
    is understood, get_time runs, and the time is spoken back down the line."""
    from tests.sip.harness import record_call_events, wait_for
    from tests.sip.harness import running_server as sip_server
    from tests.sip.uac import Call, RtpPeer, SipClient, offer_sdp

    pcm, rate = read_wav(WHAT_TIME)
    rs = Resampler(rate, 8000)
    speech8 = np.concatenate([rs.process(pcm), rs.flush()])
    audio = np.concatenate([speech8, np.zeros(8 * 8000, np.int16)])
    async with sip_server(model="local") as srv:
        events = record_call_events(srv)
        sip = await SipClient("UDP", ("127.0.0.1", srv.sip_port)).connect()
        rtp = await RtpPeer.open(audio)
        try:
            call = Call(sip, rtp, f"sip:assistant@127.0.0.1:{srv.sip_port}")
            assert (await call.invite(offer_sdp(rtp.port, "0 101"))).status == 200
            await wait_for(lambda: any(isinstance(e, ev.FunctionCallStopped) for e in events), 20, "get_time")
            await wait_for(lambda: any(isinstance(e, ev.BotOutput) and e.final for e in events), 20, "the answer")
            assert (await call.bye()).status == 200
        finally:
            await rtp.close()
            await sip.close()
    heard = [e.text for e in events if isinstance(e, ev.UserTranscript) and e.final]
    assert intent(heard[0]) == "get_time", heard
    assert [e.name for e in events if isinstance(e, ev.FunctionCallStarted)] == ["get_time"]
    said = " ".join(e.text for e in events if isinstance(e, ev.BotTranscript))
    assert said.startswith("It is "), said
    assert np.abs(rtp.received_audio()).max(initial=0) > 2000  # the answer came back as audio
