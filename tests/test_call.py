"""Call-level tests through the WAV transport: echo reply, barge-in, tools, greeting."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.conftest import load_wav, manifest
from tests.scripted import Script, ScriptedFactory, ScriptedSession
from v2v.media.resample import Resampler
from v2v.worker import events as ev
from v2v.worker.call import CallConfig
from v2v.worker.models import base as mb
from v2v.worker.models.echo import EchoModelFactory
from v2v.worker.tools import ToolRegistry
from v2v.worker.wavcall import run_wav_call

RATE = 16000
FRAME_OUT = 480  # 20 ms at 24 kHz


def compose(*parts: tuple[float, np.ndarray], total_s: float) -> np.ndarray:
    """Place 16 kHz clips at given start times (seconds) in silence."""
    out = np.zeros(int(total_s * RATE), dtype=np.int16)
    for start, clip in parts:
        i = int(start * RATE)
        out[i : i + len(clip)] = clip[: len(out) - i]
    return out


def turn_a() -> np.ndarray:
    return load_wav("speech_en_us_m3_hear_me.wav")[0]


def first(result, cls):
    found = result.of_type(cls)
    assert found, f"no {cls.__name__} event"
    return found[0]


async def test_echo_reply_equals_input_turn() -> None:
    pcm, rate = load_wav("hello_48k.wav")
    result = await run_wav_call(EchoModelFactory(), pcm, rate, tail_s=3.0)
    start, end = manifest()["hello_48k.wav"]["speech"][0]
    speech24 = Resampler(48000, 24000).process(pcm)[start // 2 : end // 2].astype(np.float64)
    out = result.output.astype(np.float64)
    assert first(result, ev.BotStartedSpeaking)
    # the reply contains the spoken turn: cross-correlation peak close to 1
    corr = np.correlate(out, speech24, mode="valid")
    k = int(np.argmax(corr))
    window = out[k : k + len(speech24)]
    r = corr[k] / (np.linalg.norm(window) * np.linalg.norm(speech24))
    assert r > 0.99, r
    # and nothing else: the reply is the trimmed turn, about as long as the speech
    reply_len = np.count_nonzero(np.abs(out) > 0)
    assert abs(reply_len - len(speech24)) < 0.25 * 24000


async def test_reply_starts_after_turn_end_and_states_flow() -> None:
    result = await run_wav_call(EchoModelFactory(), compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=3.0)
    states = [t.event.state for t in result.of_type(ev.AgentStateChanged)]
    assert states[:4] == ["listening", "thinking", "speaking", "listening"]
    stop = first(result, ev.UserStoppedSpeaking)
    started = first(result, ev.BotStartedSpeaking)
    assert started.step >= stop.step
    ttfb = [t.event.ttfb_ms for t in result.of_type(ev.Metrics) if t.event.ttfb_ms is not None]
    assert len(ttfb) == 1


def _barge_input(barge_at: float, clip: np.ndarray) -> np.ndarray:
    return compose((0.0, turn_a()), (barge_at, clip), total_s=barge_at + len(clip) / RATE + 0.2)


async def test_barge_in_pauses_within_a_frame_and_truncates_at_played_samples() -> None:
    factory = ScriptedFactory(Script(reply_seconds=6.0))
    long_clip = load_wav("long_speech.wav")[0]
    result = await run_wav_call(factory, _barge_input(4.0, long_clip), RATE, tail_s=1.0)
    started = first(result, ev.BotStartedSpeaking)
    barge = [t for t in result.of_type(ev.UserStartedSpeaking) if t.step > started.step][0]
    # VAD start was decided during step `barge.step`; that step's frame fades out
    # (at most 5 ms = 120 samples) and every following frame is silent.
    fade = result.frame(barge.step)
    assert np.count_nonzero(fade[120:]) == 0
    assert np.count_nonzero(result.frame(barge.step - 1)) == FRAME_OUT
    resumed = [t.step for t in result.of_type(ev.BotStartedSpeaking) if t.step > barge.step]
    next_reply = resumed[0] if resumed else result.steps
    assert not result.output[(barge.step + 1) * FRAME_OUT : next_reply * FRAME_OUT].any()
    assert next_reply > first(result, ev.BotInterrupted).step
    # played = every reply sample handed out before the pause (no zeros in the reply signal)
    played = np.count_nonzero(result.output[: barge.step * FRAME_OUT])
    assert played > 24000  # a good second of the reply was heard
    truncs = factory.of("truncate_item")
    assert len(truncs) == 1
    item_id, content_index, audio_end_ms = truncs[0]
    assert audio_end_ms == played * 1000 // 24000
    assert content_index == 0
    assert factory.of("delete_item") == []
    interrupted = first(result, ev.BotInterrupted).event
    assert interrupted.played_ms == audio_end_ms and not interrupted.deleted
    # confirmation needs min_interruption_ms of speech after the onset
    confirm = first(result, ev.BotInterrupted)
    assert (confirm.position - barge.event.sample) >= RATE * 300 // 1000
    # the reply had been fully sent (faster than real time): nothing to cancel
    assert "cancel_response" not in factory.names()
    # the transcript is cut to the played part, on a word boundary
    out = [t.event for t in result.of_type(ev.BotOutput) if t.event.interrupted][0]
    words = Script().reply_text.split()
    spoken = out.spoken.split()
    assert spoken == words[: len(spoken)]
    assert len(spoken) == len(words) * played // (6 * 24000) or abs(len(spoken) - len(words) * played / (6 * 24000)) < 1
    assert out.unspoken.split() == words[len(spoken) :]
    # the interruption became the user's turn: committed and answered
    names = factory.names()
    assert names.index("truncate_item") < len(names) - 1 - names[::-1].index("commit_input")


async def _turn_end_time() -> float:
    """When (seconds) turn A's end is decided: the input is deterministic."""
    result = await run_wav_call(ScriptedFactory(Script(reply_seconds=0.1)), compose((0.0, turn_a()), total_s=3.0),
                                RATE, tail_s=0.0)
    return (first(result, ev.UserStoppedSpeaking).step + 1) * 0.02


