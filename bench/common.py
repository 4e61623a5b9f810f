"""Shared helpers of the benchmarks: result files, machine facts, servers under test, /proc sampling.

Every bench script writes one JSON file into ``bench/results/`` through
:func:`write_result` (with the machine, the versions and the command line).
:class:`Server` starts one of the servers under test (v2v, the plain aiortc
echo peer, the Pipecat SmallWebRTC echo peer) as a subprocess, optionally
pinned to a CPU with ``taskset``, and waits until its ``/api/offer`` answers.
:class:`ProcSample` reads CPU time and RSS of a process from ``/proc``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
FIXTURES = ROOT / "tests" / "fixtures"
PIPECAT_VENV = BENCH / ".venv-pipecat"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SERVER_KINDS = ("v2v", "aiortc", "pipecat")


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def pipecat_version() -> str | None:
    py = PIPECAT_VENV / "bin" / "python"
    if not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"],
        capture_output=True, text=True, timeout=60,
    )
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the machine is shared: load average says how busy)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError as e:  # no /proc (not Linux): the model stays unknown
        model = f"unknown ({e.strerror})"
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "hostname": socket.gethostname(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "mem_gb": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def versions() -> dict[str, Any]:
    v = {d: _version(d) for d in ("v2v", "aiortc", "av", "numpy", "aiohttp", "uvloop")}
    v["pipecat-ai"] = pipecat_version()
    try:
        v["v2v_git"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        v["v2v_git"] = None
    return v


def write_result(name: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` with the machine, versions and command around ``data``."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": name,
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name if sys.argv[0] else "python", *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(),
        **data,
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        return o.__dict__
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NICE = int(os.environ.get("V2V_BENCH_NICE", "-10"))  # priority of server and load over the shared machine's other work


def boost_autogroup(pid: int, nice: int | None = None) -> bool:
    """Give ``pid``'s scheduler autogroup the bench's nice value (root only; False when not applied).

    With ``kernel.sched_autogroup_enabled`` (the default) nice only ranks
    processes inside one session's autogroup: a server started in a session of
    its own competes as one group among every other session's work (measured:
    ~25 % of its core next to three busy sessions, whatever its nice), so its
    autogroup gets the nice too.
    """
    nice = NICE if nice is None else nice
    path = Path(f"/proc/{pid}/autogroup")
    if not nice or (nice < 0 and os.geteuid() != 0) or not path.exists():
        return False
    try:
        path.write_text(str(nice))
    except OSError:  # no autogroup support, or not allowed: the plain nice still applies within the group
        return False
    return True


def taskset_prefix(cpu: int | None, nice: int | None = None) -> list[str]:
    """``nice -n N taskset -c CPU`` (nice only as root, taskset only with >= 2 CPUs)."""
    nice = NICE if nice is None else nice
    out: list[str] = []
    if nice and (nice > 0 or os.geteuid() == 0) and shutil.which("nice"):
        out += ["nice", "-n", str(nice)]
    if cpu is not None and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2:
        out += ["taskset", "-c", str(cpu)]
    return out


# -----------------------------------------------------------------------------
# /proc sampling
# -----------------------------------------------------------------------------


@dataclass
class ProcSample:
    """CPU seconds (user + system, all threads) and RSS of one process at one instant."""

    t: float
    cpu_s: float
    rss_kb: int
    threads: int

    @classmethod
    def read(cls, pid: int) -> ProcSample:
        t = time.monotonic()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime is field 14, stime field 15
        utime, stime = int(fields[11]), int(fields[12])
        rss_kb = 0
        threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        return cls(t, (utime + stime) / CLK_TCK, rss_kb, threads)


def cpu_ms_per_s(a: ProcSample, b: ProcSample) -> float:
    return 1000.0 * (b.cpu_s - a.cpu_s) / max(1e-9, b.t - a.t)


# -----------------------------------------------------------------------------
# servers under test
# -----------------------------------------------------------------------------


def server_command(kind: str, port: int, extra: list[str] | None = None, launcher: Path | None = None) -> list[str]:
    extra = extra or []
    if kind == "v2v":
        # the interpreter itself (not a shim script), so the PID sampled is the server's
        base = [sys.executable, str(launcher)] if launcher else [sys.executable, "-m", "v2v.signaling.cli"]
        return [*base, "serve", "--model", "echo", "--host", "127.0.0.1", "--port", str(port),
                "--max-calls", "1000", "--log-level", "info",
                *([] if launcher else ["--max-conns-per-source", "0"]),  # the load generator is one source
                *extra]
    if kind == "aiortc":
        return [sys.executable, str(BENCH / "peers" / "aiortc_echo.py"), "--port", str(port), *extra]
    if kind == "pipecat":
        py = PIPECAT_VENV / "bin" / "python"
        if not py.exists():
            raise RuntimeError(f"{py} missing: run bench/setup_pipecat.sh first")
        return [str(py), str(BENCH / "peers" / "pipecat_echo.py"), "--port", str(port), *extra]
    raise ValueError(f"unknown server kind {kind!r} (one of {', '.join(SERVER_KINDS)})")


class Server:
    """One server under test, run as a subprocess on 127.0.0.1:<port>."""

    def __init__(self, kind: str, cpu: int | None = 0, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 launcher: Path | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.cmd = [*taskset_prefix(cpu), *server_command(kind, self.port, extra, launcher)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_path or (RESULTS / "tmp" / f"{kind}-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        import aiohttp

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(ROOT), start_new_session=True)
        boost_autogroup(self.proc.pid)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited ({self.proc.returncode}): {self.log_tail()}")
                try:
                    # an empty offer gets a 4xx from every server once it is listening
                    async with http.post(self.url + "/api/offer", json={},
                                         timeout=aiohttp.ClientTimeout(total=2)) as r:
                        await r.read()
                        return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} server did not listen within {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def sample(self) -> ProcSample:
        return ProcSample.read(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
