"""Call recordings: per call a stereo WAV and a JSONL of its events.

``--record-dir`` turns it on. Each call gets ``<UTC time>-<call id>.wav``
(caller left, assistant right, at the playout rate) and ``.jsonl`` (a header,
one line per call event, a summary). The right channel is exactly what the
transport's paced sender read from the :class:`~media.playout.PlayoutBuffer`
(a playout tap): faded pauses, silences and nothing of a truncated tail, since
unplayed samples are never read. The left channel is the caller's input as the
call received it (an input tap of :class:`~worker.call.CallSession`),
resampled to the playout rate. The two streams are aligned by the monotonic
time of their first samples; the header-less ``recording`` line of the JSONL
gives the lead (in samples) of each channel so a reader can find them.

The event loop only copies frames and enqueues them; one writer thread per
process (fed by a queue) resamples, interleaves, writes and applies the
retention limits (``keep_days``, ``max_mb``: oldest recordings deleted first).
The recorder is handed call metadata by its owner and never sees credentials.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from . import events as ev

log = logging.getLogger("v2v.recording")

BATCH = 10  # audio frames (20 ms each) per queue operation
MAX_PENDING = 5000  # queued operations past which audio is dropped (accounted as silence)
MAX_SKEW_S = 5.0  # one channel this far ahead of the other: the silent side is filled with zeros
# events too frequent or too partial to be worth a line (their final forms are written)
_SKIPPED = (ev.BotLLMText,)


@dataclass
class RecordingConfig:
    directory: Path
    max_mb: float = 0.0  # total size of the directory's recordings (0: no limit)
    keep_days: float = 0.0  # recordings older than this are deleted (0: kept)


def event_record(e: ev.CallEvent) -> dict[str, Any] | None:
    """A call event as a JSON-able dict (``type`` first), or None when not recorded."""
    if isinstance(e, _SKIPPED):
        return None
    if isinstance(e, ev.BotOutput) and not e.final:
        return None
    if isinstance(e, ev.UserTranscript) and not e.final:
        return None
    return {"type": _kebab(type(e).__name__), **dataclasses.asdict(e)}


def _kebab(name: str) -> str:
    """``BotLLMStarted`` -> ``bot-llm-started``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


class CallRecorder:
    """One call's recording; its taps and listener run on the event loop and only enqueue."""

    def __init__(self, writer: RecordingWriter, key: int, rate: int, clock: Callable[[], float]) -> None:
        self._writer = writer
        self._key = key
        self.rate = rate
        self._clock = clock
        self._t0 = clock()
        self._missing = {"left": 0, "right": 0}
        self._batch: dict[str, list[np.ndarray]] = {"left": [], "right": []}
        self._t_first: dict[str, float] = {}
        self._closed = False
        self._position: Callable[[], int] = lambda: 0
        self.input_rate = 0
        self.counts: dict[str, int] = {"barge-ins": 0, "user-turns": 0, "assistant-turns": 0, "tool-calls": 0}

    def attach(self, session: Any) -> None:
        """Listen to a :class:`~worker.call.CallSession`: its events, input and playout."""
        self._position = lambda: int(session.position)
        session.add_listener(self.on_event)
        session.input_taps.append(lambda pcm: self.on_input(pcm, session.input_rate))
        session.playout.add_tap(self.on_output)

    def on_input(self, pcm: np.ndarray, rate: int) -> None:
        self.input_rate = rate
        self._audio("left", pcm, rate)

    def on_output(self, pcm: np.ndarray) -> None:
        self._audio("right", pcm, self.rate)

    def _audio(self, side: str, pcm: np.ndarray, rate: int) -> None:
        """Copy the frame; hand the writer a batch every BATCH frames (one queue operation)."""
        if self._closed:
            return
        if side not in self._t_first:
            self._t_first[side] = self._clock() - self._t0
        buf = self._batch[side]
        buf.append(np.array(pcm, dtype=np.int16))
        if len(buf) >= BATCH:
            self._flush(side, rate)

    def _flush(self, side: str, rate: int) -> None:
        buf = self._batch[side]
        if not buf:
            return
        self._batch[side] = []
        if self._writer.put(("audio", self._key, side, buf, rate, self._t_first[side], self._missing[side]),
                            droppable=True):
            self._missing[side] = 0
        else:
            self._missing[side] += sum(len(b) for b in buf)

    def on_event(self, e: ev.CallEvent) -> None:
        if self._closed:
            return
        self._count(e)
        rec = event_record(e)
        if rec is None:
            return
        rec["t"] = round(self._clock() - self._t0, 4)
        rec["input_sample"] = self._position()
        self._writer.put(("event", self._key, rec), droppable=True)

    def _count(self, e: ev.CallEvent) -> None:
        if isinstance(e, ev.BotInterrupted):
            self.counts["barge-ins"] += 1
        elif isinstance(e, ev.UserTranscript) and e.final:
            self.counts["user-turns"] += 1
        elif isinstance(e, ev.BotOutput) and e.final:
            self.counts["assistant-turns"] += 1
        elif isinstance(e, ev.FunctionCallStarted):
            self.counts["tool-calls"] += 1

    def close(self, reason: str, **summary: Any) -> None:
        """End the recording (idempotent); the writer finishes the files in the background."""
        if self._closed:
            return
        self._flush("left", self.input_rate)
        self._flush("right", self.rate)
        self._closed = True
        rec = {"type": "call-summary", "reason": reason, "duration_s": round(self._clock() - self._t0, 3),
               **self.counts, **summary}
        self._writer.put(("close", self._key, rec), droppable=False)


