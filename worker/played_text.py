"""Cut an assistant item's text at the audio the caller actually heard.

The one implementation used by the call (bot-output pacing and interruption)
and by the models that keep a conversation (truncation). Positions are sample
counts of the item's audio; ``words`` are optional ``(char_start,
sample_offset)`` word timings, ascending. With timings, the spoken text is
every word whose audio started before ``played``; without, a share of the text
in proportion to the audio played of the audio received.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["played_text", "spoken_chars"]


def spoken_chars(text: str, played: int, total: int, words: Sequence[tuple[int, int]] = ()) -> int:
    """How many characters of ``text`` were spoken after ``played`` of ``total``
    samples (not aligned to words)."""
    if words:
        started = bisect.bisect_left(words, played, key=lambda w: w[1])
        if started == 0:
            return 0
        return words[started][0] if started < len(words) else len(text)
    if total <= 0 or played <= 0:
        return 0
    return len(text) * min(played, total) // total


def played_text(text: str, played: int, total: int, words: Sequence[tuple[int, int]] = ()) -> tuple[str, str]:
    """``(spoken, unspoken)`` parts of ``text`` after ``played`` of ``total``
    samples, cut at a word boundary (never inside a word), both stripped."""
    cut = spoken_chars(text, played, total, words)
    while 0 < cut < len(text) and not text[cut - 1].isspace() and not text[cut].isspace():
        cut -= 1
    return text[:cut].strip(), text[cut:].strip()
