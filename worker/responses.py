"""The call's ledger of model responses and of what became of each assistant item.

:class:`ResponseLedger` knows the response in progress (and holds an event
that is set while none is), the responses an interruption cancelled (their
late output is dropped), which response each item belongs to, and the items
that are settled: played to the end, truncated or deleted.
"""

from __future__ import annotations

import asyncio
from typing import Literal

ItemFate = Literal["keep", "drop", "delete"]


class ResponseLedger:
    def __init__(self) -> None:
        self.current: str | None = None  # the response in progress
        self.idle = asyncio.Event()
        self.idle.set()
        self.had_audio = False  # the current (or last) response carried audio
        self.cancelled: set[str] = set()  # response ids whose output is dropped
        self.item_response: dict[str, str] = {}  # item id -> response id
        self.settled: set[str] = set()  # items played to the end, truncated or deleted

    def started(self, response_id: str) -> None:
        self.current = response_id
        self.idle.clear()
        self.had_audio = False

    def finished(self, response_id: str) -> None:
        if self.current == response_id:
            self.current = None
            self.idle.set()

    def lost(self) -> None:
        """The model connection dropped: no response is running any more."""
        self.current = None
        self.idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no response is in progress; False on timeout."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def fate(self, item_id: str, response_id: str) -> ItemFate:
        """Track which response an item belongs to and say what to do with
        its output: keep it, drop it (its response was interrupted) or drop it
        and delete the item (first news of an item of an interrupted response)."""
        if not response_id:
            return "keep"
        self.item_response.setdefault(item_id, response_id)
        if response_id not in self.cancelled:
            return "keep"
        if item_id in self.settled:
            return "drop"
        self.settled.add(item_id)
        return "delete"

    def cancel_current(self) -> str | None:
        """Mark the response in progress as cancelled; return its id."""
        if self.current is not None:
            self.cancelled.add(self.current)
        return self.current

    def cancel_flushed(self, flushed: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Cancel the responses of the items flushed from playout.

        Returns ``flushed`` plus, as ``(0, 0)``, the unsettled items of the
        cancelled responses that never reached playout (nothing was heard)."""
        for item_id in flushed:
            if self.item_response.get(item_id):
                self.cancelled.add(self.item_response[item_id])
        out = dict(flushed)
        for item_id, rid in self.item_response.items():
            if rid in self.cancelled and item_id not in out and item_id not in self.settled:
                out[item_id] = (0, 0)
        return out
