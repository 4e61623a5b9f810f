"""``v2v serve --workers N``: N local worker processes, started, watched and restarted by serve.

Each child is ``python -m v2v.signaling.pool.worker_main`` with the serve
process's own :class:`~v2v.signaling.config.ServerConfig` (as JSON in
``V2V_POOL_CONFIG``: the same model, call and SIP-media settings) and a unix
socket in a private temporary directory (``V2V_POOL_SOCKET``) over which the
signaling node speaks the worker RPC. Each child also answers ``/healthz``,
``/readyz`` and ``/metrics`` on its own TCP port (a free one, shown in
``/api/workers``). A child that exits is reported lost (its calls end with
``worker-lost``) and restarted; a child whose parent dies gets SIGTERM
(Linux ``PR_SET_PDEATHSIG``) and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

import aiohttp

from ..config import ServerConfig
from .registry import LocalRegistry, WorkerRecord
from .remote import PoolDispatcher
from .worker_main import CONFIG_ENV, SOCKET_ENV

__all__ = ["Supervisor"]

log = logging.getLogger("v2v.pool.supervisor")

START_TIMEOUT_S = 60.0  # the local model loads its recognizer and voice on start
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when serve dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class Supervisor:
    """Starts ``n`` workers for ``dispatcher`` and keeps them running until :meth:`stop`."""

    def __init__(
        self, config: ServerConfig, dispatcher: PoolDispatcher, registry: LocalRegistry | None, n: int
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.registry = registry  # None: the children register in Redis themselves
        self.n = n
        self.dir = tempfile.mkdtemp(prefix="v2v-pool-")
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def names(self) -> list[str]:
        return [f"w{i}" for i in range(self.n)]

    def socket_path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.sock")

    def child_config(self, name: str) -> ServerConfig:
        cfg = dataclasses.replace(self.config, workers=0, port=0, sip_port=None, name=name)
        if self.config.name:
            cfg.name = f"{self.config.name}-{name}"
        return cfg

    async def start(self) -> None:
        """Start every worker; return when all answer (RuntimeError if one cannot start)."""
        results = await asyncio.gather(*(self._spawn(name) for name in self.names()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise RuntimeError(f"local workers did not start: {errors[0]}")
        for name in self.names():
            self._watchers[name] = asyncio.create_task(self._watch(name), name=f"pool-watch-{name}")

    async def _spawn(self, name: str) -> None:
        cfg = self.child_config(name)
        env = dict(os.environ)
        env[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
        env[SOCKET_ENV] = self.socket_path(name)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "v2v.signaling.pool.worker_main", env=env, preexec_fn=_die_with_parent(),
            start_new_session=True,  # a terminal's Ctrl-C reaches serve only; serve stops its children
        )
        self.procs[name] = proc
        address = await self._wait_healthy(name, proc)
        if self.registry is not None:
            self.registry.put(WorkerRecord(name=cfg.name, address=address, rpc_url="", unix=self.socket_path(name)))
        await self.dispatcher.refresh()
        log.info("local worker %s started (pid %d, %s)", cfg.name, proc.pid, address)

    async def _wait_healthy(self, name: str, proc: asyncio.subprocess.Process) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket_path(name))) as http:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    raise RuntimeError(f"worker {name} exited with status {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get("http://worker/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return str((await r.json()).get("address") or "")
                await asyncio.sleep(0.05)
        raise RuntimeError(f"worker {name} did not answer within {START_TIMEOUT_S:.0f} s")

    async def _watch(self, name: str) -> None:
        """Wait for the child to exit; unless stopping, report its calls lost and restart it."""
        fails = 0
        while not self._stopping:
            proc = self.procs[name]
            started = time.monotonic()
            rc = await proc.wait()
            if self._stopping:
                return
            log.error("local worker %s (pid %d) exited with status %s; restarting", name, proc.pid, rc)
            cfg_name = self.child_config(name).name
            if self.registry is not None:
                await self.registry.unregister(cfg_name)
            await self.dispatcher.remove_worker(cfg_name)
            fails = fails + 1 if time.monotonic() - started < 10 else 0
            await asyncio.sleep(RESTART_BACKOFF_S[min(fails, len(RESTART_BACKOFF_S) - 1)])
            try:
                await self._spawn(name)
                self.restarts[name] = self.restarts.get(name, 0) + 1
            except (RuntimeError, OSError) as e:
                log.error("local worker %s did not restart: %s", name, e)
                fails += 1

    async def stop(self, drain: bool = False) -> None:
        """SIGINT every child (ends its calls), or SIGTERM (``drain``: each finishes its calls
        within ``--drain-timeout``); SIGKILL what is left after that."""
        self._stopping = True
        for task in self._watchers.values():
            task.cancel()
        for task in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM if drain else signal.SIGINT)
        wait = STOP_TIMEOUT_S + (self.config.drain_timeout if drain else 0.0)
        for name, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), wait)
            except TimeoutError:
                log.warning("local worker %s did not stop; killing it", name)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
