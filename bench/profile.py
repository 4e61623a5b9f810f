"""Profile a server under load with py-spy: where the CPU of a call goes.

Starts the server (pinned like the load bench), runs :mod:`loadgen` with N
callers, records the server with ``py-spy record --format raw`` during the
measurement window, and writes the top functions by self time and by
inclusive time (share of samples) to ``bench/results/profile_<server>.json``.

    python bench/profile.py --server v2v --calls 10 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, RESULTS, Server, write_result
from load import run_loadgen


def summarize_raw(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed-stack output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    lib_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        self_c[_short(frames[-1])] += n
        lib_c[_library(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl_c[f] += n

    def pct(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100.0 * n / max(1, total), 1)) for f, n in c.most_common(top)]

    return {"samples": total, "self_pct": pct(self_c), "inclusive_pct": pct(incl_c), "self_by_library_pct": pct(lib_c)}


def _library(frame: str) -> str:
    """Where a leaf frame's time goes: a shared library, or the package of a Python file."""
    _, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.split(":")[0]
    if ".so" in file:
        return file.split(".so")[0].split("-")[0] + ".so"
    if file.endswith(".py"):
        parts = file.split("/")
        for pkg in ("aiortc", "aioice", "av", "numpy", "asyncio", "media", "worker", "signaling", "pylibsrtp", "concurrent", "threading"):
            if pkg in parts or file.endswith(f"/{pkg}.py"):
                return f"python: {pkg}"
        return "python: other"
    if file.endswith((".c", ".h")):
        return f"C: {file}"
    return file or "?"


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit("/", 1)[-1].split(":")[0] if loc else ""
    return f"{name} ({file})" if file else name


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not installed (pip install py-spy)")
    env = {"V2V_BENCH_VARIANT": ",".join(args.variant)} if args.variant else {}
    server = Server(args.server, cpu=args.server_cpu, env=env,
                    launcher=(BENCH / "v2v_server.py") if args.variant else None)
    await server.start()
    raw = RESULTS / "tmp" / f"{args.name or 'profile_' + args.server}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    spy: subprocess.Popen | None = None
    try:
        # py-spy runs for warmup + window; start it right away, it samples the whole run
        dur = int(args.warmup + args.seconds + args.calls / args.rate + 2)
        spy = subprocess.Popen(["py-spy", "record", "--format", "raw", "-o", str(raw), "-r", str(args.rate_hz),
                                "-d", str(dur), "-p", str(server.pid), *(["--threads"] if args.threads else []),
                                # native stacks need py-spy to pause the process for each sample
                                *(["--native"] if args.native else ["--nonblocking"])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        r = await run_loadgen(server, args.calls, args)
        spy.wait(dur + 30)
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        server.stop()
    err = spy.stderr.read().decode(errors="replace")[-2000:] if spy is not None and spy.stderr else ""
    prof = summarize_raw(raw) if raw.exists() else {"error": err or "no output"}
    return {"params": vars(args), "load": r, "profile": prof}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="v2v")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--rate-hz", type=int, default=200, help="py-spy sampling rate")
    ap.add_argument("--late-ms", type=float, default=40.0)
    ap.add_argument("--wav", default=None)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--threads", action="store_true")
    ap.add_argument("--native", action="store_true", help="include C frames (libopus, uvloop, numpy)")
    ap.add_argument("--variant", action="append")
    ap.add_argument("--no-loadgen-uvloop", dest="loadgen_uvloop", action="store_false")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    data = asyncio.run(main_async(args))
    print(write_result(args.name or f"profile_{args.server}", data))
    for f, p in data["profile"].get("self_pct", [])[:15]:
        print(f"{p:5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
