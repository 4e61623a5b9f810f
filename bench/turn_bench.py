"""Turn-taking: end of the caller's speech -> turn ended, with and without the end-of-turn model.

The turn fixtures (tests/fixtures/turn/, espeak-ng, made by make_turn_fixtures.py):
20 complete utterances and 20 with a mid-sentence pause of 0.3-1.3 s ("I want
to ... book a table"). Each is fed to a real CallSession (echo model, local
turn detection) in 20 ms steps, followed by 2.5 s of silence, at 16 kHz and as
a phone line (8 kHz, upsampled again for the model inside the call).

Virtual time, lockstep: when the call asks the end-of-turn model, the step
waits for the answer, and the answer's wall time is added to the turn end (what
a live call would wait). Figures:

- complete: end of speech (the fixture's last speech sample) -> turn ended,
  p50 / p95 / max;
- incomplete: the share cut off (a turn ended during the mid-sentence pause);
- CPU per inference (thread time of features + ONNX), per call-second of these
  calls (each utterance then 2.5 s of listening, back to back), and per
  call-second of the always-on part (resampling the caller to 16 kHz, keeping 8 s).

    python3 bench/turn_bench.py [--quick]    # writes bench/results/turn.json
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

from bench.common import write_result  # noqa: E402  # after sys.path
from tests.audio_fixtures import read_wav, resample_oneshot  # noqa: E402  # after sys.path
from v2v.media.playout import PlayoutBuffer  # noqa: E402  # after sys.path
from v2v.worker import events as ev  # noqa: E402  # after sys.path
from v2v.worker.call import CallConfig, CallSession  # noqa: E402  # after sys.path
from v2v.worker.end_of_turn import EndOfTurn  # noqa: E402  # after sys.path
from v2v.worker.models.echo import EchoModelFactory  # noqa: E402  # after sys.path
from v2v.worker.turn_model import shared_smart_turn  # noqa: E402  # after sys.path

TURN_DIR = ROOT / "tests" / "fixtures" / "turn"
STEP_MS = 20
TAIL_S = 2.5


async def run_one(pcm: np.ndarray, rate: int, cfg: CallConfig) -> dict[str, Any]:
    """One utterance through a call: where turns ended (input position, the deciding answer's wall/CPU ms)."""
    call = CallSession("turn-bench", EchoModelFactory(), cfg, PlayoutBuffer(24000))
    call.input_rate = rate
    ends: list[tuple[int, float, float]] = []

    def on_event(e: ev.CallEvent) -> None:
        if isinstance(e, ev.AgentStateChanged) and e.state == "thinking" and e.previous != "thinking":
            eot = call._eot
            last = eot.decisions[-1] if eot is not None and eot.decisions else None
            by_model = last is not None and last.ended
            ends.append((call.position, last.wall_ms if by_model else 0.0, last.cpu_ms if by_model else 0.0))

    call.add_listener(on_event)
    await call.start()
    step = rate * STEP_MS // 1000
    x = np.concatenate([pcm, np.zeros(int(TAIL_S * rate), np.int16)])
    for i in range(0, len(x) - step + 1, step):
        await call.feed(x[i : i + step])
        eot: EndOfTurn | None = call._eot
        if eot is not None and eot.pending is not None and not eot.pending.done():
            await eot.pending
        for _ in range(4):
            await asyncio.sleep(0)
    decisions = [d.__dict__ for d in call._eot.decisions] if call._eot is not None else []
    await call.close()
    return {"ends": ends, "decisions": decisions}


def summarise(files: dict[str, Any], runs: dict[str, Any], rate: int) -> dict[str, Any]:
    """Complete: speech end -> turn end (+ the model's wall or CPU time); incomplete: cut off (a turn ended
    in the mid-sentence pause); any fixture: a turn ended at another pause inside the speech (a natural pause
    of the recording, e.g. between two clauses)."""
    wall: list[float] = []
    cpu: list[float] = []
    cut = early = n_inc = 0
    scale = rate / 16000
    for name, e in files.items():
        ends = runs[name]["ends"]
        start, end = e["speech_start"] * scale, e["speech_end"] * scale
        a, b = (v * scale for v in e["pauses"][0]) if e["pauses"] else (end, end)
        early += any(start <= p < end and not a <= p < b for p, _, _ in ends)
        if e["label"] == "complete":
            after = [((p - end) / rate * 1000, w, c) for p, w, c in ends if p >= end]
            wall.append(after[0][0] + after[0][1] if after else float("nan"))
            cpu.append(after[0][0] + after[0][2] if after else float("nan"))
        else:
            n_inc += 1
            cut += any(a <= p < b for p, _, _ in ends)
    w, c = np.array(wall), np.array(cpu)
    return {
        "complete_n": len(w), "incomplete_n": n_inc,
        "complete_ms_p50": float(np.nanpercentile(w, 50)), "complete_ms_p95": float(np.nanpercentile(w, 95)),
        "complete_ms_p50_cpu": float(np.nanpercentile(c, 50)), "complete_ms_p95_cpu": float(np.nanpercentile(c, 95)),
        "complete_never_ended": int(np.isnan(w).sum()), "ended_at_another_pause": early,
        "incomplete_cut_off": cut, "incomplete_cut_off_share": cut / max(1, n_inc),
    }


THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.98)
PROBE = 1.01  # a threshold no answer reaches: the call asks at every pause and never ends a turn by the model


