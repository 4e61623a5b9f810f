"""Helpers for the signaling tests: a real server on an ephemeral port, waiting on conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from v2v.signaling.app import HOST, create_app
from v2v.signaling.calls import CallManager
from v2v.signaling.config import ServerConfig
from v2v.signaling.host import CallHost


@dataclass
class Server:
    app: web.Application
    runner: web.AppRunner
    url: str
    config: ServerConfig

    @property
    def host(self) -> CallHost:
        return self.app[HOST]

    @property
    def manager(self) -> CallManager:
        return self.host.manager

    @property
    def offer_url(self) -> str:
        return self.url + "api/offer"


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[Server]:
    cfg = ServerConfig(model="echo", host="127.0.0.1", port=0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    app = create_app(cfg, sip=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = Server(app, runner, f"http://127.0.0.1:{port}/", cfg)
    try:
        yield server
    finally:
        await runner.cleanup()


async def wait_until(pred: Callable[[], Any], timeout: float, what: str = "condition") -> float:
    """Poll ``pred`` every 10 ms; return the seconds it took, fail after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Value of one sample in Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0
