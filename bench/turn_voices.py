"""Smart Turn v3 on another offline synthesizer: CMU Flite's voices (Debian's `flite`: apt-get install flite).

Does the end-of-turn model separate complete from incomplete utterances when
the voice is a statistical (clustergen: slt, rms, awb) or diphone (kal16)
synthesizer rather than espeak-ng's formant one (bench/turn_bench.py)? The
texts are the turn fixtures' (tests/fixtures/turn/make_turn_fixtures.py):

- complete: the 20 complete sentences;
- fragment: the part before each incomplete sentence's pause, spoken alone
  ("I want to"): the words stop, the intonation is Flite's utterance-final one;
- continuation: the whole sentence with "..." at the pause ("I want to ...
  book a table"), cut at the pause Flite makes there: a mid-sentence pause.

Each is scored as the call would at the pause: 300 ms of silence before,
150 ms after. Then the espeak-ng turn fixtures themselves through sox effects
(reverb, reverb + -45 dBFS noise, telephone band, slower and lower), scored
at their pause or end + 150 ms. Writes bench/results/turn_voices.json.

    python3 bench/turn_voices.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402  # after sys.path
from tests.audio_fixtures import resample_oneshot  # noqa: E402  # after sys.path
from tests.fixtures.turn import make_turn_fixtures as mf  # noqa: E402  # after sys.path
from v2v.worker.turn_model import SmartTurn  # noqa: E402  # after sys.path

VOICES = ("slt", "rms", "awb", "kal16")
TURN_DIR = ROOT / "tests" / "fixtures" / "turn"
RATE = 16000


def flite(text: str, voice: str, tmp: Path) -> np.ndarray:
    out = tmp / "f.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True)
    with wave.open(str(out)) as w:
        r = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
    return resample_oneshot(x, r, RATE).astype(np.float32) / 32768.0


def levels(x: np.ndarray) -> np.ndarray:
    f = len(x) // 160
    return 10 * np.log10((x[: f * 160].reshape(f, 160) ** 2).mean(axis=1) + 1e-12)


def trim(x: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(levels(x) > -50)
    return x[loud[0] * 160 : (loud[-1] + 1) * 160]


def first_pause(x: np.ndarray) -> int | None:
    """Sample where the first >= 80 ms quiet run (< -45 dBFS) after 300 ms starts."""
    quiet = levels(x) < -45
    run = 0
    for i in range(30, len(quiet)):  # a bench script: a few hundred frames
        run = run + 1 if quiet[i] else 0
        if run >= 8:
            return (i - run + 1) * 160
    return None


SOX_EFFECTS: dict[str, list[str]] = {
    "clean": [], "reverb": ["reverb", "40", "50", "60"], "reverb+noise": ["reverb", "25"],
    "telephone band": ["sinc", "300-3400"], "slower, lower": ["tempo", "0.9", "pitch", "-200"],
}


def sox_variants(model: SmartTurn, tmp: Path) -> dict[str, dict[str, float]]:
    """AUC and the share called complete, per sox effect, on the espeak-ng turn fixtures."""
    meta = json.loads((TURN_DIR / "turn.json").read_text())["files"]
    noise = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for name, fx in SOX_EFFECTS.items():
        pc: list[float] = []
        pi: list[float] = []
        for n, e in meta.items():
            subprocess.run(["sox", str(TURN_DIR / n), str(tmp / "s.wav"), *fx], check=True)
            with wave.open(str(tmp / "s.wav")) as w:
                x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
            if name == "reverb+noise":
                x = x + (noise.standard_normal(len(x)) * 10 ** (-45 / 20)).astype(np.float32)
            end = e["pauses"][0][0] if e["label"] == "incomplete" else e["speech_end"]
            end = int(end / 0.9) if "tempo" in fx else end
            (pc if e["label"] == "complete" else pi).append(model.predict_blocking(x[: end + 2400]).probability)
        out[name] = {"auc": auc(pc, pi), "complete_called_complete": float(np.mean(np.array(pc) >= 0.5)),
                     "incomplete_called_complete": float(np.mean(np.array(pi) >= 0.5))}
    return out


def auc(pos: list[float], neg: list[float]) -> float:
    a, b = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def main() -> None:
    model = SmartTurn()
    model.wait_loaded()
    scores: dict[str, list[dict[str, Any]]] = {"complete": [], "fragment": [], "continuation": []}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        items: list[tuple[str, str, np.ndarray, str]] = []
        for n, text in enumerate(mf.COMPLETE):
            v = VOICES[n % len(VOICES)]
            items.append(("complete", v, trim(flite(text, v, tmp)), text))
        for n, text in enumerate(mf.INCOMPLETE):
            v = VOICES[n % len(VOICES)]
            head, rest = (s.strip() for s in text.split('<break time="{p}ms"/>'))
            items.append(("fragment", v, trim(flite(head, v, tmp)), head))
            whole = trim(flite(f"{head} ... {rest}", v, tmp))
            cut = first_pause(whole)
            if cut is not None:
                items.append(("continuation", v, whole[:cut], f"{head} ..."))
        for kind, voice, x, text in items:
            seg = np.concatenate([np.zeros(4800, np.float32), x, np.zeros(2400, np.float32)])
            p = model.predict_blocking(seg).probability
            scores[kind].append({"voice": voice, "text": text, "probability": p})
        sox = sox_variants(model, tmp)
    model.close()
    summary = {k: {"n": len(v), "called_complete": float(np.mean([s["probability"] >= 0.5 for s in v])),
                   "median_p": float(np.median([s["probability"] for s in v]))} for k, v in scores.items()}
    pc = [s["probability"] for s in scores["complete"]]
    summary["auc_complete_vs_fragment"] = auc(pc, [s["probability"] for s in scores["fragment"]])
    summary["auc_complete_vs_continuation"] = auc(pc, [s["probability"] for s in scores["continuation"]])
    print(summary, sox)
    write_result("turn_voices", {"summary": summary, "sox_espeak": sox, "scores": scores})


if __name__ == "__main__":
    main()
