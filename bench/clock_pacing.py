"""CPU of pacing alone: N coroutines each on its own 20 ms sleep (the SIP RTP sender before issue 15) vs N on
the process's media clock (``MediaClock.next_tick``), uvloop, process CPU time, A/B interleaved.

    python bench/clock_pacing.py --calls 40 --seconds 6 --rounds 3     -> results/clock_pacing.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, write_result

PTIME = 0.020


async def _own_sleep(stop: asyncio.Event) -> None:
    """The SIP sender's loop before: a sleep to its own next deadline (re-anchored after 200 ms behind)."""
    next_t = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if next_t - now > 0:
            await asyncio.sleep(next_t - now)
            now = time.monotonic()
        if now - next_t > 0.2:
            next_t = now
        next_t += PTIME


async def _on_clock(stop: asyncio.Event) -> None:
    from v2v.signaling.media_clock import get_clock

    clock = get_clock()
    while not stop.is_set():
        await clock.next_tick()


async def _run(kind: str, n: int, seconds: float) -> float:
    stop = asyncio.Event()
    body = _own_sleep if kind == "own_sleep" else _on_clock
    tasks = [asyncio.create_task(body(stop)) for _ in range(n)]
    await asyncio.sleep(0.5)
    t = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - t
    stop.set()
    await asyncio.gather(*tasks)
    return cpu * 1000 / seconds / n


def main(argv: list[str] | None = None) -> int:
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="clock_pacing")
    args = ap.parse_args(argv)
    runs: dict[str, list[float]] = {"own_sleep": [], "media_clock": []}
    for r in range(args.rounds):
        for kind in (("own_sleep", "media_clock") if r % 2 == 0 else ("media_clock", "own_sleep")):
            runs[kind].append(round(uvloop.run(_run(kind, args.calls, args.seconds)), 3))
    data: dict[str, Any] = {"params": vars(args), "runs": runs,
                            "median_ms_per_call_s": {k: statistics.median(v) for k, v in runs.items()}}
    print(write_result(args.name, data, RESULTS))
    print(data["median_ms_per_call_s"], runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
