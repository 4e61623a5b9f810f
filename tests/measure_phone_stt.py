"""Intent accuracy and WER of the local model's recognizer: 16 kHz speech versus phone callers (G.711, 8 kHz).

8 phrases x 5 espeak-ng voices, synthesized at run time; conditions: 16 kHz, G.711 u-law at 8 kHz,
G.711 A-law at 8 kHz with line noise (-45 dBFS). ``before`` measures without the telephone
settings (the wideband dither, no telephone pronunciations)::

    python3 -m tests.measure_phone_stt [before]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import wave

import numpy as np
import soxr

from v2v.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from v2v.worker.models import local_stt as ls
from v2v.worker.models.local_brain import ToolCall, decide

PHRASES = ["what time is it", "tell me a story", "what can you do", "hello there", "what is the time",
           "please stop", "can you tell me what time it is", "i would like to book a table for two"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2"]


def intent(text: str) -> str:
    d = decide(text)
    return d.name if isinstance(d, ToolCall) else d.text


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    r, h = ref.split(), hyp.split()
    d = np.arange(len(h) + 1)
    for i in range(1, len(r) + 1):
        prev = d.copy()
        d[0] = i
        for j in range(1, len(h) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1]))
    return int(d[len(h)]), len(r)


def espeak(text: str, voice: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f.name, text], check=True)
        with wave.open(f.name) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return soxr.resample(x, rate, 16000).astype(np.int16)


def telephone(x: np.ndarray, law: str, noise_dbfs: float | None, rng: np.random.Generator) -> np.ndarray:
    y = soxr.resample(x, 16000, 8000, quality="HQ")
    if noise_dbfs is not None:
        y = y + rng.normal(0, 32768 * 10 ** (noise_dbfs / 20), len(y))
    y = np.clip(y, -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(y)) if law == "ulaw" else alaw_decode(alaw_encode(y))


def main(before: bool = False) -> None:
    if before:
        ls.NARROWBAND_DITHER = ls._DITHER
        ls.TELEPHONE_PRONS = ()
    rec = ls.Recognizer()
    rng = np.random.default_rng(7)
    clips = {(p, v): espeak(p, v) for p in PHRASES for v in VOICES}
    for cond in ("16k", "g711-ulaw", "g711-alaw+noise"):
        right = errors = words = 0
        for (phrase, _), x in clips.items():
            if cond == "16k":
                text = rec.recognize(x, 16000).text
            else:
                law = "ulaw" if "ulaw" in cond else "alaw"
                text = rec.recognize(telephone(x, law, -45.0 if "noise" in cond else None, rng), 8000).text
            right += intent(text) == intent(phrase)
            e, n = word_errors(phrase, text)
            errors, words = errors + e, words + n
        print(f"{'before' if before else 'after'} {cond}: intent {right}/{len(clips)}, WER {errors / words:.2f}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] == ["before"])
