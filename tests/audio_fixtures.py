"""Helpers for the committed audio fixtures in tests/fixtures (see manifest.json there).

    from audio_fixtures import load_fixture, fixture_info   # or: from tests.audio_fixtures import ...
    pcm, rate = load_fixture("what_time_is_it.wav")          # int16 mono numpy, sample rate
    fixture_info("what_time_is_it.wav")["speech"]            # [[start, end), ...] in samples

Also the seeded noise generators used by tests/fixtures/make_fixtures.py, and a
one-shot resampler that keeps sample positions aligned (for rate variants).
"""

from __future__ import annotations

import functools
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """The whole manifest.json (keys: generator, espeak_ng, onset_rule, files)."""
    return json.loads((FIXTURES_DIR / "manifest.json").read_text())


def fixture_names(kind: str | None = None) -> list[str]:
    """Fixture file names, optionally only one kind (speech, speech+noise, noise, tone, silence, burst)."""
    return [n for n, e in manifest()["files"].items() if kind is None or e["kind"] == kind]


def fixture_info(name: str) -> dict[str, Any]:
    """Manifest entry: sample_rate, length, kind, speech, active, purpose, ..."""
    return manifest()["files"][name]


def fixture_path(name: str) -> Path:
    return FIXTURES_DIR / name


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit WAV as (int16 array, sample rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit, got {w.getnchannels()} ch {8 * w.getsampwidth()} bit")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    return pcm, rate


def load_fixture(name: str) -> tuple[np.ndarray, int]:
    """Fixture samples (int16 mono) and sample rate."""
    return read_wav(fixture_path(name))


def resample_oneshot(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole int16 signal at once (soxr, delay compensated: positions scale by out/in)."""
    if in_rate == out_rate:
        return pcm
    import soxr

    y = soxr.resample(pcm.astype(np.float32) / 32768.0, in_rate, out_rate, quality="HQ")
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def white_noise(n: int, rms_dbfs: float, seed: int) -> np.ndarray:
    """Seeded Gaussian white noise, float32, scaled to an exact RMS in dBFS."""
    x = np.random.default_rng(seed).standard_normal(n)
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (rms_dbfs / 20)).astype(np.float32)


def pink_noise(n: int, rms_dbfs: float, seed: int) -> np.ndarray:
    """Seeded 1/f (pink) noise, float32, by shaping white noise's spectrum; exact RMS in dBFS."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (rms_dbfs / 20)).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) to int16 (rounded, clipped)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
