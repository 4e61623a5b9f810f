"""``v2v worker``: a headless process holding calls for the signaling nodes of a pool.

It runs a :class:`~v2v.signaling.host.CallHost` and serves, on ``--host``/``--port``
(and on a unix socket when a supervisor starts it: env ``V2V_POOL_SOCKET``),
``/healthz``, ``/readyz``, ``/metrics`` and the worker RPC of
:mod:`.protocol`. With ``--redis`` it registers and heartbeats its load every
second (:mod:`.registry`). SIGTERM drains: state ``draining`` (no new call),
exit when the last call ends or after ``--drain-timeout``, ending what is left.
SIGINT ends every call at once, as ``v2v serve`` does.

``--advertise ADDR``: the address of this worker in the pool (its RPC URL) and
in its media: the SDP ``c=`` address of SIP RTP calls (as
``--sip-public-address``). For WebRTC, aiortc offers the host's own interface
addresses as ICE candidates and has no 1:1 NAT mapping; a worker behind NAT
needs ``--ice-server`` (STUN for a server-reflexive candidate, or TURN).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import fields
from typing import Any

from aiohttp import web

from ..config import IceServer, ServerConfig
from ..dispatch import CallEnded, CallEvent
from .protocol import PREFIX, WorkerService
from .registry import HEARTBEAT_S, RedisRegistry, RegistryUnavailable, WorkerRecord

__all__ = ["CONFIG_ENV", "DEFAULT_CAPACITY", "SOCKET_ENV", "Worker", "config_from_env", "run_worker"]

log = logging.getLogger("v2v.pool.worker")

# BENCHMARKS.md, "Calls per core" (load_ramp_retry): one v2v process holds 20 calls on one
# core with no late frame (~20-25 across runs); a worker process uses one core.
DEFAULT_CAPACITY = 20
SOCKET_ENV = "V2V_POOL_SOCKET"  # set by the supervisor: also serve the RPC on this unix socket
CONFIG_ENV = "V2V_POOL_CONFIG"  # set by the supervisor: the serve process's ServerConfig as JSON


def config_from_env(env: dict[str, str] | None = None) -> ServerConfig | None:
    """The ServerConfig a supervisor passed in ``V2V_POOL_CONFIG`` (None when absent)."""
    raw = (env if env is not None else os.environ).get(CONFIG_ENV)
    if not raw:
        return None
    data = json.loads(raw)
    names = {f.name for f in fields(ServerConfig)}
    cfg = ServerConfig(**{k: v for k, v in data.items() if k in names})
    cfg.ice_servers = [IceServer(**s) if isinstance(s, dict) else s for s in cfg.ice_servers]
    return cfg


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]" if ":" in host else host


@web.middleware
async def _rpc_over_unix_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse the worker RPC over TCP (health and metrics stay open)."""
    if request.path.startswith(PREFIX):
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is None or sock.family != socket.AF_UNIX:
            return web.json_response({"error": "the worker RPC is served on its unix socket only"}, status=403)
    return await handler(request)


