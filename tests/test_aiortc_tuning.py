"""aiortc tuned for voice (signaling/aiortc_tuning.py): no codec threads, mono Opus, audio intact."""

from __future__ import annotations

import asyncio
import logging
import threading
import types
from typing import Any

import pytest
from aiortc import rtcrtpreceiver, rtcrtpsender
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import opus

from tests.signaling_util import running_server
from tests.test_webrtc_calls import hello
from v2v.signaling import aiortc_tuning
from v2v.signaling.client import Caller


async def test_calls_encode_mono_voice_and_spawn_no_codec_threads() -> None:
    assert aiortc_tuning.install()  # what `v2v serve` / `v2v worker` do at start
    assert aiortc_tuning.install() and aiortc_tuning.installed()  # idempotent
    assert rtcrtpsender.RTCRtpSender.__init__ is aiortc_tuning._sender_init
    assert aiortc_rtp.compute_audio_level_dbov is aiortc_tuning._audio_level_dbov
    assert not aiortc_tuning.missing_internals()  # the check still sees the stock internals once installed
    async with running_server() as server:
        callers = [Caller(server.url) for _ in range(3)]
        try:
            for c in callers:
                await c.connect()
                await asyncio.wait_for(c.bot_ready.wait(), 5)
            callers[0].play(hello())
            # the echo comes back: decode (server, inline) and encode (server, inline) both work
            await asyncio.wait_for(callers[0].received.first_loud.wait(), 10)
            names = [t.name for t in threading.enumerate()]
            assert not any(n == "audio-decoder" for n in names), names
            assert not any("ThreadPoolExecutor" in n for n in names), names
            for c in callers:
                wc = server.host.webrtc.get(c.pc_id)
                (sender,) = [s for s in wc.pc.getSenders() if s.track is not None and s.track.kind == "audio"]
                clocked = aiortc_tuning.clocked_sender(sender)  # the media clock sends the assistant's track
                assert clocked is not None and clocked.finished is None
                assert clocked.encoder.codec.layout.name == "mono" and clocked.encoder.codec.bit_rate == 32000
        finally:
            for c in callers:
                await c.hangup()


def _module_copy(mod: Any, **replace: Any) -> types.SimpleNamespace:
    """A stand-in module object: ``mod``'s attributes, some replaced (the real module is untouched)."""
    ns = types.SimpleNamespace(**{k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")})
    for k, v in replace.items():
        setattr(ns, k, v)
    return ns


class _ReceiverWithoutDecoderQueue:
    """An aiortc receiver as a future release might have it: no ``__decoder_queue``."""

    def __init__(self, kind: str) -> None:
        self._RTCRtpReceiver__jitter_buffer = None
        self._RTCRtpReceiver__codecs: dict = {}
        self._RTCRtpReceiver__remote_streams: dict = {}
        self._enabled = True
        self._track = None


@pytest.fixture
def fresh_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuning module as in a new process, wired to stand-in aiortc modules (restored afterwards)."""
    monkeypatch.setattr(aiortc_tuning, "_installed", False)
    monkeypatch.setattr(aiortc_tuning, "_supported", None)
    monkeypatch.setattr(aiortc_tuning, "rtcrtpsender", _module_copy(rtcrtpsender))
    monkeypatch.setattr(aiortc_tuning, "aiortc_rtp", _module_copy(aiortc_rtp))
    monkeypatch.setattr(aiortc_tuning, "opus", _module_copy(opus))


def _assert_stock(caplog: pytest.LogCaptureFixture, receiver_mod: Any, needle: str) -> None:
    sender_init = aiortc_tuning.rtcrtpsender.RTCRtpSender.__init__
    level = aiortc_tuning.aiortc_rtp.compute_audio_level_dbov
    threading_mod = receiver_mod.threading
    with caplog.at_level(logging.WARNING, logger="v2v.webrtc"):
        assert aiortc_tuning.install() is False
        assert aiortc_tuning.install() is False  # asked again: no second warning
        receiver = types.SimpleNamespace(_RTCRtpReceiver__jitter_buffer="stock")
        aiortc_tuning.patch_receiver(receiver)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert needle in warnings[0].getMessage() and "stock" in warnings[0].getMessage()
    assert not aiortc_tuning.installed()
    assert receiver._RTCRtpReceiver__jitter_buffer == "stock"
    assert aiortc_tuning.rtcrtpsender.RTCRtpSender.__init__ is sender_init
    assert aiortc_tuning.aiortc_rtp.compute_audio_level_dbov is level
    assert receiver_mod.threading is threading_mod


def test_a_missing_internal_leaves_aiortc_stock_with_one_warning(
    fresh_tuning: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _module_copy(rtcrtpreceiver, RTCRtpReceiver=_ReceiverWithoutDecoderQueue)
    monkeypatch.setattr(aiortc_tuning, "rtcrtpreceiver", fake)
    assert aiortc_tuning.missing_internals(receiver_mod=fake) == ["_ReceiverWithoutDecoderQueue._RTCRtpReceiver__decoder_queue"]
    _assert_stock(caplog, fake, "_RTCRtpReceiver__decoder_queue")
    assert fake.RTCRtpReceiver.__init__ is _ReceiverWithoutDecoderQueue.__init__


def test_a_missing_module_attribute_leaves_aiortc_stock(
    fresh_tuning: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _module_copy(rtcrtpreceiver)
    fake.threading = types.SimpleNamespace()  # aiortc no longer makes its decoder thread through this name
    monkeypatch.setattr(aiortc_tuning, "rtcrtpreceiver", fake)
    _assert_stock(caplog, fake, "rtcrtpreceiver.threading.Thread")


def test_an_untested_aiortc_version_leaves_aiortc_stock(
    fresh_tuning: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _module_copy(rtcrtpreceiver)
    monkeypatch.setattr(aiortc_tuning, "rtcrtpreceiver", fake)
    newest = aiortc_tuning.TESTED_AIORTC[1]
    monkeypatch.setattr(aiortc_tuning, "_aiortc_version", lambda: (newest[0], newest[1] + 1))
    _assert_stock(caplog, fake, "outside the tested range")


def test_tested_range_matches_setup_cfg_bound() -> None:
    """setup.cfg's aiortc upper bound is the next minor after the newest tested one."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "setup.cfg").read_text()
    lo, hi = aiortc_tuning.TESTED_AIORTC
    assert f"aiortc>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}" in text
