"""Latency benches of v2v with the instant ``echo`` model (it answers each turn at once, faster than real time).

Callers are aiortc peers sending pre-encoded Opus packets (send time of each
packet recorded) and timestamping every received RTP packet on arrival, before
any jitter buffer (the received payloads are decoded afterwards, offline).
v2v's outgoing frames carry the RFC 6465 audio level: exact digital silence
(paused or idle playout) is -127 dBov, so a reply is a run of packets above it.

- barge-in cut: each caller speaks a long turn, the echo reply starts, and at a
  random point of it the caller starts its next long turn (the barge-in). Cut =
  arrival of the last reply packet - send time of the barge-in's first loud
  packet (the speech onset). p50/p95 over ``--barge-ins``.
- truncation error: ``audio_end_ms`` from the server's log line
  ``interrupted (...) item X at N ms of M ms`` minus the reply audio the caller
  received for that item (first to last non-zero sample of the decoded run).
- server part of turn latency: first reply packet arrival - send time of the
  caller's last loud packet of the turn - the VAD end-of-speech hangover
  (``vad_end_ms`` = 500 ms by default); plus the server's own
  ``v2v_turn_latency_seconds`` histogram (mean) from ``/metrics``.
- offer-to-answer and connect-to-first-audio (``--greeting``: the echo model
  answers the greeting text with tones at once), both from fresh calls, and the
  same through ``v2v call``.

    python bench/latency.py --barge-ins 30 --callers 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FIXTURES, RESULTS, Server, percentile, write_result
from loadgen import FRAME, RATE, encode_opus, read_wav_48k
from rtpstats import Arrivals, hook_receiver

TB = Fraction(1, RATE)
LOUD_RMS = 300.0
SILENT_DBOV = -127
VAD_END_MS = 500  # worker.call.CallConfig.vad_end_ms default
INTERRUPTED = re.compile(r"call (\S+): interrupted \((\w+)\) item (\S+) at (\d+) ms of (\d+) ms( \(deleted\))?")
# the structured per-call log of signaling/logs.py
TRUNCATION = re.compile(r"\b(truncation|item-deleted) call=(\S+)\b.*?\bitem=(\S+)(?:.*?\baudio_end_ms=(\d+))?")


@dataclass
class Segment:
    payloads: list[bytes]
    loud: list[bool]

    @classmethod
    def from_pcm(cls, pcm: np.ndarray, dither: float = 0.0, seed: int = 0) -> Segment:
        pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME, np.int16)])
        frames = pcm.reshape(-1, FRAME).astype(np.float32)
        rms = np.sqrt((frames * frames).mean(axis=1))
        loud = np.flatnonzero(rms >= LOUD_RMS)
        if dither > 0 and len(loud):
            # low noise (about -64 dBFS) fills the pauses between words (only between the first and
            # the last loud frame, so the VAD hears the same end of speech): the echoed reply has no
            # digitally silent frame inside and the receiver sees it as one unbroken run
            a, b = loud[0] * FRAME, (loud[-1] + 1) * FRAME
            noise = np.random.default_rng(seed).normal(0.0, dither, b - a)
            pcm = pcm.copy()
            pcm[a:b] = np.clip(pcm[a:b].astype(np.float64) + noise, -32768, 32767).astype(np.int16)
        return cls(encode_opus(pcm), [bool(r >= LOUD_RMS) for r in rms])

    @property
    def first_loud(self) -> int:
        return self.loud.index(True)

    @property
    def last_loud(self) -> int:
        return len(self.loud) - 1 - self.loud[::-1].index(True)


@dataclass
class Played:
    segment: Segment
    sent_at: list[float] = field(default_factory=list)


class ScriptSource(MediaStreamTrack):
    """A microphone playing queued pre-encoded segments, silence packets in between, paced by the clock."""

    kind = "audio"

    def __init__(self, silence: bytes) -> None:
        super().__init__()
        self.silence = silence
        self.current: Played | None = None
        self._pos = 0
        self._start: float | None = None
        self._n = 0

    def play(self, seg: Segment) -> Played:
        p = Played(seg)
        self.current = p
        self._pos = 0
        return p

    @property
    def busy(self) -> bool:
        return self.current is not None

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
        cur = self.current
        if cur is not None:
            data = cur.segment.payloads[self._pos]
            cur.sent_at.append(time.monotonic())
            self._pos += 1
            if self._pos >= len(cur.segment.payloads):
                self.current = None
        else:
            data = self.silence
        packet = av.Packet(data)
        packet.pts = self._n * FRAME
        packet.time_base = TB
        self._n += 1
        return packet


class Caller:
    def __init__(self, url: str, silence: bytes) -> None:
        self.url = url.rstrip("/") + "/api/offer"
        self.source = ScriptSource(silence)
        self.arrivals = Arrivals(keep_payload=True, decode_level=True)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tr = self.pc.addTransceiver(self.source, direction="sendrecv")
        hook_receiver(tr.receiver, self.arrivals, decode=False)
        self.pc.createDataChannel("chat", ordered=True)
        self.connected = asyncio.Event()
        self.pc_id: str | None = None
        self.t_start = 0.0
        self.t_answer = 0.0
        self.t_connected = 0.0

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.t_connected = time.monotonic()
                self.connected.set()

    async def connect(self, http: ClientSession, timeout: float = 20.0) -> None:
        self.t_start = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(self.url, json={"sdp": self.pc.localDescription.sdp, "type": "offer"}) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused: HTTP {r.status}: {data}")
        self.t_answer = time.monotonic()
        self.pc_id = data["pc_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=data["type"]))
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def hangup(self, http: ClientSession) -> None:
        try:
            async with http.delete(f"{self.url}/{self.pc_id}") as r:
                await r.read()
        except (ClientError, OSError) as e:  # the server may be gone already: close our end anyway
            print(f"hangup request failed: {e}", file=sys.stderr)
        await self.pc.close()

    # -- what arrived -----------------------------------------------------
    def loud_index_after(self, t: float, start: int = 0) -> int | None:
        a = self.arrivals
        for i in range(start, len(a.t)):
            if a.t[i] >= t and a.level[i] is not None and a.level[i] > SILENT_DBOV:
                return i
        return None

    async def wait_reply_start(self, after: float, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        i0 = 0
        while time.monotonic() < deadline:
            i = self.loud_index_after(after, i0)
            if i is not None:
                return i
            i0 = max(0, len(self.arrivals.t) - 1)
            await asyncio.sleep(0.01)
        return None

    def cut_end(self, onset: float, min_gap: int = 10) -> int | None:
        """Last non-silent packet before the first run of ``min_gap`` silent packets arriving after ``onset``.

        None while that run has not fully arrived yet.
        """
        a = self.arrivals
        k0 = next((i for i in range(len(a.t)) if a.t[i] >= onset), None)
        if k0 is None:
            return None
        last = None
        for j in range(k0 - 1, -1, -1):
            if a.level[j] is not None and a.level[j] > SILENT_DBOV:
                last = j
                break
        quiet = 0
        for i in range(k0, len(a.t)):
            if a.level[i] is not None and a.level[i] > SILENT_DBOV:
                last = i
                quiet = 0
            else:
                quiet += 1
                if quiet >= min_gap:
                    return last
        return None


def decode_run(a: Arrivals, first: int, last: int, pad: int = 3) -> tuple[int, int] | None:
    """Decode packets first-pad .. last+pad; return (first, last) non-zero sample index in that stream."""
    lo, hi = max(0, first - 25), min(len(a.payload), last + pad + 1)  # 0.5 s of pre-roll primes the decoder
    codec = av.CodecContext.create("libopus", "r")
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    pcm = []
    offsets = []
    n = 0
    for i in range(lo, hi):
        pkt = av.Packet(a.payload[i])
        pkt.pts = a.ts[i]
        pkt.time_base = TB
        for fr in codec.decode(pkt):
            x = fr.to_ndarray().reshape(-1)
            offsets.append((i, n))
            pcm.append(x)
            n += len(x)
    if not pcm:
        return None
    x = np.concatenate(pcm).astype(np.int32)
    start_sample = next(off for i, off in offsets if i >= first - pad) if any(i >= first - pad for i, _ in offsets) else 0
    nz = np.flatnonzero(np.abs(x[start_sample:]) > 4)
    if len(nz) == 0:
        return None
    return int(nz[0]) + start_sample, int(nz[-1]) + start_sample


@dataclass
class BargeRecord:
    pc_id: str
    onset_sent: float
    reply_first_arrival: float
    last_reply_arrival: float
    cut_ms: float
    received_ms: float | None
    delay_into_reply_s: float
    run_packets: int = 0  # non-silent packets of the reply (the server's pre-encode frames, by their RFC 6465 level)


async def barge_caller(url: str, segs: list[Segment], silence: bytes, cycles: int, rng: random.Random,
                       http: ClientSession, out: list[BargeRecord], turns: list[float], errors: list[str]) -> None:
    c = Caller(url, silence)
    try:
        await c.connect(http)
        await asyncio.sleep(0.5)
        seg = segs[0]
        played = c.source.play(seg)
        for k in range(cycles + 1):
            # wait until the turn's speech is sent, then for the echo reply to start
            while len(played.sent_at) <= seg.last_loud:
                await asyncio.sleep(0.01)
            t_end = played.sent_at[seg.last_loud]
            i0 = await c.wait_reply_start(t_end, timeout=5.0)
            if i0 is None:
                errors.append(f"{c.pc_id}: no reply after turn {k}")
                return
            t_reply = c.arrivals.t[i0]
            turns.append(1000 * (t_reply - t_end) - VAD_END_MS)
            if k == cycles:
                # let the last reply play out, no barge-in
                break
            # barge in at a random point of the reply
            reply_s = (seg.last_loud - seg.first_loud) * FRAME / RATE
            delay = rng.uniform(0.3, max(0.4, min(7.0, reply_s - 1.5)))
            await asyncio.sleep(max(0.0, t_reply + delay - time.monotonic()))
            seg = segs[(k + 1) % len(segs)]
            played = c.source.play(seg)
            while len(played.sent_at) <= seg.first_loud:
                await asyncio.sleep(0.005)
            onset = played.sent_at[seg.first_loud]
            # the reply's run ends at the cut: wait until 10 silent packets follow it
            deadline = time.monotonic() + 3.0
            last = None
            while time.monotonic() < deadline:
                last = c.cut_end(onset)
                if last is not None:
                    break
                await asyncio.sleep(0.02)
            if last is None:
                errors.append(f"{c.pc_id}: reply not cut within 3 s (barge {k})")
                continue
            t_last = c.arrivals.t[last]
            span = decode_run(c.arrivals, i0, last)
            received_ms = (span[1] - span[0] + 1) * 1000 / RATE if span else None
            out.append(BargeRecord(c.pc_id or "", onset, t_reply, t_last, 1000 * (t_last - onset), received_ms, delay,
                                   last - i0 + 1))
        await asyncio.sleep(1.0)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        await c.hangup(http)


def truncations_from_log(text: str) -> dict[str, list[dict[str, Any]]]:
    """Truncation points per call, in order, from the server's log lines (structured or worker format)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in TRUNCATION.finditer(text):
        deleted = m.group(1) == "item-deleted"
        out.setdefault(m.group(2), []).append({"reason": "log", "item": m.group(3),
                                               "audio_end_ms": 0 if deleted else int(m.group(4) or 0),
                                               "item_ms": None, "deleted": deleted})
    if out:
        return out
    for m in INTERRUPTED.finditer(text):
        out.setdefault(m.group(1), []).append({"reason": m.group(2), "item": m.group(3),
                                               "audio_end_ms": int(m.group(4)), "item_ms": int(m.group(5)),
                                               "deleted": bool(m.group(6))})
    return out


