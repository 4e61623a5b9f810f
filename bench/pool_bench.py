"""The worker pool bench: what dispatch through the pool costs, and calls held by ``--workers 2``.

Three figures (shared/DESIGN.md section 5, last row; issue 10):

1. **offer -> answer latency** (``POST /api/offer`` round trip at the client, p50/p95 over
   ``--offers`` sequential offers per setup, each DELETEd after its answer; the setups run side by
   side and take their offers in turn, so the shared machine's noise hits them alike) of plain ``v2v serve``
   (in-process worker), ``v2v serve --redis`` + one ``v2v worker --redis`` (the RPC and the
   Redis round trips), and ``v2v serve --workers 1`` (the local transport, a unix socket).
   The offers are real aiortc offers made before the clock starts; the servers (and
   redis-server) are pinned to CPU 0, the client to CPU 1.
2. **cost per call of dispatch**: CPU ms (user + system, every process of the setup:
   signaling node, workers, redis-server) per offer + DELETE, pool minus in-process; and
   the Redis commands per call (``INFO commandstats``).
3. **calls held** with bench/load.py's criterion (p99 arrival interval within 20 +- 5 ms,
   no late frame, >= 98 % of packets; ``load.good``), ramping N: one process vs
   ``--workers 2``, each with the server side pinned to CPU 0 and the load generator to
   CPU 1 (the only honest split on a 2-core machine: the load generator needs a core), and
   ``--workers 2`` unpinned next to an unpinned load generator (both cores shared by
   everything).

    python bench/pool_bench.py                       # all of it, ~5 minutes
    python bench/pool_bench.py --skip-held --offers 100
    python bench/pool_bench.py --held-only --ns 10,15,20,25,30

Writes ``bench/results/pool.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, ProcSample, Server, free_port, percentile, taskset_prefix, write_result
from load import good, run_loadgen

SERVER_CPU = "0"  # taskset -c list of the server side (--server-cpus)
CLIENT_CPU = "1"  # of the client / load generator (--load-cpus)


# -----------------------------------------------------------------------------
# processes
# -----------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    todo += [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += ProcSample.read(p).cpu_s
        except (OSError, ValueError):
            pass
    return total


class Proc:
    """A helper process of a setup (redis-server, a worker), pinned like the server."""

    def __init__(self, label: str, cmd: list[str], cpu: str | None) -> None:
        self.label = label
        self.log_path = RESULTS / "tmp" / f"pool-{label}-{os.getpid()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen([*taskset_prefix(cpu), *cmd], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


async def wait_http(url: str, timeout: float = 60.0, ok: Any = None) -> None:
    """Poll ``url`` until it answers 200 (and ``ok(json)`` when given)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200 and (ok is None or ok(await r.json())):
                        return
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout} s")


