"""The pool dispatcher with real parts: redis-server, workers (in this process and in their own),
signaling nodes over loopback, and aiortc callers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import numpy as np
import pytest
from aiohttp import ClientSession

from tests import pool_util
from tests.conftest import load_wav
from tests.pool_util import RedisServer, free_port, running_node, running_worker, worker_config, worker_process
from tests.signaling_util import metric_value, wait_until
from v2v.signaling.client import Caller, offer_url
from v2v.signaling.dispatch import CallEnded, CallEvent
from v2v.signaling.pool.registry import RedisRegistry

pytestmark = pytest.mark.timeout(120)
redis_server = pool_util.redis_server  # the fixture


def hello() -> np.ndarray:
    pcm, _ = load_wav("hello_48k.wav")
    return pcm


async def get_json(url: str) -> tuple[int, dict, dict]:
    async with ClientSession() as http, http.get(url) as r:
        return r.status, await r.json(), dict(r.headers)


async def metrics_text(url: str) -> str:
    async with ClientSession() as http, http.get(url + "metrics") as r:
        return await r.text()


def ends(events: list[CallEvent]) -> dict[str, str]:
    return {e.call_id: e.reason for e in events if isinstance(e, CallEnded)}


async def test_calls_spread_and_any_node_reaches_any_call(redis_server: RedisServer) -> None:
    async with (
        running_worker(redis_server.url, name="wa") as wa,
        running_worker(redis_server.url, name="wb") as wb,
        running_node(RedisRegistry(redis_server.url)) as a,
        running_node(RedisRegistry(redis_server.url)) as b,
    ):
        events: list[CallEvent] = []
        a.dispatcher.add_listener(events.append)
        c1, c2 = Caller(a.url), Caller(a.url, trickle=True)
        try:
            await c1.connect()
            await c2.connect()  # its candidates came by PATCH through node A
            # lowest active/capacity: one call on each worker
            assert (wa.host.active_calls(), wb.host.active_calls()) == (1, 1)
            # media flows caller <-> worker: the echo comes back
            c1.play(hello())
            await asyncio.wait_for(c1.received.first_loud.wait(), 8)
            # renegotiation and PATCH through the other node reach the call's worker
            c1.url = offer_url(b.url)
            pc_id = c1.pc_id
            await c1.renegotiate()
            assert c1.pc_id == pc_id and wa.host.active_calls() + wb.host.active_calls() == 2
            async with ClientSession() as http:
                body = {"pc_id": c2.pc_id, "candidates": [{"candidate": "", "sdp_mid": "0", "sdp_mline_index": 0}]}
                async with http.patch(b.offer_url, json=body) as r:
                    assert r.status == 200, await r.text()
            # /api/workers of either node lists both, with their load
            for node in (a, b):
                status, body, _ = await get_json(node.url + "api/workers")
                assert status == 200
                rows = {w["name"]: w for w in body["workers"]}
                assert set(rows) == {"wa", "wb"}
                assert all(w["active_calls"] == 1 and w["capacity"] == 4 and w["state"] == "ready"
                           for w in rows.values())
                assert all(0 <= w["last_seen_s"] < 3 for w in rows.values())
            # DELETE through node B ends the call placed by node A; A hears of it and counts it
            c2.url = offer_url(b.url)
            pc2 = c2.pc_id
            assert await c2.hangup() == 200
            await wait_until(lambda: pc2 in ends(events), 3, "CallEnded relayed to node A")
            assert ends(events)[pc2] == "hangup"
            await wait_until(lambda: a.dispatcher.active_calls() == 1, 1, "node A's count")
            text = await metrics_text(a.url)
            for w in ("wa", "wb"):
                assert metric_value(text, "v2v_dispatches_total", {"worker": w, "outcome": "placed"}) == 1
            assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "hangup"}) == 1
            assert metric_value(text, "v2v_active_calls", {"transport": "webrtc"}) == 1
            # the call map in Redis: the live call only
            await wait_until(lambda: redis_server.command("KEYS", "v2v:call:*") == [f"v2v:call:{pc_id}"], 3,
                             "the ended call's key deleted")
        finally:
            await c1.hangup()
            await c2.close()
        await wait_until(lambda: redis_server.command("KEYS", "v2v:call:*") == [], 3, "no call key left")


async def test_no_worker_is_503_with_retry_after(redis_server: RedisServer) -> None:
    async with running_node(RedisRegistry(redis_server.url)) as node:
        status, body, headers = await get_json(node.url + "readyz")
        assert status == 503
        caller = Caller(node.url)
        with pytest.raises(Exception, match="503"):
            await caller.connect(timeout=5)
        await caller.close()
        async with ClientSession() as http, http.post(node.offer_url, json={"sdp": "v=0\r\n", "type": "offer"}) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) > 0
            assert "no worker" in (await r.json())["error"]
        status, body, _ = await get_json(node.url + "api/workers")
        assert body == {"workers": []}


def start_worker_process(redis_url: str, name: str, **kw: object) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = worker_config(redis=redis_url, name=name, port=port, **kw)
    return worker_process(cfg), port


async def wait_registered(node: pool_util.Node, name: str, timeout: float = 30) -> None:
    async def listed() -> bool:
        return name in {w.name for w in await node.dispatcher.workers()}

    t0 = time.monotonic()
    while not await listed() or not node.dispatcher.workers_by_name[name].connected:
        assert time.monotonic() - t0 < timeout, f"worker {name} never registered"
        await asyncio.sleep(0.05)


async def test_killed_worker_ends_its_calls_and_is_avoided(redis_server: RedisServer) -> None:
    proc, _ = start_worker_process(redis_server.url, "doomed")
    try:
        async with running_node(RedisRegistry(redis_server.url)) as node:
            events: list[CallEvent] = []
            node.dispatcher.add_listener(events.append)
            await wait_registered(node, "doomed")
            caller = Caller(node.url)
            try:
                await caller.connect()
                async with running_worker(redis_server.url, name="survivor") as survivor:
                    await wait_registered(node, "survivor")
                    proc.send_signal(signal.SIGKILL)
                    t0 = time.monotonic()
                    await wait_until(lambda: caller.pc_id in ends(events), 5, "worker-lost for its call")
                    assert ends(events)[caller.pc_id] == "worker-lost"
                    names = {w.name for w in await node.dispatcher.workers()}
                    while "doomed" in names:  # out of /api/workers within 5 s
                        assert time.monotonic() - t0 < 5
                        await asyncio.sleep(0.1)
                        names = {w.name for w in await node.dispatcher.workers()}
                    c2 = Caller(node.url)
                    try:
                        await c2.connect()
                        assert survivor.host.active_calls() == 1
                    finally:
                        await c2.hangup()
                    text = await metrics_text(node.url)
                    assert metric_value(text, "v2v_calls_total", {"transport": "webrtc", "outcome": "worker-lost"}) == 1
            finally:
                await caller.close()
    finally:
        proc.kill()
        proc.wait(10)


async def test_sigterm_drains_then_exits(redis_server: RedisServer) -> None:
    proc, port = start_worker_process(redis_server.url, "drainer", drain_timeout=30.0)
    try:
        async with running_node(RedisRegistry(redis_server.url)) as node:
            await wait_registered(node, "drainer")
            caller = Caller(node.url)
            try:
                await caller.connect()
                proc.send_signal(signal.SIGTERM)

                async def state() -> str:
                    rows = {w.name: w for w in await node.dispatcher.workers()}
                    return rows["drainer"].state if "drainer" in rows else "gone"

                t0 = time.monotonic()
                while await state() != "draining":
                    assert time.monotonic() - t0 < 3
                    await asyncio.sleep(0.05)
                status, _, _ = await get_json(f"http://127.0.0.1:{port}/readyz")
                assert status == 503
                c2 = Caller(node.url)
                with pytest.raises(Exception, match="503"):
                    await c2.connect(timeout=5)  # no new call on a draining worker
                await c2.close()
                # the call in progress goes on
                caller.play(hello())
                await asyncio.wait_for(caller.received.first_loud.wait(), 8)
                assert proc.poll() is None
                assert await caller.hangup() == 200
                await wait_until(lambda: proc.poll() is not None, 10, "the drained worker to exit")
                assert proc.returncode == 0
                assert redis_server.command("KEYS", "v2v:*") == []  # it left the registry
            finally:
                await caller.close()
    finally:
        proc.kill()
        proc.wait(10)


async def test_worker_with_redis_down_exits_nonzero() -> None:
    cfg = worker_config(redis=f"redis://127.0.0.1:{free_port()}/0", name="lonely")
    proc = worker_process(cfg, stderr=subprocess.PIPE)
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 1
    assert b"cannot reach Redis at redis://127.0.0.1" in err


async def test_redis_restart_mid_call_workers_reregister_and_the_call_goes_on(redis_server: RedisServer) -> None:
    async with (
        running_worker(redis_server.url, name="wa") as wa,
        running_node(RedisRegistry(redis_server.url)) as node,
    ):
        events: list[CallEvent] = []
        node.dispatcher.add_listener(events.append)
        caller = Caller(node.url)
        try:
            await caller.connect()
            redis_server.stop()
            redis_server.start()  # empty: no persistence
            t0 = time.monotonic()
            await wait_until(
                lambda: redis_server.command("KEYS", "v2v:*") and sorted(redis_server.command("KEYS", "v2v:*")) == sorted(
                    ["v2v:workers", "v2v:worker:wa", f"v2v:call:{caller.pc_id}"]), 5, "the worker re-registered")
            assert time.monotonic() - t0 < 5
            # the node rides through the restart: no call ended, the worker still listed and used
            await wait_until(lambda: "wa" in node.dispatcher.workers_by_name, 2, "the node still knows wa")
            caller.play(hello())
            await asyncio.wait_for(caller.received.first_loud.wait(), 8)
            assert ends(events) == {} and wa.host.active_calls() == 1
            rows = await node.dispatcher.workers()
            assert [w.name for w in rows] == ["wa"]
            # DELETE still reaches the call (the node's own map)
            assert await caller.hangup() == 200
            await wait_until(lambda: ends(events).get(caller.pc_id) == "hangup", 3, "the call's end")
        finally:
            await caller.close()


async def test_concurrent_offers_spread_and_full_workers_refuse(redis_server: RedisServer) -> None:
    async with (
        running_worker(redis_server.url, name="wa", capacity=2) as wa,
        running_worker(redis_server.url, name="wb", capacity=2) as wb,
        running_node(RedisRegistry(redis_server.url)) as node,
    ):
        callers = [Caller(node.url) for _ in range(4)]
        try:
            await asyncio.gather(*(c.connect() for c in callers))  # in flight together
            assert (wa.host.active_calls(), wb.host.active_calls()) == (2, 2)
            extra = Caller(node.url)
            with pytest.raises(Exception, match="503"):
                await extra.connect(timeout=5)  # every worker is full
            await extra.close()
            text = await metrics_text(node.url)
            assert metric_value(text, "v2v_dispatches_total", {"worker": "", "outcome": "no-worker"}) == 1
            assert node.dispatcher.active_calls("webrtc") == 4
        finally:
            for c in callers:
                await c.hangup()
        await wait_until(lambda: node.dispatcher.active_calls() == 0, 2, "every call ended")
        assert node.metrics.active("webrtc") == 0


async def test_worker_restarted_under_the_same_name_and_port(redis_server: RedisServer) -> None:
    proc, port = start_worker_process(redis_server.url, "phoenix")
    try:
        async with running_node(RedisRegistry(redis_server.url)) as node:
            events: list[CallEvent] = []
            node.dispatcher.add_listener(events.append)
            await wait_registered(node, "phoenix")
            caller = Caller(node.url)
            try:
                await caller.connect()
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = worker_process(worker_config(redis=redis_server.url, name="phoenix", port=port))
                await wait_until(lambda: ends(events).get(caller.pc_id) == "worker-lost", 5, "worker-lost")
                await wait_registered(node, "phoenix")
                c2 = Caller(node.url)
                try:
                    await c2.connect()
                    assert node.dispatcher.active_calls() == 1
                finally:
                    await c2.hangup()
            finally:
                await caller.close()
    finally:
        proc.kill()
        proc.wait(10)
