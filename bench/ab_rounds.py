"""Several v2v configurations (bench/v2v_server.py variants) in interleaved rounds: each change alone, same noise.

Each round runs every ``--config LABEL=VARIANTS`` once at ``--calls`` N
(VARIANTS ``+``-separated, ``-`` for the shipped server), in a rotated order
(round r starts at config r), so a busy spell of the shared machine hits every
configuration alike. Medians per configuration go to
``bench/results/<name>.json`` with every run, and the load average before and
after each run.

    python bench/ab_rounds.py --name ab_i15 --calls 20 --rounds 3 \\
        --config old=rx=stock+send=stock --config rx=send=stock --config clock=rx=stock --config both=-
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, write_result
from load import one_step

FIGURES = ("server_cpu_ms_per_call_s", "interval_p50_ms", "interval_p99_ms", "late_frames", "underruns")


def _med(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    configs = [c.partition("=")[::2] for c in args.config]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
    for r in range(args.rounds):
        for i in range(len(configs)):
            label, spec = configs[(r + i) % len(configs)]
            ns = argparse.Namespace(**vars(args))
            ns.variant = [v for v in spec.split("+") if v and v != "-"] or ["none"]
            load_before = os.getloadavg()[0]
            res = await one_step("v2v", args.calls, ns)
            res["loadavg_before"], res["loadavg_after"] = load_before, os.getloadavg()[0]
            res["delivered"] = round(res.get("packets", 0) / max(1, res.get("packets_expected", 1)), 3)
            runs[label].append(res)
            print(label, spec, {k: res.get(k) for k in (*FIGURES, "delivered", "loadavg_before")}, flush=True)
    rows = []
    for label, spec in configs:
        rs = runs[label]
        row: dict[str, Any] = {"label": label, "variants": spec, "n": args.calls, "runs": len(rs)}
        for k in (*FIGURES, "delivered", "loadavg_before"):
            row[k] = _med([x.get(k) for x in rs])
        row["cpu_each"] = [x.get("server_cpu_ms_per_call_s") for x in rs]
        rows.append(row)
    return {"params": vars(args), "rows": rows, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", action="append", required=True, help="LABEL=VARIANTS (+ separated, - for none)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--late-ms", type=float, default=40.0)
    ap.add_argument("--late-tolerance", type=float, default=0.01)
    ap.add_argument("--wav", default=None)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-loadgen-uvloop", dest="loadgen_uvloop", action="store_false")
    ap.add_argument("--server-arg", action="append")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    data = asyncio.run(main_async(args))
    print(write_result(args.name, data, Path(args.out_dir) if args.out_dir else RESULTS))
    for row in data["rows"]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
