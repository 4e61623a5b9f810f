"""The pool registry against a real redis-server: records with a TTL, the call map, Redis down and back."""

from __future__ import annotations

import asyncio

import pytest

from tests import pool_util
from tests.pool_util import RedisServer, free_port
from v2v.signaling.pool.registry import (
    WORKER_TTL_S,
    LocalRegistry,
    RedisRegistry,
    RegistryUnavailable,
    WorkerRecord,
)

pytestmark = pytest.mark.timeout(60)
redis_server = pool_util.redis_server  # the fixture


def rec(name: str, calls: int = 0) -> WorkerRecord:
    return WorkerRecord(name=name, address=f"127.0.0.1:{9000 + calls}", rpc_url="http://127.0.0.1:9000",
                        active_calls=calls, capacity=10)


async def test_heartbeat_lists_workers_and_their_ttl_lapses(redis_server: RedisServer) -> None:
    reg = RedisRegistry(redis_server.url)
    await reg.connect()
    try:
        await reg.heartbeat(rec("a", 1), ["pc-1"])
        await reg.heartbeat(rec("b", 2), [])
        workers = await reg.list_workers()
        assert [(w.name, w.active_calls, w.capacity) for w in workers] == [("a", 1, 10), ("b", 2, 10)]
        assert workers[0].last_seen > 0
        assert 0 < redis_server.command("TTL", "v2v:worker:a") <= WORKER_TTL_S
        assert await reg.worker_of("pc-1") == "a"
        assert await reg.worker_of("pc-2") is None
        # "a" keeps beating, "b" stops: b is gone within the TTL, and from the index too
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while "b" in [w.name for w in await reg.list_workers()]:
            assert loop.time() - t0 < WORKER_TTL_S + 1.5
            await reg.heartbeat(rec("a", 1), ["pc-1"])
            await asyncio.sleep(0.25)
        assert [w.name for w in await reg.list_workers()] == ["a"]
        assert set(redis_server.command("SMEMBERS", "v2v:workers")) == {"a"}
        await reg.remove_call("pc-1")
        assert await reg.worker_of("pc-1") is None
        await reg.unregister("a")
        assert await reg.list_workers() == []
        assert redis_server.command("KEYS", "v2v:*") == []
    finally:
        await reg.close()


async def test_redis_down_at_start_is_a_clear_error() -> None:
    reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RegistryUnavailable, match="cannot reach Redis at redis://127.0.0.1"):
        await reg.connect()
    await reg.close()


async def test_redis_restart_heartbeat_recreates_every_key(redis_server: RedisServer) -> None:
    reg = RedisRegistry(redis_server.url)
    await reg.connect()
    try:
        await reg.heartbeat(rec("a"), ["pc-1", "sip-2"])
        redis_server.stop()
        with pytest.raises(RegistryUnavailable):
            await reg.heartbeat(rec("a"), ["pc-1", "sip-2"])
        redis_server.start()  # empty: no persistence
        assert redis_server.command("KEYS", "v2v:*") == []
        await reg.heartbeat(rec("a"), ["pc-1", "sip-2"])
        assert [w.name for w in await reg.list_workers()] == ["a"]
        assert await reg.worker_of("sip-2") == "a"
    finally:
        await reg.close()


async def test_local_registry() -> None:
    reg = LocalRegistry()
    reg.put(WorkerRecord("w0", "127.0.0.1:1", "", unix="/tmp/x.sock"))
    await reg.add_call("pc-1", "w0")
    assert [w.name for w in await reg.list_workers()] == ["w0"]
    assert await reg.worker_of("pc-1") == "w0"
    await reg.unregister("w0")
    assert await reg.list_workers() == [] and await reg.worker_of("pc-1") is None
