"""Issue 17: line noise that starts abruptly, and the eager, reversible barge-in pause (WAV calls).

- steady noise that starts abruptly (white, pink, mains hum at -50/-40/-35 dBFS) starts no turn;
  a caller who speaks right after the line opens (or right at the call's start) is heard;
- while the assistant talks, a noise burst pauses it on the VAD's onset; the VAD drops the onset,
  playout resumes at once where it stopped (before the false-interruption timeout), and the reply
  is neither cancelled nor truncated: every sample is played once;
- a real barge-in pauses on the onset (no later than a VAD start would) and truncates the item
  at exactly the samples played before that pause.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio_fixtures import fixture_info, load_fixture, pink_noise, to_int16, white_noise
from tests.scripted import Script, ScriptedFactory
from v2v.worker import events as ev
from v2v.worker.call import CallConfig
from v2v.worker.models.echo import EchoModelFactory
from v2v.worker.wavcall import run_wav_call

RATE = 16000
FRAME_OUT = 480  # 20 ms at 24 kHz


def hum(n: int, dbfs: float, seed: int) -> np.ndarray:
    """Mains hum: 50 Hz and harmonics plus a little hiss (float, exact RMS in dBFS)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
    x = x + 0.3 * np.std(x) * rng.standard_normal(n)
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def noise(kind: str, n: int, dbfs: float, seed: int = 5) -> np.ndarray:
    gen = {"white": white_noise, "pink": pink_noise, "hum": hum}[kind]
    return gen(n, dbfs, seed)


def line_opens(kind: str, dbfs: float, at_s: float, total_s: float) -> np.ndarray:
    """Silence, then steady noise from ``at_s`` (float, full scale 1.0)."""
    out = np.zeros(int(total_s * RATE), np.float32)
    at = int(at_s * RATE)
    out[at:] = noise(kind, len(out) - at, dbfs)
    return out


def speech(name: str = "speech_en_gb_weather.wav") -> np.ndarray:
    """The fixture's speech only (from its onset), float, full scale 1.0."""
    pcm, rate = load_fixture(name)
    assert rate == RATE
    on, off = fixture_info(name)["speech"][0][0], fixture_info(name)["speech"][-1][1]
    return pcm[on:off].astype(np.float32) / 32768.0


@pytest.mark.parametrize("dbfs", (-50.0, -40.0, -35.0))
@pytest.mark.parametrize("kind", ("white", "pink", "hum"))
async def test_abrupt_line_noise_starts_no_turn(kind: str, dbfs: float) -> None:
    factory = ScriptedFactory(Script(reply_seconds=1.0))
    result = await run_wav_call(factory, to_int16(line_opens(kind, dbfs, 0.3, 4.0)), RATE, tail_s=0.5)
    assert result.of_type(ev.UserStartedSpeaking) == []
    assert "commit_input" not in factory.names() and "create_response" not in factory.names()


@pytest.mark.parametrize("delay_s", (0.0, 0.05, 0.4))
@pytest.mark.parametrize("kind", ("white", "pink", "hum"))
async def test_speech_right_after_the_line_opens_is_a_turn(kind: str, delay_s: float) -> None:
    mix = line_opens(kind, -40.0, 0.3, 4.5)
    at = int((0.3 + delay_s) * RATE)
    clip = speech()
    mix[at:at + len(clip)] += clip
    result = await run_wav_call(EchoModelFactory(), to_int16(mix), RATE, tail_s=2.0)
    starts = result.of_type(ev.UserStartedSpeaking)
    assert len(starts) == 1
    assert int(0.3 * RATE) <= starts[0].event.sample <= at + RATE // 10  # not before the line opened
    assert starts[0].position >= at  # decided on the speech, not on the noise before it
    assert result.of_type(ev.UserStoppedSpeaking) and result.of_type(ev.BotStartedSpeaking)


async def test_speech_right_at_the_call_start_is_a_turn() -> None:
    result = await run_wav_call(EchoModelFactory(), to_int16(speech()), RATE, tail_s=2.0)
    starts = result.of_type(ev.UserStartedSpeaking)
    assert len(starts) == 1 and starts[0].event.sample < RATE // 10
    assert result.of_type(ev.BotStartedSpeaking)