def _clip_with_onset_at(t: float) -> tuple[float, np.ndarray]:
    clip = load_wav("long_speech.wav")[0]
    onset = manifest()["long_speech.wav"]["speech"][0][0] / RATE
    return t - onset, clip


async def test_barge_in_while_thinking_cancels_the_response() -> None:
    # the model is slow to produce audio; the caller talks again before any arrives
    end = await _turn_end_time()
    factory = ScriptedFactory(Script(reply_seconds=3.0, first_audio_delay_steps=10**9))
    start, clip = _clip_with_onset_at(end + 0.05)
    result = await run_wav_call(factory, _barge_input(start, clip), RATE, tail_s=0.5)
    names = factory.names()
    assert "cancel_response" in names
    assert names.index("create_response") < names.index("cancel_response")
    assert factory.of("truncate_item") == [] and factory.of("delete_item") == []
    assert not result.output.any()


async def test_barge_in_deletes_item_when_nothing_played() -> None:
    # audio arrives while playout is already paused for the caller: nothing is heard
    end = await _turn_end_time()
    factory = ScriptedFactory(Script(reply_seconds=3.0, first_audio_delay_steps=12 * 8))
    start, clip = _clip_with_onset_at(end)
    result = await run_wav_call(factory, _barge_input(start, clip), RATE, tail_s=0.5)
    deletes = factory.of("delete_item")
    assert factory.of("truncate_item") == []
    assert len(deletes) == 1 and deletes[0].startswith("item_")
    interrupted = first(result, ev.BotInterrupted)
    assert interrupted.event.deleted
    # nothing was heard up to the reply to the caller's new turn
    assert not result.output[: interrupted.step * FRAME_OUT].any()
    assert first(result, ev.BotStartedSpeaking).step > interrupted.step


