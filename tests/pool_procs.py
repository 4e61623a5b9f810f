"""Real v2v processes for the worker-pool tests: start, wait until ready, inspect, stop.

Every process is ``python -m v2v ...`` with its output in a log file under
``tests/artifacts/pool/``. Readiness is observed, never slept for: the helpers
poll the process's HTTP endpoints (``/readyz``, ``/api/workers``) until they
answer as expected. :class:`Procs` owns what it started and kills all of it
on exit, pass or fail. Linux only (``/proc``, network namespaces).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "pool"


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port free right now for TCP and UDP on ``host`` (SIP binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


_rtp_next = [40000 + (os.getpid() % 200) * 100]


def rtp_range(n: int = 100) -> str:
    """A distinct RTP port range per worker of this test process (tells the workers' ports apart)."""
    lo = _rtp_next[0]
    _rtp_next[0] += n
    if _rtp_next[0] > 60000:
        _rtp_next[0] = 40000
    return f"{lo}-{lo + n - 1}"


async def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.request(method, url, json=body) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text


async def http_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url) as r:
            return r.status, await r.text()


async def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> float:
    """Poll a synchronous ``pred``; seconds it took; AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic() - t0


async def wait_async(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll an async ``pred`` (a coroutine function) until it returns a true value; return that value."""
    t0 = time.monotonic()
    last: Any = None
    while True:
        try:
            last = await pred()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            last = e
            value = None
        else:
            value = last
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


