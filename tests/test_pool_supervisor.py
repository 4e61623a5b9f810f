"""``serve --workers N``'s supervisor with real child processes over unix sockets: both take
calls, a killed one ends its calls as worker-lost and is restarted, stop ends them all."""

from __future__ import annotations

import os
import signal

import pytest
from aiohttp import ClientSession

from tests.pool_util import running_node
from tests.signaling_util import wait_until
from v2v.signaling.client import Caller
from v2v.signaling.config import ServerConfig
from v2v.signaling.dispatch import CallEnded, CallEvent
from v2v.signaling.pool.registry import LocalRegistry
from v2v.signaling.pool.supervisor import Supervisor

pytestmark = pytest.mark.timeout(120)


async def test_two_local_workers_take_calls_and_a_killed_one_is_restarted() -> None:
    registry = LocalRegistry()
    async with running_node(registry) as node:
        sup = Supervisor(ServerConfig(model="echo", host="127.0.0.1", port=0, capacity=4), node.dispatcher,
                         registry, 2)
        events: list[CallEvent] = []
        node.dispatcher.add_listener(events.append)
        callers: list[Caller] = []
        try:
            await sup.start()
            assert sorted(node.dispatcher.workers_by_name) == ["w0", "w1"]
            for _ in range(2):
                callers.append(Caller(node.url))
                await callers[-1].connect()
            rows = {w.name: w for w in await node.dispatcher.workers()}
            await wait_until(lambda: all(w.info and w.info.active_calls == 1
                                         for w in node.dispatcher.workers_by_name.values()), 3, "one call each")
            assert all(os.path.exists(sup.socket_path(n)) for n in ("w0", "w1"))
            assert all(r.address.startswith("127.0.0.1:") for r in rows.values())
            # each worker: health and metrics on its own TCP port, the RPC only on its unix socket
            async with ClientSession() as http:
                for r in rows.values():
                    async with http.get(f"http://{r.address}/healthz") as resp:
                        assert resp.status == 200
                    async with http.get(f"http://{r.address}/metrics") as resp:
                        assert resp.status == 200 and "v2v_active_calls" in await resp.text()
                    async with http.post(f"http://{r.address}/pool/v1/info", json={}) as resp:
                        assert resp.status == 403
            # SIGKILL w0: its call ends worker-lost, it comes back, calls go on
            doomed = sup.procs["w0"]
            lost = next(c for c in callers if c.pc_id in node.dispatcher.workers_by_name["w0"].calls)
            doomed.send_signal(signal.SIGKILL)
            await wait_until(lambda: any(isinstance(e, CallEnded) and e.call_id == lost.pc_id
                                         and e.reason == "worker-lost" for e in events), 5, "worker-lost")
            await wait_until(lambda: sup.restarts.get("w0") == 1 and "w0" in node.dispatcher.workers_by_name
                             and node.dispatcher.workers_by_name["w0"].connected, 30, "w0 restarted")
            assert sup.procs["w0"].pid != doomed.pid
            c3 = Caller(node.url)
            callers.append(c3)
            await c3.connect()  # the restarted, empty w0 is the least loaded
            assert c3.pc_id in node.dispatcher.workers_by_name["w0"].calls
        finally:
            for c in callers:
                await c.close()
            await sup.stop()
        assert all(p.returncode is not None for p in sup.procs.values())
        assert not os.path.exists(sup.dir)
