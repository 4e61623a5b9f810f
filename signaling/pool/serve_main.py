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

from ..config import ServerConfig
from ..metrics import ServerMetrics
from .registry import LocalRegistry, RedisRegistry, Registry, RegistryUnavailable
from .remote import PoolDispatcher
from .supervisor import Supervisor

__all__ = ["run_pool_serve", "serve_pool"]


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve_pool(config: ServerConfig, ready: Callable[[str], None] | None = None) -> int:
    """Run the signaling node until SIGINT/SIGTERM; the exit status."""
    from ..app import create_app

    registry: Registry
    local: LocalRegistry | None = None
    if config.redis:
        registry = RedisRegistry(config.redis)
        try:
            await registry.connect()
        except RegistryUnavailable as e:
            print(f"v2v serve: error: {e}", file=sys.stderr, flush=True)
            return 1
    else:
        registry = local = LocalRegistry()
    metrics = ServerMetrics()
    dispatcher = PoolDispatcher(registry, metrics)
    supervisor = Supervisor(config, dispatcher, local, config.workers) if config.workers > 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    try:
        if supervisor is not None:
            try:
                await supervisor.start()
            except RuntimeError as e:
                print(f"v2v serve: error: {e}", file=sys.stderr, flush=True)
                return 1
        app = create_app(config, dispatcher, metrics=metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as e:
            print(f"v2v: cannot listen on {config.host}:{config.port}: {e}", file=sys.stderr, flush=True)
            return 1
        server = getattr(site, "_server", None)
        port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else config.port
        url = _url(config.host, port)
        pool = f"{config.workers} local workers" if supervisor else f"workers from {config.redis}"
        print(f"v2v serving on {url}  (model: {config.model}; {pool}) - open it in a browser and talk", flush=True)
        if ready is not None:
            ready(url)
        await stop.wait()
        print("v2v: shutting down", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        else:
            await dispatcher.close()
        if supervisor is not None:
            await supervisor.stop()
        await registry.close()


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