class Worker:
    """One worker process: the host, its HTTP app, its registration."""

    def __init__(self, config: ServerConfig, *, unix_path: str | None = None) -> None:
        if not config.capacity:
            config.capacity = DEFAULT_CAPACITY
        if config.advertise and not config.sip_public_address:
            config.sip_public_address = config.advertise
        from ..host import CallHost  # here: importing this module must not load aiortc

        self.config = config
        self.unix_path = unix_path
        self.host = CallHost(config)
        self.service = WorkerService(self.host, self.info_now, self._on_call)
        self.registry = RedisRegistry(config.redis) if config.redis else None
        self.port = config.port
        self.stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._registry_ok = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self.host.add_listener(self._on_event)

    # -- identity and load --------------------------------------------------------
    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        return f"{_url_host(self.config.advertise or self.config.host)}:{self.port}"

    def info_now(self) -> Any:
        return self.host.info(self.address)

    def record(self) -> WorkerRecord:
        info = self.info_now()
        return WorkerRecord(
            name=self.name, address=self.address, rpc_url=f"http://{self.address}",
            active_calls=info.active_calls, capacity=info.capacity, state=info.state,
            unix=self.unix_path or "",
        )

    # -- app -----------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=max(self.config.max_body, 1024 * 1024))
        if self.unix_path and self.registry is None:  # a supervisor's worker: RPC on its unix socket only
            app.middlewares.append(_rpc_over_unix_only)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self.service.add_routes(app)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker": self.name, "address": self.address})

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self.host.not_ready_reason()
        if reason:
            return web.json_response({"error": reason}, status=503, headers={"Retry-After": "5"})
        return web.json_response({"status": "ready", "active_calls": self.host.active_calls()})

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.host.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    # -- registry ----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_call(self, call_id: str, transport: str) -> None:
        log.info("call %s (%s) taken by worker %s", call_id, transport, self.name)
        if self.registry is None:
            return
        if not self._registry_ok:  # Redis is down: do not hold the answer; the heartbeat writes it later
            self._spawn(self._record_call(call_id))
        else:
            await self._record_call(call_id)

    async def _record_call(self, call_id: str) -> None:
        assert self.registry is not None
        try:
            await self.registry.add_call(call_id, self.name)
        except RegistryUnavailable as e:
            log.warning("call %s not recorded in Redis: %s", call_id, e)

    def _on_event(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded) and self.registry is not None:
            self._spawn(self._forget_call(event.call_id))

    async def _forget_call(self, call_id: str) -> None:
        assert self.registry is not None
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.remove_call(call_id)

    async def beat(self) -> None:
        """One heartbeat: the record (TTL 3 s) and this worker's call keys."""
        if self.registry is None:
            return
        try:
            await self.registry.heartbeat(self.record(), list(self.service.calls))
        except RegistryUnavailable as e:
            if self._registry_ok:
                log.error("heartbeat failed, retrying every %.0f s: %s", HEARTBEAT_S, e)
            self._registry_ok = False
        else:
            if not self._registry_ok:
                log.info("registered again in Redis as %s", self.name)
            self._registry_ok = True

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(HEARTBEAT_S)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to Redis (RegistryUnavailable if down), bind, register."""
        if self.registry is not None:
            await self.registry.connect()
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        if self.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)
            await web.UnixSite(self._runner, self.unix_path).start()
        if not self.config.name:
            self.host.name = f"{socket.gethostname()}-{self.port}"
        await self.host.start()
        await self.beat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="pool-heartbeat")
        print(f"v2v worker {self.name} serving on http://{self.address}/ (capacity {self.host.capacity}"
              f"{', redis ' + self.config.redis if self.registry else ''})", flush=True)

    async def drain(self) -> None:
        """No new calls; return when the last call ends or after --drain-timeout."""
        self.host.draining = True
        self.service.push_load()
        await self.beat()
        log.info("worker %s draining: %d call(s) left", self.name, self.host.active_calls())
        if await self.host.drain(self.config.drain_timeout):
            log.warning("drain timeout: ending %d call(s)", self.host.active_calls())

    async def shutdown(self) -> None:
        """End what is left, leave the registry, close the sockets."""
        await self.host.close("shutdown")
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.registry is not None:
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.unregister(self.name)
            await self.registry.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)


async def serve_worker(config: ServerConfig, unix_path: str | None = None) -> int:
    """Run a worker until SIGINT (or SIGTERM and its drain); the exit status."""
    from .. import aiortc_tuning

    aiortc_tuning.install()  # as `v2v serve` does: before the first peer connection
    aiortc_tuning.restrict_host_addresses(config.media_address)
    worker = Worker(config, unix_path=unix_path)
    loop = asyncio.get_running_loop()
    draining = asyncio.Event()

    def on_sigterm() -> None:  # first: drain; a second one: end the calls now
        (worker.stop if draining.is_set() else draining).set()

    loop.add_signal_handler(signal.SIGINT, worker.stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        try:
            await worker.start()
        except RegistryUnavailable as e:
            print(f"v2v worker: error: {e}", file=sys.stderr, flush=True)
            return 1
        except OSError as e:
            print(f"v2v worker: cannot listen on {config.host}:{config.port}: {e}", file=sys.stderr, flush=True)
            return 1
        stop_wait = asyncio.create_task(worker.stop.wait())
        drain_wait = asyncio.create_task(draining.wait())
        await asyncio.wait({stop_wait, drain_wait}, return_when=asyncio.FIRST_COMPLETED)
        if draining.is_set() and not worker.stop.is_set():
            drain = asyncio.create_task(worker.drain())
            await asyncio.wait({drain, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            drain.cancel()
        stop_wait.cancel()
        drain_wait.cancel()
        return 0
    finally:
        await worker.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):  # last: a signal during the shutdown is no traceback
            loop.remove_signal_handler(sig)


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_worker(config: ServerConfig) -> int:
    """``v2v worker``: serve until SIGINT, or drain on SIGTERM; the exit status."""
    from ..logs import setup_logging

    setup_logging(config.log_format, config.log_level)
    try:
        return int(_run(serve_worker(config, os.environ.get(SOCKET_ENV) or None)))
    except KeyboardInterrupt:
        return 0


def main() -> int:
    """``python -m v2v.signaling.pool.worker_main``: a worker configured by its supervisor's env."""
    config = config_from_env()
    if config is None:
        print(f"v2v worker: {CONFIG_ENV} is not set (use `v2v worker`)", file=sys.stderr)
        return 2
    return run_worker(config)


if __name__ == "__main__":
    sys.exit(main())
