"""Semantic end of turn (issue 17): the log-mel front end, Smart Turn v3, and turns in a real call.

The model is the real Smart Turn v3.2 (from the pipecat-ai wheel, the `turn`
extra). The turns are recorded human speech (tests/human_speech.py: Debian's
asterisk-core-sounds-en-g722); the espeak fixtures only pin our inference to
pipecat's. The calls run in lockstep (worker/wavcall.py); before each 20 ms step
the test waits for a pending model answer, so the turn ends at the position a
call whose model answers at once would end it (the answer's own latency is
what bench/turn_bench.py measures).
"""

from __future__ import annotations

import functools
import json
import logging
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio_fixtures import read_wav, resample_oneshot
from tests.human_speech import RATE, Utterance, allison, utterance
from v2v.media.logmel import log_mel
from v2v.worker import events as ev
from v2v.worker import turn_model
from v2v.worker.call import CallConfig, CallSession
from v2v.worker.models.echo import EchoModelFactory
from v2v.worker.turn_model import SmartTurn, smart_turn_missing, smart_turn_weights
from v2v.worker.wavcall import run_wav_call

TURN = Path(__file__).resolve().parent / "fixtures" / "turn"
HANGOVER_MS = 500  # CallConfig.vad_end_ms: today's fixed end of turn


@functools.cache
def complete() -> Utterance:
    """ "Your call cannot be completed as dialed." """
    return utterance(allison("cannot-complete-as-dialed"))


@functools.cache
def incomplete() -> Utterance:
    """ "Weasels have eaten our ... [0.9 s] ... phone system": the pause after "our" (where
    bench/turn_human.py's forced alignment puts the word's end)."""
    return utterance(allison("tt-weasels"), cut=25360, pause_ms=900)


def reference_signal() -> np.ndarray:
    """The input of logmel_reference.npz (make_reference.py): 2 s of chirp + modulated tone, float32."""
    t = np.arange(32000) / 16000.0
    chirp = np.sin(2 * np.pi * (100 * t + 0.5 * 1950 * t * t))
    tone = np.sin(2 * np.pi * 300 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * chirp + 0.2 * tone).astype(np.float32)


def test_log_mel_matches_whisper_feature_extractor() -> None:
    """Our extractor against transformers' WhisperFeatureExtractor(chunk_length=8), stored output."""
    expected = np.load(TURN / "logmel_reference.npz")["features"]
    got = log_mel(reference_signal())
    assert got.shape == expected.shape == (80, 800)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_log_mel_keeps_the_last_8_s_and_pads_the_start() -> None:
    x = reference_signal()
    long = np.concatenate([np.ones(200000, np.float32) * 0.5, x])
    np.testing.assert_allclose(log_mel(long), log_mel(long[-128000:]), atol=1e-6)
    padded = np.concatenate([np.zeros(128000 - len(x), np.float32), x])
    np.testing.assert_array_equal(log_mel(x), log_mel(padded))


def test_smart_turn_matches_pipecats_own_inference() -> None:
    """Features + ONNX give the probabilities pipecat's LocalSmartTurnAnalyzerV3 gave (reference.json)."""
    assert smart_turn_missing() is None
    model = SmartTurn()
    try:
        model.wait_loaded()
        for ref in json.loads((TURN / "reference.json").read_text())["smart_turn"]:
            pcm, _ = read_wav(TURN / ref["file"])
            pred = model.predict_blocking(pcm[: ref["end"]].astype(np.float32) / 32768.0)
            assert pred.probability == pytest.approx(ref["probability"], abs=1e-3), ref["file"]
            assert pred.cpu_ms > 0
    finally:
        model.close()


async def wait_for_model(step: int, call: CallSession) -> None:
    """run_wav_call's per-step hook: wait for a pending model answer (lockstep)."""
    eot = call._eot
    if eot is not None and eot.pending is not None:
        await eot.pending


