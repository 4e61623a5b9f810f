"""Where a pool's workers and calls are found: Redis, or memory for ``--workers N``.

Redis keys (all under ``v2v:``):

- ``v2v:worker:<name>``: the worker's :class:`WorkerRecord` as JSON, written by
  the worker every second with a TTL of 3 s (a worker that stops heartbeating
  is gone within 3 s);
- ``v2v:workers``: a set of worker names (an index, so listing is SMEMBERS +
  MGET rather than a SCAN; names whose record expired are pruned);
- ``v2v:call:<call_id>``: the name of the worker holding the call, written by
  that worker when the call is placed, refreshed by its heartbeat, deleted when
  the call ends (so any signaling node routes PATCH/DELETE/SIP requests).

Every write is idempotent, so a worker's next heartbeat after a Redis restart
re-creates all of its keys. :class:`LocalRegistry` keeps the same in memory
for one signaling node supervising local worker processes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

__all__ = [
    "CALL_TTL_S",
    "HEARTBEAT_S",
    "LocalRegistry",
    "RedisRegistry",
    "Registry",
    "RegistryUnavailable",
    "WORKER_TTL_S",
    "WorkerRecord",
]

log = logging.getLogger("v2v.pool.registry")

HEARTBEAT_S = 1.0
WORKER_TTL_S = 3  # DESIGN section 6: a TTL of at most 3 s
CALL_TTL_S = 30  # refreshed every heartbeat; only outlives a dead worker by this much
PREFIX = "v2v:"


class RegistryUnavailable(Exception):
    """The registry (Redis) cannot be reached."""


@dataclass
class WorkerRecord:
    """A worker as the registry holds it."""

    name: str
    address: str  # host:port of its HTTP (health, metrics)
    rpc_url: str  # base URL of its RPC (http://host:port); "" with a unix socket
    active_calls: int = 0
    capacity: int = 0
    state: str = "ready"  # "ready" | "draining"
    last_seen: float = 0.0  # wall-clock time (time.time()) of its last heartbeat
    unix: str = ""  # unix socket path of its RPC (local workers)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerRecord | None:
        try:
            data = json.loads(raw)
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError):
            return None


class Registry(Protocol):
    """What a signaling node and a worker need of the registry."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def list_workers(self) -> list[WorkerRecord]: ...

    async def worker_of(self, call_id: str) -> str | None: ...

    # the worker's side
    async def heartbeat(self, record: WorkerRecord, calls: Iterable[str]) -> None: ...

    async def add_call(self, call_id: str, worker: str) -> None: ...

    async def remove_call(self, call_id: str) -> None: ...

    async def unregister(self, name: str) -> None: ...


class RedisRegistry:
    """The registry in Redis (``redis.asyncio``); ``url`` as ``redis://host:port/db``."""

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: Any = None

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    @property
    def _workers_key(self) -> str:
        return f"{self.prefix}workers"

    async def connect(self) -> None:
        """Connect and PING; raises :class:`RegistryUnavailable` with a clear message."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        if self._redis is None:
            try:
                self._redis = aioredis.from_url(
                    self.url, socket_connect_timeout=2.0, socket_timeout=2.0, health_check_interval=5,
                    decode_responses=True,
                )
            except ValueError as e:
                raise RegistryUnavailable(f"bad Redis URL {self.url!r}: {e}") from e
        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            raise RegistryUnavailable(f"cannot reach Redis at {self.url}: {e}") from e

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _call(self, fn: Any) -> Any:
        from redis.exceptions import RedisError

        if self._redis is None:
            await self.connect()
        try:
            return await fn(self._redis)
        except (RedisError, OSError) as e:
            raise RegistryUnavailable(f"Redis at {self.url}: {e}") from e

    async def list_workers(self) -> list[WorkerRecord]:
        async def run(r: Any) -> list[WorkerRecord]:
            names = sorted(await r.smembers(self._workers_key))
            if not names:
                return []
            raws = await r.mget([self._key("worker", n) for n in names])
            out, gone = [], []
            for name, raw in zip(names, raws, strict=True):
                rec = WorkerRecord.from_json(raw) if raw else None
                if rec is None:
                    gone.append(name)
                else:
                    out.append(rec)
            if gone:  # expired records: drop them from the index
                await r.srem(self._workers_key, *gone)
            return out

        result: list[WorkerRecord] = await self._call(run)
        return result

    async def worker_of(self, call_id: str) -> str | None:
        async def run(r: Any) -> str | None:
            value = await r.get(self._key("call", call_id))
            return str(value) if value else None

        result: str | None = await self._call(run)
        return result

    async def heartbeat(self, record: WorkerRecord, calls: Iterable[str]) -> None:
        """Write the record (TTL 3 s), the index, and refresh the worker's call keys."""
        record.last_seen = time.time()

        async def run(r: Any) -> None:
            async with r.pipeline(transaction=False) as p:
                p.set(self._key("worker", record.name), record.to_json(), ex=WORKER_TTL_S)
                p.sadd(self._workers_key, record.name)
                for call_id in calls:
                    p.set(self._key("call", call_id), record.name, ex=CALL_TTL_S)
                await p.execute()

        await self._call(run)

    async def add_call(self, call_id: str, worker: str) -> None:
        await self._call(lambda r: r.set(self._key("call", call_id), worker, ex=CALL_TTL_S))

    async def remove_call(self, call_id: str) -> None:
        await self._call(lambda r: r.delete(self._key("call", call_id)))

    async def unregister(self, name: str) -> None:
        async def run(r: Any) -> None:
            async with r.pipeline(transaction=False) as p:
                p.delete(self._key("worker", name))
                p.srem(self._workers_key, name)
                await p.execute()

        await self._call(run)


class LocalRegistry:
    """The registry of one signaling node and its local workers (``v2v serve --workers N``).

    The supervisor :meth:`put`\\ s a record per worker process and
    :meth:`unregister`\\ s one that died; the call map is the dispatcher's own.
    """

    def __init__(self) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._calls: dict[str, str] = {}

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        self._workers.clear()
        self._calls.clear()

    def put(self, record: WorkerRecord) -> None:
        record.last_seen = time.time()
        self._workers[record.name] = record

    async def list_workers(self) -> list[WorkerRecord]:
        return [self._workers[n] for n in sorted(self._workers)]

    async def worker_of(self, call_id: str) -> str | None:
        return self._calls.get(call_id)

    async def heartbeat(self, record: WorkerRecord, calls: Iterable[str]) -> None:
        self.put(record)
        for call_id in calls:
            self._calls[call_id] = record.name

    async def add_call(self, call_id: str, worker: str) -> None:
        self._calls[call_id] = worker

    async def remove_call(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    async def unregister(self, name: str) -> None:
        self._workers.pop(name, None)
        for call_id in [c for c, w in self._calls.items() if w == name]:
            del self._calls[call_id]