class Setup:
    """One way of serving: the signaling server plus whatever it needs; ``url`` takes offers."""

    def __init__(self, kind: str, cpu: str | None = SERVER_CPU, capacity: int = 200) -> None:
        self.kind = kind
        self.cpu = cpu
        self.capacity = capacity
        self.helpers: list[Proc] = []
        self.redis_port = 0
        self.server: Server | None = None
        self._redis: Any = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        extra: list[str] = []
        n_workers = 0
        if self.kind == "redis":
            self.redis_port = free_port()
            exe = shutil.which("redis-server") or "redis-server"
            self.helpers.append(Proc("redis", [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                               "--save", "", "--appendonly", "no"], self.cpu))
            redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
            wport = free_port()
            await self._wait_redis()
            self.helpers.append(Proc("worker", [sys.executable, "-m", "v2v", "worker", "--redis", redis_url,
                                                "--host", "127.0.0.1", "--port", str(wport), "--name", "bench-w1",
                                                "--model", "echo", "--capacity", str(self.capacity)], self.cpu))
            await wait_http(f"http://127.0.0.1:{wport}/readyz")
            extra = ["--redis", redis_url]
            n_workers = 1
        elif self.kind.startswith("workers"):
            n_workers = int(self.kind[len("workers"):])
            extra = ["--workers", str(n_workers), "--capacity", str(self.capacity)]
        self.server = Server("v2v", cpu=self.cpu, extra=extra)
        await self.server.start()
        await wait_http(self.url + "/readyz")
        if n_workers:
            await wait_http(self.url + "/api/workers",
                            ok=lambda d: sum(w["state"] == "ready" for w in d["workers"]) == n_workers)

    async def _wait_redis(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=self.redis_port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if await client.ping():
                        return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def pids(self) -> list[int]:
        assert self.server is not None
        out = tree_pids(self.server.pid)
        for h in self.helpers:
            out += tree_pids(h.pid)
        return out

    async def redis_calls(self) -> int | None:
        """Commands Redis has executed so far but INFO (``INFO commandstats``), None without Redis.

        One connection is kept for all the reads, so its own set-up commands are not counted twice.
        """
        if not self.redis_port:
            return None
        import redis.asyncio as aioredis

        if self._redis is None:
            self._redis = aioredis.Redis(port=self.redis_port)
        stats = await self._redis.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    async def close_client(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for h in reversed(self.helpers):
            h.stop()


# -----------------------------------------------------------------------------
# 1 + 2: offer -> answer latency and CPU per call
# -----------------------------------------------------------------------------


async def make_offers(k: int) -> list[str]:
    """``k`` real aiortc offers (audio sendrecv + the ``chat`` data channel, host candidates)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    out = []
    for _ in range(k):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        out.append(pc.localDescription.sdp)
        await pc.close()
    return out


class OfferClient:
    """POSTs an offer to one setup and DELETEs the call; the round trip of the POST in ms."""

    def __init__(self, setup: Setup, http: Any, offers: list[str]) -> None:
        self.setup = setup
        self.http = http
        self.offers = offers
        self.url = setup.url + "/api/offer"
        self.lat: list[float] = []

    async def one(self, i: int) -> float:
        t0 = time.perf_counter()
        async with self.http.post(self.url, json={"sdp": self.offers[i % len(self.offers)], "type": "offer"}) as r:
            body = await r.json()
            t1 = time.perf_counter()
            if r.status != 200:
                raise RuntimeError(f"{self.setup.kind}: offer {r.status}: {body}")
        async with self.http.delete(f"{self.url}/{body['pc_id']}") as r:
            await r.read()
        return (t1 - t0) * 1000.0


async def idle_rates(setups: list[Setup], seconds: float = 3.0) -> dict[str, tuple[float, float]]:
    """Per setup: CPU ms/s and Redis commands/s with no call (heartbeats, tickers), taken off the per-call figures."""
    a = {s.kind: (cpu_s(s.pids()), await s.redis_calls() or 0) for s in setups}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    b = {s.kind: (cpu_s(s.pids()), await s.redis_calls() or 0) for s in setups}
    return {k: (1000.0 * (b[k][0] - a[k][0]) / dt, (b[k][1] - a[k][1]) / dt) for k in a}


async def offer_rounds(setups: list[Setup], offers: list[str], n: int, warmup: int) -> dict[str, Any]:
    """``n`` offers per setup, interleaved (one to each in turn) so background noise hits all alike."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        clients = [OfferClient(s, http, offers) for s in setups]
        for i in range(warmup):
            for c in clients:
                await c.one(i)
        await asyncio.sleep(0.5)  # the warm-up calls' teardown settles before the samples
        idle = await idle_rates(setups)
        pids = {s.kind: s.pids() for s in setups}
        c0 = {s.kind: (cpu_s(pids[s.kind]), await s.redis_calls() or 0) for s in setups}
        t0 = time.monotonic()
        for i in range(n):
            for c in clients:
                c.lat.append(await c.one(i))
        await asyncio.sleep(0.5)  # the teardown of the last calls belongs to them
        wall = time.monotonic() - t0
        c1 = {s.kind: (cpu_s(pids[s.kind]), await s.redis_calls() or 0) for s in setups}
    out: dict[str, Any] = {}
    for c in clients:
        k = c.setup.kind
        cpu_ms = 1000.0 * (c1[k][0] - c0[k][0]) - idle[k][0] * wall
        r: dict[str, Any] = {
            "offers": n,
            "p50_ms": round(percentile(c.lat, 50) or 0, 2),
            "p95_ms": round(percentile(c.lat, 95) or 0, 2),
            "mean_ms": round(sum(c.lat) / len(c.lat), 2),
            "cpu_ms_per_call": round(cpu_ms / n, 2),
            "idle_cpu_ms_per_s": round(idle[k][0], 1),
            "processes": len(pids[k]),
        }
        if c.setup.redis_port:
            r["redis_commands_per_call"] = round((c1[k][1] - c0[k][1] - idle[k][1] * wall) / n, 2)
            r["redis_idle_commands_per_s"] = round(idle[k][1], 1)
        out[k] = r
    return out


async def latency_part(args: argparse.Namespace) -> dict[str, Any]:
    offers = await make_offers(8)
    setups = [Setup(kind, cpu=args.server_cpus) for kind in args.latency_setups.split(",")]
    try:
        for s in setups:
            await s.start()
        results = await offer_rounds(setups, offers, args.offers, args.warmup_offers)
    finally:
        for s in setups:
            await s.close_client()
            s.stop()
    base = results.get("inproc")
    for kind, r in results.items():
        if base and kind != "inproc":
            r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 2)
            r["added_p95_ms"] = round(r["p95_ms"] - base["p95_ms"], 2)
            r["added_cpu_ms_per_call"] = round(r["cpu_ms_per_call"] - base["cpu_ms_per_call"], 2)
        print(json.dumps({"latency": kind, **r}), flush=True)
    return results


# -----------------------------------------------------------------------------
# 3: calls held (bench/load.py's criterion)
# -----------------------------------------------------------------------------


class TreeServer:
    """What load.run_loadgen needs of a server, sampling CPU over the whole setup."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.url = setup.url
        self._pids = setup.pids()

    def sample(self) -> ProcSample:
        rss = threads = 0
        for p in self._pids:
            try:
                s = ProcSample.read(p)
            except (OSError, ValueError):
                continue
            rss += s.rss_kb
            threads += s.threads
        return ProcSample(time.monotonic(), cpu_s(self._pids), rss, threads)


async def held_step(kind: str, pinned: bool, n: int, capacity: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load step on a fresh setup: bench/loadgen.py with ``n`` callers, judged by ``load.good``."""
    setup = Setup(kind, cpu=args.server_cpus if pinned else None, capacity=capacity)
    try:
        await setup.start()
        la = argparse.Namespace(load_cpu=args.load_cpus if pinned else None, seconds=args.seconds,
                                warmup=args.warmup, rate=args.rate, late_ms=40.0, wav=None, loadgen_uvloop=True)
        r = await run_loadgen(TreeServer(setup), n, la)  # type: ignore[arg-type]
    finally:
        setup.stop()
    r["n"] = n
    r["loadavg_1m_after"] = float(Path("/proc/loadavg").read_text().split()[0])  # the shared machine's other work
    r["good"] = good(r, args.late_tolerance)
    r["good_strict"] = good(r)
    return r


async def held_part(args: argparse.Namespace) -> dict[str, Any]:
    ns = [int(x) for x in args.ns.split(",")]
    out: dict[str, Any] = {}
    for spec in args.held_setups.split(","):
        kind, _, pin = spec.partition(":")
        pinned = pin != "unpinned"
        runs = []
        last_good = None
        for n in ns:
            r = await held_step(kind, pinned, n, max(ns) + 10, args)
            for _ in range(args.retry):
                if r["good"]:
                    break
                # the shared machine stalls now and then: one more try before calling the step bad
                r2 = await held_step(kind, pinned, n, max(ns) + 10, args)
                r2["retry_of"] = {k: r.get(k) for k in ("interval_p99_ms", "late_frames", "packets")}
                r = r2
            runs.append(r)
            print(json.dumps({"held": spec, "n": n, "p99": r.get("interval_p99_ms"), "late": r.get("late_frames"),
                              "connected": r.get("connected"), "cpu_ms_per_call_s": r.get("server_cpu_ms_per_call_s"),
                              "good": r["good"]}), flush=True)
            if not r["good"]:
                break
            last_good = n
        out[spec] = {"last_good_n": last_good, "runs": runs}
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The tables of BENCHMARKS.md's pool section, from a pool.json document."""
    names = {"inproc": "`v2v serve` (in-process worker)", "redis": "`serve --redis` + 1 `worker --redis`",
             "workers1": "`serve --workers 1` (unix socket)"}
    out = [f"Run {doc.get('when')} on {doc.get('machine', {}).get('cpus')} CPUs, load average when written "
           f"{doc.get('machine', {}).get('loadavg', ['?'])[0]:.1f}.", ""]
    lat = doc.get("offer_answer") or {}
    if lat:
        out += ["| setup | offer->answer p50 | p95 | added p50 / p95 | CPU ms per call (all processes) | "
                "added CPU ms | Redis commands per call |", "|---|---|---|---|---|---|---|"]
        for k, r in lat.items():
            added = f"{r['added_p50_ms']:+.1f} / {r['added_p95_ms']:+.1f} ms" if "added_p50_ms" in r else "-"
            out.append(f"| {names.get(k, k)} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {added} | "
                       f"{r['cpu_ms_per_call']:.1f} | {r.get('added_cpu_ms_per_call', 0):+.1f} | "
                       f"{r.get('redis_commands_per_call', '-')} |")
        out.append("")
    held = doc.get("calls_held") or {}
    if held:
        out += ["| setup (server side / load generator) | last good N | steps (N: p99 ms, late frames, CPU ms per "
                "call-second, load average) |", "|---|---|---|"]
        for spec, h in held.items():
            kind, _, pin = spec.partition(":")
            where = "both unpinned" if pin == "unpinned" else "CPU 0 / CPU 1"
            steps = "; ".join(f"{r['n']}: {r.get('interval_p99_ms') or 0:.1f}, {r.get('late_frames')}, "
                              f"{r.get('server_cpu_ms_per_call_s')}, {r.get('loadavg_1m_after', '?')}" for r in h["runs"])
            out.append(f"| {kind} ({where}) | {h['last_good_n'] if h['last_good_n'] is not None else '< ' + str(h['runs'][0]['n'])} | {steps} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offers", type=int, default=100)
    ap.add_argument("--warmup-offers", type=int, default=10)
    ap.add_argument("--latency-setups", default="inproc,redis,workers1")
    ap.add_argument("--held-setups", default="inproc,workers2,inproc:unpinned,workers2:unpinned",
                    help="kind[:unpinned], comma separated (kind: inproc, redis, workersN)")
    ap.add_argument("--ns", default="10,15,20,25,30,35,40", help="N of the calls-held ramp (stops at the first bad N)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--late-tolerance", type=float, default=0.0)
    ap.add_argument("--retry", type=int, default=1, help="run a bad ramp step again up to this many times")
    ap.add_argument("--server-cpus", default=SERVER_CPU,
                    help="taskset -c list for the server side of pinned setups (e.g. 0,1 on a >= 3-core machine)")
    ap.add_argument("--load-cpus", default=CLIENT_CPU, help="comma-separated CPUs of the client / load generator")
    ap.add_argument("--skip-held", action="store_true")
    ap.add_argument("--held-only", action="store_true")
    ap.add_argument("--name", default="pool")
    ap.add_argument("--markdown", action="store_true", help="print the tables of bench/results/<name>.json and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads((RESULTS / f"{args.name}.json").read_text())))
        return 0
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})

    async def run() -> dict[str, Any]:
        data: dict[str, Any] = {"params": vars(args)}
        if not args.held_only:
            data["offer_answer"] = await latency_part(args)
        if not args.skip_held:
            data["calls_held"] = await held_part(args)
        return data

    data = asyncio.run(run())
    path = write_result(args.name, data, RESULTS)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
