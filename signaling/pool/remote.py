"""The signaling node's Dispatcher: calls placed on, and routed to, remote workers.

:class:`PoolDispatcher` keeps one :class:`~.protocol.RemoteWorker` per worker
of its registry (polled every 0.5 s: Redis, or the supervisor's local one) and

- places a new call on the ready, connected worker with the lowest
  active/capacity (none: :class:`~v2v.signaling.dispatch.Overloaded` with
  Retry-After; a worker that refuses or fails is skipped for the next one);
- routes every later request of a call (PATCH, DELETE, renegotiation,
  ``restart_pc``, SIP media requests) to its worker: this node's own map first,
  then the registry's call map, so any signaling node reaches any call;
- relays the workers' call events to its listeners, and when a worker is lost
  (its registry record gone, or its events socket down for
  :data:`LOST_AFTER_S`) ends the calls it had placed there with
  ``CallEnded(reason="worker-lost")``;
- counts ``v2v_dispatches_total{worker,outcome}`` and, on its
  :class:`~v2v.signaling.metrics.ServerMetrics`, the calls it placed
  (``v2v_active_calls``, ``v2v_calls_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from ..dispatch import (
    CallEnded,
    CallEvent,
    CallKey,
    DispatchError,
    EventListener,
    IceCandidateInit,
    Listeners,
    MediaAnswer,
    MediaRequest,
    OfferAnswer,
    OfferRequest,
    Overloaded,
    TransferResult,
    UnknownCall,
    WorkerInfo,
)
from ..metrics import ServerMetrics
from .protocol import RemoteWorker, WorkerUnavailable
from .registry import Registry, RegistryUnavailable, WorkerRecord

__all__ = ["LOST_AFTER_S", "PoolDispatcher"]

log = logging.getLogger("v2v.pool")

POLL_S = 0.5  # registry poll period
# events socket down this long while the worker is still registered: lost. A killed
# worker's socket closes at once and its record lapses within the registry TTL (3 s),
# so it is out within 5 s; a busy one whose socket blinked under load is not.
LOST_AFTER_S = 4.0
MISSING_GRACE_S = 3.0  # a connected worker missing from the registry (Redis restarted) this long: lost
RETRY_AFTER_S = 2
START_WAIT_S = 2.0  # at start, wait this long for the registered workers' events sockets
_RECENT_ENDS = 1024  # ended calls remembered, for an end that overtakes its offer's answer

_Send = Callable[[RemoteWorker], Awaitable[object]]


@dataclass
class Placed:
    """A call this node placed: where, and over which transport."""

    worker: str
    transport: str


class PoolDispatcher:
    """Implements :class:`~v2v.signaling.dispatch.Dispatcher` over a pool of remote workers."""

    def __init__(self, registry: Registry, metrics: ServerMetrics | None = None, *, poll: float = POLL_S) -> None:
        self.registry = registry
        self.metrics = metrics or ServerMetrics()
        self.dispatches = Counter(
            "v2v_dispatches_total", "Calls placed on (or refused by) pool workers, by worker and outcome",
            ["worker", "outcome"], registry=self.metrics.registry,
        )
        self.poll = poll
        self.workers_by_name: dict[str, RemoteWorker] = {}
        self._records: dict[str, WorkerRecord] = {}
        self._calls: dict[str, Placed] = {}
        self._listeners = Listeners()
        self._poller: asyncio.Task[None] | None = None
        self._registry_ok = True
        self._given: dict[str, int] = {}  # worker name -> calls this node placed there (ever)
        self._pending: dict[str, int] = {}  # worker name -> offers in flight to it
        self._missing: dict[str, float] = {}  # worker name -> when it went missing from the registry
        self._recent_ends: OrderedDict[str, None] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        if self._poller is None:
            await self.refresh()
            if self.workers_by_name:  # so that the first calls find the workers ready
                await asyncio.gather(*(w.wait_connected(START_WAIT_S) for w in self.workers_by_name.values()))
            self._poller = asyncio.create_task(self._poll_loop(), name="pool-registry-poll")

    async def close(self, reason: str = "shutdown") -> None:
        """Stop watching the pool; calls on the workers go on (their media never was here)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for w in list(self.workers_by_name.values()):
            await w.close()
        self.workers_by_name.clear()

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.add(listener)

    # -- the pool ----------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.refresh()
            except Exception:
                log.exception("pool registry poll failed")

    async def refresh(self) -> None:
        """Sync the workers with the registry; declare lost the ones gone or silent too long."""
        try:
            records = {r.name: r for r in await self.registry.list_workers()}
        except RegistryUnavailable as e:
            if self._registry_ok:
                log.error("worker registry unavailable: %s (placing on the workers known)", e)
            self._registry_ok = False
            records = dict(self._records)  # keep what we knew; the events sockets tell the rest
        else:
            if not self._registry_ok:
                log.info("worker registry back")
            self._registry_ok = True
        self._records = records
        for name, rec in records.items():
            w = self.workers_by_name.get(name)
            if w is not None and (w.unix or "") == rec.unix and (rec.unix or w.url == rec.rpc_url.rstrip("/")):
                continue
            if w is not None:  # same name, new address: a restarted worker
                await self._drop(w, "worker-lost")
            w = RemoteWorker(name, rec.rpc_url, unix=rec.unix or None, on_event=self._on_worker_event,
                             on_state=self._on_worker_state)
            self.workers_by_name[name] = w
            await w.start()
        now = time.monotonic()
        for name, w in list(self.workers_by_name.items()):
            if name in records:
                self._missing.pop(name, None)
                if w.ever_connected and w.lost_at is not None and now - w.lost_at > LOST_AFTER_S:
                    await self._drop(w, "worker-lost")
                continue
            # gone from the registry: lost at once if its socket is down too; otherwise
            # (Redis restarted and it has not beaten yet) after a grace period
            since = self._missing.setdefault(name, now)
            if not w.connected or now - since > MISSING_GRACE_S:
                self._missing.pop(name, None)
                await self._drop(w, "worker-lost")

    async def _drop(self, w: RemoteWorker, reason: str) -> None:
        """Forget ``w``; its calls placed here end with ``reason``."""
        if self.workers_by_name.get(w.name) is w:
            del self.workers_by_name[w.name]
        ended = [cid for cid, p in self._calls.items() if p.worker == w.name]
        if ended:
            log.warning("worker %s lost: ending its %d call(s)", w.name, len(ended))
        for call_id in ended:
            self._ended(CallEnded(call_id, reason, self._calls[call_id].transport, w.name))
        await w.close()

    async def remove_worker(self, name: str, reason: str = "worker-lost") -> None:
        """The supervisor saw the process die: end its calls now."""
        self._records.pop(name, None)
        w = self.workers_by_name.get(name)
        if w is not None:
            await self._drop(w, reason)

    def _on_worker_state(self, w: RemoteWorker) -> None:
        """On (re)connection: calls placed there that it no longer holds ended unseen (it restarted)."""
        if not w.connected:
            return
        gone = [cid for cid, p in self._calls.items() if p.worker == w.name and cid not in w.calls]
        if gone:
            log.warning("worker %s came back without %d of its call(s)", w.name, len(gone))
        for call_id in gone:
            self._ended(CallEnded(call_id, "worker-lost", self._calls[call_id].transport, w.name))

    def _on_worker_event(self, w: RemoteWorker, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            self._ended(event)
        else:
            self._listeners.emit(event)

    def _ended(self, event: CallEnded) -> None:
        placed = self._calls.pop(event.call_id, None)
        self._recent_ends[event.call_id] = None
        while len(self._recent_ends) > _RECENT_ENDS:
            self._recent_ends.popitem(last=False)
        if placed is not None:
            self.metrics.call_ended(placed.transport, event.reason)
            log.info("call %s ended on worker %s: %s", event.call_id, placed.worker, event.reason)
        self._listeners.emit(event)

    # -- placement -------------------------------------------------------------
    def _load(self, w: RemoteWorker) -> tuple[float, int]:
        info = w.info
        assert info is not None
        placed_here = sum(1 for p in self._calls.values() if p.worker == w.name)
        active = max(info.active_calls, placed_here) + self._pending.get(w.name, 0)
        return active / max(info.capacity, 1), active

    def _candidates(self) -> list[RemoteWorker]:
        ready = [
            w for w in self.workers_by_name.values()
            if w.connected and w.info is not None and w.info.state == "ready"
            and self._load(w)[1] < max(w.info.capacity, 1)
        ]
        # ties (idle workers) go to the one this node gave the fewest calls: round robin
        return sorted(ready, key=lambda w: (self._load(w)[0], self._given.get(w.name, 0), w.name))

    def _count(self, worker: str, outcome: str) -> None:
        self.dispatches.labels(worker=worker, outcome=outcome).inc()

    def _no_worker(self) -> Overloaded:
        known = [w for w in self.workers_by_name.values() if w.connected and w.info is not None]
        why = "all workers are full or draining" if known else "no worker is ready"
        self._count("", "no-worker")
        return Overloaded(why, retry_after=RETRY_AFTER_S)

    async def _place(self, send: _Send) -> tuple[RemoteWorker, object]:
        """Try the candidates in order until one takes the call."""
        tried: set[str] = set()
        while True:
            cands = [w for w in self._candidates() if w.name not in tried]
            if not cands:
                raise self._no_worker()
            w = cands[0]
            tried.add(w.name)
            self._pending[w.name] = self._pending.get(w.name, 0) + 1  # counted while in flight
            try:
                result = await send(w)
            except (Overloaded, WorkerUnavailable) as e:
                self._count(w.name, "unavailable" if isinstance(e, WorkerUnavailable) else "refused")
                log.info("worker %s did not take a call: %s", w.name, e.message)
                continue
            except DispatchError:
                self._count(w.name, "error")
                raise
            finally:
                self._pending[w.name] -= 1
            self._count(w.name, "placed")
            return w, result

    def _placed(self, call_id: str, w: RemoteWorker, transport: str, peer: str) -> None:
        if call_id in self._recent_ends:  # it ended before its answer came back
            self._calls.pop(call_id, None)
            return
        self._calls[call_id] = Placed(w.name, transport)
        self._given[w.name] = self._given.get(w.name, 0) + 1
        self.metrics.call_started(transport)
        log.info("call %s (%s, from %s) placed on worker %s", call_id, transport, peer or "?", w.name)

    async def _route(self, call_id: str) -> RemoteWorker:
        """The worker holding ``call_id``: this node's map, the workers' own lists, then the registry."""
        placed = self._calls.get(call_id)
        name = placed.worker if placed else None
        if name is None:
            name = next((w.name for w in self.workers_by_name.values() if call_id in w.calls), None)
        if name is None:
            try:
                name = await self.registry.worker_of(call_id)
            except RegistryUnavailable as e:
                raise Overloaded(f"cannot find call {call_id!r}: {e}", retry_after=RETRY_AFTER_S) from e
        w = self.workers_by_name.get(name) if name else None
        if w is None and name:
            await self.refresh()
            w = self.workers_by_name.get(name)
        if w is None:
            raise UnknownCall(f"unknown call {call_id!r}")
        return w

    # -- WebRTC ------------------------------------------------------------------
    async def offer(self, req: OfferRequest) -> OfferAnswer:
        if req.pc_id:
            with contextlib.suppress(UnknownCall):
                w = await self._route(req.pc_id)
                answer = await w.offer(req)  # renegotiation or restart_pc on the call's worker
                self._count(w.name, "renegotiated")
                return answer
        w, result = await self._place(lambda w: w.offer(req))
        assert isinstance(result, OfferAnswer)
        self._placed(result.pc_id, w, "webrtc", req.peer)
        return result

    async def add_candidates(self, pc_id: str, candidates: list[IceCandidateInit], key: CallKey | None = None) -> None:
        await (await self._route(pc_id)).add_candidates(pc_id, candidates, key)

    async def hangup(self, call_id: str, reason: str = "hangup", key: CallKey | None = None) -> None:
        await (await self._route(call_id)).hangup(call_id, reason, key)

    # -- SIP media -----------------------------------------------------------------
    async def open_media(self, req: MediaRequest) -> MediaAnswer:
        w, result = await self._place(lambda w: w.open_media(req))
        assert isinstance(result, MediaAnswer)
        self._placed(req.call_id, w, req.transport, req.peer)
        result.worker = result.worker or w.name
        return result

    async def start_media(self, call_id: str) -> None:
        await (await self._route(call_id)).start_media(call_id)

    async def reoffer(self, call_id: str, sdp: str) -> str:
        return await (await self._route(call_id)).reoffer(call_id, sdp)

    async def set_answer(self, call_id: str, sdp: str) -> None:
        await (await self._route(call_id)).set_answer(call_id, sdp)

    async def dtmf(self, call_id: str, digit: str) -> None:
        await (await self._route(call_id)).dtmf(call_id, digit)

    async def transfer(self, call_id: str, target: str, reason: str = "", key: CallKey | None = None
                       ) -> TransferResult:
        return await (await self._route(call_id)).transfer(call_id, target, reason, key)

    async def transfer_done(self, call_id: str, request_id: str, result: TransferResult) -> None:
        await (await self._route(call_id)).transfer_done(call_id, request_id, result)

    # -- load and health -------------------------------------------------------------
    def active_calls(self, transport: str | None = None) -> int:
        return sum(1 for p in self._calls.values() if transport is None or p.transport == transport)

    def not_ready_reason(self) -> str | None:
        return None if self._candidates() else "no worker is ready to take calls"

    async def workers(self) -> list[WorkerInfo]:
        """The live workers (registry records, with the fresher load of their events sockets)."""
        now_wall, now = time.time(), time.monotonic()
        rows = []
        for name, rec in sorted(self._records.items()):
            w = self.workers_by_name.get(name)
            info = w.info if w is not None and w.connected else None
            seen = max(0.0, now_wall - rec.last_seen) if rec.last_seen else 0.0
            if info is not None:
                seen = min(seen, max(0.0, now - w.info_at)) if w is not None else seen
            rows.append(WorkerInfo(
                name=name,
                address=rec.address,
                active_calls=info.active_calls if info else rec.active_calls,
                capacity=info.capacity if info else rec.capacity,
                state=info.state if info else rec.state,
                last_seen_s=round(seen, 3),
            ))
        return rows
