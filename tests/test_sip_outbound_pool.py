"""An outbound call placed by a signaling node of the pool: the dialog on the node, the RTP and
the model on the worker (the same seam as an inbound call), against a real sipp callee."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests import pool_util
from tests.pool_util import RedisServer, running_node, running_worker
from tests.signaling_util import wait_until
from tests.sip.harness import rtp_range
from tests.test_sip_outbound import Uas
from v2v.signaling.pool.registry import RedisRegistry

pytestmark = pytest.mark.timeout(90)
redis_server = pool_util.redis_server  # the fixture


def _metric(body: bytes, name: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


async def test_dial_through_the_pool(redis_server: RedisServer, tmp_path: Path) -> None:
    uas = await Uas(tmp_path, "uas_answer.xml").start()
    try:
        async with (
            running_worker(redis_server.url, name="wa", rtp_ports=rtp_range()) as wa,
            running_node(RedisRegistry(redis_server.url), sip=True, sip_port=0,
                         sip_trunk=f"127.0.0.1:{uas.port}") as node,
        ):
            await wait_until(lambda: node.dispatcher.not_ready_reason() is None, 5, "the worker registered")
            async with aiohttp.ClientSession() as s, s.post(node.url + "api/calls/dial",
                                                            json={"to": "+15551234567", "profile": "echo"}) as r:
                out = await r.json()
            assert r.status == 200 and out["outcome"] == "answered", out
            assert wa.host.active_calls("sip_udp") == 1  # the media is on the worker
            rc, log = await uas.result()
            assert rc == 0, log  # the callee's BYE reached the node, which answered it
            await wait_until(lambda: wa.host.active_calls() == 0, 3, "the worker's call to end")
            worker_metrics, _ = wa.host.metrics.render()
            assert _metric(worker_metrics, "v2v_turn_latency_seconds_count") >= 1  # the echo model answered
            node_metrics, _ = node.metrics.render()
            assert _metric(node_metrics, 'v2v_sip_dials_total{outcome="answered"}') == 1
    finally:
        uas.kill()