class _Track:
    """Writer-thread state of one call's files."""

    def __init__(self, base: Path, rate: int) -> None:
        self.base = base
        self.rate = rate
        self.wav = wave.open(str(base.with_suffix(".wav")), "wb")
        self.wav.setnchannels(2)
        self.wav.setsampwidth(2)
        self.wav.setframerate(rate)
        self.jsonl = open(base.with_suffix(".jsonl"), "w", encoding="utf-8")  # closed in finish()
        self.pending: dict[str, list[np.ndarray]] = {"left": [], "right": []}
        self.queued = {"left": 0, "right": 0}  # samples pending per side
        self.timeline = {"left": 0, "right": 0}  # samples placed per side (pending included)
        self.start: dict[str, float] = {}
        self.resampler: Any = None
        self.in_rate = 0
        self.frames = 0

    def line(self, rec: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(rec, default=str, ensure_ascii=False) + "\n")

    def place(self, side: str, pcm: np.ndarray) -> None:
        if len(pcm):
            self.pending[side].append(pcm)
            self.queued[side] += len(pcm)
            self.timeline[side] += len(pcm)

    def audio(self, side: str, frames: list[np.ndarray], rate: int, t: float, missing: int) -> None:
        pcm = np.concatenate(frames)
        if side == "left" and rate != self.rate:
            if self.resampler is None or self.in_rate != rate:
                self.resampler = soxr.ResampleStream(rate, self.rate, 1, dtype="int16")
                self.in_rate = rate
            missing = missing * self.rate // rate
            pcm = self.resampler.resample_chunk(pcm)
        if side not in self.start:
            self.start[side] = t
            other = "right" if side == "left" else "left"
            # lead: silence before this channel's first sample (zeros already filled count)
            if self.start.get(other) is not None:
                lead = max(0, round((t - self.start[other]) * self.rate) - self.timeline[side])
                self.place(side, np.zeros(lead, np.int16))
            self.line({"type": "recording", "channel": side, "t": round(t, 4), "rate": self.rate,
                       "lead_samples": self.timeline[side]})
        if missing:
            self.place(side, np.zeros(missing, np.int16))
        self.place(side, pcm)
        self.flush_pairs()

    def flush_pairs(self, final: bool = False) -> None:
        left, right = self.queued["left"], self.queued["right"]
        if not final and max(left, right) - min(left, right) > MAX_SKEW_S * self.rate:
            short = "left" if left < right else "right"
            self.place(short, np.zeros(abs(left - right), np.int16))  # that side is silent (absent)
        n = max(left, right) if final else min(self.queued["left"], self.queued["right"])
        if n <= 0:
            return
        stereo = np.zeros((n, 2), dtype="<i2")
        for col, side in enumerate(("left", "right")):
            data = np.concatenate(self.pending[side]) if self.pending[side] else np.zeros(0, np.int16)
            take = min(n, len(data))
            stereo[:take, col] = data[:take]
            rest = data[take:]
            self.pending[side] = [rest] if len(rest) else []
            self.queued[side] = len(rest)
        self.wav.writeframes(stereo.tobytes())
        self.frames += n

    def finish(self, summary: dict[str, Any]) -> None:
        if self.resampler is not None:
            self.place("left", self.resampler.resample_chunk(np.zeros(0, np.int16), last=True))
        self.flush_pairs(final=True)
        summary["wav_frames"] = self.frames
        self.line(summary)
        self.wav.close()
        self.jsonl.close()