async def turn_ends(u: Utterance, rate: int, config: CallConfig) -> list[int]:
    """Input positions (at ``rate``) where the call ended a turn over utterance ``u``."""

    res = await run_wav_call(EchoModelFactory(), resample_oneshot(u.pcm, RATE, rate), rate, config=config,
                             tail_s=2.5, on_step=wait_for_model)
    return [t.position for t in res.of_type(ev.AgentStateChanged) if t.event.state == "thinking"]


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_complete_utterance_ends_before_the_fixed_hangover(rate: int) -> None:
    u = complete()
    speech_end = u.speech_end * rate // RATE
    ends = await turn_ends(u, rate, CallConfig(turn_model="smart-turn"))
    assert len(ends) == 1
    after_ms = (ends[0] - speech_end) * 1000 / rate
    assert 0 < after_ms < HANGOVER_MS - 150  # the ~150 ms pause the model is asked at, not 500
    ends_off = await turn_ends(u, rate, CallConfig(turn_model="off"))
    assert len(ends_off) == 1 and (ends_off[0] - speech_end) * 1000 / rate >= HANGOVER_MS


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_mid_sentence_pause_does_not_end_the_turn(rate: int) -> None:
    u = incomplete()
    assert u.pause is not None
    pause_start, pause_end = (p * rate // RATE for p in u.pause)
    ends = await turn_ends(u, rate, CallConfig(turn_model="smart-turn"))
    assert not [p for p in ends if pause_start <= p < pause_end]
    assert len(ends) == 1 and ends[0] > u.speech_end * rate // RATE  # ended once, after the whole sentence
    # the fixed hangover cuts this caller off in the pause (the fixture bites)
    ends_off = await turn_ends(u, rate, CallConfig(turn_model="off"))
    assert [p for p in ends_off if pause_start <= p < pause_end]


async def test_each_turn_end_says_how_and_is_counted() -> None:
    """TurnEnded carries how the turn ended (the metric v2v_turn_ends_total{reason} counts it): the model
    on a complete sentence, the fixed hangover without the model, max-wait on a held one."""
    from v2v.signaling.metrics import ServerMetrics

    metrics = ServerMetrics()
    u = incomplete()
    assert u.pause is not None
    runs = {"model": (complete().pcm, "smart-turn"), "hangover": (complete().pcm, "off"),
            "max-wait": (u.pcm[: u.pause[0]], "smart-turn")}
    for reason, (pcm, mode) in runs.items():
        res = await run_wav_call(EchoModelFactory(), pcm, RATE, config=CallConfig(turn_model=mode),  # type: ignore[arg-type]  # a literal
                                 tail_s=2.5, on_step=wait_for_model)
        ended = res.of_type(ev.TurnEnded)
        assert [t.event.reason for t in ended] == [reason]
        for t in ended:
            metrics.observe(t.event)
    text = metrics.render()[0].decode()
    for reason in runs:
        assert f'v2v_turn_ends_total{{reason="{reason}"}} 1.0' in text


async def test_held_turn_ends_after_max_wait() -> None:
    """A pause the model calls mid-sentence, and the caller never goes on: the turn ends at the max wait."""
    u = incomplete()
    assert u.pause is not None
    first = u.pcm[: u.pause[0]]  # "Weasels have eaten our" and nothing more
    cfg = CallConfig(turn_model="smart-turn", turn_max_wait_ms=1200)

    res = await run_wav_call(EchoModelFactory(), first, 16000, config=cfg, tail_s=2.5, on_step=wait_for_model)
    ends = [t.position for t in res.of_type(ev.AgentStateChanged) if t.event.state == "thinking"]
    assert len(ends) == 1
    after_ms = (ends[0] - len(first)) * 1000 / 16000
    assert 1100 <= after_ms <= 1300  # from the last voiced frame, which can be a frame or two early


async def test_without_the_model_the_fixed_hangover_ends_the_turn(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """--turn-model smart-turn where the weights are not installed: today's 500 ms hangover, and a warning."""
    monkeypatch.setattr(turn_model, "WEIGHTS_FILE", "pipecat/not/there.onnx")
    assert smart_turn_weights() is None and smart_turn_missing() is not None
    with caplog.at_level(logging.WARNING, logger="v2v.turn"):
        ends = await turn_ends(complete(), 16000, CallConfig(turn_model="smart-turn"))
    assert any("no end-of-turn model" in r.getMessage() for r in caplog.records)
    assert len(ends) == 1
    assert (ends[0] - complete().speech_end) * 1000 / 16000 >= HANGOVER_MS


async def test_a_failing_model_falls_back_to_the_hangover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model cannot load (a broken weights file): each pause ends the turn after the fixed hangover,
    reported as a fallback."""
    from v2v.worker import end_of_turn

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    broken = SmartTurn(bad)
    monkeypatch.setattr(end_of_turn, "shared_smart_turn", lambda: broken)

    try:
        res = await run_wav_call(EchoModelFactory(), complete().pcm, RATE, config=CallConfig(turn_model="smart-turn"),
                                 tail_s=2.5, on_step=wait_for_model)
    finally:
        broken.close()
    ends = [t.position for t in res.of_type(ev.AgentStateChanged) if t.event.state == "thinking"]
    assert len(ends) == 1
    after_ms = (ends[0] - complete().speech_end) * 1000 / 16000
    assert HANGOVER_MS <= after_ms < HANGOVER_MS + 60
    assert [t.event.reason for t in res.of_type(ev.TurnEnded)] == ["fallback"]


def test_turn_model_flag_is_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """--turn-model smart-turn without the `turn` extra is refused at start with what to install."""
    from v2v.signaling.config import ServerConfig

    ServerConfig(turn_model="smart-turn").validate()
    with pytest.raises(ValueError, match="turn-model"):
        ServerConfig(turn_model="semantic").validate()
    with pytest.raises(ValueError, match="max-wait"):
        ServerConfig(turn_model="smart-turn", turn_max_wait_ms=100).validate()
    with pytest.raises(ValueError, match="turn-threshold"):
        ServerConfig(turn_model="smart-turn", turn_threshold=1.5).validate()
    monkeypatch.setattr(turn_model, "WEIGHTS_FILE", "pipecat/not/there.onnx")
    with pytest.raises(ValueError, match=r"v2v\[turn\]"):
        ServerConfig(turn_model="smart-turn").validate()


async def test_a_real_webrtc_call_through_serve_ends_its_turn_by_the_model(tmp_path: Path) -> None:
    """`v2v serve --model echo` with V2V_TURN_MODEL=smart-turn, a real WebRTC call (48 kHz Opus): the
    model ends the caller's turn and the echo model answers it."""
    from tests.serve_util import serve_and_call

    async def nothing() -> None:
        return None

    wav = tmp_path / "complete.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(complete().pcm.tobytes())
    summary, log = await serve_and_call("echo", {"V2V_TURN_MODEL": "smart-turn"}, wav, nothing)
    assert "Smart Turn loaded" in log
    assert "turn ended (model)" in log, log[-3000:]
    assert summary["first_reply_audio_s"] is not None


async def test_a_short_burst_over_the_reply_is_not_a_turn() -> None:
    """With the model on, a 150 ms burst over the assistant is still a false interruption: the playout
    resumes and the burst's input is cleared, never committed as a turn; a confirmed barge-in over a
    reply is a turn the model ends."""
    from tests.conftest import load_wav, manifest
    from tests.scripted import Script, ScriptedFactory
    from tests.test_call import _barge_input

    cfg = CallConfig(turn_model="smart-turn")
    factory = ScriptedFactory(Script(reply_seconds=5.0))
    speech = load_wav("long_speech.wav")[0]
    onset = manifest()["long_speech.wav"]["speech"][0][0]
    burst = speech[onset + 16000 : onset + 16000 + 16000 * 150 // 1000]
    res = await run_wav_call(factory, _barge_input(3.5, burst), 16000, config=cfg, tail_s=6.0,
                             on_step=wait_for_model)
    assert res.of_type(ev.FalseInterruption)
    assert factory.names().count("commit_input") == 1  # the first utterance only
    assert "clear_input" in factory.names()
    assert res.of_type(ev.BotInterrupted) == []
    # a real barge-in (a whole sentence over the reply) interrupts and then becomes the next turn
    factory = ScriptedFactory(Script(reply_seconds=5.0))
    res = await run_wav_call(factory, _barge_input(3.5, complete().pcm), 16000, config=cfg, tail_s=3.0,
                             on_step=wait_for_model)
    assert res.of_type(ev.BotInterrupted)
    assert factory.names().count("commit_input") == 2