def turn_latency_metric(text: str) -> dict[str, float] | None:
    s = re.search(r"^v2v_turn_latency_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    c = re.search(r"^v2v_turn_latency_seconds_count(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    b = re.search(r"^v2v_barge_in_latency_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    bc = re.search(r"^v2v_barge_in_latency_seconds_count(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    if not (s and c):
        return None
    out = {"turn_count": float(c.group(1)), "turn_mean_ms": 1000 * float(s.group(1)) / max(1.0, float(c.group(1)))}
    if b and bc:
        out["barge_in_count"] = float(bc.group(1))
        out["barge_in_mean_ms"] = 1000 * float(b.group(1)) / max(1.0, float(bc.group(1)))
    return out


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "min": min(values) if values else None, "max": max(values) if values else None}


async def bench_barge(args: argparse.Namespace, segs: list[Segment], silence: bytes) -> dict[str, Any]:
    env = {"V2V_BENCH_VARIANT": ",".join(args.variant)} if args.variant else {}
    server = Server("v2v", cpu=args.server_cpu, extra=["--turn-detection", "local"], env=env,
                    launcher=(Path(__file__).resolve().parent / "v2v_server.py") if args.variant else None)
    await server.start()
    records: list[BargeRecord] = []
    turns: list[float] = []
    errors: list[str] = []
    cycles = -(-args.barge_ins // args.callers)
    try:
        async with ClientSession(timeout=ClientTimeout(total=30)) as http:
            await asyncio.gather(*(
                barge_caller(server.url, segs, silence, cycles, random.Random(args.seed + i), http, records, turns, errors)
                for i in range(args.callers)))
            async with http.get(server.url + "/metrics") as r:
                metrics_text = await r.text()
        await asyncio.sleep(0.5)
    finally:
        server.stop()
    log = server.log_text()
    truncs = truncations_from_log(log)
    by_call: dict[str, list[BargeRecord]] = {}
    for r in records:
        by_call.setdefault(r.pc_id, []).append(r)
    errs_ms: list[float] = []
    frame_errs: list[float] = []
    rows = []
    for pc_id, recs in by_call.items():
        # the server logs a WebRTC call by the first 8 hex digits of its pc_id (the rest is a credential)
        tl = truncs.get(pc_id) or truncs.get(pc_id[: len("pc-") + 8], [])
        recs.sort(key=lambda r: r.onset_sent)
        if len(tl) != len(recs):
            errors.append(f"{pc_id}: {len(recs)} barge-ins measured, {len(tl)} interruptions logged")
        for r, t in zip(recs, tl, strict=False):  # a count mismatch is reported above
            err = None if r.received_ms is None else t["audio_end_ms"] - r.received_ms
            if err is not None:
                errs_ms.append(err)
            # frame-exact: items start on a 20 ms frame, playout pauses between frames and the frame
            # after the pause carries only the 5 ms fade, so the caller got (run - 1) frames of the item
            frame_err = t["audio_end_ms"] - 20 * (r.run_packets - 1)
            frame_errs.append(frame_err)
            rows.append({**r.__dict__, **t, "truncation_error_ms": err, "truncation_frame_error_ms": frame_err})
    return {
        "barge_in_cut_ms": stats([r.cut_ms for r in records]),
        "truncation_error_ms": stats(errs_ms),
        "truncation_frame_error_ms": stats(frame_errs),
        "truncation_frame_above": sum(1 for e in frame_errs if e > 0),
        "truncation_abs_max_ms": max((abs(e) for e in errs_ms), default=None),
        "truncation_above_received": sum(1 for e in errs_ms if e > 0),
        "turn_latency_server_ms": stats(turns),
        "server_metrics": turn_latency_metric(metrics_text),
        "errors": errors[:30],
        "rows": rows,
    }


async def bench_connect(args: argparse.Namespace, silence: bytes) -> dict[str, Any]:
    """Fresh calls: offer -> answer, -> connected, -> first RTP packet from the server; and ``v2v call``."""
    server = Server("v2v", cpu=args.server_cpu, extra=["--turn-detection", "local"])
    await server.start()
    offer_ms: list[float] = []
    connect_ms: list[float] = []
    first_packet_ms: list[float] = []
    errors: list[str] = []
    v2v_call: list[dict[str, Any]] = []
    try:
        async with ClientSession(timeout=ClientTimeout(total=30)) as http:
            for _ in range(args.connects):
                c = Caller(server.url, silence)
                try:
                    await c.connect(http)
                    offer_ms.append(1000 * (c.t_answer - c.t_start))
                    connect_ms.append(1000 * (c.t_connected - c.t_start))
                    deadline = time.monotonic() + 5.0
                    while not c.arrivals.t and time.monotonic() < deadline:
                        await asyncio.sleep(0.002)
                    if c.arrivals.t:
                        first_packet_ms.append(1000 * (c.arrivals.t[0] - c.t_start))
                    else:
                        errors.append("no RTP from the server within 5 s")
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")
                finally:
                    await c.hangup(http)
        for _ in range(args.v2v_calls):
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "v2v.signaling.cli", "call", server.url, "--play", str(FIXTURES / "what_time_is_it.wav"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                cwd=str(Path(__file__).resolve().parent.parent))
            out, _ = await p.communicate()
            try:
                v2v_call.append(json.loads(out))
            except ValueError:
                errors.append(f"v2v call printed no JSON: {out[-300:]!r}")
    finally:
        server.stop()

    def pick(key: str, scale: float = 1.0) -> list[float]:
        return [d[key] * scale for d in v2v_call if d.get(key) is not None]

    return {
        "offer_to_answer_ms": stats(offer_ms),
        "offer_to_connected_ms": stats(connect_ms),
        "offer_to_first_audio_packet_ms": stats(first_packet_ms),
        "v2v_call": {"offer_to_answer_ms": stats(pick("offer_answer_ms")),
                     "start_to_connected_ms": stats(pick("connected_s", 1000)),
                     "connected_to_first_reply_audio_ms": stats(pick("first_reply_audio_s", 1000)),
                     "reply_latency_ms": stats(pick("reply_latency_s", 1000)),
                     "runs": v2v_call},
        "errors": errors[:30],
    }


def codec_span_bias(pcm: np.ndarray, dither: float) -> list[float]:
    """How much longer (ms) a cut speech span looks after the Opus round trip and the non-zero detection."""
    rng = np.random.default_rng(0)
    x = np.clip(pcm.astype(np.float64) + rng.normal(0.0, dither, len(pcm)), -32768, 32767).astype(np.int16)
    out = []
    n = len(x)
    for start, length in ((n // 8, n // 3), (n // 10, n // 2 + 7 * 48), (n // 20, 2 * n // 3 + 13 * 48)):
        sig = np.zeros(length + 3 * RATE, np.int16)
        sig[RATE : RATE + length] = x[start : start + length]
        a = Arrivals(keep_payload=True)
        for i, p in enumerate(encode_opus(sig)):
            a.payload.append(p)
            a.ts.append(i * FRAME)
        span = decode_run(a, RATE // FRAME, (RATE + length) // FRAME)
        if span:
            out.append(round((span[1] - span[0] + 1 - length) * 1000 / RATE, 2))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    segs = [Segment.from_pcm(read_wav_48k(FIXTURES / name), args.dither, i) for i, name in enumerate(args.turn_wav)]
    silence = encode_opus(np.zeros(FRAME * 3, np.int16))[-1]
    out: dict[str, Any] = {"params": vars(args)}
    out["codec_span_bias_ms"] = codec_span_bias(read_wav_48k(FIXTURES / args.turn_wav[0]), args.dither)
    if args.barge_ins > 0:
        out["barge"] = await bench_barge(args, segs, silence)
    if args.connects > 0 or args.v2v_calls > 0:
        out["connect"] = await bench_connect(args, silence)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--barge-ins", type=int, default=30)
    ap.add_argument("--callers", type=int, default=5)
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--v2v-calls", type=int, default=3)
    ap.add_argument("--turn-wav", action="append", default=None,
                    help="fixture WAV names for the long turns (default long_speech.wav)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dither", type=float, default=20.0, help="noise RMS added to the turn WAVs (0: none)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--variant", action="append")
    ap.add_argument("--name", default="latency")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    args.turn_wav = args.turn_wav or ["long_speech.wav"]
    data = asyncio.run(main_async(args))
    path = write_result(args.name, data, Path(args.out_dir) if args.out_dir else RESULTS)
    b = data.get("barge", {})
    print(json.dumps({k: b.get(k) for k in ("barge_in_cut_ms", "truncation_error_ms", "turn_latency_server_ms",
                                             "server_metrics", "errors")}, indent=1))
    print(json.dumps({k: v for k, v in data.get("connect", {}).items()}, indent=1))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
