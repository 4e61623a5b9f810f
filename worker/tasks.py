"""A set of background tasks that belong to one owner (a call, a transport, a session).

:class:`TaskSet` keeps a reference to each task it spawns (the event loop only
keeps weak ones), logs a task that failed, and cancels and awaits all of them
at the owner's end: the one implementation of "spawn" and of "cancel my tasks,
then gather" in v2v.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet"]

log = logging.getLogger("v2v.tasks")

T = TypeVar("T")


class TaskSet:
    """Tasks of one owner: :meth:`spawn` them, :meth:`cancel_all` at the end."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this set (a reference is kept until it ends)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s of %s failed", task.get_name(), self.owner or "?", exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task but the current one and wait until they are done."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