def sweep(files: dict[str, Any], runs: dict[str, Any], rate: int, max_wait_ms: int) -> list[dict[str, Any]]:
    """Every threshold from one probe run (the answers at every pause, no turn ended by the model).

    Complete: the first pause at or after the end of speech whose answer reaches the threshold ends the turn
    (+ that inference's CPU time), else max_wait after the last voiced frame. Incomplete: cut off if the
    answer in the mid-sentence pause reaches it. Any fixture: whether an answer at another pause inside the
    speech reaches it (that turn would have ended there)."""
    out = []
    scale = rate / 16000
    for th in THRESHOLDS:
        lat: list[float] = []
        cut = other = n_inc = 0
        for name, e in files.items():
            d = [x for x in runs[name]["decisions"] if x["probability"] is not None]
            end = e["speech_end"] * scale
            a, b = (v * scale for v in e["pauses"][0]) if e["pauses"] else (end, end)
            hits = [x for x in d if x["probability"] >= th]
            other += any(x["asked_at"] < end and not a <= x["asked_at"] < b for x in hits)
            if e["label"] == "complete":
                hit = next((x for x in hits if x["asked_at"] >= end), None)
                if hit is not None:
                    lat.append((hit["asked_at"] - end) / rate * 1000 + hit["cpu_ms"])
                else:
                    last = d[-1]["voiced_end"] if d else end
                    lat.append((last - end) / rate * 1000 + max_wait_ms)
            else:
                n_inc += 1
                cut += any(a <= x["asked_at"] < b for x in hits)
        out.append({"threshold": th, "complete_ms_p50_cpu": round(float(np.percentile(lat, 50)), 1),
                    "complete_ms_p95_cpu": round(float(np.percentile(lat, 95)), 1),
                    "complete_early_share": round(float(np.mean(np.array(lat) < max_wait_ms / 2)), 3),
                    "incomplete_cut_off_share": round(cut / max(1, n_inc), 3),
                    "ended_at_another_pause": other})
    return out


def feed_cpu(rate: int, seconds: float = 60.0) -> float:
    """Process CPU ms per call-second of EndOfTurn.feed (resample to 16 kHz, keep 8 s)."""
    eot = EndOfTurn("cpu", rate, shared_smart_turn(), lambda reason: None, lambda c, n: None)  # type: ignore[arg-type,return-value]  # never asks
    step = rate * STEP_MS // 1000
    x = (np.random.default_rng(1).standard_normal(step) * 3000).astype(np.int16)
    n = int(seconds * 1000 / STEP_MS)
    t = time.process_time()
    for _ in range(n):
        eot.feed(x)
    return (time.process_time() - t) * 1000 / seconds


