"""Transcript pacing: the assistant's text as produced, and as heard.

:class:`TranscriptPacer` keeps the transcript of each assistant item. It
publishes ``BotTranscript`` once per completed sentence as the model produces
the text, and ``BotOutput`` paced to the playout: whole words once their audio
has been played, the rest when the item is over, or the spoken and unspoken
parts when an interruption cuts it. It also tracks which item the caller is
hearing (``BotStartedSpeaking`` / ``BotStoppedSpeaking``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from v2v.media.playout import PlayoutBuffer

from . import events as ev
from .played_text import played_text, spoken_chars

_SENTENCE_END = re.compile(r"[.!?。！？]+[\"')\]]*\s")


@dataclass
class ItemText:
    """Assistant transcript of one response item, and how much was shown."""

    text: str = ""
    # timed words: (char position where the word starts, its audio sample offset in the item), ascending
    words: list[tuple[int, int]] = field(default_factory=list)
    emitted: int = 0  # characters already published as bot-output
    sentence_from: int = 0  # characters already published as bot-transcription
    done: bool = False


class TranscriptPacer:
    def __init__(self, publish: Callable[[ev.CallEvent], None]) -> None:
        self.publish = publish
        self.texts: dict[str, ItemText] = {}
        self.speaking: str | None = None  # the item the caller is hearing

    # -- what the caller hears ----------------------------------------------
    def started(self, item_id: str) -> None:
        """Playout of ``item_id`` became audible."""
        if self.speaking is None:
            self.publish(ev.BotStartedSpeaking(item_id))
        self.speaking = item_id

    def stopped(self) -> None:
        """Playout went silent (paused, drained or cut)."""
        if self.speaking is not None:
            self.publish(ev.BotStoppedSpeaking(self.speaking))
            self.speaking = None

    # -- text as produced ---------------------------------------------------
    def delta(self, item_id: str, text: str, audio_offset: int | None) -> None:
        it = self.texts.setdefault(item_id, ItemText())
        if audio_offset is not None:
            it.words.append((len(it.text) + len(text) - len(text.lstrip()), audio_offset))
        it.text += text
        self._publish_sentences(item_id, it, final=False)

    def done(self, item_id: str, text: str, settled: bool) -> None:
        """The item's transcript is complete (``settled``: its audio already played out)."""
        it = self.texts.setdefault(item_id, ItemText())
        if text and len(text) >= len(it.text):
            it.text = text
        it.done = True
        self._publish_sentences(item_id, it, final=True)
        if settled:
            self.finish(item_id)

    def _publish_sentences(self, item_id: str, it: ItemText, final: bool) -> None:
        """One bot-transcription per completed sentence (the rest when final)."""
        pending = it.text[it.sentence_from :]
        cuts = [m.end() for m in _SENTENCE_END.finditer(pending)]
        if final and (not cuts or cuts[-1] < len(pending)):
            cuts.append(len(pending))
        start = 0
        for cut in cuts:
            sentence = pending[start:cut].strip()
            start = cut
            if sentence:
                self.publish(ev.BotTranscript(sentence, item_id))
        it.sentence_from += start

    # -- text as heard ------------------------------------------------------
    def pace(self, playout: PlayoutBuffer) -> None:
        """Publish bot-output text as the playout reaches it."""
        item_id = self.speaking
        if item_id is None:
            return
        it = self.texts.get(item_id)
        if it is None or not it.text:
            return
        upto = spoken_chars(it.text, playout.played(item_id), playout.received(item_id), it.words)
        # publish whole words only
        while upto < len(it.text) and upto > it.emitted and not it.text[upto].isspace():
            upto -= 1
        if upto > it.emitted:
            text = it.text[it.emitted : upto]
            it.emitted = upto
            if text.strip():
                self.publish(ev.BotOutput(item_id, text))

    def played_out(self, item_id: str) -> None:
        """All of the item's audio was played."""
        it = self.texts.get(item_id)
        if it is not None and (it.done or not it.text):
            self.finish(item_id)

    def finish(self, item_id: str) -> None:
        """Publish the rest of the item's text and its final bot-output."""
        it = self.texts.pop(item_id, None)
        if it is None:
            return
        rest = it.text[it.emitted :]
        if rest.strip():
            self.publish(ev.BotOutput(item_id, rest))
        self.publish(ev.BotOutput(item_id, "", final=True, spoken=it.text.strip()))

    def cut(self, item_id: str, played: int, received: int) -> tuple[str, str]:
        """Forget the item; return its (spoken, unspoken) text after ``played`` samples."""
        it = self.texts.pop(item_id, None)
        if it is None or not it.text:
            return "", ""
        return played_text(it.text, played, received, it.words)

