"""v2v.media.vad: detection positions on the espeak-ng fixtures, no speech on noise, chunking invariance.

Tolerances (positions against tests/fixtures/manifest.json, after resampling the
fixture to the VAD rate):
- clean speech: start sample in [onset - frame_ms, onset + 60 ms]; start decided at
  most 100 ms after the onset (at the defaults: exactly start_ms = 30 ms after it);
  end sample within 100 ms of the offset; end decided end_ms (+ < 1 frame) after it.
- speech in 10 dB SNR noise: one start in [onset - frame_ms, onset + 100 ms], end within 200 ms.
- silence, white/pink noise (-30 and -20 dBFS), 440 Hz tone: no event at all (also 20 s of
  fresh white/pink noise at -40..-10 dBFS).
- the 150 ms noise burst: one start (within a frame + 20 ms of it) and an end < 250 ms later.
Rates 8/16/48 kHz and frames 10/20/30 ms throughout, at the default parameters.
- as the call runs it (settle_ms=120, onset_ms=20): steady white/pink/hum noise at -50..-35 dBFS
  after silence starts nothing (each tentative onset is dropped); speech 0-400 ms after it starts
  once, decided on the speech; onset events precede the start with the same sample.
"""

from __future__ import annotations

import os
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v2v.media.vad import SUPPORTED_RATES, VadEvent, VoiceActivityDetector

try:
    from tests.audio_fixtures import (
        FIXTURES_DIR,
        fixture_info,
        fixture_names,
        load_fixture,
        pink_noise,
        resample_oneshot,
        to_int16,
        white_noise,
    )
except ImportError:  # tests/ on sys.path without being a package
    from audio_fixtures import (  # type: ignore[no-redef] -- the same names, imported the other way
        FIXTURES_DIR,
        fixture_info,
        fixture_names,
        load_fixture,
        pink_noise,
        resample_oneshot,
        to_int16,
        white_noise,
    )

RATES = (8000, 16000, 48000)
FRAMES = (10, 20, 30)
SPEECH = fixture_names("speech")
NOISY_SPEECH = fixture_names("speech+noise")
NON_SPEECH = fixture_names("silence") + fixture_names("noise") + fixture_names("tone")


def at_rate(name: str, rate: int) -> tuple[np.ndarray, float]:
    """The fixture resampled to `rate`, and the factor from manifest positions to positions at `rate`."""
    pcm, sr = load_fixture(name)
    return resample_oneshot(pcm, sr, rate), rate / sr


def ms(rate: int, milliseconds: float) -> int:
    return int(rate * milliseconds / 1000)


def test_manifest_matches_files() -> None:
    total = 0
    names = fixture_names()
    for required in ("what_time_is_it.wav", "tell_me_a_story.wav", "hello_48k.wav", "long_speech.wav",
                     "noise_burst_150ms.wav", "browser_speech.wav", "speech_24k.wav", "speech_8k.wav",
                     "silence.wav", "tone_440hz.wav", "speech_white_snr10.wav", "speech_pink_snr10.wav"):
        assert required in names
    for name in names:
        info = fixture_info(name)
        with wave.open(str(FIXTURES_DIR / name)) as w:
            assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
            assert w.getframerate() == info["sample_rate"]
            assert w.getnframes() == info["length"]
        for a, b in info["speech"] + info["active"]:
            assert 0 <= a < b <= info["length"]
        assert bool(info["speech"]) == (info["kind"] in ("speech", "speech+noise"))
        total += os.path.getsize(FIXTURES_DIR / name)
    assert len({fixture_info(n)["voice"] for n in SPEECH}) >= 4
    assert fixture_info("hello_48k.wav")["sample_rate"] == 48000
    assert total < 3_000_000