async def main(fixtures: Path, split: str, quick: bool, thresholds: list[float], pause_ms: int = 150) -> None:
    """long: one loop over rates and configurations, printing as it goes."""
    meta = json.loads((fixtures / "turn.json").read_text())
    files = {k: v for k, v in meta["files"].items() if split == "all" or v.get("split", "dev") == split}
    if quick:
        files = dict(list(files.items())[:4] + list(files.items())[20:24])
    await shared_smart_turn().ready()
    out: dict[str, Any] = {"fixtures": str(fixtures.relative_to(ROOT)) if fixtures.is_relative_to(ROOT) else str(fixtures),
                           "split": split, "n": len(files), "configs": {}}
    configs = [("off", 150, 0.5)] + [("smart-turn", pause_ms, th) for th in thresholds] + [("smart-turn", pause_ms, PROBE)]
    for rate in (16000, 8000):
        for mode, pause, th in configs:
            cfg = CallConfig(turn_detection="local", turn_model=mode, turn_pause_ms=pause,  # type: ignore[arg-type]  # a literal
                             turn_threshold=th)
            runs: dict[str, Any] = {}
            call_s = 0.0
            for name in files:
                pcm, r = read_wav(fixtures / name)
                runs[name] = await run_one(resample_oneshot(pcm, r, rate), rate, cfg)
                call_s += len(pcm) / r + TAIL_S
            key = f"{mode}@{rate}" + (f"/p>={th}" + (f"/pause{pause}" if pause != 150 else "") if mode != "off" else "")
            res: dict[str, Any] = summarise(files, runs, rate)
            cpu = [d["cpu_ms"] for r in runs.values() for d in r["decisions"]]
            if cpu:
                res["inference_cpu_ms_p50"] = float(np.percentile(cpu, 50))
                res["inference_wall_ms_p50"] = float(np.percentile(
                    [d["wall_ms"] for r in runs.values() for d in r["decisions"]], 50))
                res["inferences_per_utterance"] = len(cpu) / len(files)
                res["model_cpu_ms_per_call_s"] = sum(cpu) / call_s  # utterance + 2.5 s listening, back to back
            if th == PROBE:
                res["sweep"] = sweep(files, runs, rate, cfg.turn_max_wait_ms)
                for row in res["sweep"]:
                    print(f"  {rate} sweep", row, flush=True)
            print(key, {k: v for k, v in res.items() if k != "sweep"}, flush=True)
            out["configs"][key] = {**res, "runs": runs}
    out["feed_cpu_ms_per_call_s"] = {str(r): feed_cpu(r) for r in (8000, 16000, 48000)}
    print("feed cpu", out["feed_cpu_ms_per_call_s"])
    name = ("turn" if fixtures == TURN_DIR else f"{fixtures.name}_{split}") + (f"_pause{pause_ms}" if pause_ms != 150 else "")
    write_result(name if not quick else name + "_quick", out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=TURN_DIR,
                    help="a fixture dir with turn.json (default: the espeak set; bench/turn_human.py makes a human one)")
    ap.add_argument("--split", default="all", choices=("all", "dev", "test"), help="fixtures of this split only")
    ap.add_argument("--thresholds", default="0.9", help="comma-separated thresholds run for real (beside the probe)")
    ap.add_argument("--pause-ms", type=int, default=150, help="the pause at which the model is asked")
    ap.add_argument("--quick", action="store_true", help="8 fixtures only")
    a = ap.parse_args()
    asyncio.run(main(a.fixtures.resolve(), a.split, a.quick, [float(t) for t in a.thresholds.split(",") if t],
                     a.pause_ms))
