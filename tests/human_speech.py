"""Recorded human speech from Debian packages, for the turn-taking tests and bench/turn_human.py.

Allison Smith's telephone prompts (``asterisk-core-sounds-en-g722``, 16 kHz
G.722, CC-BY-SA-3.0; transcripts in ``asterisk-core-sounds-en``), decoded with
PyAV. ``.ci/setup-tests`` installs the packages; nothing is downloaded.

    pcm = allison("tt-weasels")                       # int16, 16 kHz, as recorded
    u = utterance(pcm)                                # 300 ms silence + the speech + 300 ms silence
    u = utterance(pcm, cut=25360, pause_ms=900)       # a pause inserted 25360 samples into the speech
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

RATE = 16000
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ALLISON_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
FRAME = RATE // 100
LEAD = TAIL = RATE * 3 // 10


def decode_g722(path: Path) -> np.ndarray:
    """A raw G.722 file as 16 kHz int16 samples."""
    with av.open(str(path), format="g722") as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.int16)


def allison(key: str) -> np.ndarray:
    """One prompt of Debian's asterisk-core-sounds-en-g722 (e.g. "tt-weasels"), 16 kHz int16."""
    path = ALLISON / f"{key}.g722"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: install Debian's asterisk-core-sounds-en-g722 (.ci/setup-tests does)")
    return decode_g722(path)


def speech_bounds(pcm: np.ndarray) -> tuple[int, int]:
    """First and last 10 ms frame above -50 dBFS, as [start, end) sample positions."""
    n = len(pcm) // FRAME
    fr = pcm[: n * FRAME].astype(np.float32).reshape(n, FRAME) / 32768.0
    loud = np.flatnonzero(10 * np.log10(np.mean(fr**2, axis=1) + 1e-12) > -50)
    return int(loud[0]) * FRAME, (int(loud[-1]) + 1) * FRAME


@dataclass(frozen=True)
class Utterance:
    pcm: np.ndarray  # int16, 16 kHz
    speech_end: int  # sample after the last speech sample
    pause: tuple[int, int] | None  # the inserted pause's [start, end), or None


def utterance(pcm: np.ndarray, cut: int | None = None, pause_ms: int = 0) -> Utterance:
    """The recording's speech between 300 ms silences; with ``cut``, ``pause_ms`` of silence inserted
    ``cut`` samples after the speech start (a mid-sentence pause)."""
    first, last = speech_bounds(pcm)
    speech = pcm[first:last]
    pause = np.zeros(RATE * pause_ms // 1000, np.int16)
    span = None
    if cut is not None:
        speech = np.concatenate([speech[:cut], pause, speech[cut:]])
        span = (LEAD + cut, LEAD + cut + len(pause))
    out = np.concatenate([np.zeros(LEAD, np.int16), speech, np.zeros(TAIL, np.int16)])
    return Utterance(out, LEAD + len(speech), span)