@pytest.mark.parametrize("rate", [0, 11025, 22050, 24000, 44100, 96000])
def test_invalid_rate_raises(rate: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        VoiceActivityDetector(rate)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="frame"):
        VoiceActivityDetector(16000, frame_ms=15)
    with pytest.raises(ValueError, match="aggressiveness"):
        VoiceActivityDetector(16000, aggressiveness=4)
    with pytest.raises(ValueError):
        VoiceActivityDetector(16000, end_ms=-1)
    vad = VoiceActivityDetector(16000)
    with pytest.raises(TypeError):
        vad.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError):
        vad.process(np.zeros((160, 2), dtype=np.int16))
    assert vad.position == 0


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SPEECH)
def test_speech_positions(name: str, rate: int, frame_ms: int) -> None:
    pcm, k = at_rate(name, rate)
    info = fixture_info(name)
    onset, offset = round(info["speech"][0][0] * k), round(info["speech"][-1][1] * k)
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    events = vad.process(pcm)
    assert [e.kind for e in events] == ["start", "end"], events
    start, end = events
    frame = vad.frame_len
    assert onset - frame <= start.sample <= onset + ms(rate, 60)
    assert start.decided_at - start.sample == vad.start_frames * frame
    assert start.decided_at - onset <= ms(rate, 100)
    assert abs(end.sample - offset) <= ms(rate, 100)
    assert ms(rate, vad.end_ms) <= end.decided_at - end.sample < ms(rate, vad.end_ms) + frame
    assert vad.position == len(pcm) and not vad.speaking


@pytest.mark.parametrize("rate", (16000, 48000))
@pytest.mark.parametrize("name", ["what_time_is_it.wav", "tell_me_a_story.wav", "hello_48k.wav", "long_speech.wav"])
def test_default_start_latency_is_start_ms(name: str, rate: int) -> None:
    """Barge-in budget: at the defaults the start is decided start_ms after the onset (within one frame)."""
    pcm, k = at_rate(name, rate)
    onset = round(fixture_info(name)["speech"][0][0] * k)
    vad = VoiceActivityDetector(rate)
    start = vad.process(pcm)[0]
    assert start.kind == "start"
    assert abs(start.sample - onset) <= vad.frame_len
    assert start.decided_at - onset <= ms(rate, vad.start_ms + vad.frame_ms)


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", NON_SPEECH)
def test_no_speech_on_non_speech(name: str, rate: int, frame_ms: int) -> None:
    pcm, _ = at_rate(name, rate)
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    assert vad.process(pcm) == []
    assert not vad.speaking


@pytest.mark.parametrize("aggressiveness", (0, 1, 2, 3))
def test_every_aggressiveness(aggressiveness: int) -> None:
    """The energy floor and noise gate make every webrtcvad mode usable (callers may configure 0..3)."""
    for name in SPEECH + NON_SPEECH:
        pcm, k = at_rate(name, 16000)
        vad = VoiceActivityDetector(16000, aggressiveness=aggressiveness)
        events = vad.process(pcm)
        speech = fixture_info(name)["speech"]
        if not speech:
            assert events == [], name
            continue
        assert [e.kind for e in events] == ["start", "end"], name
        onset = round(speech[0][0] * k)
        assert onset - vad.frame_len <= events[0].sample <= onset + ms(16000, 60), name


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("level", (-40.0, -30.0, -20.0, -10.0))
@pytest.mark.parametrize("kind", ("white", "pink"))
def test_no_speech_on_long_fresh_noise(kind: str, level: float, frame_ms: int) -> None:
    """20 s of noise with seeds the fixtures do not use: still no start."""
    gen = white_noise if kind == "white" else pink_noise
    pcm = to_int16(gen(20 * 16000, level, seed=1000 + int(-level)))
    vad = VoiceActivityDetector(16000, frame_ms=frame_ms)
    assert vad.process(pcm) == []


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", NOISY_SPEECH)
def test_speech_in_noise_detected(name: str, rate: int, frame_ms: int) -> None:
    pcm, k = at_rate(name, rate)
    info = fixture_info(name)
    assert info["snr_db"] == 10.0
    onset, offset = round(info["speech"][0][0] * k), round(info["speech"][-1][1] * k)
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    events = vad.process(pcm)
    assert [e.kind for e in events] == ["start", "end"], events
    assert onset - vad.frame_len <= events[0].sample <= onset + ms(rate, 100)
    assert abs(events[1].sample - offset) <= ms(rate, 200)


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("rate", RATES)
def test_noise_burst_is_short_speech(rate: int, frame_ms: int) -> None:
    """The 150 ms burst starts speech (barge-in pauses) and ends it well before 300 ms (no confirmation)."""
    pcm, k = at_rate("noise_burst_150ms.wav", rate)
    (a, b), = fixture_info("noise_burst_150ms.wav")["active"]
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    events = vad.process(pcm)
    assert [e.kind for e in events] == ["start", "end"], events
    assert abs(events[0].sample - round(a * k)) <= vad.frame_len + ms(rate, 20)
    assert events[1].sample - events[0].sample < ms(rate, 250)
    assert events[1].sample <= round(b * k) + vad.frame_len


