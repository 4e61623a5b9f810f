"""Webhooks: call events POSTed to the operator's backend, signed, retried, never blocking a call.

``--webhook URL`` sends ``call.started`` and ``call.ended`` (reason, duration,
outcome) and, with ``--webhook-turns``, ``call.turn`` (each final user
transcript and each assistant answer as heard). A call only puts the event in
a bounded queue (the oldest is dropped when it is full); one background task
POSTs them in order with an aiohttp client, retrying timeouts, connection
errors, 408, 429 and 5xx with exponential back-off.

Each body is JSON ``{"id", "type", "time", "data"}`` (``id`` is the same on
every retry, so a receiver can de-duplicate). With ``--webhook-secret`` the
request carries ``X-V2V-Timestamp: <unix seconds>`` and ``X-V2V-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``; :func:`verify` checks one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from v2v.worker import events as ev

from .auth import redact

log = logging.getLogger("v2v.webhooks")

SIGNATURE_HEADER = "X-V2V-Signature"
TIMESTAMP_HEADER = "X-V2V-Timestamp"
RETRY_STATUS = frozenset({408, 429})
FAILED_REASONS = frozenset({"error", "model-error"})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """True when ``signature`` is ``body``'s, made with ``secret``, less than ``tolerance_s`` ago."""
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass
class WebhookConfig:
    url: str
    secret: str = ""
    turns: bool = False
    queue_size: int = 1000
    attempts: int = 6  # per event, the first included
    backoff_s: float = 0.5  # first retry delay; doubles each time
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0  # per request


class Webhooks:
    """The process's webhook sender (one queue, one background task)."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closing = False
        self._turns: dict[str, int] = {}  # call id -> speech turns seen (for the outcome)
        self.delivered = 0
        self.failed = 0  # gave up after every attempt (or a permanent 4xx)
        self.dropped = 0  # queue full: oldest dropped
        self.attempts = 0
        self._target = urlsplit(config.url).netloc  # logged instead of the URL (it may hold a token)

    # -- what the CallManager calls ----------------------------------------
    def call_started(self, call: Any) -> None:
        self._turns[call.call_id] = 0
        call.add_listener(lambda e: self._on_event(call, e))
        self.post("call.started", {**_call_data(call)})

    def call_ended(self, call: Any, reason: str) -> None:
        turns = self._turns.pop(call.call_id, 0)
        outcome = "failed" if reason in FAILED_REASONS else "completed" if turns else "no-conversation"
        self.post("call.ended", {**_call_data(call), "reason": reason, "outcome": outcome,
                                 "duration_s": round(time.monotonic() - call.started_at, 3)})

    def _on_event(self, call: Any, e: object) -> None:
        if isinstance(e, (ev.UserStoppedSpeaking, ev.BotStartedSpeaking)) and call.call_id in self._turns:
            self._turns[call.call_id] += 1
        if not self.config.turns:
            return
        if isinstance(e, ev.UserTranscript) and e.final and e.text:
            self.post("call.turn", {"call_id": public_call_id(call.call_id), "role": "user", "text": e.text})
        elif isinstance(e, ev.BotOutput) and e.final:
            self.post("call.turn", {"call_id": public_call_id(call.call_id), "role": "assistant", "text": e.spoken,
                                    "interrupted": e.interrupted, "unspoken": e.unspoken})

    # -- queue and sender --------------------------------------------------
    def post(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue one event (never blocks; drops the oldest when the queue is full)."""
        if self._closing:
            return
        body = json.dumps({"id": uuid.uuid4().hex, "type": event_type,
                           "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           "data": data}, default=str).encode()
        if len(self._queue) >= self.config.queue_size:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(body)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sender(), name="webhooks")

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass
            if not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._queue:
            log.warning("webhooks: %d events undelivered at shutdown", len(self._queue))

    async def _sender(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            body = self._queue[0]
            ok = await self._deliver(body)
            if self._queue and self._queue[0] is body:
                self._queue.popleft()
            if ok:
                self.delivered += 1
            else:
                self.failed += 1

    async def _deliver(self, body: bytes) -> bool:
        """POST one body until it is accepted, refused for good, or out of attempts."""
        cfg = self.config
        delay = cfg.backoff_s
        for attempt in range(1, cfg.attempts + 1):
            status = await self._attempt(body)
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status < 500 and status not in RETRY_STATUS:
                log.warning("webhooks: %s refused an event (%d); not retried", self._target, status)
                return False
            if attempt == cfg.attempts or self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.backoff_max_s)
        log.warning("webhooks: %s unreachable, event dropped after %d attempts", self._target, attempt)
        return False

    async def _attempt(self, body: bytes) -> int | None:
        """One POST; its status, or None on a timeout or connection error."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        headers = {"Content-Type": "application/json", "User-Agent": "v2v-webhooks"}
        if self.config.secret:
            ts = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(self.config.secret, ts, body)
        self.attempts += 1
        try:
            async with self._http.post(self.config.url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            log.debug("webhooks: %s: %s", self._target, type(e).__name__)
            return None


def public_call_id(call_id: str) -> str:
    """A call id without its secret part: a WebRTC ``pc_id`` is its caller's credential, so only its
    first 8 hex digits (as in the logs), and nothing after a ``.``."""
    return redact(call_id.partition(".")[0]).rstrip(".")


def _call_data(call: Any) -> dict[str, Any]:
    return {"call_id": public_call_id(call.call_id), "transport": call.transport, "profile": call.profile or "",
            "model": call.model_name, "peer": call.peer}
