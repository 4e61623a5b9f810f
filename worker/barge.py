"""Barge-in: the caller talking over the assistant.

:class:`BargeIn` runs one call's interruption cycle, counted in input samples:

- *pause*: speech starts while the assistant is audible (or a reply arrives
  while the caller talks): playout pauses at once and a candidate is held;
- *eager pause*: the VAD's tentative onset (its first voiced 10-20 ms, before
  it has the evidence for a start) pauses an audible assistant already; if the
  VAD drops the onset (noise), playout resumes at once, so the gap is the
  burst plus the VAD's drop hangover, with the playout's fades. For
  ``EAGER_HOLDOFF_MS`` after such a dropped pause onsets do not pause again
  (a noisy line would flutter); a VAD start still pauses as before;
- *confirm*: ``min_interruption_ms`` of voiced speech: :meth:`BargeIn.interrupt`
  cancels the response, flushes the playout and truncates every item at the
  samples the caller actually heard (or deletes what was not heard at all);
- *resume*: the burst ended and ``false_interruption_timeout_ms`` passed since
  the pause: a false interruption, playout resumes where it stopped.

A *full-duplex* model (``ModelCapabilities.full_duplex``, GPT-Live) owns
turn-taking and streams its voice live: nothing is paused or held. Pausing a
live stream would put the playout behind the model by the pause, and the
caller would then hear the model stop that much after it stopped. A burst
shorter than ``min_interruption_ms`` (a backchannel, "mm-hm") changes nothing
and sends nothing; the model's own output while the caller talks (its
backchannels) plays; a confirmed interruption still flushes the playout and
reports what was heard (the model has yielded by then, or is told to stop
where it can be).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from v2v.media.playout import PlayoutBuffer

from . import events as ev
from .models import base as mb
from .pacing import TranscriptPacer
from .responses import ResponseLedger

if TYPE_CHECKING:
    from .call import CallConfig

log = logging.getLogger("v2v.call")

EAGER_HOLDOFF_MS = 1000  # after a dropped eager pause, onsets do not pause again for this long


@dataclass
class Candidate:
    onset: int  # input sample of the speech onset
    decided_at: int  # input sample of the VAD decision
    paused_at: int  # input sample position when playout was paused
    t_decided: float
    ended: bool = False  # the burst's VAD end was seen
    t_paused: float | None = None
    started: bool = True  # False: an eager pause on a VAD onset that is not (yet) a start


class BargeIn:
    def __init__(
        self,
        call_id: str,
        config: CallConfig,
        playout: PlayoutBuffer,
        model: mb.ModelSession,
        ledger: ResponseLedger,
        pacer: TranscriptPacer,
        publish: Callable[[ev.CallEvent], None],
        clock: Callable[[], float],
    ) -> None:
        self.call_id = call_id
        self.config = config
        self.playout = playout
        self.model = model
        self.ledger = ledger
        self.pacer = pacer
        self.publish = publish
        self.clock = clock
        self.input_rate = 0
        self.candidate: Candidate | None = None
        self.full_duplex = model.capabilities.full_duplex
        self._eager_after = 0  # input position from which an onset may pause eagerly again

    def _samples(self, ms: int) -> int:
        return self.input_rate * ms // 1000

    # -- pause ---------------------------------------------------------------
    def speech_onset(self, onset: int, decided: int, position: int, assistant_active: bool) -> bool:
        """The VAD's tentative onset: pause the assistant now (or hold its reply); True if it did."""
        if self.candidate is not None or self.full_duplex or not assistant_active or position < self._eager_after:
            return False
        self.playout.pause()
        self.candidate = Candidate(onset, decided, position, self.clock(), started=False)
        log.debug("call %s: eager pause on a speech onset", self.call_id)
        return True

    def speech_dropped(self, position: int) -> None:
        """The VAD dropped the onset (not speech): an eager pause resumes at once."""
        b = self.candidate
        if b is not None and not b.started:
            self._eager_after = position + self._samples(EAGER_HOLDOFF_MS)
            self._resume()

    def speech_started(self, onset: int, decided: int, position: int, assistant_active: bool) -> None:
        if self.candidate is not None:
            # speech again while a burst is pending (or the eager pause's onset started): from this onset
            self.candidate.onset = onset
            self.candidate.ended = False
            self.candidate.started = True
        elif assistant_active:
            if not self.full_duplex:  # a full-duplex model's live stream is never paused
                self.playout.pause()
            self.candidate = Candidate(onset, decided, position, self.clock())
            log.debug("call %s: barge-in candidate%s", self.call_id, "" if self.full_duplex else ", playout paused")

    def speech_stopped(self) -> bool:
        """The caller's burst ended; True if it was a barge-in candidate."""
        if self.candidate is None:
            return False
        self.candidate.ended = True
        return True

    def hold_reply(self, position: int) -> None:
        """A reply starts while the caller is talking: hold it as a candidate.

        Not for a full-duplex model: what it says while the caller talks (a
        backchannel) plays as it comes.
        """
        if self.full_duplex:
            return
        if self.candidate is None and not self.playout.audible and not self.playout.paused:
            self.playout.pause()
            self.candidate = Candidate(position, position, position, self.clock())

    def playout_paused(self) -> None:
        """The playout went silent for a pause: publish the barge-in latency once."""
        b = self.candidate
        if b is None or b.t_paused is not None:
            return
        b.t_paused = self.clock()
        lat = (b.decided_at - b.onset) / self.input_rate * 1000
        lat += (b.t_paused - b.t_decided) * 1000
        self.publish(ev.Metrics(barge_in_ms=lat))

    # -- confirm or resume ---------------------------------------------------
    def check(self, position: int, voiced_end: int, user_speaking: bool) -> Literal["confirm", "resume"] | None:
        """Decide a pending candidate; on "resume" the playout is already resumed."""
        b = self.candidate
        if b is None:
            return None
        timed_out = position - b.paused_at >= self._samples(self.config.false_interruption_timeout_ms)
        if not b.started:  # an eager pause confirms only once the VAD started speech
            if timed_out:
                self._resume()
                return "resume"
            return None
        if not b.ended and voiced_end - b.onset >= self._samples(self.config.min_interruption_ms):
            self.candidate = None
            return "confirm"
        if self.full_duplex:
            if b.ended:  # a backchannel: the assistant was never paused, nothing to resume
                self.candidate = None
                log.debug("call %s: caller backchannel, the assistant goes on", self.call_id)
            return None
        if timed_out and (b.ended or not user_speaking):
            self._resume()
            return "resume"
        return None

    def _resume(self) -> None:
        """A false interruption: playout resumes where it paused (with a fade-in)."""
        self.candidate = None
        item = self.playout.current_item or ""
        log.debug("call %s: false interruption, playout resumed", self.call_id)
        self.publish(ev.FalseInterruption(item))
        self.playout.resume()

    # -- truncate ------------------------------------------------------------
    async def interrupt(self, reason: str) -> None:
        """Confirmed interruption: cancel, truncate at played samples, drop the rest."""
        self.candidate = None
        self.playout.pause()
        if self.ledger.cancel_current() is not None:
            await self.model.cancel_response()
        flushed = self.ledger.cancel_flushed(self.playout.flush())
        head: tuple[str, int, bool] | None = None
        for item_id, (played, received) in flushed.items():
            audio_end_ms, deleted = await self._truncate(item_id, played, received, reason)
            if head is None:
                head = (item_id, audio_end_ms, deleted)
        self.publish(ev.BotInterrupted(*(head or ("", 0, True))))
        self.pacer.stopped()

    async def _truncate(self, item_id: str, played: int, received: int, reason: str) -> tuple[int, bool]:
        """Cut one item to what was heard (delete it if nothing was); publish it."""
        rate = self.playout.rate
        self.ledger.settled.add(item_id)
        played = min(played, received)
        audio_end_ms = played * 1000 // rate
        deleted = played == 0
        if deleted:
            await self.model.delete_item(item_id)
        elif self.model.capabilities.truncation:
            await self.model.truncate_item(item_id, 0, audio_end_ms)
        # a model that cannot truncate keeps the whole item; the played text is still reported
        spoken, unspoken = self.pacer.cut(item_id, played, received)
        log.debug(
            "call %s: interrupted (%s) item %s at %d ms of %d ms%s",
            self.call_id, reason, item_id, audio_end_ms, received * 1000 // rate,
            " (deleted)" if deleted else "",
        )
        self.publish(ev.ItemTruncated(item_id, audio_end_ms, deleted))
        if spoken or unspoken:
            self.publish(ev.BotOutput(item_id, "", final=True, interrupted=True, spoken=spoken, unspoken=unspoken))
        return audio_end_ms, deleted