async def test_short_burst_resumes_playout_and_truncates_nothing() -> None:
    factory = ScriptedFactory(Script(reply_seconds=5.0))
    speech = load_wav("long_speech.wav")[0]
    onset = manifest()["long_speech.wav"]["speech"][0][0]
    burst = speech[onset + RATE : onset + RATE + RATE * 150 // 1000]  # 150 ms of voiced speech
    result = await run_wav_call(factory, _barge_input(3.5, burst), RATE, tail_s=6.0)
    started = first(result, ev.BotStartedSpeaking)
    paused = [t for t in result.of_type(ev.UserStartedSpeaking) if t.step > started.step]
    assert paused, "the burst was not detected"
    assert first(result, ev.FalseInterruption)
    assert factory.of("truncate_item") == [] and factory.of("delete_item") == []
    assert "cancel_response" not in factory.names()
    assert result.of_type(ev.BotInterrupted) == []
    # every reply sample is eventually played, none twice (the 5 ms fade-out is
    # a faded copy of samples played again after the resume)
    item = first(result, ev.BotStartedSpeaking).event.item_id
    assert result.call.playout.played(item) == 5 * 24000
    assert 5 * 24000 <= np.count_nonzero(result.output) <= 5 * 24000 + 120
    # the burst was not taken as a turn: its input was cleared, not committed
    assert factory.names().count("commit_input") == 1
    assert "clear_input" in factory.names()


async def test_server_speech_started_interrupts() -> None:
    factory = ScriptedFactory(Script(reply_seconds=5.0))

    async def on_step(step: int, call) -> None:
        if step == 200:
            from v2v.worker.models.base import SpeechStarted

            call.model.emit(SpeechStarted(0))

    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=3.0, on_step=on_step)
    assert len(factory.of("truncate_item")) == 1
    assert first(result, ev.BotInterrupted).step == 200


def _tools() -> ToolRegistry:
    reg = ToolRegistry()

    @reg.tool(description="add two numbers",
              parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}})
    async def add(a: float, b: float) -> dict:
        return {"sum": a + b}

    @reg.tool(description="always fails")
    async def broken() -> None:
        raise RuntimeError("boom")

    @reg.tool(description="never returns", timeout=0.05)
    async def slow() -> None:
        await asyncio.Event().wait()

    return reg


@pytest.mark.parametrize(
    "name,args,expect",
    [
        ("add", '{"a": 2, "b": 3}', {"sum": 5}),
        ("broken", "{}", {"error": "RuntimeError: boom"}),
        ("slow", "{}", {"error": "tool 'slow' timed out after 0.05 s"}),
        ("missing", "{}", {"error": "unknown tool 'missing'"}),
        ("add", "not json", None),
    ],
)
async def test_function_call_round_trip(name: str, args: str, expect: dict | None) -> None:
    factory = ScriptedFactory(Script(reply_seconds=0.5, tool_call=(name, args)))
    done = asyncio.Event()
    stopped: list = []

    def on_step(step: int, call) -> None:
        if not stopped:
            call.add_listener(lambda e: isinstance(e, ev.FunctionCallStopped) and (stopped.append(e), done.set()))
            stopped.append(None)

    async def wait_tool(step: int, call) -> None:
        on_step(step, call)
        if step == 160:  # after turn A's reply was requested, let a slow tool time out
            await asyncio.wait_for(done.wait(), 5)

    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=2.0, on_step=wait_tool,
                                tools=_tools())
    outputs = factory.of("function_output")
    assert len(outputs) == 1
    call_id, output = outputs[0]
    assert call_id.startswith("call_")
    if expect is None:
        assert json.loads(output)["error"].startswith("invalid arguments")
    else:
        assert json.loads(output) == expect
    names = factory.names()
    # output returned, then a new response requested; the call goes on and speaks
    assert names.index("function_output") < len(names) - 1 - names[::-1].index("create_response")
    assert result.of_type(ev.BotStartedSpeaking)
    assert result.call.end_reason == "input-ended"
    # the agent stays "thinking" from the turn's end, through the tool call, until the reply is heard
    seq = [t.event for t in result.events]
    i = next(k for k, e in enumerate(seq) if isinstance(e, ev.AgentStateChanged) and e.state == "thinking")
    j = next(k for k, e in enumerate(seq) if isinstance(e, ev.BotStartedSpeaking))
    states = [e.state for e in seq[i:j] if isinstance(e, ev.AgentStateChanged)]
    assert "listening" not in states, states