def _turn_then(at_s: float, clip: np.ndarray, total_s: float) -> np.ndarray:
    """Turn A at 0 s (the caller asks), then ``clip`` (float) at ``at_s`` over the reply."""
    out = np.zeros(int(total_s * RATE), np.float32)
    turn = load_fixture("speech_en_us_m3_hear_me.wav")[0].astype(np.float32) / 32768.0
    out[: len(turn)] = turn
    at = int(at_s * RATE)
    out[at:at + len(clip)] += clip[: len(out) - at]
    return to_int16(out)


def _gaps(output: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) output frames of each run of silent frames between audible ones."""
    audible = np.count_nonzero(output[: len(output) // FRAME_OUT * FRAME_OUT].reshape(-1, FRAME_OUT), axis=1) > 0
    idx = np.flatnonzero(audible)
    first, last = idx[0], idx[-1]
    gaps, k = [], first
    while k <= last:
        if not audible[k]:
            j = k
            while not audible[j]:
                j += 1
            gaps.append((k, j))
            k = j
        k += 1
    return gaps


@pytest.mark.parametrize("kind", ("white", "pink", "hum"))
async def test_eager_pause_on_a_noise_burst_resumes_and_keeps_the_reply(kind: str) -> None:
    factory = ScriptedFactory(Script(reply_seconds=5.0))
    burst = noise(kind, RATE * 150 // 1000, -30.0)  # 150 ms of noise: a knock, a rustle
    result = await run_wav_call(factory, _turn_then(4.0, burst, 5.0), RATE, tail_s=6.0)
    started = result.of_type(ev.BotStartedSpeaking)[0]
    paused = [t for t in result.of_type(ev.Metrics) if t.event.barge_in_ms is not None and t.step > started.step]
    assert paused, "the burst did not pause the assistant"
    resumed = result.of_type(ev.FalseInterruption)
    assert len(resumed) == 1
    # resumed on the VAD's drop, not after the false-interruption timeout
    timeout_steps = CallConfig().false_interruption_timeout_ms // 20
    assert resumed[0].step - paused[0].step < timeout_steps
    # nothing cancelled, truncated or deleted; no turn taken from the burst
    names = factory.names()
    assert "cancel_response" not in names and factory.of("truncate_item") == [] and factory.of("delete_item") == []
    assert result.of_type(ev.BotInterrupted) == []
    assert names.count("commit_input") == 1
    # every reply sample played once, in order: the output is the reply with one silent gap
    item = started.event.item_id
    assert result.call.playout.played(item) == 5 * 24000
    gaps = _gaps(result.output)
    assert len(gaps) == 1 and gaps[0][0] == paused[0].step + 1
    out = result.output
    heard = np.concatenate([out[: gaps[0][0] * FRAME_OUT], out[gaps[0][1] * FRAME_OUT:]])
    assert 5 * 24000 - 1 <= np.count_nonzero(heard) <= 5 * 24000 + 120  # the fade-out copy, the faded-in first sample


async def test_real_barge_in_pauses_on_the_onset_and_truncates_exactly() -> None:
    factory = ScriptedFactory(Script(reply_seconds=6.0))
    result = await run_wav_call(factory, _turn_then(4.0, speech("long_speech.wav"), 7.0), RATE, tail_s=1.0)
    started = result.of_type(ev.BotStartedSpeaking)[0]
    barge = [t for t in result.of_type(ev.UserStartedSpeaking) if t.step > started.step][0]
    # the step in which the caller was heard fades out, every later one is silent
    assert np.count_nonzero(result.frame(barge.step)[120:]) == 0
    assert np.count_nonzero(result.frame(barge.step - 1)) == FRAME_OUT
    interrupted = result.of_type(ev.BotInterrupted)
    assert len(interrupted) == 1 and result.of_type(ev.FalseInterruption) == []
    played = np.count_nonzero(result.output[: barge.step * FRAME_OUT])
    (item_id, content_index, audio_end_ms), = factory.of("truncate_item")
    assert audio_end_ms == played * 1000 // 24000 == interrupted[0].event.played_ms
    assert content_index == 0 and factory.of("delete_item") == []
    # confirmed only after min_interruption_ms of speech from the onset
    assert interrupted[0].position - barge.event.sample >= RATE * CallConfig().min_interruption_ms // 1000