def test_state_follows_events() -> None:
    pcm, rate = load_fixture("tell_me_a_story.wav")
    vad = VoiceActivityDetector(rate, frame_ms=20)
    seen: list[VadEvent] = []
    for i in range(0, len(pcm), 320):
        before = vad.speaking
        events = vad.process(pcm[i : i + 320])
        assert vad.position == min(i + 320, len(pcm))
        if events:
            assert vad.speaking == (events[-1].kind == "start")
            assert all(e.decided_at == vad.position for e in events)  # frame-aligned pieces
        else:
            assert vad.speaking == before
        seen += events
    assert [e.kind for e in seen] == ["start", "end"]
    assert seen[1].sample <= vad.last_voiced_end
    assert vad.process(np.zeros(0, dtype=np.int16)) == []
    vad.reset()
    assert (vad.position, vad.speaking, vad.last_voiced_end) == (0, False, 0)
    assert vad.process(pcm) == seen  # a reset detector sees the same events


def _split(pcm: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    pieces, i = [], 0
    for s in sizes:
        pieces.append(pcm[i : i + s])
        i += s
    pieces.append(pcm[i:])
    return pieces


_WHOLE: dict[tuple[str, int, int], tuple[np.ndarray, list[VadEvent]]] = {}


def _whole(name: str, rate: int, frame_ms: int) -> tuple[np.ndarray, list[VadEvent]]:
    if (name, rate, frame_ms) not in _WHOLE:
        pcm, _ = at_rate(name, rate)
        _WHOLE[name, rate, frame_ms] = pcm, VoiceActivityDetector(rate, frame_ms=frame_ms).process(pcm)
    return _WHOLE[name, rate, frame_ms]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["what_time_is_it.wav", "speech_white_snr10.wav", "noise_burst_150ms.wav"]),
    rate=st.sampled_from(RATES),
    frame_ms=st.sampled_from(FRAMES),
    sizes=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=60),
)
def test_random_pieces_give_same_events(name: str, rate: int, frame_ms: int, sizes: list[int]) -> None:
    pcm, expected = _whole(name, rate, frame_ms)
    assert expected  # each of these fixtures has events
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    events: list[VadEvent] = []
    for piece in _split(pcm, sizes):
        events += vad.process(piece)
    assert events == expected
    assert vad.position == len(pcm)


def test_supported_rates_all_work() -> None:
    pcm, rate = load_fixture("what_time_is_it.wav")
    for r in SUPPORTED_RATES:
        assert [e.kind for e in VoiceActivityDetector(r).process(resample_oneshot(pcm, rate, r))] == ["start", "end"]


# -- issue 17: line noise that starts abruptly; eager onset events ---------------------------------
CALL_VAD = {"settle_ms": 120, "onset_ms": 20}  # as the call runs it (worker.call.CallConfig)


def _hum(n: int, rate: int, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
    x = x + 0.3 * np.std(x) * rng.standard_normal(n)
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (level / 20)).astype(np.float32)


def _line_opens(kind: str, rate: int, level: float, at_s: float = 0.3, total_s: float = 4.0, seed: int = 21) -> np.ndarray:
    n, at = int(total_s * rate), int(at_s * rate)
    noise = _hum(n - at, rate, level, seed) if kind == "hum" else (white_noise if kind == "white" else pink_noise)(
        n - at, level, seed)
    return to_int16(np.concatenate([np.zeros(at, np.float32), noise]))


@pytest.mark.parametrize("frame_ms", FRAMES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ("white", "pink", "hum"))
def test_abrupt_line_noise_settles_without_a_start(kind: str, rate: int, frame_ms: int) -> None:
    for level in (-50.0, -40.0, -35.0):
        pcm = _line_opens(kind, rate, level)
        vad = VoiceActivityDetector(rate, frame_ms=frame_ms, **CALL_VAD)
        events = vad.process(pcm)
        assert "start" not in [e.kind for e in events], (level, events)
        assert vad.settled >= 1 and not vad.tentative
        kinds = [e.kind for e in events]
        assert kinds == ["onset", "drop"] * (len(kinds) // 2)  # every tentative onset retracted


def test_abrupt_line_noise_started_speech_without_settling() -> None:
    """The problem the settling solves: the floor learnt on the silence lets the noise step through."""
    assert [e.kind for e in VoiceActivityDetector(16000).process(_line_opens("white", 16000, -50.0))][:1] == ["start"]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ("white", "pink", "hum"))
