"""Abrupt line noise and the eager, reversible barge-in pause (issue 17), before/after in one run.

"before" is the call as it was (``vad_settle_ms=0``: no settling on a noise step, no evidence
needed for a start; ``vad_onset_ms=None``: playout pauses at the VAD's start, 30 ms); "after"
is the shipped CallConfig. Virtual time (tests/speakerphone.py, lockstep 20 ms steps), 16 kHz.

- abrupt line noise (silence, then steady white / pink / mains-hum noise at -50/-40/-35 dBFS
  from 0.5 s into the call): with nobody talking, does a caller turn start? With the assistant
  talking: false pauses, turns, confirmed interruptions (cancel + truncate), pause -> resume gap;
- speech right after the noise onset (and right at the call's start): detected?
- short noise bursts (20-150 ms) over the assistant: false pauses and their pause -> resume gap;
- the speakerphone echo with AEC on (-10 dB, 60/150/250 ms, RT60 0.3 s): false pauses per minute;
- real barge-ins over that echo (aec_bench's five callers): detected, onset -> pause p50/p95.

    python3 bench/eager_bench.py [--quick]    # writes bench/results/eager.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.aec_bench import CALLERS, assistant_speech, barge_in_trials  # noqa: E402  # after sys.path
from tests.audio_fixtures import fixture_info, load_fixture, pink_noise, resample_oneshot, white_noise  # noqa: E402  # after sys.path
from tests.speakerphone import Room, SpeakerphoneResult, run_speakerphone  # noqa: E402  # after sys.path
from v2v.worker import events as ev  # noqa: E402  # after sys.path
from v2v.worker.call import CallConfig  # noqa: E402  # after sys.path

RATE = 16000
NOISE_AT = 0.5  # s: the line opens
LEVELS = (-50.0, -40.0, -35.0)
KINDS = ("white", "pink", "hum")
VARIANTS: dict[str, dict[str, Any]] = {"before": {"vad_settle_ms": 0, "vad_onset_ms": None}, "after": {}}


def hum(n: int, dbfs: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Mains hum: 50 Hz and six harmonics (1/h) plus a little hiss, exact RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
    x = x + 0.3 * np.std(x) * rng.standard_normal(n)
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def line_noise(kind: str, seconds: float, dbfs: float, seed: int) -> np.ndarray:
    """Silence, then steady noise from NOISE_AT (int16 scale, float64)."""
    n = int(seconds * RATE)
    gen = {"white": white_noise, "pink": pink_noise}.get(kind)
    noise = gen(n, dbfs, seed) if gen else hum(n, dbfs, seed)
    out = np.zeros(n)
    at = int(NOISE_AT * RATE)
    out[at:] = noise[: n - at] * 32768.0
    return out


def config(variant: str, aec: str) -> CallConfig:
    return CallConfig(turn_detection="local", greeting="speak", aec=aec, **VARIANTS[variant])  # type: ignore[arg-type]  # aec is a str


def gaps_ms(res: SpeakerphoneResult) -> list[float]:
    """Pause -> resume of every false pause (the pause is the Metrics barge_in event's step)."""
    out, paused = [], None
    for t, e in res.events:
        if isinstance(e, ev.Metrics) and e.barge_in_ms is not None:
            paused = t
        elif isinstance(e, ev.FalseInterruption) and paused is not None:
            out.append((t - paused) * 1000)
            paused = None
    return out


NO_ECHO = Room(gain_db=-120.0, noise_dbfs=-200.0)


async def noise_onset(variant: str, seconds: float, seeds: int) -> list[dict[str, Any]]:
    silent = np.zeros(0, np.int16)
    speech = assistant_speech()[: int(seconds * 24000)]
    rows = []
    for kind in KINDS:
        for level in LEVELS:
            row: dict[str, Any] = {"variant": variant, "kind": kind, "dbfs": level, "idle_turns": 0, "talk_false_pauses": 0,
                                   "talk_starts": 0, "talk_interruptions": 0}
            gaps: list[float] = []
            for seed in range(seeds):
                mic = line_noise(kind, seconds, level, 50 + seed)
                idle = await run_speakerphone(silent, seconds, NO_ECHO, rate=RATE, aec="off", caller=mic,
                                              config=config(variant, "off"))
                row["idle_turns"] += idle.count(ev.UserStartedSpeaking)
                talk = await run_speakerphone(speech, seconds, NO_ECHO, rate=RATE, aec="off", caller=mic,
                                              config=config(variant, "off"))
                row["talk_false_pauses"] += talk.count(ev.FalseInterruption)
                row["talk_starts"] += talk.count(ev.UserStartedSpeaking)
                row["talk_interruptions"] += talk.count(ev.BotInterrupted)
                gaps += gaps_ms(talk)
            row["runs"] = seeds
            row["gap_ms_max"] = round(max(gaps), 1) if gaps else None
            rows.append(row)
            print(row, flush=True)
    return rows


async def noise_bursts(variant: str) -> dict[str, Any]:
    """Short noise bursts (a knock, a rustle: 20-150 ms at -30 dBFS) over the assistant's speech."""
    speech = assistant_speech()[: 6 * 24000]
    rows: dict[str, Any] = {"variant": variant, "bursts": 0, "false_pauses": 0, "interruptions": 0, "starts": 0}
    gaps: list[float] = []
    for kind in KINDS:
        for ms in (20, 50, 100, 150):
            mic = np.zeros(6 * RATE)
            burst = line_noise(kind, NOISE_AT + ms / 1000, -30.0, 3)[int(NOISE_AT * RATE):]
            at = int(3.0 * RATE)
            mic[at:at + len(burst)] = burst
            res = await run_speakerphone(speech, 6.0, NO_ECHO, rate=RATE, aec="off", caller=mic,
                                         config=config(variant, "off"))
            rows["bursts"] += 1
            rows["false_pauses"] += res.count(ev.FalseInterruption)
            rows["interruptions"] += res.count(ev.BotInterrupted)
            rows["starts"] += res.count(ev.UserStartedSpeaking)
            gaps += gaps_ms(res)
    rows |= {"gap_ms_p50": round(float(np.percentile(gaps, 50)), 1) if gaps else None,
             "gap_ms_max": round(max(gaps), 1) if gaps else None}
    print(rows, flush=True)
    return rows


async def speech_after_onset(variant: str) -> dict[str, Any]:
    """The callers' phrases 0 / 50 / 150 / 400 ms after the noise onset (and at the call's start, no noise)."""
    detected = total = 0
    lat: list[float] = []
    for name in CALLERS:
        pcm, rate = load_fixture(name)
        on, off = fixture_info(name)["speech"][0][0], fixture_info(name)["speech"][-1][1]
        clip = resample_oneshot(pcm[on:off], rate, RATE).astype(np.float64)
        cases = [("none", -200.0, -NOISE_AT)] + [(k, lv, d) for k in KINDS for lv in (-50.0, -35.0) for d in (0.0, 0.05, 0.15, 0.4)]
        for kind, level, delay in cases:
            seconds = NOISE_AT + 0.4 + len(clip) / RATE + 1.0
            mic = line_noise(kind, seconds, level, 9) if kind != "none" else np.zeros(int(seconds * RATE))
            at = int((NOISE_AT + delay) * RATE)
            mic[at:at + len(clip)] += clip[: len(mic) - at]
            res = await run_speakerphone(np.zeros(0, np.int16), seconds, NO_ECHO, rate=RATE, aec="off", caller=mic,
                                         config=config(variant, "off"))
            starts = res.times(ev.UserStartedSpeaking)
            total += 1
            ok = bool(starts) and min(starts) >= at / RATE
            detected += ok
            if ok:
                lat.append((min(starts) - at / RATE) * 1000)
    return {"variant": variant, "trials": total, "detected": detected,
            "start_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
            "start_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat else None}


async def echo_false_pauses(variant: str, seconds: float) -> dict[str, Any]:
    speech = assistant_speech()
    speech = np.concatenate([speech] * (1 + int(seconds * 24000 // len(speech))))[: int(seconds * 24000)]
    tot = {"assistant_s": 0.0, "false_pauses": 0, "starts": 0, "interruptions": 0}
    gaps: list[float] = []
    for delay in (60, 150, 250):
        room = Room(gain_db=-10.0, delays_ms=((0, delay),), rt60=0.3, ir_seed=delay, noise_dbfs=-60)
        res = await run_speakerphone(speech, seconds + 1, room, rate=RATE, aec="on", config=config(variant, "on"))
        tot["assistant_s"] += res.assistant_s
        tot["false_pauses"] += res.count(ev.FalseInterruption)
        tot["starts"] += res.count(ev.UserStartedSpeaking)
        tot["interruptions"] += res.count(ev.BotInterrupted)
        gaps += gaps_ms(res)
    row = {"variant": variant, **{k: round(v, 1) for k, v in tot.items()},
           "false_pauses_per_min": round(tot["false_pauses"] * 60 / max(tot["assistant_s"], 1e-9), 2),
           "gap_ms_p50": round(float(np.percentile(gaps, 50)), 1) if gaps else None,
           "gap_ms_max": round(max(gaps), 1) if gaps else None}
    print(row, flush=True)
    return row


async def real_barge_ins(variant: str, positions: int) -> dict[str, Any]:
    detected = total = 0
    pause_ms: list[float] = []
    start_ms: list[float] = []
    for at, res in await barge_in_trials(positions, aec="on", config=config(variant, "on")):
        total += 1
        detected += any(at <= t <= at + 2.0 for t in res.times(ev.BotInterrupted))
        # onset -> the step whose frame faded out (the barge_in Metrics event is published then)
        paused = [t for t, e in res.events if isinstance(e, ev.Metrics) and e.barge_in_ms is not None and t >= at]
        pause_ms += [(paused[0] - at) * 1000] if paused else []
        starts = [t for t in res.times(ev.UserStartedSpeaking) if t >= at]
        start_ms += [(starts[0] - at) * 1000] if starts else []
    row = {"variant": variant, "trials": total, "detected": detected, "detected_pct": round(100 * detected / total, 1),
           "onset_to_pause_ms_p50": round(float(np.percentile(pause_ms, 50)), 1),
           "onset_to_pause_ms_p95": round(float(np.percentile(pause_ms, 95)), 1),
           "onset_to_user_started_ms_p50": round(float(np.percentile(start_ms, 50)), 1)}
    print(row, flush=True)
    return row


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eager.json"))
    ap.add_argument("--rise-db", type=float, action="append", default=[],
                    help="also run the shipped call with this vad_rise_db (repeatable)")
    args = ap.parse_args()
    for r in args.rise_db:
        VARIANTS[f"rise{r:g}"] = {"vad_rise_db": r}
    seconds, seeds, positions = (6.0, 1, 1) if args.quick else (12.0, 2, 2)
    t0 = time.time()
    result: dict[str, Any] = {"setup": {"rate": RATE, "noise_at_s": NOISE_AT, "levels_dbfs": LEVELS, "kinds": KINDS,
                                        "seconds": seconds, "seeds": seeds, "variants": VARIANTS}}
    for v in VARIANTS:
        result[v] = {"noise_onset": await noise_onset(v, seconds, seeds),
                     "noise_bursts": await noise_bursts(v),
                     "speech_after_onset": await speech_after_onset(v),
                     "echo_aec_on": await echo_false_pauses(v, 3 * seconds),
                     "real_barge_ins": await real_barge_ins(v, positions)}
        print(result[v]["speech_after_onset"], flush=True)
    result["wall_s"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