async def test_greeting_only_once_and_only_when_ready() -> None:
    ready = asyncio.Event()
    factory = ScriptedFactory(Script(reply_seconds=0.3, connect_event=ready))

    def on_step(step: int, call) -> None:
        if step == 25:
            assert factory.of("send_message") == []  # not ready yet: no greeting
            ready.set()

    config = CallConfig(greeting="Greet the caller.")
    result = await run_wav_call(factory, np.zeros(RATE * 2, np.int16), RATE, config=config, tail_s=1.0, on_step=on_step)
    assert factory.of("send_message") == [("system", "Greet the caller.")]
    assert factory.names().count("create_response") == 1
    assert result.of_type(ev.BotStartedSpeaking)


async def test_no_greeting_when_empty() -> None:
    factory = ScriptedFactory(Script())
    await run_wav_call(factory, np.zeros(RATE, np.int16), RATE, tail_s=0.2)
    assert factory.of("send_message") == [] and "create_response" not in factory.names()


async def test_several_tool_calls_in_one_response_get_one_new_response() -> None:
    factory = ScriptedFactory(Script(reply_seconds=0.5, tool_calls=[("add", '{"a": 1, "b": 2}'), ("broken", "{}")]))
    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=2.0, tools=_tools())
    outputs = dict(factory.of("function_output"))
    assert len(outputs) == 2 and {k.rsplit("_", 1)[1] for k in outputs} == {"0", "1"}
    names = factory.names()
    # the turn's response, then exactly one more once both outputs are in
    assert names.count("create_response") == 2
    last_output = max(i for i, n in enumerate(names) if n == "function_output")
    assert names.index("create_response", names.index("function_output")) > last_output
    assert result.of_type(ev.BotStartedSpeaking)


async def test_transcript_finishing_after_the_audio_still_completes_the_output() -> None:
    factory = ScriptedFactory(Script(reply_seconds=0.4, transcript_done_delay=8 * 60))
    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=3.0)
    played = first(result, ev.BotStoppedSpeaking)
    finals = [t for t in result.of_type(ev.BotOutput) if t.event.final]
    assert len(finals) == 1 and finals[0].step > played.step
    assert finals[0].event.spoken == Script().reply_text and not finals[0].event.interrupted
    assert result.call.pacer.texts == {}


async def test_contiguous_items_are_one_stretch_of_speech() -> None:
    factory = ScriptedFactory(Script(reply_seconds=1.0, second_item_delay=0))
    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=3.0)
    assert len(result.of_type(ev.BotStartedSpeaking)) == 1
    assert len(result.of_type(ev.BotStoppedSpeaking)) == 1
    assert np.count_nonzero(result.output) == 2 * 24000


async def test_late_items_of_an_interrupted_response_are_deleted() -> None:
    factory = ScriptedFactory(Script(reply_seconds=3.0, second_item_delay=8 * 150, ignore_cancel=True))
    end = await _turn_end_time()
    start, clip = _clip_with_onset_at(end + 1.0)
    result = await run_wav_call(factory, _barge_input(start, clip), RATE, tail_s=0.5)
    names = factory.names()
    assert names.index("cancel_response") < names.index("truncate_item")
    (item, _, ms), = factory.of("truncate_item")
    late = [d for d in factory.of("delete_item") if d.endswith("_b")]
    assert late == [item + "_b"]
    assert len(result.of_type(ev.BotInterrupted)) == 1
    # the late item was never heard
    interrupted = first(result, ev.BotInterrupted)
    nxt = [t.step for t in result.of_type(ev.BotStartedSpeaking) if t.step > interrupted.step]
    assert not result.output[(interrupted.step + 1) * FRAME_OUT : (nxt[0] if nxt else result.steps) * FRAME_OUT].any()


