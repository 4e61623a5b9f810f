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
    """Complete: speech end -> turn end (+ the model's wall or CPU time); incomplete: cut off in the pause."""
    wall: list[float] = []
    cpu: list[float] = []
    cut = 0
    n_inc = 0
    scale = rate / 16000
    for name, e in files.items():
        ends = runs[name]["ends"]
        if e["label"] == "complete":
            end = e["speech_end"] * scale
            after = [((p - end) / rate * 1000, w, c) for p, w, c in ends if p >= end]
            wall.append(after[0][0] + after[0][1] if after else float("nan"))
            cpu.append(after[0][0] + after[0][2] if after else float("nan"))
        else:
            n_inc += 1
            a, b = (v * scale for v in e["pauses"][0])
            cut += any(a <= p < b for p, _, _ in ends)
    w, c = np.array(wall), np.array(cpu)
    return {
        "complete_n": len(w), "incomplete_n": n_inc,
        "complete_ms_p50": float(np.nanpercentile(w, 50)), "complete_ms_p95": float(np.nanpercentile(w, 95)),
        "complete_ms_p50_cpu": float(np.nanpercentile(c, 50)), "complete_ms_p95_cpu": float(np.nanpercentile(c, 95)),
        "complete_never_ended": int(np.isnan(w).sum()),
        "incomplete_cut_off": cut, "incomplete_cut_off_share": cut / max(1, n_inc),
    }


def sweep(files: dict[str, Any], runs: dict[str, Any], rate: int, pause_ms: int, max_wait_ms: int) -> list[dict]:
    """The same answers under other thresholds (the policy is deterministic given the first pause's answer)."""
    out = []
    scale = rate / 16000
    for th in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
        lat, cut, n_inc = [], 0, 0
        for name, e in files.items():
            d = runs[name]["decisions"]
            if not d:
                continue
            first = d[0]
            p = first["probability"] or 0.0
            if e["label"] == "complete":
                base = (first["voiced_end"] - e["speech_end"] * scale) / rate * 1000
                lat.append(base + pause_ms + first["cpu_ms"] if p >= th else base + max_wait_ms)
            else:
                n_inc += 1
                cut += p >= th
        out.append({"threshold": th, "complete_ms_p50_cpu": float(np.percentile(lat, 50)),
                    "complete_ms_p95_cpu": float(np.percentile(lat, 95)),
                    "complete_early_share": float(np.mean(np.array(lat) < max_wait_ms / 2)),
                    "incomplete_cut_off_share": cut / max(1, n_inc)})
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


async def main(quick: bool) -> None:
    meta = json.loads((TURN_DIR / "turn.json").read_text())
    files = meta["files"]
    if quick:
        files = dict(list(files.items())[:4] + list(files.items())[20:24])
    await shared_smart_turn().ready()
    out: dict[str, Any] = {"fixtures": len(files), "configs": {}}
    configs = [("off", 200), ("smart-turn", 200), ("smart-turn", 150)]
    for rate in (16000, 8000):
        for mode, pause in configs:
            cfg = CallConfig(turn_detection="local", turn_model=mode, turn_pause_ms=pause)  # type: ignore[arg-type]  # a literal
            runs: dict[str, Any] = {}
            call_s = 0.0
            for name in files:
                pcm, r = read_wav(TURN_DIR / name)
                runs[name] = await run_one(resample_oneshot(pcm, r, rate), rate, cfg)
                call_s += len(pcm) / r + TAIL_S
            key = f"{mode}@{rate}" + (f"/pause{pause}" if mode != "off" else "")
            res: dict[str, Any] = summarise(files, runs, rate)
            cpu = [d["cpu_ms"] for r in runs.values() for d in r["decisions"]]
            if cpu:
                res["inference_cpu_ms_p50"] = float(np.percentile(cpu, 50))
                res["inference_wall_ms_p50"] = float(np.percentile(
                    [d["wall_ms"] for r in runs.values() for d in r["decisions"]], 50))
                res["sweep"] = sweep(files, runs, rate, pause, cfg.turn_max_wait_ms)
                res["inferences_per_utterance"] = len(cpu) / len(files)
                res["model_cpu_ms_per_call_s"] = sum(cpu) / call_s  # utterance + 2.5 s listening, back to back
            print(key, {k: v for k, v in res.items() if k != "sweep"}, flush=True)
            out["configs"][key] = {**res, "runs": runs}
    out["feed_cpu_ms_per_call_s"] = {str(r): feed_cpu(r) for r in (8000, 16000, 48000)}
    print("feed cpu", out["feed_cpu_ms_per_call_s"])
    write_result("turn" if not quick else "turn_quick", out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 fixtures only")
    asyncio.run(main(ap.parse_args().quick))
