"""Test harness: a real v2v server (aiohttp app + SIP UDP/TCP) on ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from v2v.signaling.app import HOST, create_app
from v2v.signaling.calls import CallManager
from v2v.signaling.config import ServerConfig
from v2v.signaling.sip.server import SIP_APP_KEY, DispatchedMedia, SipServers

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "fixtures"
ARTIFACTS = HERE.parent / "artifacts" / "sip"


@dataclass
class Server:
    app: web.Application
    runner: web.AppRunner
    http_port: int
    manager: CallManager
    sip: SipServers

    @property
    def sip_port(self) -> int:
        return self.sip.port

    def hosted(self, media: DispatchedMedia | None) -> Any:
        """The media this process's CallHost holds for a dialog (an RtpCall for UDP/TCP)."""
        assert media is not None
        hosted = self.app[HOST].hosted(media.call_id)
        assert hosted is not None, "no media held here for this dialog"
        return hosted

    def rtp_of(self, media: DispatchedMedia | None) -> Any:
        """The RtpSession behind a dialog's media."""
        return self.hosted(media).rtp

    def active(self, transport: str | None = None) -> int:
        return self.manager.active_calls(transport)

    def metric(self, name: str, **labels: str) -> float:
        body, _ = self.manager.metrics.render()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, val = line.rpartition(" ")
            if labels:
                if key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items()):
                    total += float(val)
            elif key == want or key.startswith(name + "{"):
                total += float(val)
        return total


def rtp_range() -> str:
    lo = 30000 + 2 * random.randrange(0, 4000)
    return f"{lo}-{lo + 399}"


@contextlib.asynccontextmanager
async def running_server(**overrides) -> AsyncIterator[Server]:
    cfg = ServerConfig(host="127.0.0.1", port=0, model="echo", sip_port=0, rtp_ports=rtp_range())
    for k, v in overrides.items():
        setattr(cfg, k, v)
    app = create_app(cfg)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv = Server(app, runner, port, app[HOST].manager, app[SIP_APP_KEY])
    try:
        yield srv
    finally:
        await runner.cleanup()


def record_call_events(srv: Server) -> list[object]:
    """Every call event of every call the server creates from now on."""
    events: list[object] = []
    create = srv.manager.create_call

    async def create_call(*args, **kwargs):
        call = await create(*args, **kwargs)
        call.add_listener(events.append)
        return call

    srv.manager.create_call = create_call  # type: ignore[method-assign]
    return events


async def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll a cheap condition on the event loop (used only for observing the server)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts(name: str) -> Path:
    p = ARTIFACTS / name
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


async def run_proc(*args: str, cwd: Path | None = None, timeout: float = 60.0,
                   env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError as e:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"{args[0]} timed out:\n{out.decode()[-3000:]}\n{err.decode()[-3000:]}") from e
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


__all__ = ["Server", "running_server", "wait_for", "free_udp_port", "artifacts", "run_proc", "FIXTURES", "HERE"]