async def test_reply_arriving_while_the_caller_talks_is_held() -> None:
    # the caller talks again while the model is still transcribing the turn
    # (no response yet, so this speech is not a barge-in); the reply then
    # arrives mid-speech: it is held, and deleted once the caller has talked on
    end = await _turn_end_time()
    factory = ScriptedFactory(Script(reply_seconds=3.0, commit_delay=8 * 30))
    start, clip = _clip_with_onset_at(end + 0.1)
    result = await run_wav_call(factory, _barge_input(start, clip), RATE, tail_s=0.5)
    interrupted = first(result, ev.BotInterrupted)
    assert interrupted.event.deleted
    assert not result.output[: interrupted.step * FRAME_OUT].any()
    assert len(factory.of("delete_item")) == 1 and factory.of("truncate_item") == []


async def test_bot_transcription_per_sentence() -> None:
    factory = ScriptedFactory(Script(reply_seconds=0.5, reply_text="Hello there. How are you? I am fine"))
    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=1.5)
    assert [t.event.text for t in result.of_type(ev.BotTranscript)] == ["Hello there.", "How are you?", "I am fine"]


class _RateSession(ScriptedSession):
    def __init__(self, config: mb.SessionConfig, script: Script, log: list, caps: mb.ModelCapabilities) -> None:
        super().__init__(config, script, log)
        self.capabilities = caps


@dataclass
class _RateFactory(ScriptedFactory):
    """The scripted model with other rates and truncation flag (its audio is
    taken to be at ``capabilities.output_rate``)."""

    capabilities: mb.ModelCapabilities = field(default_factory=mb.ModelCapabilities)

    def open(self, config: mb.SessionConfig) -> ScriptedSession:
        self.session = _RateSession(config, self.script, self.calls, self.capabilities)
        return self.session


@pytest.mark.parametrize("playout_rate", [None, 24000])
async def test_the_call_honours_the_models_rates(playout_rate: int | None) -> None:
    caps = mb.ModelCapabilities(input_rate=16000, output_rate=16000)
    factory = _RateFactory(Script(reply_seconds=1.5), capabilities=caps)  # 36000 samples: 2.25 s at 16 kHz
    result = await run_wav_call(factory, compose((0.0, turn_a()), total_s=3.0), RATE, tail_s=4.0,
                                playout_rate=playout_rate)
    out_rate = playout_rate or 16000
    assert result.output_rate == out_rate and len(result.frame(0)) == out_rate // 50
    # caller audio reaches the model in 100 ms chunks at its input rate
    pushed = factory.of("push_audio")
    assert pushed and set(pushed) == {1600}
    assert sum(pushed) >= 3 * 16000 - 1600
    # the reply plays for its duration at the model's rate, resampled to the playout's if they differ
    heard = np.count_nonzero(result.output)
    assert abs(heard - 36000 * out_rate // 16000) <= out_rate // 100
    assert first(result, ev.BotOutput)


async def test_a_model_that_cannot_truncate_is_told_nothing_but_the_cut_is_reported() -> None:
    caps = mb.ModelCapabilities(truncation=False)
    factory = _RateFactory(Script(reply_seconds=6.0), capabilities=caps)
    result = await run_wav_call(factory, _barge_input(4.0, load_wav("long_speech.wav")[0]), RATE, tail_s=1.0)
    interrupted = first(result, ev.BotInterrupted).event
    assert interrupted.played_ms > 1000 and not interrupted.deleted
    assert factory.of("truncate_item") == [] and factory.of("delete_item") == []
    out = [t.event for t in result.of_type(ev.BotOutput) if t.event.interrupted][0]
    assert out.spoken and out.unspoken
    assert (out.spoken + " " + out.unspoken).split() == Script().reply_text.split()


async def test_a_call_from_a_wav_file_recorded_to_a_wav_file(tmp_path) -> None:
    from tests.conftest import FIXTURES
    from v2v.worker.wavcall import read_wav

    out = tmp_path / "reply.wav"
    result = await run_wav_call(EchoModelFactory(), FIXTURES / "hello_48k.wav", tail_s=3.0, record=out)
    assert result.input_rate == 48000 and first(result, ev.BotStartedSpeaking)
    pcm, rate = read_wav(out)
    assert rate == 24000 and np.array_equal(pcm, result.output)
