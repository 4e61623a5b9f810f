"""Unit tests of the media building blocks: frames, resampling, chunker, playout, track."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v2v.media.audio import frame_to_mono, mono_to_frame
from v2v.media.chunker import MODEL_CHUNK, Chunker, ResamplingChunker
from v2v.media.playout import ItemPlayed, PlayoutBuffer, PlayoutStarted, PlayoutStopped
from v2v.media.resample import ExactResampler, Resampler
from v2v.media.track import AssistantTrack

# ---------------------------------------------------------------- frames


@pytest.mark.parametrize("fmt", ["s16", "s16p"])
@pytest.mark.parametrize("layout", ["mono", "stereo"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_frame_to_mono(fmt: str, layout: str, rate: int) -> None:
    n = rate // 50
    left = (np.arange(n) * 7 % 2000 - 1000).astype(np.int16)
    right = (left // 2).astype(np.int16)
    if layout == "mono":
        data = left.reshape(1, -1)
        expect = left
    elif fmt == "s16":
        data = np.stack([left, right], axis=1).reshape(1, -1)  # interleaved
        expect = ((left.astype(np.int32) + right) // 2).astype(np.int16)
    else:
        data = np.stack([left, right])
        expect = ((left.astype(np.int32) + right) // 2).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = rate
    out = frame_to_mono(frame)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expect)


def test_frame_to_mono_no_overflow() -> None:
    full = np.full(480, 32767, np.int16)
    frame = av.AudioFrame.from_ndarray(np.stack([full, full], axis=1).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48000
    assert frame_to_mono(frame).min() == 32767


def test_mono_to_frame_round_trip() -> None:
    pcm = np.arange(-480, 480, dtype=np.int16)
    frame = mono_to_frame(pcm, 48000, pts=960)
    assert frame.samples == 960 and frame.sample_rate == 48000
    assert frame.pts == 960 and frame.time_base == Fraction(1, 48000)
    np.testing.assert_array_equal(frame_to_mono(frame), pcm)


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("in_rate,out_rate,frame", [(48000, 24000, 960), (8000, 24000, 160), (24000, 8000, 480),
                                                     (44100, 24000, 441), (16000, 24000, 333)])
def test_resampler_has_no_drift(in_rate: int, out_rate: int, frame: int) -> None:
    seconds = 30
    rs = Resampler(in_rate, out_rate)
    total = 0
    n_in = in_rate * seconds
    pos = 0
    while pos < n_in:
        chunk = np.zeros(min(frame, n_in - pos), np.int16)
        total += len(rs.process(chunk))
        pos += len(chunk)
    delay = out_rate * seconds - total
    assert 0 <= delay <= out_rate // 500  # a fixed filter delay of at most 2 ms
    total += len(rs.flush())
    assert abs(total - out_rate * seconds) <= 2


def test_resampler_preserves_a_tone() -> None:
    t = np.arange(48000) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    rs = Resampler(48000, 24000)
    out = np.concatenate([rs.process(tone[i : i + 960]) for i in range(0, 48000, 960)])
    spectrum = np.abs(np.fft.rfft(out[2400:21600]))
    peak_hz = np.argmax(spectrum) * 24000 / len(out[2400:21600])
    assert abs(peak_hz - 440) < 3
    assert 7000 < np.abs(out[2400:]).max() < 8500


@pytest.mark.parametrize("in_rate,out_rate,n", [(24000, 48000, 480), (24000, 8000, 480), (8000, 24000, 160)])
def test_exact_resampler_lengths(in_rate: int, out_rate: int, n: int) -> None:
    rs = ExactResampler(in_rate, out_rate)
    for _ in range(200):
        assert len(rs.process(np.ones(n, np.int16) * 1000)) == n * out_rate // in_rate
    if (7 * out_rate) % in_rate:
        with pytest.raises(ValueError):
            rs.process(np.zeros(7, np.int16))


# ---------------------------------------------------------------- chunker


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=7000), max_size=40))
def test_chunker_preserves_concatenation(sizes: list[int]) -> None:
    c = Chunker(MODEL_CHUNK)
    data = np.arange(sum(sizes), dtype=np.int64).astype(np.int16)
    out: list[np.ndarray] = []
    pos = 0
    for size in sizes:
        chunks = c.push(data[pos : pos + size])
        assert all(len(ch) == MODEL_CHUNK for ch in chunks)
        out.extend(chunks)
        pos += size
    rest = c.flush()
    assert len(rest) < MODEL_CHUNK
    joined = np.concatenate(out + [rest]) if out or len(rest) else np.zeros(0, np.int16)
    np.testing.assert_array_equal(joined, data)
    assert c.flush().size == 0


def test_chunker_chunks_are_independent_copies() -> None:
    c = Chunker(4)
    a = c.push(np.arange(6, dtype=np.int16))[0]
    c.push(np.arange(10, 16, dtype=np.int16))
    np.testing.assert_array_equal(a, [0, 1, 2, 3])


@pytest.mark.parametrize(("in_rate", "out_rate", "chunk_ms"), [
    (48000, 24000, 100), (48000, 16000, 100), (16000, 24000, 100), (8000, 24000, 100), (48000, 24000, 20),
])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_resampling_chunker_same_chunks_at_same_frames(in_rate: int, out_rate: int, chunk_ms: int,
                                                        frame_ms: int) -> None:
    """Resampling held input once per chunk gives exactly what resampling every frame gives, frame by frame."""
    rng = np.random.default_rng(in_rate + out_rate + frame_ms)
    fl = in_rate * frame_ms // 1000
    signal = (rng.standard_normal(in_rate * 2) * 3000).astype(np.int16)
    size = out_rate * chunk_ms // 1000
    per_frame, rs = Chunker(size), Resampler(in_rate, out_rate)
    batched = ResamplingChunker(in_rate, out_rate, size)
    emitted = 0
    for i in range(0, len(signal) - fl + 1, fl):
        frame = signal[i : i + fl]
        want = per_frame.push(rs.process(frame))
        got = batched.push(frame)
        assert len(got) == len(want), f"frame {i // fl}: {len(got)} chunks, per frame {len(want)}"
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        emitted += len(got)
    assert emitted >= 2 * 1000 // chunk_ms - 2  # 2 s of input, less the filter delay and a last partial frame


# ---------------------------------------------------------------- playout


def _ramp(n: int, start: int = 1) -> np.ndarray:
    return (np.arange(n) % 1000 + start).astype(np.int16) * 10


def test_playout_counts_only_what_is_read() -> None:
    events: list = []
    p = PlayoutBuffer(listener=events.append)
    p.add("a", _ramp(1000))
    p.add("a", _ramp(500))
    assert p.played("a") == 0 and p.received("a") == 1500
    out = p.read(480)
    assert np.count_nonzero(out) == 480 and p.played("a") == 480
    assert events == [PlayoutStarted("a")]
    p.read(480)
    p.read(480)
    assert p.played("a") == 1440
    out = p.read(480)  # underrun: item not ended, 60 samples left
    assert np.count_nonzero(out) == 60 and p.played("a") == 1500
    assert p.audible  # still waiting for the model: not "stopped"
    p.end_item("a")
    p.read(480)
    assert events[-2:] == [ItemPlayed("a", 1500), PlayoutStopped("a", "drained")]
    assert not p.audible


def test_playout_items_play_in_order_across_a_frame() -> None:
    p = PlayoutBuffer()
    p.add("a", np.full(300, 1, np.int16))
    p.end_item("a")
    p.add("b", np.full(300, 2, np.int16))
    out = p.read(480)
    assert (out[:300] == 1).all() and (out[300:] == 2).all()
    assert p.played("a") == 300 and p.played("b") == 180


def test_playout_pause_fades_without_consuming_and_resume_continues() -> None:
    p = PlayoutBuffer()
    sig = np.full(4800, 20000, np.int16)
    p.add("a", sig)
    p.read(480)
    p.pause()
    faded = p.read(480)
    assert p.played("a") == 480  # the fade-out does not count as played
    assert np.count_nonzero(faded) <= p.fade_samples == 120
    steps = np.abs(np.diff(np.concatenate([[20000], faded]).astype(np.int32)))
    assert steps.max() <= 20000 // p.fade_samples + 1  # no click
    assert not p.read(480).any()
    p.resume()
    out = p.read(480)
    assert p.played("a") == 960
    steps = np.abs(np.diff(np.concatenate([[0], out]).astype(np.int32)))
    assert steps.max() <= 20000 // p.fade_samples + 1


def test_playout_flush_fades_and_reports() -> None:
    events: list = []
    p = PlayoutBuffer(listener=events.append)
    p.add("a", np.full(4800, -20000, np.int16))
    p.read(480)
    flushed = p.flush()
    assert flushed == {"a": (480, 4800)}
    tail = p.read(480)
    assert 0 < np.count_nonzero(tail) <= 120
    assert np.abs(np.diff(tail.astype(np.int32))).max() <= 20000 // 120 + 1
    assert events[-1] == PlayoutStopped("a", "flushed")
    assert not p.read(480).any()
    p.add("a", np.full(100, 5, np.int16))  # late audio for a flushed item is dropped
    assert not p.read(480).any()


def test_playout_contiguous_items_do_not_stop_between() -> None:
    events: list = []
    p = PlayoutBuffer(listener=events.append)
    p.add("a", np.full(300, 9, np.int16))
    p.end_item("a")
    p.add("b", np.full(300, 9, np.int16))
    p.read(480)
    assert events == [PlayoutStarted("a"), ItemPlayed("a", 300), PlayoutStarted("b")]


@pytest.mark.parametrize("queued", [30, 119])
def test_playout_fade_with_little_audio_left_still_reaches_zero(queued: int) -> None:
    p = PlayoutBuffer()
    p.add("a", np.full(480 + queued, 20000, np.int16))
    p.read(480)
    p.pause()
    faded = p.read(480)
    steps = np.abs(np.diff(np.concatenate([[20000], faded[: queued + 1]]).astype(np.int32)))
    assert steps.max() <= 20000 // queued + 1, steps.max()
    assert not faded[queued:].any()


def test_playout_fade_reads_into_the_next_item() -> None:
    p = PlayoutBuffer()
    p.add("a", np.full(500, 20000, np.int16))
    p.end_item("a")
    p.add("b", np.full(500, 20000, np.int16))
    p.read(480)
    p.pause()
    faded = p.read(480)
    assert np.count_nonzero(faded) == p.fade_samples
    assert np.abs(np.diff(faded[: p.fade_samples + 1].astype(np.int32))).max() <= 20000 // p.fade_samples + 1


def test_playout_pause_before_audio_holds_it() -> None:
    p = PlayoutBuffer()
    p.pause()
    p.add("a", np.full(960, 7, np.int16))
    assert not p.read(480).any() and p.played("a") == 0
    assert p.flush() == {"a": (0, 960)}


# ---------------------------------------------------------------- track


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0


async def test_track_frames_pts_and_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        clock.now += s

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    p = PlayoutBuffer()
    p.add("a", np.full(24000, 1000, np.int16))
    track = AssistantTrack(p, clock=lambda: clock.now)
    pts = []
    for _ in range(50):
        frame = await track.recv()
        assert frame.samples == 960 and frame.sample_rate == 48000
        assert frame.format.name == "s16" and frame.layout.name == "mono"
        pts.append(frame.pts)
    assert pts == [i * 960 for i in range(50)]
    assert p.played("a") == 50 * 480
    assert len(sleeps) == 49 and all(abs(s - 0.02) < 1e-9 for s in sleeps)
    clock.now += 0.5  # the loop stalled: the clock re-anchors instead of bursting 25 frames
    sleeps.clear()
    frame = await track.recv()
    assert sleeps == [] and frame.pts == 50 * 960
    frame = await track.recv()
    assert len(sleeps) == 1 and abs(sleeps[0] - 0.02) < 1e-9 and frame.pts == 51 * 960
    track.stop()
