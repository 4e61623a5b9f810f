"""Structured logs: one line per call event, as text or JSON.

``setup_logging("json")`` makes every record of the ``v2v`` logger a JSON
object; ``"text"`` writes ``time level event key=value ...``. A
:class:`CallLog` is attached to each call: :meth:`CallLog.event` writes one
line with the call id and peer, and :meth:`CallLog.observe` maps the
:mod:`worker.events` dataclasses (state changes, barge-ins, truncations,
transcripts, DTMF, errors, end reason) to such lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from v2v.worker import events as ev

from .auth import redact

LOGGER = "v2v"
log = logging.getLogger(LOGGER)

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname:<7}", record.getMessage()]
        for k, v in _fields(record).items():
            s = str(v)
            if not s or any(c in s for c in ' "='):
                s = json.dumps(s, ensure_ascii=False)
            parts.append(f"{k}={s}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _V2VHandler(logging.StreamHandler):
    """The handler setup_logging installs (a second call replaces it, not adds one).

    A full WebRTC ``pc_id`` is its caller's credential: lines show its first 8 hex digits.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(fmt: str = "text", level: str = "info", stream: Any = None) -> None:
    """Route the ``v2v`` logger (and aiohttp's errors) to ``stream`` in ``fmt``."""
    handler = _V2VHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in (LOGGER, "aiohttp.server", "aiohttp.web"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, _V2VHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
        lg.propagate = False
    logging.getLogger(LOGGER).setLevel(level.upper())


class CallLog:
    """Writes one structured line per event of one call."""

    def __init__(self, call_id: str, peer: str, transport: str) -> None:
        self.call_id = call_id
        self.peer = peer
        self.transport = transport

    def event(self, _event: str, _level: int = logging.INFO, **fields: Any) -> None:
        if not log.isEnabledFor(_level):
            return
        extra = {"call": self.call_id, "peer": self.peer, "transport": self.transport}
        for k, v in fields.items():
            extra[k if k not in _RESERVED else f"{k}_"] = v  # LogRecord attributes cannot be overwritten
        log.log(_level, _event, extra=extra)

    def observe(self, e: object) -> None:
        """A :class:`worker.call.CallSession` listener."""
        if isinstance(e, ev.AgentStateChanged):
            self.event("state", state=e.state, previous=e.previous)
        elif isinstance(e, ev.BotInterrupted):
            self.event("barge-in", item=e.item_id, played_ms=e.played_ms)
        elif isinstance(e, ev.ItemTruncated):
            if e.deleted:
                self.event("item-deleted", item=e.item_id, played_ms=0)
            else:
                self.event("truncation", item=e.item_id, audio_end_ms=e.audio_end_ms)
        elif isinstance(e, ev.FalseInterruption):
            self.event("false-interruption", item=e.item_id)
        elif isinstance(e, ev.TurnEnded):
            self.event("turn-ended", logging.DEBUG, reason=e.reason)
        elif isinstance(e, ev.UserStartedSpeaking):
            self.event("user-started-speaking", logging.DEBUG, sample=e.sample)
        elif isinstance(e, ev.UserStoppedSpeaking):
            self.event("user-stopped-speaking", logging.DEBUG, sample=e.sample)
        elif isinstance(e, ev.BotStartedSpeaking):
            self.event("bot-started-speaking", logging.DEBUG, item=e.item_id)
        elif isinstance(e, ev.BotStoppedSpeaking):
            self.event("bot-stopped-speaking", logging.DEBUG, item=e.item_id)
        elif isinstance(e, ev.UserTranscript):
            if e.final:
                self.event("user-transcript", text=e.text, item=e.item_id)
        elif isinstance(e, ev.BotTranscript):
            self.event("bot-transcript", text=e.text, item=e.item_id)
        elif isinstance(e, ev.FunctionCallInProgress):
            self.event("function-call", call_id=e.call_id, tool=e.name, client_side=e.client_side)
        elif isinstance(e, ev.FunctionCallStopped):
            self.event("function-call-done", call_id=e.call_id, tool=e.name, cancelled=e.cancelled)
        elif isinstance(e, ev.DtmfReceived):
            self.event("dtmf", digit=e.digit)
        elif isinstance(e, ev.Metrics):
            self.event("metrics", logging.DEBUG, ttfb_ms=e.ttfb_ms, barge_in_ms=e.barge_in_ms)
        elif isinstance(e, ev.CallError):
            self.event("error", logging.ERROR if e.fatal else logging.WARNING, message=e.message, fatal=e.fatal)
        elif isinstance(e, ev.CallEnded):
            self.event("session-ended", logging.DEBUG, reason=e.reason)
