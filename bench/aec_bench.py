"""Speakerphone echo: false barge-ins, real barge-ins over the echo, and AEC CPU.

A call whose caller is a simulated speakerphone (tests/speakerphone.py): the
microphone hears the assistant audio the call sent, through a synthetic room
(RT60 0.3 s), delayed 60/150/250 ms, at -6/-10/-20 dB, plus -60 dBFS line
noise. The assistant speaks the espeak-ng fixtures (tests/fixtures/), the
caller says nothing (false barge-ins) or one fixture phrase over the echo
(real barge-ins). Virtual time (lockstep 20 ms steps), so the figures do not
depend on the machine's load; CPU is process time.

    python3 bench/aec_bench.py [--quick]    # writes bench/results/aec.json
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

from tests.audio_fixtures import fixture_info, fixture_names, load_fixture, resample_oneshot  # noqa: E402  # after sys.path
from tests.speakerphone import Room, run_speakerphone  # noqa: E402  # after sys.path
from v2v.media.aec import EchoCanceller  # noqa: E402  # after sys.path
from v2v.worker import events as ev  # noqa: E402  # after sys.path

RATE = 16000
GAINS = (-6.0, -10.0, -20.0)
DELAYS = (60, 150, 250)
CALLERS = ("speech_en_gb_weather.wav", "what_time_is_it.wav", "speech_en_us_f3_callback.wav",
           "speech_en_gb_f2_directions.wav", "tell_me_a_story.wav")


def assistant_speech() -> np.ndarray:
    """Every clean 16 kHz speech fixture back to back (the assistant's voice), at 24 kHz."""
    parts = []
    for name in fixture_names("speech"):
        pcm, rate = load_fixture(name)
        if rate == 16000 and name not in CALLERS:
            parts.append(resample_oneshot(pcm, rate, 24000))
    return np.concatenate(parts)


async def false_barge_ins(aec: str, seconds: float, seeds: int) -> list[dict[str, Any]]:
    speech = assistant_speech()
    speech = np.concatenate([speech] * (1 + int(seconds * 24000 // len(speech))))[: int(seconds * 24000)]
    rows = []
    for gain in GAINS:
        tot: dict[str, float] = {"assistant_s": 0.0, "starts": 0, "confirmed": 0, "false_pauses": 0, "turns": 0}
        for delay in DELAYS:
            for seed in range(seeds):
                room = Room(gain_db=gain, delays_ms=((0, delay),), rt60=0.3, ir_seed=seed, noise_dbfs=-60)
                res = await run_speakerphone(speech, seconds + 1, room, rate=RATE, aec=aec)
                tot["assistant_s"] += res.assistant_s
                tot["starts"] += res.count(ev.UserStartedSpeaking)
                tot["confirmed"] += res.count(ev.BotInterrupted)
                tot["false_pauses"] += res.count(ev.FalseInterruption)
                tot["turns"] += sum(1 for _, e in res.events if isinstance(e, ev.UserStoppedSpeaking))
        per5 = 300.0 / max(tot["assistant_s"], 1e-9)
        rows.append({"aec": aec, "gain_db": gain, **{k: round(v, 1) for k, v in tot.items()},
                     "barge_ins_per_5min": round((tot["confirmed"] + tot["false_pauses"]) * per5, 2),
                     "confirmed_per_5min": round(tot["confirmed"] * per5, 2)})
        print(rows[-1], flush=True)
    return rows


async def barge_in_trials(positions: int, **kw: Any) -> list[tuple[float, Any]]:
    """The callers talking over the echo (-6/-10 dB, every delay, ``positions`` start times each): per
    trial, the caller's true onset time ``at`` and the run's result; ``kw`` goes to run_speakerphone."""
    speech = assistant_speech()
    out = []
    for gain in GAINS[:2]:
        for delay in DELAYS:
            for name in CALLERS:
                caller, rate = load_fixture(name)
                onset = fixture_info(name)["speech"][0][0] / rate
                for k in range(positions):
                    at = 2.5 + 1.3 * k
                    room = Room(gain_db=gain, delays_ms=((0, delay),), ir_seed=k)
                    out.append((at, await run_speakerphone(speech, at + 3.0, room, rate=RATE, caller=caller,
                                                           caller_at=at - onset, **kw)))
    return out


async def real_barge_ins(aec: str, positions: int) -> dict[str, Any]:
    detected = total = 0
    cut_ms: list[float] = []
    for at, res in await barge_in_trials(positions, aec=aec):
        total += 1
        hits = [t for t in res.times(ev.BotInterrupted) if at <= t <= at + 2.0]
        detected += bool(hits)
        # the caller's true onset -> the VAD's decision (playout pauses in the same 20 ms step)
        lat = [(t - at) * 1000 for t in res.times(ev.UserStartedSpeaking) if t >= at]
        cut_ms += lat[:1]
    cut = np.asarray(cut_ms) if cut_ms else np.zeros(1)
    row = {"aec": aec, "trials": total, "detected": detected, "detected_pct": round(100 * detected / total, 1),
           "onset_to_pause_ms_p50": round(float(np.percentile(cut, 50)), 1), "onset_to_pause_ms_p95": round(float(np.percentile(cut, 95)), 1)}
    print(row, flush=True)
    return row


def aec_cpu(rate: int, seconds: float = 20.0) -> dict[str, Any]:
    """Process-time cost of the canceller alone per call-second (reference and microphone, 20 ms frames)."""
    speech = assistant_speech()[: int(seconds * 24000)]
    aec = EchoCanceller(rate, 24000)
    mic = resample_oneshot(speech, 24000, rate)
    step_far, step_mic = 480, rate // 50
    n = min(len(speech) // step_far, len(mic) // step_mic)
    t0 = time.process_time()
    for i in range(n):
        aec.far(speech[i * step_far:(i + 1) * step_far])
        aec.process(mic[i * step_mic:(i + 1) * step_mic])
    cpu = time.process_time() - t0
    return {"rate": rate, "ms_per_call_second": round(cpu / (n * 0.02) * 1000, 2)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "aec.json"))
    args = ap.parse_args()
    seconds, seeds, positions = (12.0, 1, 1) if args.quick else (60.0, 3, 2)
    t0 = time.time()
    result: dict[str, Any] = {
        "setup": {"rate": RATE, "gains_db": GAINS, "delays_ms": DELAYS, "rt60_s": 0.3, "line_noise_dbfs": -60,
                  "seconds_per_run": seconds, "ir_seeds": seeds, "callers": CALLERS},
        "false_barge_ins": await false_barge_ins("off", seconds, seeds) + await false_barge_ins("on", seconds, seeds),
        "real_barge_ins": [await real_barge_ins("on", positions), await real_barge_ins("off", positions)],
        "cpu": [aec_cpu(r) for r in (8000, 16000, 48000)],
    }
    result["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(result["cpu"]))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
