"""A headless WebRTC caller of v2v's signaling (``v2v call``), built on aiortc.

:class:`Caller` does what a browser page does: offer (audio + a ``chat`` data
channel) to ``POST /api/offer``, optional trickle ICE over ``PATCH``,
renegotiation, hang-up with ``DELETE``; it sends a WAV as its microphone
(then silence: a live client keeps sending packets) and records what arrives,
timestamping every received frame on arrival. :func:`run_call` plays one WAV
and returns a JSON-able summary: time to connect, time to first reply audio,
reply duration, and the barge-in cut time when the WAV talks over the reply.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientSession, ClientTimeout
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from v2v.media.audio import frame_to_mono
from v2v.media.resample import ExactResampler

from .aiortc_tuning import patch_receiver

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
LOUD_RMS = 300.0  # int16 RMS of a 20 ms frame that counts as sound


def offer_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api/offer") else url + "/api/offer"


def _frame_rms(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / max(1, len(x))))


class WavSource(MediaStreamTrack):
    """A microphone that plays ``pcm`` (48 kHz mono) once, then silence, paced by the clock.

    ``sent_at[i]`` is the monotonic time frame ``i`` was handed to aiortc.
    """

    kind = "audio"

    def __init__(self, pcm: np.ndarray | None = None) -> None:
        super().__init__()
        self.pcm = np.zeros(0, np.int16) if pcm is None else np.asarray(pcm, np.int16)
        self._pos = 0
        self._pts = 0
        self._start: float | None = None
        self.sent_at: list[float] = []
        self.started = asyncio.Event()
        self._tb = Fraction(1, RATE)
        self._sending = asyncio.Event()
        self._sending.set()

    def stop_sending(self) -> None:
        """Send no more packets (a frozen client), without closing anything."""
        self._sending.clear()

    def resume_sending(self) -> None:
        self._start = None
        self._sending.set()

    def play(self, pcm: np.ndarray) -> None:
        """Replace what is still to be played (from the next frame on)."""
        self.pcm = np.asarray(pcm, np.int16)
        self._pos = 0

    @property
    def finished(self) -> bool:
        return self._pos >= len(self.pcm)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._sending.is_set():
            await self._sending.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = now - self._pts / RATE
        else:
            wait = self._start + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = np.zeros(FRAME, np.int16)
        part = self.pcm[self._pos : self._pos + FRAME]
        chunk[: len(part)] = part
        self._pos += FRAME
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = self._tb
        self._pts += FRAME
        self.sent_at.append(time.monotonic())
        self.started.set()
        return frame


@dataclass
class Received:
    """Audio that arrived from the server, one entry per frame."""

    frames: list[np.ndarray] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)
    first_loud: asyncio.Event = field(default_factory=asyncio.Event)

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    def loud_times(self) -> list[float]:
        return [t for t, r in zip(self.arrived, self.rms, strict=False) if r >= LOUD_RMS]


class Caller:
    """One aiortc peer calling a v2v server."""

    def __init__(self, url: str, *, request_data: Any = None, trickle: bool = False, token: str | None = None) -> None:
        self.url = offer_url(url)
        self.token = token  # sent as Authorization: Bearer to a server with --auth-secret
        self.request_data = request_data
        self.trickle = trickle
        self.pc: RTCPeerConnection | None = None
        self.pc_id: str | None = None
        self.source = WavSource()
        self.received = Received()
        self.messages: list[dict[str, Any]] = []
        self.message_event = asyncio.Event()
        self.channel: Any = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.bot_ready = asyncio.Event()
        self.t_start = time.monotonic()
        self.t_offer: float | None = None  # offer POSTed
        self.t_answer: float | None = None  # answer received
        self.t_connected: float | None = None
        self.t_bot_ready: float | None = None
        self._http: ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pending_candidates: list[dict[str, Any]] = []

    # -- setup ---------------------------------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(self.source, direction="sendrecv")
        channel = pc.createDataChannel("chat", ordered=True)
        self.channel = channel

        @channel.on("open")
        def on_open() -> None:
            self.send_rtvi("client-ready", {"version": "2.1.0", "about": {"library": "v2v-call"}})

        @channel.on("message")
        def on_message(text: Any) -> None:
            try:
                msg = json.loads(text)
            except (TypeError, ValueError):
                return
            msg["_t"] = time.monotonic()
            self.messages.append(msg)
            self.message_event.set()
            if msg.get("type") == "bot-ready" and not self.bot_ready.is_set():
                self.t_bot_ready = time.monotonic()
                self.bot_ready.set()

        @pc.on("track")
        def on_track(track: Any) -> None:
            self._spawn(self._record(track))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is not self.pc:
                return
            if pc.connectionState == "connected" and not self.connected.is_set():
                self.t_connected = time.monotonic()
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.closed.set()

        return pc

    async def _record(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            pcm = frame_to_mono(frame)
            if frame.sample_rate != RATE:
                pcm = ExactResampler(frame.sample_rate, RATE).process(pcm)
            r = _frame_rms(pcm)
            self.received.frames.append(pcm)
            self.received.arrived.append(now)
            self.received.rms.append(r)
            if r >= LOUD_RMS:
                self.received.first_loud.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def http(self) -> ClientSession:
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._http = ClientSession(timeout=ClientTimeout(total=30), headers=headers)
        return self._http

    def _split_candidates(self, sdp: str) -> tuple[str, list[dict[str, Any]]]:
        """Remove a=candidate lines (to send them with PATCH instead)."""
        lines, cands = [], []
        mline = -1
        mid: str | None = None
        for line in sdp.splitlines():
            if line.startswith("m="):
                mline += 1
                mid = None
            elif line.startswith("a=mid:"):
                mid = line[6:]
            if line.startswith("a=candidate:"):
                cands.append({"candidate": line[2:], "sdp_mid": mid, "sdp_mline_index": mline})
                continue
            if line.startswith("a=end-of-candidates"):
                continue
            lines.append(line)
        return "\r\n".join(lines) + "\r\n", cands

    async def _offer(self, restart_pc: bool = False) -> dict[str, Any]:
        assert self.pc is not None
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        if self.trickle:
            sdp, self._pending_candidates = self._split_candidates(sdp)
        body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
        if self.pc_id:
            body["pc_id"] = self.pc_id
        if restart_pc:
            body["restart_pc"] = True
        if self.request_data is not None:
            body["requestData"] = self.request_data
        self.t_offer = time.monotonic()
        async with self.http.post(self.url, json=body) as resp:
            data = await resp.json()
            self.t_answer = time.monotonic()
            if resp.status != 200:
                raise RuntimeError(f"offer refused: HTTP {resp.status}: {data.get('error')}")
        self.pc_id = data["pc_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=data["type"]))
        for t in self.pc.getTransceivers():  # time audio at packet arrival, not after a jitter buffer
            if t.kind == "audio":
                patch_receiver(t.receiver)
        if self.trickle:
            await self.send_candidates()
        return data

    async def send_candidates(self, end: bool = True) -> int:
        cands = list(self._pending_candidates)
        self._pending_candidates = []
        if end:
            cands.append({"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0})
        async with self.http.patch(self.url, json={"pc_id": self.pc_id, "candidates": cands}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"PATCH refused: HTTP {resp.status}: {await resp.text()}")
        return len(cands)

    async def connect(self, timeout: float = 10.0) -> None:
        self.t_start = time.monotonic()
        self.pc = self._new_pc()
        await self._offer()
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def renegotiate(self, restart_pc: bool = False, timeout: float = 10.0) -> None:
        """Send a new offer for the same pc_id (on a new peer connection if restart_pc)."""
        if restart_pc:
            old = self.pc
            self.connected.clear()
            self.source = WavSource(self.source.pcm[self.source._pos :] if not self.source.finished else None)
            self.pc = self._new_pc()
            await self._offer(restart_pc=True)
            if old is not None:
                old.remove_all_listeners()
                await old.close()
            await asyncio.wait_for(self.connected.wait(), timeout)
        else:
            await self._offer()

    def send_rtvi(self, type_: str, data: Any = None) -> str:
        msg_id = uuid.uuid4().hex[:8]
        msg = {"label": "rtvi-ai", "type": type_, "id": msg_id}
        if data is not None:
            msg["data"] = data
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(msg))
        return msg_id

    def play(self, pcm: np.ndarray, rate: int = RATE) -> None:
        if rate != RATE:
            pcm = ExactResampler(rate, RATE).process(np.asarray(pcm, np.int16))
        self.source.play(pcm)

    async def hangup(self) -> int | None:
        """DELETE the call; returns the HTTP status."""
        status = None
        if self.pc_id:
            try:
                async with self.http.delete(f"{self.url}/{self.pc_id}") as resp:
                    status = resp.status
            except Exception:  # the server may already be gone
                status = None
        await self.close()
        return status

    async def close(self) -> None:
        self.source.stop()
        if self.pc is not None:
            self.pc.remove_all_listeners()
            await self.pc.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None


# -----------------------------------------------------------------------------
# v2v call
# -----------------------------------------------------------------------------


def _segments(times: list[float], gap: float) -> list[tuple[float, float]]:
    """Group timestamps into [first, last] runs separated by more than ``gap``."""
    segs: list[tuple[float, float]] = []
    for t in times:
        if segs and t - segs[-1][1] <= gap:
            segs[-1] = (segs[-1][0], t)
        else:
            segs.append((t, t))
    return segs


def summarize(caller: Caller, pcm: np.ndarray) -> dict[str, Any]:
    """Figures of one call from what was sent (with send times) and received (with arrival times)."""
    sent = caller.source.sent_at
    n_sent = min(len(sent), len(pcm) // FRAME)
    frames = pcm[: n_sent * FRAME].reshape(-1, FRAME).astype(np.float32) if n_sent else np.zeros((0, FRAME))
    caller_rms = np.sqrt((frames * frames).mean(axis=1)) if n_sent else np.zeros(0)
    caller_loud = [sent[i] for i in range(n_sent) if caller_rms[i] >= LOUD_RMS]
    speech = _segments(caller_loud, 0.3)
    reply = _segments(caller.received.loud_times(), 0.3)
    t0 = caller.t_connected or caller.t_start
    out: dict[str, Any] = {
        "pc_id": caller.pc_id,
        "offer_answer_ms": round((caller.t_answer - caller.t_offer) * 1000, 1) if caller.t_answer and caller.t_offer else None,
        "connected_s": round(caller.t_connected - caller.t_start, 3) if caller.t_connected else None,
        "bot_ready_s": round(caller.t_bot_ready - caller.t_start, 3) if caller.t_bot_ready else None,
        "first_reply_audio_s": round(reply[0][0] - t0, 3) if reply else None,
        "reply_latency_s": None,
        "reply_duration_s": round(sum(b - a + FRAME / RATE for a, b in reply), 3) if reply else 0.0,
        "barge_in_cut_s": None,
        "sent_s": round(len(caller.source.sent_at) * FRAME / RATE, 3),
        "received_s": round(len(caller.received.frames) * FRAME / RATE, 3),
        "rtvi_messages": len(caller.messages),
    }
    if speech and reply:
        # reply latency: end of the first caller utterance -> first reply sound after it
        end = speech[0][1] + FRAME / RATE
        after = [a for a, _ in reply if a >= end]
        if after:
            out["reply_latency_s"] = round(after[0] - end, 3)
        # barge-in: a caller utterance that starts while reply audio is arriving
        for s_start, _ in speech[1:]:
            for r_start, r_end in reply:
                if r_start < s_start <= r_end + 0.1:
                    out["barge_in_cut_s"] = round(max(0.0, r_end + FRAME / RATE - s_start), 3)
                    break
            if out["barge_in_cut_s"] is not None:
                break
    out["transcripts"] = [
        m.get("data", {}).get("text")
        for m in caller.messages
        if m.get("type") in ("user-transcription", "bot-transcription") and m.get("data", {}).get("text")
    ]
    return out


async def run_call(
    url: str,
    play: str | Path,
    record: str | Path | None = None,
    seconds: float | None = None,
    request_data: Any = None,
    trickle: bool = False,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    """Call ``url``, play the WAV, record the reply, hang up; return the summary."""
    from v2v.worker.wavcall import read_wav, write_wav

    pcm, rate = read_wav(play)
    if rate != RATE:
        pcm = ExactResampler(rate, RATE).process(pcm)
    caller = Caller(url, request_data=request_data, trickle=trickle, token=token)
    try:
        await caller.connect()
        try:
            await asyncio.wait_for(caller.bot_ready.wait(), 5.0)
        except TimeoutError:
            pass
        caller.play(pcm)
        wav_s = len(pcm) / RATE
        if seconds is not None:
            await asyncio.sleep(seconds)
        else:
            # until the WAV is sent, then until the reply has been quiet for 1.5 s (at most 30 s more)
            await asyncio.sleep(wav_s)
            wav_end = time.monotonic()
            deadline = wav_end + 30.0
            while time.monotonic() < deadline:
                loud = caller.received.loud_times()
                quiet_since = max([wav_end] + loud[-1:])
                if loud and loud[-1] > caller.t_start and time.monotonic() - quiet_since > 1.5:
                    break
                if not loud and time.monotonic() - wav_end > 10.0:
                    break
                await asyncio.sleep(0.05)
        summary = summarize(caller, pcm)
    finally:
        status = await caller.hangup()
    summary["hangup_status"] = status
    if record:
        write_wav(record, caller.received.pcm(), RATE)
        summary["record"] = str(record)
    return summary
