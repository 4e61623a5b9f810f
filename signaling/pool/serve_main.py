"""``v2v serve --redis URL`` / ``--workers N``: a signaling node whose calls run on pool workers.

The node serves the same app as a plain ``v2v serve`` (page, ``/api/offer``,
SIP signalling, ``/api/workers``, ``/metrics``) around a
:class:`~.remote.PoolDispatcher`. With ``--redis`` it finds workers in Redis
(a Redis that cannot be reached at start is an error: exit status 1); with
``--workers N`` it starts and supervises N local worker processes (with both,
the local workers also register in that Redis, so other nodes use them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..cli import bound_port
from ..config import ServerConfig
from ..conn_limit import CappedTCPSite, SourceLimit
from ..metrics import ServerMetrics
from .registry import LocalRegistry, RedisRegistry, Registry, RegistryUnavailable
from .remote import PoolDispatcher
from .supervisor import Supervisor

__all__ = ["run_pool_serve", "serve_pool"]


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _open_registry(config: ServerConfig) -> tuple[Registry, LocalRegistry | None]:
    """Redis when ``--redis`` (RegistryUnavailable if down), else the supervisor's own."""
    if config.redis:
        registry = RedisRegistry(config.redis)
        await registry.connect()
        return registry, None
    local = LocalRegistry()
    return local, local


class _Signals:
    """SIGINT: stop now. SIGTERM: drain first; a second SIGTERM: stop now."""

    def __init__(self) -> None:
        self.stop, self.drain = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self._loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        (self.stop if self.drain.is_set() else self.drain).set()

    def remove(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(sig)


def _metrics_of(app: web.Application) -> ServerMetrics | None:
    return next((v for v in app.values() if isinstance(v, ServerMetrics)), None)  # what /metrics renders


async def _listen(config: ServerConfig, app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on --host/--port (OSError if it cannot bind); the runner and the URL."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await CappedTCPSite(runner, config.host, config.port,
                            SourceLimit(config.max_conns_per_source, "http", _metrics_of(app))).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, _url(config.host, bound_port(runner, config.port))


async def serve_pool(config: ServerConfig, ready: Callable[[str], None] | None = None) -> int:
    """Run the signaling node until SIGINT/SIGTERM; the exit status."""
    from ..app import create_app

    try:
        registry, local = await _open_registry(config)
    except RegistryUnavailable as e:
        print(f"v2v serve: error: {e}", file=sys.stderr, flush=True)
        return 1
    metrics = ServerMetrics()
    dispatcher = PoolDispatcher(registry, metrics)
    supervisor = Supervisor(config, dispatcher, local, config.workers) if config.workers > 0 else None
    signals = _Signals()
    runner: web.AppRunner | None = None
    draining: asyncio.Task[None] | None = None
    try:
        try:
            if supervisor is not None:
                await supervisor.start()
            runner, url = await _listen(config, create_app(config, dispatcher, metrics=metrics))
        except (RuntimeError, OSError) as e:
            print(f"v2v serve: error: {e}", file=sys.stderr, flush=True)
            return 1
        pool = f"{config.workers} local workers" if supervisor else f"workers from {config.redis}"
        print(f"v2v serving on {url}  (model: {config.model}; {pool}) - open it in a browser and talk", flush=True)
        if ready is not None:
            ready(url)
        await _first(signals.stop, signals.drain)
        if signals.drain.is_set() and not signals.stop.is_set() and supervisor is not None:
            # the local workers finish their calls (SIP in-dialog requests still come through here)
            print(f"v2v: draining the local workers (at most {config.drain_timeout:g} s; SIGTERM again: "
                  "end the calls now)", file=sys.stderr, flush=True)
            draining = asyncio.create_task(supervisor.stop(drain=True))
            await _first(signals.stop, draining)
        print("v2v: shutting down", file=sys.stderr, flush=True)
        return 0
    finally:
        if supervisor is not None:
            await supervisor.stop()  # SIGINT to what is still running: ends its calls now
            if draining is not None:
                await draining
        await (runner.cleanup() if runner is not None else dispatcher.close())
        await registry.close()
        signals.remove()  # last: a signal during the shutdown is no traceback


async def _first(*waitables: asyncio.Event | asyncio.Task[None]) -> None:
    """Wait until the first event is set or task done."""
    tasks = [w if isinstance(w, asyncio.Task) else asyncio.create_task(w.wait()) for w in waitables]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for w, t in zip(waitables, tasks, strict=True):
        if t is not w:
            t.cancel()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_pool_serve(config: ServerConfig) -> int:
    """``v2v serve --redis URL`` or ``--workers N``: the exit status."""
    from ..logs import setup_logging

    setup_logging(config.log_format, config.log_level)
    try:
        return int(_run(serve_pool(config)))
    except KeyboardInterrupt:
        return 0
