"""Turn fixtures from recorded human speech (Debian packages), for bench/turn_bench.py --fixtures.

    python3 bench/turn_human.py [OUT_DIR]     # default bench/results/tmp/turn_human/

Needs Debian's ``asterisk-core-sounds-en-g722`` + ``asterisk-core-sounds-en``
(Allison Smith's recorded telephone prompts, 16 kHz G.722, CC-BY-SA-3.0, with
their transcripts) and ``pocketsphinx-testdata`` (five LibriVox sentences read
by another speaker, public domain). Nothing is synthesised and nothing is
downloaded: the recordings are decoded with PyAV.

Each usable recording (one sentence, no digits, every word in pocketsphinx's
dictionary) gives two fixtures, written in the schema of
tests/fixtures/turn/turn.json (16 kHz mono int16, 300 ms of silence before
and after the speech):

- ``complete``: the sentence as recorded;
- ``incomplete``: the same recording with a pause of 0.3-1.3 s (seeded)
  inserted after a word that cannot end an English sentence (an article, a
  preposition, a conjunction, a possessive, an auxiliary: "Please enter your
  [pause] password"), the one nearest the middle of the sentence. The word
  boundary comes from pocketsphinx's forced alignment against the transcript,
  moved to the quietest 10 ms within 30 ms of it.

Each fixture's ``split`` is ``dev`` (every other Allison recording: use these
to choose a threshold) or ``test`` (the others and the LibriVox speaker).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import wave
from pathlib import Path
from typing import Any  # pocketsphinx.Decoder is untyped

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.human_speech import (  # noqa: E402  # after sys.path
    ALLISON,
    ALLISON_TEXT,
    FRAME,
    LEAD,
    RATE,
    decode_g722,
    speech_bounds,
    utterance,
)

OUT = ROOT / "bench" / "results" / "tmp" / "turn_human"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# words after which an English sentence cannot end
NON_FINAL = {
    "the", "a", "an", "to", "and", "or", "but", "of", "for", "with", "by", "from", "at", "into", "your",
    "my", "our", "their", "his", "her", "is", "are", "was", "were", "will", "be", "been", "have", "has",
    "had", "that", "which", "if", "when", "than", "as", "please", "not", "more", "rather", "might",
}


def read_wav16(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


def recordings() -> list[tuple[str, str, str, np.ndarray]]:
    """(name, speaker, text, samples) of every recording considered."""
    out = []
    with gzip.open(ALLISON_TEXT, "rt", encoding="utf-8") as f:
        texts = dict(line.split(": ", 1) for line in f if ": " in line and not line.startswith(";"))
    for key in sorted(texts):
        path = ALLISON / f"{key}.g722"
        if path.is_file():
            out.append((f"allison-{key.replace('/', '_')}", "allison", texts[key].strip(), decode_g722(path)))
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line)
        if m:
            out.append((f"librivox-{m[2][-4:]}", "librivox", m[1], read_wav16(LIBRIVOX / f"{m[2]}.wav")))
    return out


def one_sentence(text: str) -> bool:
    body = text.rstrip(".?! ")
    return not re.search(r"\d|\.\.\.|[.?!]\s", text) and len(body.split()) >= 4


def align(decoder: Any, pcm: np.ndarray, text: str) -> list[tuple[str, int, int]]:
    """Words of the transcript with [start, end) sample positions (pocketsphinx forced alignment)."""
    words = re.sub(r"[^a-z' ]", " ", text.lower()).split()
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    segs = decoder.seg()
    if segs is None:
        raise RuntimeError("no alignment")
    return [(re.sub(r"\(\d+\)$", "", s.word), s.start_frame * FRAME, (s.end_frame + 1) * FRAME)
            for s in segs if s.word not in ("<s>", "</s>", "<sil>") and not s.word.startswith(("[", "+"))]


def quietest(pcm: np.ndarray, at: int) -> int:
    """The start of the quietest 10 ms frame within 30 ms of ``at``."""
    cands = [c for c in range(at - 3 * FRAME, at + 3 * FRAME + 1, FRAME // 2) if 0 <= c <= len(pcm) - FRAME]
    energy = [float(np.sum(pcm[c : c + FRAME].astype(np.float64) ** 2)) for c in cands]
    return cands[int(np.argmin(energy))]


def write(out: Path, name: str, pcm: np.ndarray) -> None:
    with wave.open(str(out / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def main(out: Path) -> None:
    """long: a generator script, one pass over the recordings."""
    from pocketsphinx import Decoder, get_model_path

    decoder = Decoder(samprate=RATE, dict=os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict"),
                      loglevel="FATAL")
    rng = np.random.default_rng(23)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, object]] = {}
    n_allison = 0
    for name, speaker, text, pcm in recordings():
        if not one_sentence(text):
            continue
        try:
            words = align(decoder, pcm, text)
        except RuntimeError:  # a word pocketsphinx's dictionary lacks, or no alignment found
            continue
        if len(words) != len(re.sub(r"[^a-z' ]", " ", text.lower()).split()):
            continue
        first, last = speech_bounds(pcm)
        inner = [i for i, (w, _, _) in enumerate(words[1:-2], start=1) if w in NON_FINAL]
        if not inner:
            continue
        split = "test" if speaker != "allison" or n_allison % 2 else "dev"
        n_allison += speaker == "allison"
        mid = (first + last) // 2
        k = min(inner, key=lambda i: abs(words[i][2] - mid))
        cut = quietest(pcm, words[k][2])
        complete = utterance(pcm)
        inc = utterance(pcm, cut=cut - first, pause_ms=int(rng.integers(3, 14)) * 100)
        base = {"speaker": speaker, "split": split, "source": name, "speech_start": LEAD}
        write(out, f"{name}-complete.wav", complete.pcm)
        files[f"{name}-complete.wav"] = {**base, "label": "complete", "text": text, "pauses": [],
                                         "speech_end": complete.speech_end}
        write(out, f"{name}-incomplete.wav", inc.pcm)
        before, after = (" ".join(w for w, _, _ in part) for part in (words[: k + 1], words[k + 1 :]))
        files[f"{name}-incomplete.wav"] = {**base, "label": "incomplete", "text": f"{before} ... {after}",
                                           "pauses": [list(inc.pause or ())], "speech_end": inc.speech_end}
    (out / "turn.json").write_text(json.dumps({"rate": RATE, "files": files}, indent=1) + "\n")
    labels = [f["split"] + "/" + f["speaker"] for f in files.values() if f["label"] == "complete"]
    print(f"{len(files)} fixtures in {out}: " + ", ".join(f"{s} {labels.count(s)}" for s in sorted(set(labels))))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