def test_speech_right_after_the_noise_onset_starts(kind: str, rate: int) -> None:
    clip, k = at_rate("what_time_is_it.wav", rate)
    info = fixture_info("what_time_is_it.wav")
    onset = round(info["speech"][0][0] * k)
    for delay_ms in (0, 50, 150, 400):
        noise = _line_opens(kind, rate, -40.0, total_s=0.3 + delay_ms / 1000 + len(clip) / rate)
        at = int(0.3 * rate) + ms(rate, delay_ms)
        mix = noise.astype(np.int32)
        mix[at : at + len(clip) - onset] += clip[onset:]
        events = VoiceActivityDetector(rate, **CALL_VAD).process(np.clip(mix, -32768, 32767).astype(np.int16))
        starts = [e for e in events if e.kind == "start"]
        assert len(starts) == 1, (delay_ms, events)
        assert int(0.3 * rate) <= starts[0].sample <= at + ms(rate, 60)
        assert starts[0].decided_at > at


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", SPEECH)
def test_onset_comes_first_and_the_start_keeps_its_sample(name: str, rate: int) -> None:
    pcm, _ = at_rate(name, rate)
    events = VoiceActivityDetector(rate, **CALL_VAD).process(pcm)
    assert [e.kind for e in events] == ["onset", "start", "end"], events
    onset, start, _ = events
    assert onset.sample == start.sample and onset.decided_at - onset.sample == ms(rate, 20)
    assert start.decided_at >= onset.decided_at


@pytest.mark.parametrize("name", ["speech_white_snr10.wav", "noise_burst_150ms.wav", "what_time_is_it.wav"])
def test_settling_and_onsets_do_not_depend_on_pieces(name: str) -> None:
    pcm = np.concatenate([_line_opens("pink", 16000, -40.0, total_s=1.0), at_rate(name, 16000)[0]])
    expected = VoiceActivityDetector(16000, **CALL_VAD).process(pcm)
    assert expected
    rng = np.random.default_rng(3)
    vad = VoiceActivityDetector(16000, **CALL_VAD)
    events: list[VadEvent] = []
    for piece in _split(pcm, rng.integers(0, 4000, 40).tolist()):
        events += vad.process(piece)
    assert events == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=12),
       st.lists(st.one_of(st.floats(min_value=-10, max_value=90), st.just(None)), min_size=1, max_size=300))
