"""Load generator: N concurrent aiortc callers through ``POST /api/offer`` (run it in its own process).

Each caller sends a speech WAV in a loop at real time (the WAV, then as much
silence as it lasts plus one second, so a turn-taking server answers in the
gap and an echo server echoes speech and silence alike), receives the reply
and timestamps every RTP packet on arrival. To keep the load side cheap the
WAV is Opus-encoded once and sent as pre-encoded packets, and received packets
are timestamped but not decoded.

It prints JSON lines on stdout: ``{"event": "connected", ...}`` as calls come
up, ``{"event": "measure_start"}`` / ``{"event": "measure_end"}`` around the
measurement window (the orchestrator samples the server's /proc there), and a
final ``{"event": "result", ...}`` with the pacing figures.

    python bench/loadgen.py --url http://127.0.0.1:8080 --calls 10 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import FIXTURES, ProcSample, percentile
from rtpstats import Arrivals, hook_receiver, pacing

RATE = 48000
FRAME = 960
TB = Fraction(1, RATE)
DEFAULT_WAV = FIXTURES / "speech_en_gb_weather.wav"


def read_wav_48k(path: str | Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: 16-bit PCM WAV expected")
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    if ch > 1:
        pcm = pcm.reshape(-1, ch).mean(axis=1).astype(np.int16)
    if rate != RATE:
        import soxr

        pcm = soxr.resample(pcm.astype(np.float32), rate, RATE).clip(-32768, 32767).astype(np.int16)
    return pcm


def loop_pcm(speech: np.ndarray) -> np.ndarray:
    """One loop of the caller's microphone: the speech, then silence as long as it plus 1 s."""
    silence = np.zeros(len(speech) + RATE, np.int16)
    pcm = np.concatenate([speech, silence])
    return np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME, np.int16)])


def encode_opus(pcm: np.ndarray) -> list[bytes]:
    """20 ms Opus payloads of ``pcm`` (48 kHz mono), with aiortc's own encoder."""
    enc = OpusEncoder()
    out: list[bytes] = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + FRAME].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = i
        frame.time_base = TB
        payloads, _ = enc.encode(frame)
        out.extend(payloads)
    return out


class PacketSource(MediaStreamTrack):
    """A microphone of pre-encoded Opus packets, looped, paced by the monotonic clock."""

    kind = "audio"

    def __init__(self, payloads: list[bytes], offset: int = 0) -> None:
        super().__init__()
        self.payloads = payloads
        self.index = offset % len(payloads)
        self._start: float | None = None
        self._n = 0
        self.sent_at: list[float] = []

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._n * FRAME / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        packet = av.Packet(self.payloads[self.index])
        packet.pts = self._n * FRAME
        packet.time_base = TB
        self.index = (self.index + 1) % len(self.payloads)
        self._n += 1
        return packet


class LoadCaller:
    def __init__(self, url: str, payloads: list[bytes], offset: int, datachannel: bool = True) -> None:
        self.url = url.rstrip("/") + "/api/offer"
        self.source = PacketSource(payloads, offset)
        self.arrivals = Arrivals()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tr = self.pc.addTransceiver(self.source, direction="sendrecv")
        hook_receiver(tr.receiver, self.arrivals, decode=False)
        if datachannel:
            self.pc.createDataChannel("chat", ordered=True)
        self.connected = asyncio.Event()
        self.failed: str | None = None
        self.pc_id: str | None = None
        self.offer_answer_ms: float | None = None
        self.connect_ms: float | None = None

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            elif self.pc.connectionState == "failed":
                self.failed = "ice/dtls failed"
                self.connected.set()

    async def connect(self, http: ClientSession, timeout: float) -> None:
        t0 = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        async with http.post(self.url, json=body) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused: HTTP {r.status}: {data}")
        self.offer_answer_ms = 1000 * (time.monotonic() - t0)
        self.pc_id = data.get("pc_id")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=data["type"]))
        await asyncio.wait_for(self.connected.wait(), timeout)
        if self.failed:
            raise RuntimeError(self.failed)
        self.connect_ms = 1000 * (time.monotonic() - t0)

    async def hangup(self, http: ClientSession) -> None:
        if self.pc_id:
            try:
                async with http.delete(f"{self.url}/{self.pc_id}") as r:
                    await r.read()
            except (ClientError, OSError) as e:  # the server may be gone already: close our end anyway
                print(f"hangup request failed: {e}", file=sys.stderr)
        await self.pc.close()


def emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    speech = read_wav_48k(args.wav)
    payloads = encode_opus(loop_pcm(speech))
    rng = random.Random(args.seed)
    callers: list[LoadCaller] = []
    errors: list[str] = []
    self_pid = os.getpid()
    async with ClientSession(timeout=ClientTimeout(total=30)) as http:
        async def start_one(i: int) -> None:
            c = LoadCaller(args.url, payloads, rng.randrange(len(payloads)), not args.no_datachannel)
            callers.append(c)
            try:
                await c.connect(http, args.connect_timeout)
                emit(event="connected", n=sum(1 for x in callers if x.connect_ms is not None))
            except Exception as e:
                errors.append(f"call {i}: {type(e).__name__}: {e}")

        starts = []
        for i in range(args.calls):
            starts.append(asyncio.ensure_future(start_one(i)))
            await asyncio.sleep(1.0 / args.rate)
        await asyncio.gather(*starts)
        ok = [c for c in callers if c.connect_ms is not None]
        emit(event="all_connected", connected=len(ok), errors=len(errors))
        await asyncio.sleep(args.warmup)
        s0 = ProcSample.read(self_pid)
        sent0 = sum(c.source._n for c in ok)
        t0 = time.monotonic()
        emit(event="measure_start", t=t0)
        await asyncio.sleep(args.seconds)
        t1 = time.monotonic()
        s1 = ProcSample.read(self_pid)
        sent1 = sum(c.source._n for c in ok)
        emit(event="measure_end", t=t1)
        await asyncio.gather(*(c.hangup(http) for c in callers), return_exceptions=True)

    intervals: list[float] = []
    late = underruns = lost = packets = active = 0
    max_late = 0.0
    per_call_p99: list[float] = []
    for c in ok:
        p = pacing(c.arrivals.window(t0, t1), late_ms=args.late_ms)
        intervals.extend(p.intervals_ms)
        late += p.late
        underruns += p.underruns
        lost += p.lost
        packets += p.packets
        active += p.active_packets
        max_late = max(max_late, p.max_lateness_ms)
        if p.intervals_ms:
            per_call_p99.append(percentile(p.intervals_ms, 99) or 0.0)
    expected = len(ok) * args.seconds * RATE / FRAME
    return {
        "event": "result",
        "calls": args.calls,
        "connected": len(ok),
        "errors": errors[:20],
        "window_s": round(t1 - t0, 3),
        "packets": packets,
        "packets_expected": round(expected),
        "packets_sent": sent1 - sent0,
        "active_packets": active,
        "interval_p50_ms": percentile(intervals, 50),
        "interval_p99_ms": percentile(intervals, 99),
        "interval_p999_ms": percentile(intervals, 99.9),
        "interval_max_ms": max(intervals) if intervals else None,
        "worst_call_p99_ms": max(per_call_p99) if per_call_p99 else None,
        "late_frames": late,
        "late_ms": args.late_ms,
        "max_lateness_ms": round(max_late, 2),
        "underruns": underruns,
        "lost": lost,
        "offer_answer_ms_p50": percentile([c.offer_answer_ms for c in ok if c.offer_answer_ms], 50),
        "connect_ms_p50": percentile([c.connect_ms for c in ok if c.connect_ms], 50),
        "loadgen_cpu_ms_per_s": round(1000 * (s1.cpu_s - s0.cpu_s) / max(1e-9, s1.t - s0.t), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="N aiortc callers against /api/offer; JSON lines on stdout")
    ap.add_argument("--url", required=True)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after all calls are up before measuring")
    ap.add_argument("--rate", type=float, default=10.0, help="new calls per second while ramping up")
    ap.add_argument("--wav", default=str(DEFAULT_WAV))
    ap.add_argument("--late-ms", type=float, default=40.0)
    ap.add_argument("--connect-timeout", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-datachannel", action="store_true")
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    args = ap.parse_args(argv)
    if args.calls < 1 or args.calls > 400:
        ap.error("--calls must be 1..400")
    if args.seconds <= 0 or args.seconds > 600:
        ap.error("--seconds must be in (0, 600]")
    from urllib.parse import urlparse

    host = urlparse(args.url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        ap.error(f"--url must be a loopback address (got {host!r}); --allow-remote to override")
    coro = run(args)
    if args.uvloop:
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    emit(**result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
