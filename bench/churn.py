"""Memory growth over call churn: open and close many calls, watch the server's RSS, threads and fds.

Calls are opened ``--concurrency`` at a time, each sends ``--talk`` seconds of
speech (pre-encoded Opus) and hangs up with ``DELETE``; after every batch the
server's ``/proc/PID/status`` is sampled. Growth per call is the RSS slope
after the first ``--warm`` calls (allocator pools and imports settle there).

    python bench/churn.py --calls 500 --concurrency 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientSession, ClientTimeout

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SERVER_KINDS, Server, write_result
from loadgen import DEFAULT_WAV, LoadCaller, encode_opus, loop_pcm, read_wav_48k


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def active_calls(http: ClientSession, url: str) -> float | None:
    try:
        async with http.get(url + "/metrics") as r:
            if r.status != 200:
                return None
            text = await r.text()
    except Exception:
        return None
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("v2v_active_calls"):
            found = True
            total += float(line.rsplit(" ", 1)[1])
    return total if found else None


async def one_call(url: str, payloads: list[bytes], talk: float, http: ClientSession, errors: list[str]) -> None:
    c = LoadCaller(url, payloads, 0)
    try:
        await c.connect(http, 20.0)
        await asyncio.sleep(talk)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        await c.hangup(http)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    payloads = encode_opus(loop_pcm(read_wav_48k(args.wav)))
    server = Server(args.server, cpu=args.server_cpu)
    await server.start()
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        async with ClientSession(timeout=ClientTimeout(total=30)) as http:
            s = server.sample()
            samples.append({"calls": 0, "rss_mb": s.rss_kb / 1024, "threads": s.threads, "fds": _fds(server.pid)})
            done = 0
            while done < args.calls:
                n = min(args.concurrency, args.calls - done)
                await asyncio.gather(*(one_call(server.url, payloads, args.talk, http, errors) for _ in range(n)))
                done += n
                if done % args.sample_every == 0 or done == args.calls:
                    # let the server finish ending the calls (they leave v2v_active_calls within 1 s)
                    deadline = time.monotonic() + 3.0
                    act = await active_calls(http, server.url)
                    while act and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                        act = await active_calls(http, server.url)
                    s = server.sample()
                    samples.append({"calls": done, "rss_mb": round(s.rss_kb / 1024, 2), "threads": s.threads,
                                    "fds": _fds(server.pid), "active_calls": act})
                    print(samples[-1], flush=True)
    finally:
        server.stop()
    warm = [x for x in samples if x["calls"] >= args.warm]
    slope = None
    if len(warm) >= 2:
        x = np.array([w["calls"] for w in warm], float)
        y = np.array([w["rss_mb"] for w in warm], float)
        slope = float(np.polyfit(x, y, 1)[0]) * 1024  # KB per call
    half = [x for x in samples if x["calls"] >= args.calls // 2]
    slope_half = None
    if len(half) >= 2:
        slope_half = float(np.polyfit([h["calls"] for h in half], [h["rss_mb"] for h in half], 1)[0]) * 1024
    return {
        "params": vars(args),
        "server": args.server,
        "rss_growth_kb_per_call_last_half": round(slope_half, 2) if slope_half is not None else None,
        "samples": samples,
        "rss_growth_kb_per_call_after_warm": round(slope, 2) if slope is not None else None,
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_warm_mb": warm[0]["rss_mb"] if warm else None,
        "rss_end_mb": samples[-1]["rss_mb"],
        "threads_end": samples[-1]["threads"],
        "fds_start": samples[0]["fds"],
        "fds_end": samples[-1]["fds"],
        "errors": errors[:20],
        "error_count": len(errors),
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="v2v", choices=SERVER_KINDS)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--talk", type=float, default=0.5)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--sample-every", type=int, default=50)
    ap.add_argument("--wav", default=str(DEFAULT_WAV))
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.calls < 1 or args.calls > 5000:
        ap.error("--calls must be 1..5000")
    if args.sample_every < 1:
        ap.error("--sample-every must be >= 1")
    data = asyncio.run(main_async(args))
    name = args.name or ("churn" if args.server == "v2v" else f"churn_{args.server}")
    print(write_result(name, data, Path(args.out_dir) if args.out_dir else RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
