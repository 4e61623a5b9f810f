"""aiortc tuned for voice (signaling/aiortc_tuning.py): no codec threads, mono Opus, audio intact."""

from __future__ import annotations

import asyncio
import threading

from tests.signaling_util import running_server
from tests.test_webrtc_calls import hello
from v2v.signaling.client import Caller


async def test_calls_encode_mono_voice_and_spawn_no_codec_threads() -> None:
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
                encoder = sender._RTCRtpSender__encoder  # created by the first frame (silence flows always)
                assert encoder.codec.layout.name == "mono" and encoder.codec.bit_rate == 32000
        finally:
            for c in callers:
                await c.hangup()