def test_window_min_is_min_of_last_values(size: int, ops: list[float | None]) -> None:
    """The noise floor's sliding minimum equals min() over a deque of the last `size` values, through
    clears and re-fills (None: clear, then refill with the last few values, as the floor settles)."""
    from collections import deque

    from v2v.media.vad import _WindowMin

    win, ref = _WindowMin(size), deque[float](maxlen=size)
    seen: list[float] = []
    for op in ops:
        if op is None:
            refill = seen[-3:]
            win.clear()
            ref.clear()
            win.extend(refill)
            ref.extend(refill)
        else:
            seen.append(op)
            win.append(op)
            ref.append(op)
        if ref:
            assert win.min() == min(ref)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_exact_silence_levels_are_what_the_arithmetic_gives(rate: int, frame_ms: int) -> None:
    """The VAD skips the level arithmetic on exact silence after silence: 0 dB, not loud; check that this
    is what the arithmetic gives, and that silence in pieces around speech gives the same events."""
    vad = VoiceActivityDetector(rate, frame_ms=frame_ms)
    n = 7
    zeros = np.zeros(n * vad.frame_len, dtype=np.float32)
    assert vad._levels_db(zeros, n) == [0.0] * n
    assert vad._floor_power > 0.0
    rng = np.random.default_rng(rate + frame_ms)
    speech = (np.sin(np.arange(rate) * 2 * np.pi * 220 / rate) * 8000 * (1 + np.sin(np.arange(rate) / 800)))
    noise = rng.standard_normal(rate) * 2000
    pcm = np.concatenate([np.zeros(rate // 2), speech, np.zeros(rate // 3), noise, np.zeros(rate)])
    pcm = pcm.astype(np.int16)
    whole = VoiceActivityDetector(rate, frame_ms=frame_ms, settle_ms=120, onset_ms=20)
    pieces = VoiceActivityDetector(rate, frame_ms=frame_ms, settle_ms=120, onset_ms=20)
    want = whole.process(pcm)
    got: list[VadEvent] = []
    pos = 0
    while pos < len(pcm):
        step = int(rng.integers(1, rate // 25))
        got += pieces.process(pcm[pos : pos + step])
        pos += step
    assert got == want
    assert want, "the speech and the noise burst must give events"


def _speech_in(noise: np.ndarray, name: str, rate: int, snr_db: float) -> tuple[np.ndarray, int, int]:
    """Fixture ``name`` 1 s into a line of ``noise`` (float, unit RMS) scaled to ``snr_db`` below the speech."""
    pcm, r = load_fixture(name)
    x = resample_oneshot(pcm, r, rate).astype(np.float64)
    s0, s1 = (v * rate // r for v in (fixture_info(name)["speech"][0][0], fixture_info(name)["speech"][-1][1]))
    speech_rms = np.sqrt(np.mean(x[s0:s1] ** 2))
    line = np.concatenate([np.zeros(rate), x, np.zeros(rate)])
    line += noise[: len(line)] * speech_rms * 10 ** (-snr_db / 20)
    return to_int16(line / 32768.0), rate + s0, rate + s1


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_7_db_above_steady_noise_starts(rate: int) -> None:
    """As the call runs it: at least half the utterances 7 dB above steady white noise start a turn on the
    speech (none before it); with the start evidence of a busy background (9 dB) for every line, almost
    none did (the rule bites)."""
    noise = white_noise(rate * 30, 0.0, 5).astype(np.float64)  # unit RMS (0 dBFS), longer than any line
    heard = {4.5: 0, 9.0: 0}
    for name in SPEECH:
        line, s0, s1 = _speech_in(noise, name, rate, 7.0)
        for rise in heard:
            evs = VoiceActivityDetector(rate, settle_ms=120, onset_ms=20, rise_db=rise).process(line)
            starts = [e for e in evs if e.kind == "start"]
            assert all(e.sample >= s0 - rate // 100 for e in starts), (name, rise)  # never on the noise alone
            heard[rise] += any(s0 - rate // 100 <= e.sample < s1 for e in starts)
    assert heard[4.5] >= len(SPEECH) // 2
    assert heard[4.5] >= heard[9.0] + 4


def test_a_voice_like_background_is_busy_and_steady_noise_is_not() -> None:
    """The busy-background detector alone (a start_ms no run reaches, so nothing starts): chatter (six
    fixtures summed, -45 dBFS) makes the background busy; steady pink noise and silence do not."""
    rate = 16000
    stream = np.concatenate([resample_oneshot(*load_fixture(n), rate).astype(np.float64) for n in SPEECH])
    babble = sum(np.roll(stream, k * len(stream) // 6) for k in range(6))
    babble = to_int16(babble[: rate * 3] / np.sqrt(np.mean(babble**2)) * 10 ** (-45 / 20))
    lines = {"babble": babble, "pink": to_int16(pink_noise(rate * 3, -35.0, 2)), "silence": np.zeros(rate * 3, np.int16)}
    for name, line in lines.items():
        vad = VoiceActivityDetector(rate, start_ms=5000, settle_ms=120, onset_ms=20)
        assert not [e for e in vad.process(line) if e.kind == "start"]
        assert vad.busy == (name == "babble"), name


def test_the_callers_own_turn_does_not_make_the_background_busy() -> None:
    """The voiced frames that led to a start were the caller, not the background: after a turn in steady
    noise the background is still quiet, so the caller's next turn needs no more evidence than this one."""
    rate = 16000
    noise = white_noise(rate * 30, 0.0, 5).astype(np.float64)
    ended = 0
    for snr in (10.0, 7.0):
        for name in SPEECH:
            line, _, _ = _speech_in(noise, name, rate, snr)
            vad = VoiceActivityDetector(rate, settle_ms=120, onset_ms=20)
            if any(e.kind == "end" for e in vad.process(line)):
                ended += 1
                assert not vad.busy, (name, snr)
    assert ended >= len(SPEECH)  # most of both sets ended a turn (the check ran)
