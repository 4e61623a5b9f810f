"""WebRTC noise suppression in front of v2v's VAD (issue 17): does it make the VAD better on noisy lines?

The suppressor is the ``livekit`` wheel's ``rtc.AudioProcessingModule`` (the module media/aec.py
drives for echo cancellation), one fresh instance per line, fed 10 ms frames (its output lags the
input by ~6 ms at 16 kHz, ~9 ms at 8 kHz: included in the onset delays). Three variants, the same
VAD behind each (media/vad.py with the shipped ``CallConfig`` settings: aggressiveness 2, 10 ms
frames, start 30 ms, end 500 ms, settle 120 ms, rise 9 dB, eager onset 20 ms):

- ``off``: the line as it arrives;
- ``hpf``: the APM's high-pass filter only (to tell the filter's share from the suppressor's);
- ``ns``: ``AudioProcessingModule(noise_suppression=True, high_pass_filter=True)``.

At 16 kHz and at 8 kHz (through G.711 mu-law, as a SIP call; the VAD runs at the line's rate):

- noise-only lines: white, pink, mains hum (bench/eager_bench.py's), babble (six espeak voices
  from tests/fixtures summed at random offsets) at -45 / -35 / -30 dBFS, either steady from the
  first sample or starting abruptly after 1 s of digital silence; 2 seeds x 15 s each. Counted:
  VAD speech starts (false turns), eager onsets (false pauses of an audible reply), seconds in speech;
- speech: the espeak speech fixtures (tests/fixtures, manifest speech spans) and recorded human
  speech (Allison's prompts, tests/human_speech.py), each after 1 s of lead and with 1 s of tail,
  alone (``clean``) and mixed with the same noises over the whole line at SNR 20 / 10 / 5 dB (the
  speech level is the RMS over its span). Counted: utterances detected (a start decided inside the
  span or within end_ms after it, and none before the speech), starts before the speech, onset
  delay (start decided - manifest speech start) p50 / p95, premature ends (an end decided before
  the span is over; with the 500 ms hangover and with the turn model's 150 ms pause), turns ended
  (an end decided after the span: the turn is handed over by the line's end);
- rise sweep: the VAD's start evidence (``rise_db`` 9 / 6 / 4.5 / 3) instead of, and with, NS:
  false starts on stationary lines that open abruptly, utterances detected at SNR 10 / 5 dB;
- CPU: ``time.process_time`` of the suppressor over 60 s of audio, per call-second (best of 3).

    python3 bench/ns_bench.py [--quick]    # writes bench/results/ns.json (~1 min; --quick ~20 s)
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import percentile, write_result  # noqa: E402  # after sys.path
from bench.eager_bench import hum  # noqa: E402  # after sys.path
from tests.audio_fixtures import (  # noqa: E402  # after sys.path
    fixture_info,
    fixture_names,
    load_fixture,
    pink_noise,
    resample_oneshot,
    white_noise,
)
from tests.human_speech import allison, speech_bounds  # noqa: E402  # after sys.path
from v2v.media.g711 import ulaw_decode, ulaw_encode  # noqa: E402  # after sys.path
from v2v.media.vad import VadEvent, VoiceActivityDetector  # noqa: E402  # after sys.path
from v2v.worker.call import CallConfig  # noqa: E402  # after sys.path

RATES = (16000, 8000)
VARIANTS = ("off", "hpf", "ns")
KINDS = ("white", "pink", "hum", "babble")
LEVELS = (-45.0, -35.0, -30.0)
SNRS = (20.0, 10.0, 5.0)
LEAD_S = TAIL_S = 1.0
ABRUPT_S = 1.0
ALLISON_KEYS = ("tt-weasels", "all-circuits-busy-now", "auth-thankyou", "call-waiting", "conf-getpin",
                "cannot-complete-as-dialed", "check-number-dial-again", "agent-pass", "conf-full",
                "call-forwarding", "agent-loginok", "conf-hasjoin")


# -- signals -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def espeak_speech(rate: int) -> list[tuple[str, np.ndarray, int, int]]:
    """(name, int16 clip, speech start, speech end) of each espeak fixture recorded at >= ``rate``."""
    out = []
    for name in fixture_names("speech"):
        pcm, r = load_fixture(name)
        if r < rate:
            continue
        s0, s1 = fixture_info(name)["speech"][0][0], fixture_info(name)["speech"][-1][1]
        out.append((name, resample_oneshot(pcm, r, rate), s0 * rate // r, s1 * rate // r))
    return out


def human_speech(rate: int) -> list[tuple[str, np.ndarray, int, int]]:
    """Allison's prompts (16 kHz G.722) with 300 ms around the -50 dBFS speech bounds."""
    out = []
    for key in ALLISON_KEYS:
        pcm = allison(key)
        b0, b1 = speech_bounds(pcm)
        pad = 16000 * 3 // 10
        clip = np.concatenate([np.zeros(pad, np.int16), pcm[b0:b1], np.zeros(pad, np.int16)])
        out.append((key, resample_oneshot(clip, 16000, rate), pad * rate // 16000, (pad + b1 - b0) * rate // 16000))
    return out


def babble(n: int, dbfs: float, seed: int, rate: int) -> np.ndarray:
    """Six espeak voices summed at random offsets (speech spans only, looped), exact RMS."""
    rng = np.random.default_rng(seed)
    stream = np.concatenate([c[s0:s1].astype(np.float64) for _, c, s0, s1 in espeak_speech(rate)])
    reps = 1 + n // len(stream)
    x = sum(np.roll(np.tile(stream, reps), int(rng.integers(len(stream))))[:n] for _ in range(6))
    x = np.asarray(x, dtype=np.float64)
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def noise(kind: str, n: int, dbfs: float, seed: int, rate: int) -> np.ndarray:
    """``n`` samples of one noise kind at an exact RMS, int16 scale (float64)."""
    if kind == "white":
        x = white_noise(n, dbfs, seed)
    elif kind == "pink":
        x = pink_noise(n, dbfs, seed)
    elif kind == "hum":
        x = hum(n, dbfs, seed, rate)
    else:
        x = babble(n, dbfs, seed, rate)
    return x.astype(np.float64) * 32768.0


def to_pcm(x: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Int16 samples of a line; at 8 kHz through G.711 mu-law and back, as a SIP call delivers them."""
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm)).astype(np.int16) if rate == 8000 else pcm


# -- the suppressor and the VAD ---------------------------------------------------------------
def suppress(pcm: np.ndarray, rate: int, variant: str) -> np.ndarray:
    """The line through a fresh APM (whole 10 ms frames; a trailing part frame is dropped)."""
    if variant == "off":
        return pcm
    from livekit import rtc

    apm = rtc.AudioProcessingModule(noise_suppression=variant == "ns", high_pass_filter=True)
    frame = rate // 100
    n = len(pcm) // frame
    out = np.empty(n * frame, dtype=np.int16)
    for i in range(n):  # per 10 ms frame (as media/aec.py), not per sample
        f = rtc.AudioFrame(bytearray(pcm[i * frame:(i + 1) * frame].tobytes()), rate, 1, frame)
        apm.process_stream(f)
        out[i * frame:(i + 1) * frame] = np.frombuffer(f.data, dtype=np.int16)
    return out


def vad(rate: int, end_ms: int | None = None, rise_db: float | None = None) -> VoiceActivityDetector:
    """The call's VAD (CallConfig defaults); ``end_ms``: another hangover (the turn model's pause)."""
    c = CallConfig()
    return VoiceActivityDetector(
        rate, aggressiveness=c.vad_aggressiveness, frame_ms=c.vad_frame_ms, start_ms=c.vad_start_ms,
        end_ms=c.vad_end_ms if end_ms is None else end_ms, settle_ms=c.vad_settle_ms,
        rise_db=c.vad_rise_db if rise_db is None else rise_db, onset_ms=c.vad_onset_ms)


def events(pcm: np.ndarray, rate: int, variant: str) -> list[VadEvent]:
    return vad(rate).process(suppress(pcm, rate, variant))


# -- measurements ---------------------------------------------------------------------------------
def noise_only(rate: int, seconds: float, seeds: int) -> list[dict[str, Any]]:
    rows = []
    n = int(seconds * rate)
    for kind in KINDS:
        for level in LEVELS:
            for onset in ("steady", "abrupt"):
                counts = {v: {"starts": 0, "onsets": 0, "speaking_s": 0.0} for v in VARIANTS}
                first: dict[str, list[float | None]] = {v: [] for v in VARIANTS}
                for seed in range(seeds):
                    x = noise(kind, n, level, 100 + seed, rate)
                    if onset == "abrupt":
                        x[: int(ABRUPT_S * rate)] = 0.0
                    line = to_pcm(x, rate)
                    for v in VARIANTS:
                        evs = events(line, rate, v)
                        counts[v]["starts"] += sum(e.kind == "start" for e in evs)
                        counts[v]["onsets"] += sum(e.kind == "onset" for e in evs)
                        counts[v]["speaking_s"] += speaking_s(evs, len(line), rate)
                        first[v].append(next((round(e.decided_at / rate, 2) for e in evs if e.kind == "start"), None))
                row = {"rate": rate, "kind": kind, "dbfs": level, "onset": onset, "runs": seeds, "seconds": seconds,
                       **{f"{k}_{v}": round(counts[v][k], 1) for v in VARIANTS for k in ("starts", "onsets", "speaking_s")},
                       **{f"first_start_s_{v}": first[v] for v in VARIANTS}}
                rows.append(row)
                print(row, flush=True)
    return rows


def judge(evs: list[VadEvent], s0: int, s1: int, rate: int, end_ms: int) -> dict[str, Any]:
    """One utterance: detected, starts before the speech, onset delay (ms), premature ends, turn ended."""
    starts = [e for e in evs if e.kind == "start"]
    early = [e for e in starts if e.decided_at < s0]
    inside = [e for e in starts if s0 <= e.decided_at <= s1 + end_ms * rate // 1000]
    speaking_from = inside[0].decided_at if inside else None
    ends = [e.decided_at for e in evs if e.kind == "end"]
    premature = sum(1 for t in ends if speaking_from is not None and speaking_from < t < s1)
    return {"detected": bool(inside) and not early, "early": len(early),
            "delay_ms": (inside[0].decided_at - s0) * 1000 / rate if inside else None, "premature": premature,
            "ended": bool(starts) and any(t >= s1 for t in ends) and ends[-1] >= starts[-1].decided_at}


def speaking_s(evs: list[VadEvent], n: int, rate: int) -> float:
    """Seconds the VAD spent in speech (start decided -> end decided, or the line's end)."""
    total, since = 0, None
    for e in evs:
        if e.kind == "start":
            since = e.decided_at
        elif e.kind == "end" and since is not None:
            total, since = total + e.decided_at - since, None
    if since is not None:
        total += n - since
    return total / rate


def speech_mixes(rate: int, sets: dict[str, list[tuple[str, np.ndarray, int, int]]]) -> list[dict[str, Any]]:
    end_ms, pause_ms = CallConfig().vad_end_ms, CallConfig().turn_pause_ms
    lead, tail = int(LEAD_S * rate), int(TAIL_S * rate)
    rows = []
    conds: list[tuple[str, float | None]] = [("clean", None)] + [(k, s) for k in KINDS for s in SNRS]
    for set_name, clips in sets.items():
        for kind, snr in conds:
            acc: dict[str, dict[str, Any]] = {v: {"n": 0, "detected": 0, "early": 0, "premature": 0, "premature150": 0,
                                                  "ended": 0, "delays": []} for v in VARIANTS}
            for i, (_, clip, c0, c1) in enumerate(clips):
                x = np.concatenate([np.zeros(lead), clip.astype(np.float64), np.zeros(tail)])
                s0, s1 = lead + c0, lead + c1
                if snr is not None:
                    speech_db = 10 * np.log10(np.mean((clip[c0:c1].astype(np.float64) / 32768.0) ** 2))
                    x += noise(kind, len(x), float(speech_db - snr), 7 + i, rate)
                line = to_pcm(x, rate)
                for v in VARIANTS:
                    y = suppress(line, rate, v)
                    j = judge(vad(rate).process(y), s0, s1, rate, end_ms)
                    a = acc[v]
                    a["n"] += 1
                    a["detected"] += j["detected"]
                    a["early"] += j["early"]
                    a["premature"] += j["premature"]
                    a["ended"] += j["ended"]
                    a["premature150"] += judge(vad(rate, pause_ms).process(y), s0, s1, rate, pause_ms)["premature"]
                    if j["delay_ms"] is not None:
                        a["delays"].append(j["delay_ms"])
            row: dict[str, Any] = {"rate": rate, "speech": set_name, "noise": kind, "snr_db": snr, "n": len(clips)}
            for v, a in acc.items():
                row |= {f"detected_{v}": a["detected"], f"early_starts_{v}": a["early"],
                        f"premature_ends_{v}": a["premature"], f"premature_ends_turn_pause_{v}": a["premature150"],
                        f"turn_ended_{v}": a["ended"], f"delay_p50_{v}": _r(percentile(a["delays"], 50)),
                        f"delay_p95_{v}": _r(percentile(a["delays"], 95)), f"delays_{v}": [round(d, 1) for d in a["delays"]]}
            rows.append(row)
            print({k: v for k, v in row.items() if not k.startswith("delays_")}, flush=True)
    return rows


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def cpu_cost(rate: int, seconds: float = 60.0) -> dict[str, Any]:
    """Process time per call-second of the suppressor (10 ms frames) and of the VAD (20 ms pieces), for scale."""
    line = to_pcm(noise("white", int(seconds * rate), -35.0, 1, rate))
    out: dict[str, Any] = {"rate": rate, "seconds": seconds}
    for v in ("hpf", "ns"):
        best = None
        for _ in range(3):
            t = time.process_time()
            suppress(line, rate, v)
            dt = time.process_time() - t
            best = dt if best is None else min(best, dt)
        assert best is not None
        out[f"{v}_ms_per_s"] = round(1000 * best / seconds, 2)
    t = time.process_time()
    det = vad(rate)
    piece = rate // 50
    for i in range(0, len(line), piece):  # per 20 ms packet, as a call feeds it
        det.process(line[i:i + piece])
    out["vad_ms_per_s"] = round(1000 * (time.process_time() - t) / seconds, 2)
    print(out, flush=True)
    return out


# -- summary ----------------------------------------------------------------------------------------
RISES = (9.0, 6.0, 4.5, 3.0)


def rise_sweep(rate: int, sets: dict[str, list[tuple[str, np.ndarray, int, int]]], seeds: int) -> list[dict[str, Any]]:
    """Not NS: the VAD's start evidence (``rise_db``) lowered instead, without and with NS in front.

    Stationary noise only: false starts on lines that open abruptly (1 s of silence, then 5 s of
    noise at -50 ... -25 dBFS) and utterances detected at SNR 10 / 5 dB.
    """
    lines = []
    for kind in FAMILIES["stationary"]:
        for level in (-50.0, -45.0, -40.0, -35.0, -30.0, -25.0):
            for seed in range(seeds):
                x = noise(kind, 6 * rate, level, 200 + seed, rate)
                x[:rate] = 0.0
                lines.append(to_pcm(x, rate))
    mixes = []
    for snr in (10.0, 5.0):
        for kind in FAMILIES["stationary"]:
            for i, (_, clip, c0, c1) in (ic for cs in sets.values() for ic in enumerate(cs)):  # seeds as speech_mixes
                x = np.concatenate([np.zeros(rate), clip.astype(np.float64), np.zeros(rate)])
                speech_db = 10 * np.log10(np.mean((clip[c0:c1].astype(np.float64) / 32768.0) ** 2))
                x += noise(kind, len(x), float(speech_db - snr), 7 + i, rate)
                mixes.append((snr, to_pcm(x, rate), rate + c0, rate + c1))
    rows = []
    for v in ("off", "ns"):
        noisy = [suppress(x, rate, v) for x in lines]
        speech = [(snr, suppress(x, rate, v), s0, s1) for snr, x, s0, s1 in mixes]
        for rise in RISES:
            row: dict[str, Any] = {"rate": rate, "variant": v, "rise_db": rise, "noise_lines": len(lines),
                                   "false_starts": sum(sum(e.kind == "start" for e in vad(rate, rise_db=rise).process(y))
                                                       for y in noisy)}
            for snr in (10.0, 5.0):
                js = [judge(vad(rate, rise_db=rise).process(y), s0, s1, rate, CallConfig().vad_end_ms)
                      for sn, y, s0, s1 in speech if sn == snr]
                row |= {f"n_snr{snr:g}": len(js), f"detected_snr{snr:g}": sum(j["detected"] for j in js)}
            rows.append(row)
            print(row, flush=True)
    return rows


FAMILIES = {"stationary": ("white", "pink", "hum"), "babble": ("babble",)}
SPEECH_KEYS = ("detected", "early_starts", "premature_ends", "premature_ends_turn_pause", "turn_ended")


def summary(noise_rows: list[dict[str, Any]], speech_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rate: noise-only lines per family x level (both onsets), speech per family x SNR (both speech sets)."""
    out: dict[str, Any] = {"noise_only": [], "speech": []}
    for rate in RATES:
        for fam, kinds in FAMILIES.items():
            for level in LEVELS:
                rs = [r for r in noise_rows if r["rate"] == rate and r["dbfs"] == level and r["kind"] in kinds]
                out["noise_only"].append(
                    {"rate": rate, "noise": fam, "dbfs": level, "lines": sum(r["runs"] for r in rs),
                     "seconds": sum(r["runs"] * r["seconds"] for r in rs),
                     **{f"{k}_{v}": round(sum(r[f"{k}_{v}"] for r in rs), 1)
                        for k in ("starts", "onsets", "speaking_s") for v in VARIANTS}})
        conds: list[tuple[str, tuple[str, ...], float | None]] = [("clean", ("clean",), None)]
        conds += [(fam, kinds, snr) for fam, kinds in FAMILIES.items() for snr in SNRS]
        for fam, kinds, snr in conds:
            rs = [r for r in speech_rows if r["rate"] == rate and r["snr_db"] == snr and r["noise"] in kinds]
            row: dict[str, Any] = {"rate": rate, "noise": fam, "snr_db": snr, "n": sum(r["n"] for r in rs)}
            for v in VARIANTS:
                d = [x for r in rs for x in r[f"delays_{v}"]]
                row |= {f"{k}_{v}": sum(r[f"{k}_{v}"] for r in rs) for k in SPEECH_KEYS}
                row |= {f"delay_p50_{v}": _r(percentile(d, 50)), f"delay_p95_{v}": _r(percentile(d, 95))}
            out["speech"].append(row)
    return out


def print_tables(summ: dict[str, Any]) -> None:
    """The summary as markdown (off / hpf / ns in each cell)."""
    print("| rate | noise | dBFS | lines | starts | onsets | s in speech |\n|---|---|---|---|---|---|---|")
    for r in summ["noise_only"]:
        cells = [" / ".join(str(r[f"{k}_{v}"]) for v in VARIANTS) for k in ("starts", "onsets", "speaking_s")]
        print(f"| {r['rate']} | {r['noise']} | {r['dbfs']:g} | {r['lines']} | " + " | ".join(cells) + " |")
    print("\n| rate | noise | SNR | n | detected | early starts | onset p50 | onset p95 | premature ends (500 / 150 ms)"
          " | turn ended |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in summ["speech"]:
        cells = [" / ".join(str(r[f"{k}_{v}"]) for v in VARIANTS) for k in ("detected", "early_starts", "delay_p50",
                                                                            "delay_p95")]
        prem = " / ".join(f"{r[f'premature_ends_{v}']}+{r[f'premature_ends_turn_pause_{v}']}" for v in VARIANTS)
        ended = " / ".join(str(r[f"turn_ended_{v}"]) for v in VARIANTS)
        snr = "-" if r["snr_db"] is None else f"{r['snr_db']:g}"
        print(f"| {r['rate']} | {r['noise']} | {snr} | {r['n']} | " + " | ".join(cells) + f" | {prem} | {ended} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1 seed x 8 s noise-only lines, espeak speech only")
    ap.add_argument("--out", default="ns", help="result name under bench/results/")
    args = ap.parse_args()
    t0 = time.monotonic()
    seeds, seconds = (1, 8.0) if args.quick else (2, 15.0)
    noise_rows: list[dict[str, Any]] = []
    speech_rows: list[dict[str, Any]] = []
    cpu = []
    sweep: list[dict[str, Any]] = []
    for rate in RATES:
        noise_rows += noise_only(rate, seconds, seeds)
        sets = {"espeak": espeak_speech(rate)}
        if not args.quick:
            sets["human"] = human_speech(rate)
        speech_rows += speech_mixes(rate, sets)
        sweep += rise_sweep(rate, sets, seeds)
        cpu.append(cpu_cost(rate))
    c = CallConfig()
    data = {
        "variants": {"off": "no APM", "hpf": "AudioProcessingModule(high_pass_filter=True)",
                     "ns": "AudioProcessingModule(noise_suppression=True, high_pass_filter=True)"},
        "vad": {k: getattr(c, k) for k in ("vad_aggressiveness", "vad_frame_ms", "vad_start_ms", "vad_end_ms",
                                           "vad_settle_ms", "vad_rise_db", "vad_onset_ms")},
        "quick": args.quick, "wall_s": round(time.monotonic() - t0, 1),
        "summary": summary(noise_rows, speech_rows), "cpu": cpu, "rise_sweep": sweep, "noise_only": noise_rows, "speech": speech_rows,
    }
    print_tables(data["summary"])
    print(write_result(args.out, data))


if __name__ == "__main__":
    main()
