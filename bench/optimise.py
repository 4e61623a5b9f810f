"""A/B runs of one v2v change at a time (bench/v2v_server.py variants), interleaved to share the machine's noise.

For each ``--ab LABEL=VARIANTS`` (VARIANTS: ``+``-separated, ``-`` for the
shipped server) the load step at ``--calls`` runs ``--repeat`` times as
A, B, A, B, ...; medians go to ``bench/results/opt_<name>.json`` (rendered by
``bench/report``). ``--barge-ins K`` adds the barge-in cut (p95 over K) for
both sides.

    python bench/optimise.py --name uvloop --before uvloop=0 --after - --calls 20
    python bench/optimise.py --name jitter --before jitter=aiortc --after - --barge-ins 15 --calls 0
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FIXTURES, RESULTS, write_result
from load import one_step


def _variants(spec: str) -> list[str]:
    return [] if spec in ("", "-") else [v for v in spec.split("+") if v]


def _med(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


async def load_side(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    ns = argparse.Namespace(**vars(args))
    ns.variant = _variants(spec) or None
    # the shipped server goes through the launcher too (no variant = unchanged), so both sides start alike
    if not ns.variant:
        ns.variant = ["none"]
    return await one_step("v2v", args.calls, ns)


async def barge_side(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from latency import Segment, bench_barge, encode_opus, read_wav_48k

    ns = argparse.Namespace(barge_ins=args.barge_ins, callers=args.barge_callers, seed=args.seed,
                            server_cpu=args.server_cpu, variant=_variants(spec) or None)
    segs = [Segment.from_pcm(read_wav_48k(FIXTURES / "long_speech.wav"), 20.0, 0)]
    silence = encode_opus(np.zeros(960 * 3, np.int16))[-1]
    return await bench_barge(ns, segs, silence)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sides = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    barge: dict[str, Any] = {}
    if args.calls > 0:
        for i in range(args.repeat):
            for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                r = await load_side(sides[side], args)
                runs[side].append(r)
                print(side, sides[side], r.get("server_cpu_ms_per_call_s"), r.get("interval_p99_ms"),
                      r.get("late_frames"), r.get("packets"), "/", r.get("packets_expected"), flush=True)
    if args.barge_ins > 0:
        for side in ("before", "after"):
            barge[side] = await barge_side(sides[side], args)
            print(side, "barge", barge[side]["barge_in_cut_ms"], flush=True)
    row: dict[str, Any] = {"label": args.label or args.name, "n": args.calls if args.calls > 0 else "",
                           "before": args.before, "after": args.after}
    for side in ("before", "after"):
        rs = runs[side]
        row[f"cpu_{side}"] = _med([r.get("server_cpu_ms_per_call_s") for r in rs])
        row[f"p99_{side}"] = _med([r.get("interval_p99_ms") for r in rs])
        row[f"late_{side}"] = _med([r.get("late_frames") for r in rs])
        row[f"delivered_{side}"] = _med([r.get("packets", 0) / max(1, r.get("packets_expected", 1)) for r in rs])
        if side in barge:
            row[f"cut_p95_{side}"] = barge[side]["barge_in_cut_ms"].get("p95")
            row[f"cut_p50_{side}"] = barge[side]["barge_in_cut_ms"].get("p50")
    return {"params": vars(args), "rows": [row], "runs": runs,
            "barge": {k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in barge.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--label", default=None)
    ap.add_argument("--before", required=True, help="variants of the 'before' side, + separated; - for none")
    ap.add_argument("--after", required=True)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--late-ms", type=float, default=40.0)
    ap.add_argument("--late-tolerance", type=float, default=0.0)
    ap.add_argument("--wav", default=None)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--barge-ins", type=int, default=0)
    ap.add_argument("--barge-callers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--no-loadgen-uvloop", dest="loadgen_uvloop", action="store_false")
    ap.add_argument("--server-arg", action="append")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    data = asyncio.run(main_async(args))
    print(write_result(f"opt_{args.name}", data, Path(args.out_dir) if args.out_dir else RESULTS))
    print(data["rows"][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