class RecordingWriter:
    """The process's recording writer: one thread, one queue, every call's files."""

    def __init__(self, config: RecordingConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._next_key = 0
        self._tracks: dict[int, _Track] = {}
        self.dropped = 0  # operations dropped because the writer fell behind
        self.idle = threading.Event()  # set when every queued operation has been handled
        self.idle.set()
        self._lock = threading.Lock()
        self._pending = 0

    def open(self, call_id: str, rate: int, meta: dict[str, Any]) -> CallRecorder:
        """Start recording a call whose playout runs at ``rate``; ``meta`` goes in the header."""
        self._next_key += 1
        key = self._next_key
        stamp = datetime.now(UTC)
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)[:80]
        base = self.config.directory / f"{stamp:%Y%m%dT%H%M%S}-{safe_id}"
        header = {"type": "call", "call_id": call_id, "started": stamp.isoformat(timespec="milliseconds"),
                  "rate": rate, "channels": ["caller", "assistant"], **meta}
        self.put(("open", key, base, rate, header), droppable=False)
        return CallRecorder(self, key, rate, self._clock)

    def put(self, op: tuple[Any, ...], droppable: bool) -> bool:
        if droppable and self._q.qsize() > MAX_PENDING:
            self.dropped += 1
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="v2v-recorder", daemon=True)
            self._thread.start()
        with self._lock:
            self._pending += 1
            self.idle.clear()
        self._q.put(op)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Finish every open recording and stop the thread (blocking: call it off the loop)."""
        if self._thread is None:
            return
        self._q.put(None)
        self._thread.join(timeout)
        self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything queued so far is written (tests, shutdown)."""
        return self.idle.wait(timeout)

    def _run(self) -> None:
        while True:
            op = self._q.get()
            if op is None:
                for key in list(self._tracks):
                    self._finish(key, {"type": "call-summary", "reason": "recorder-closed"})
                return
            try:
                self._handle(op)
            except Exception:  # one broken recording must not stop the others
                log.exception("recording: %s failed", op[0])
                self._tracks.pop(op[1], None)
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self.idle.set()

    def _handle(self, op: tuple[Any, ...]) -> None:
        kind, key = op[0], op[1]
        if kind == "open":
            _, _, base, rate, header = op
            base.parent.mkdir(parents=True, exist_ok=True)
            self._sweep()
            track = _Track(base, rate)
            track.line(header)
            self._tracks[key] = track
            return
        found = self._tracks.get(key)
        if found is None:
            return
        track = found
        if kind == "audio":
            track.audio(*op[2:])
        elif kind == "event":
            track.line(op[2])
        elif kind == "close":
            self._finish(key, op[2])
            self._sweep()

    def _finish(self, key: int, summary: dict[str, Any]) -> None:
        track = self._tracks.pop(key)
        summary["dropped"] = self.dropped
        track.finish(summary)

    def _sweep(self) -> None:
        """Apply the retention limits (never to a recording this process is writing).

        Several processes (pool workers) may share the directory: a file another
        one deleted meanwhile is skipped, and a failed sweep never costs a recording.
        """
        cfg = self.config
        if not (cfg.max_mb > 0 or cfg.keep_days > 0):
            return
        try:
            self._delete_old(cfg)
        except OSError as e:
            log.warning("recording retention sweep failed: %s", e)

    def _delete_old(self, cfg: RecordingConfig) -> None:
        open_bases = {t.base for t in self._tracks.values()}
        stats: dict[Path, list[tuple[Path, os.stat_result]]] = {}
        total = 0
        for p in cfg.directory.glob("*"):
            if p.suffix not in (".wav", ".jsonl"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            total += st.st_size
            if p.with_suffix("") not in open_bases:
                stats.setdefault(p.with_suffix(""), []).append((p, st))
        oldest_first = sorted(stats, key=lambda b: min(st.st_mtime for _, st in stats[b]))
        cutoff = time.time() - cfg.keep_days * 86400
        for base in oldest_first:
            too_old = cfg.keep_days > 0 and max(st.st_mtime for _, st in stats[base]) < cutoff
            too_big = cfg.max_mb > 0 and total > cfg.max_mb * 1024 * 1024
            if not (too_old or too_big):
                continue
            for f, st in stats[base]:
                f.unlink(missing_ok=True)
                total -= st.st_size
            log.info("recording %s deleted (%s)", base.name, "retention" if too_old else "size limit")