@dataclass
class V2vProc:
    """One running ``python -m v2v`` process."""

    label: str
    args: list[str]
    url: str  # base HTTP URL, ending with "/"
    popen: subprocess.Popen[bytes]
    log: Path
    netns: str | None = None

    @property
    def pid(self) -> int:
        """The PID of the v2v process itself (not of ``ip netns exec``, which execs it)."""
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    async def wait_exit(self, timeout: float) -> int:
        await wait_until(lambda: self.popen.poll() is not None, timeout, f"{self.label} to exit")
        return int(self.popen.returncode)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def get_json(self, path: str) -> Any:
        status, body = await http_json(self.url + path.lstrip("/"))
        assert status == 200, f"{self.label} GET {path}: {status} {body}"
        return body

    async def metrics(self) -> str:
        status, text = await http_text(self.url + "metrics")
        assert status == 200, f"{self.label} /metrics: {status}"
        return text

    async def workers(self) -> list[dict[str, Any]]:
        return list((await self.get_json("api/workers"))["workers"])

    async def ready(self) -> bool:
        try:
            status, _ = await http_text(self.url + "readyz", timeout=2.0)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        return status == 200

    async def wait_ready(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while not await self.ready():
            if not self.alive():
                raise AssertionError(f"{self.label} exited ({self.popen.returncode}) before ready:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{self.label} not ready after {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def wait_workers(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> list[dict[str, Any]]:
        async def check() -> list[dict[str, Any]] | None:
            rows = await self.workers()
            return rows if pred(rows) else None

        return await wait_async(check, timeout, f"{self.label} /api/workers: {what}")  # type: ignore[no-any-return]

    # -- /proc ---------------------------------------------------------------
    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def thread_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def udp_ports(self) -> set[int]:
        return udp_ports_of(self.pid)


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        out += [int(x) for x in text.split()]
    return sorted(out)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def udp_ports_of(pid: int) -> set[int]:
    """Local ports of the UDP (IPv4 and IPv6) sockets the process holds (read in its own network namespace)."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


@dataclass
class Procs:
    """Starts v2v processes and kills every one of them on :meth:`close`."""

    name: str
    started: list[V2vProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = ARTIFACTS / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    def start(self, label: str, args: Sequence[str], *, host: str = "127.0.0.1", port: int | None = None,
              netns: str | None = None, env: dict[str, str] | None = None) -> V2vProc:
        """``python -m v2v <args> --port P`` (``--host`` is the caller's business), logged to a file."""
        port = port or free_port(host)
        full = [*args, "--port", str(port)]
        cmd = [sys.executable, "-m", "v2v", *full]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        log = self.dir / f"{label}.log"
        fh = open(log, "wb")  # one run per file: log_tail() is this run's
        fh.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        fh.flush()
        penv = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        penv.pop("V2V_PORT", None)
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=penv,
                                 start_new_session=True)
        fh.close()
        p = V2vProc(label, full, f"http://{host}:{port}/", popen, log, netns)
        self.started.append(p)
        return p

    def worker(self, label: str, redis_url: str, *, capacity: int = 10, model: str = "echo",
               extra: Sequence[str] = (), host: str = "127.0.0.1", netns: str | None = None,
               port: int | None = None) -> V2vProc:
        args = ["worker", "--redis", redis_url, "--host", host, "--name", label, "--capacity", str(capacity),
                "--model", model, "--rtp-ports", rtp_range(), "--log-level", "info", *extra]
        return self.start(label, args, host=host, port=port, netns=netns)

    def signaling(self, label: str, redis_url: str | None = None, *, workers: int | None = None,
                  sip_port: int | None = None, model: str = "echo", extra: Sequence[str] = ()) -> V2vProc:
        args = ["serve", "--host", "127.0.0.1", "--model", model, "--log-level", "info"]
        if redis_url is not None:
            args += ["--redis", redis_url]
        if workers is not None:
            args += ["--workers", str(workers)]
        if sip_port is not None:
            args += ["--sip-port", str(sip_port), "--rtp-ports", rtp_range()]
        return self.start(label, [*args, *extra])

    async def close(self) -> None:
        for p in self.started:
            if p.alive():
                with _suppress_lookup():
                    os.killpg(p.popen.pid, signal.SIGKILL)
        for p in self.started:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, (ProcessLookupError, PermissionError))


# -----------------------------------------------------------------------------
# Network namespaces (root): one per worker, a veth pair to the host namespace
# -----------------------------------------------------------------------------


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


@dataclass
class NetNs:
    """A namespace ``name`` joined to the host by a veth pair; ``addr`` inside, ``host_addr`` outside.

    Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range), one /30-ish /24 per namespace.
    """

    name: str
    index: int

    @property
    def host_if(self) -> str:
        return f"v2vh{os.getpid() % 10000}x{self.index}"[:15]

    @property
    def ns_if(self) -> str:
        return f"v2vn{os.getpid() % 10000}x{self.index}"[:15]

    @property
    def host_addr(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def addr(self) -> str:
        return f"198.18.{self.index}.2"

    def create(self) -> None:
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.addr}/24", "dev", self.ns_if)
        run("ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")
        run("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)  # removes both ends
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def rx_tx_packets(self) -> tuple[int, int]:
        """(rx, tx) packets of the namespace's end of the veth."""
        out = run("ip", "netns", "exec", self.name, "cat", f"/sys/class/net/{self.ns_if}/statistics/rx_packets",
                  f"/sys/class/net/{self.ns_if}/statistics/tx_packets")
        rx, tx = out.split()
        return int(rx), int(tx)


def host_if_packets(ifname: str) -> tuple[int, int]:
    base = Path("/sys/class/net") / ifname / "statistics"
    return int((base / "rx_packets").read_text()), int((base / "tx_packets").read_text())


# -----------------------------------------------------------------------------
# A redis-server of the test's own (for binds other than loopback)
# -----------------------------------------------------------------------------


@dataclass
class RedisProc:
    """``redis-server`` on ``port`` at ``binds``, no persistence; started and stopped by the test."""

    port: int
    binds: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.binds[0]}:{self.port}/0"

    async def start(self, timeout: float = 10.0) -> RedisProc:
        import redis.asyncio as aioredis

        self.popen = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", *self.binds, "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--daemonize", "no", "--logfile", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = aioredis.Redis(host=self.binds[0], port=self.port, socket_connect_timeout=0.5)
        try:
            async def ping() -> bool:
                if self.popen is not None and self.popen.poll() is not None:
                    raise AssertionError(f"redis-server exited ({self.popen.returncode})")
                try:
                    return bool(await client.ping())
                except Exception:
                    return False

            await wait_async(ping, timeout, f"redis-server on {self.port} to answer PING")
        finally:
            await client.aclose()
        return self

    async def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            await wait_until(lambda: self.popen is None or self.popen.poll() is not None, 10, "redis-server to exit")
        self.popen = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()
