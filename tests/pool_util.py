"""Helpers for the worker-pool tests: a real redis-server, in-process workers and signaling nodes.

- ``redis_server`` (fixture): a fresh ``redis-server`` on a free loopback port,
  no persistence; ``.stop()`` / ``.start()`` restart it on the same port.
- ``running_worker(redis_url, **config)``: a :class:`Worker` (echo model) on a free port.
- ``running_node(registry)``: a signaling app around a :class:`PoolDispatcher`.
- ``worker_process(...)``: a ``v2v worker`` in its own process (``python -m
  v2v.signaling.pool.worker_main`` configured through its env).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from v2v.signaling.app import create_app
from v2v.signaling.config import ServerConfig
from v2v.signaling.metrics import ServerMetrics
from v2v.signaling.pool.registry import Registry
from v2v.signaling.pool.remote import PoolDispatcher
from v2v.signaling.pool.worker_main import CONFIG_ENV, SOCKET_ENV, Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A redis-server process of the test; ``url`` stays valid across :meth:`stop`/:meth:`start`."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _pong(self.port), 10, "redis-server to answer PING")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def command(self, *args: str) -> Any:
        """Run a command with redis-py (synchronous), for assertions on keys."""
        import redis

        with redis.Redis(port=self.port, decode_responses=True) as r:
            return r.execute_command(*args)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def worker_config(**overrides: Any) -> ServerConfig:
    cfg = ServerConfig(model="echo", host="127.0.0.1", port=0, capacity=4)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@asynccontextmanager
async def running_worker(redis_url: str = "", **overrides: Any) -> AsyncIterator[Worker]:
    """A worker in this process (no signal handlers), registered in ``redis_url`` when given."""
    unix_path = overrides.pop("unix_path", None)
    worker = Worker(worker_config(redis=redis_url, **overrides), unix_path=unix_path)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.shutdown()


@dataclass
class Node:
    dispatcher: PoolDispatcher
    runner: web.AppRunner
    url: str
    metrics: ServerMetrics

    @property
    def offer_url(self) -> str:
        return self.url + "api/offer"


@asynccontextmanager
async def running_node(registry: Registry, *, sip: bool = False, **overrides: Any) -> AsyncIterator[Node]:
    """A signaling node dispatching to the workers of ``registry`` (SIP with ``sip=True``)."""
    cfg = ServerConfig(model="echo", host="127.0.0.1", port=0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    metrics = ServerMetrics()
    dispatcher = PoolDispatcher(registry, metrics)
    app = create_app(cfg, dispatcher, metrics=metrics, sip=sip)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Node(dispatcher, runner, f"http://127.0.0.1:{port}/", metrics)
    finally:
        await runner.cleanup()


def worker_process(config: ServerConfig, unix_path: str | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """``v2v worker`` for ``config`` in a child process (the supervisor's way of starting one)."""
    env = dict(os.environ)
    env[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    if unix_path:
        env[SOCKET_ENV] = unix_path
    return subprocess.Popen([sys.executable, "-m", "v2v.signaling.pool.worker_main"], env=env, **popen)
